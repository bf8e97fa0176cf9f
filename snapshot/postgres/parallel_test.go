package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackport/stackport/internal/streamtest"
	"github.com/stackport/stackport/snapshot"
)

// heldReader is a streamtest.Reader that records how many data streams
// were held at once. With wait > 0 the first read of a data stream waits,
// up to 20 s, until wait data streams are held (or every one was handed
// out), so that a restorer that loads tables one at a time is caught
// whatever the timing.
type heldReader struct {
	*streamtest.Reader
	wait int

	mu      sync.Mutex
	cond    *sync.Cond
	held    int // data streams handed out and not closed
	maxHeld int
}

func newHeldReader(r *streamtest.Reader, wait int) *heldReader {
	h := &heldReader{Reader: r, wait: wait}
	h.cond = sync.NewCond(&h.mu)
	return h
}

func (h *heldReader) Next() (string, io.ReadCloser, error) {
	name, rc, err := h.Reader.Next()
	if err != nil || !strings.HasPrefix(name, dataPrefix) {
		return name, rc, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.held++
	h.maxHeld = max(h.maxHeld, h.held)
	h.cond.Broadcast()
	return name, &heldStream{ReadCloser: rc, h: h}, nil
}

// allDataOut reports whether every data stream was handed out.
func (h *heldReader) allDataOut() bool {
	for _, s := range h.Remaining() {
		if strings.HasPrefix(s.Name, dataPrefix) {
			return false
		}
	}
	return true
}

// waitHeld waits until wait data streams are held, or every one was handed
// out, for up to 20 s.
func (h *heldReader) waitHeld() {
	deadline := time.AfterFunc(20*time.Second, func() {
		h.mu.Lock()
		h.wait = 0
		h.cond.Broadcast()
		h.mu.Unlock()
	})
	defer deadline.Stop()
	h.mu.Lock()
	defer h.mu.Unlock()
	for h.wait > 0 && h.held < h.wait && !h.allDataOut() {
		h.cond.Wait()
	}
}

// heldStream is a data stream of a heldReader.
type heldStream struct {
	io.ReadCloser
	h              *heldReader
	waited, closed bool
}

func (s *heldStream) Read(p []byte) (int, error) {
	if !s.waited {
		s.waited = true
		s.h.waitHeld()
	}
	return s.ReadCloser.Read(p)
}

func (s *heldStream) Close() error {
	s.h.mu.Lock()
	if !s.closed {
		s.closed = true
		s.h.held--
	}
	s.h.mu.Unlock()
	return s.ReadCloser.Close()
}

// restoredObjects lists what a restore of the fixture leaves in a database
// besides what it had before: the objects of the schemas and the
// extensions, without those of initdb.
func restoredObjects(t *testing.T, url string) []string {
	t.Helper()
	return queryStrings(t, url, `SELECT 'schema ' || nspname FROM pg_namespace
			WHERE nspname NOT IN ('public', 'information_schema') AND nspname NOT LIKE 'pg\_%'
		UNION ALL SELECT 'relation ' || c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname NOT IN ('information_schema') AND n.nspname NOT LIKE 'pg\_%'
		UNION ALL SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
			WHERE n.nspname NOT IN ('information_schema') AND n.nspname NOT LIKE 'pg\_%'
		UNION ALL SELECT 'type ' || t.oid::regtype::text FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
			WHERE n.nspname NOT IN ('information_schema') AND n.nspname NOT LIKE 'pg\_%'
		UNION ALL SELECT 'extension ' || extname FROM pg_extension WHERE oid >= 16384
		ORDER BY 1`)
}

// testParallel runs the parallel restore's checks against the fixture
// snapshot in store (see TestPostgres).
func testParallel(t *testing.T, dst cluster, store *streamtest.Store, stats snapshot.Stats, wantContent map[string]string, wantCatalog []string) {
	ctx := context.Background()

	t.Run("round trip as a non-superuser", func(t *testing.T) {
		dst.newDB(t, "parallel", restorer)
		url := dst.dbURL(t, "parallel", restorer, restorerPassword)
		r := newHeldReader(store.Reader(), 3)
		start := time.Now()
		rstats, err := (&Restorer{URL: url, Loaders: 3, Parallel: 2}).Restore(ctx, r)
		if err != nil {
			t.Fatalf("restore: %v", err)
		}
		t.Logf("parallel restore in %v, %d tables held at once", time.Since(start), r.maxHeld)
		if !r.AllRead() {
			t.Error("not every stream was read to its end and closed")
		}
		if r.maxHeld != 3 {
			t.Errorf("%d tables loaded at once, want 3", r.maxHeld)
		}
		for _, k := range []string{"tables", "rows", "bytes", "rows:appsmith.users", "bytes:temporal.events"} {
			if rstats[k] != stats[k] {
				t.Errorf("restore stats[%s] = %d, dump %d", k, rstats[k], stats[k])
			}
		}
		checkRestored(t, url, wantContent, wantCatalog)
	})

	// A table stream cut in the middle, while other tables load and
	// commit: the error names the table, what the restore created is
	// removed, what the target had before stays, and the same restore then
	// completes.
	t.Run("failure in the middle", func(t *testing.T) {
		dst.newDB(t, "parallelfail", restorer)
		url := dst.dbURL(t, "parallelfail", restorer, restorerPassword)
		execSQL(t, url, `CREATE SCHEMA other; CREATE TABLE other.t (x int); INSERT INTO other.t VALUES (1);
			CREATE FUNCTION public.keep() RETURNS int LANGUAGE sql AS 'SELECT 1';
			CREATE TYPE public.keep_t AS ENUM ('x'); CREATE EXTENSION pg_trgm`)
		before := restoredObjects(t, url)
		bad := store.Reader().Edit(t, "data/temporal.events.copy", func(b []byte) []byte { return b[:len(b)/2] })
		var logs streamtest.LogBuffer
		log := logs.Logger()
		r := newHeldReader(bad, 3)
		_, err := (&Restorer{URL: url, Loaders: 3, Log: log}).Restore(ctx, r)
		checkCorrupt(t, err, "temporal.events", "ends inside a row")
		t.Log(err)
		if !r.AllClosed() {
			t.Error("a stream was left open")
		}
		if !strings.Contains(logs.String(), "removed from the target") {
			t.Errorf("no cleanup in the log:\n%s", logs.String())
		}
		checkSame(t, before, restoredObjects(t, url), "objects after the failed restore")
		if _, err := (&Restorer{URL: url, Loaders: 3}).Restore(ctx, newHeldReader(store.Reader(), 0)); err != nil {
			t.Fatalf("the same restore again: %v", err)
		}
		checkSame(t, wantContent, contentOf(t, url), "content")
		if got := queryStrings(t, url, "SELECT count(*), public.keep() FROM other.t"); !slices.Equal(got, []string{"1 | 1"}) {
			t.Errorf("what the target had before: %v", got)
		}
	})

	t.Run("failure in the middle with Clean", func(t *testing.T) {
		dst.newDB(t, "parallelclean", restorer)
		url := dst.dbURL(t, "parallelclean", restorer, restorerPassword)
		if _, err := (&Restorer{URL: url, Loaders: 2}).Restore(ctx, newHeldReader(store.Reader(), 0)); err != nil {
			t.Fatal(err)
		}
		bad := store.Reader().Edit(t, "data/appsmith.users.copy", func(b []byte) []byte {
			lines := bytes.SplitAfter(b, []byte("\n"))
			lines[4] = bytes.Replace(lines[4], []byte("\t"), nil, 1)
			return bytes.Join(lines, nil)
		})
		before := contentOf(t, url)
		_, err := (&Restorer{URL: url, Loaders: 2, Clean: true}).Restore(ctx, newHeldReader(bad, 0))
		checkCorrupt(t, err, "appsmith.users", "row 5: 14 fields, want 15")
		// A Clean restore is one transaction: the data it was to
		// replace is still there.
		checkSame(t, before, contentOf(t, url), "content after the failed restore")
		if _, err := (&Restorer{URL: url, Loaders: 2, Clean: true}).Restore(ctx, newHeldReader(store.Reader(), 0)); err != nil {
			t.Fatalf("the same restore again: %v", err)
		}
		checkSame(t, wantContent, contentOf(t, url), "content")
	})

	// Every table exactly once, whatever the order: an unexpected stream
	// and a missing one are corrupt data, and what was loaded is removed.
	t.Run("unexpected and missing streams", func(t *testing.T) {
		dst.newDB(t, "parallelstreams", restorer)
		url := dst.dbURL(t, "parallelstreams", restorer, restorerPassword)
		extra := store.Reader()
		i := slices.IndexFunc(extra.Streams, func(s streamtest.Stream) bool { return s.Name == postDataStream })
		extra.Streams = slices.Insert(extra.Streams, i, streamtest.Stream{Name: "data/public.realm.copy", Data: []byte(endOfData)})
		_, err := (&Restorer{URL: url, Loaders: 3}).Restore(ctx, newHeldReader(extra, 0))
		checkCorrupt(t, err, "data/public.realm.copy", "unexpected stream")
		if got := restoredObjects(t, url); len(got) != 0 {
			t.Errorf("left after the failed restore: %v", got)
		}
		missing := store.Reader().Edit(t, "data/public.client.copy", func([]byte) []byte { return nil })
		_, err = (&Restorer{URL: url, Loaders: 3}).Restore(ctx, newHeldReader(missing, 0))
		checkCorrupt(t, err, "no data stream for table public.client")
		if got := restoredObjects(t, url); len(got) != 0 {
			t.Errorf("left after the failed restore: %v", got)
		}
	})

	t.Run("interrupted", func(t *testing.T) {
		dst.newDB(t, "parallelint", restorer)
		url := dst.dbURL(t, "parallelint", restorer, restorerPassword)
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		_, err := (&Restorer{URL: url, Loaders: 3}).Restore(cctx, &cancelAt{StreamReader: newHeldReader(store.Reader(), 0), name: postDataStream, cancel: cancel})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("restore: %v", err)
		}
		if got := restoredObjects(t, url); len(got) != 0 {
			t.Errorf("an interrupted restore left %v", got)
		}
	})

	t.Run("missing extension", func(t *testing.T) {
		bad := store.Reader().Edit(t, preDataStream, func(b []byte) []byte {
			return bytes.Replace(b, []byte("CREATE EXTENSION IF NOT EXISTS citext"),
				[]byte("CREATE EXTENSION IF NOT EXISTS no_such_ext WITH SCHEMA public;\nCREATE EXTENSION IF NOT EXISTS citext"), 1)
		})
		dst.newDB(t, "parallelnoext", restorer)
		url := dst.dbURL(t, "parallelnoext", restorer, restorerPassword)
		_, err := (&Restorer{URL: url, Loaders: 3}).Restore(ctx, newHeldReader(bad, 0))
		if err == nil || !strings.Contains(err.Error(), "lacks the extension no_such_ext") {
			t.Fatalf("restore: %v", err)
		}
		if got := restoredObjects(t, url); len(got) != 0 {
			t.Errorf("a refused restore left %v", got)
		}
	})
}

// testSuperuserObjects restores, as a role that is not a superuser, a
// database that has an event trigger and a publication (made by a
// superuser): they are left out with a warning naming them, and kept with
// KeepOwners by a superuser.
func testSuperuserObjects(t *testing.T, src, dst cluster) {
	ctx := context.Background()
	src.newDB(t, "super", "postgres")
	srcURL := src.dbURL(t, "super", "postgres", "")
	execSQL(t, srcURL, `CREATE TABLE public.t (id int PRIMARY KEY, v text);
		INSERT INTO public.t SELECT g, 'v' || g FROM generate_series(1, 1000) g;
		CREATE FUNCTION public.on_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE 'ddl'; END $$;
		CREATE EVENT TRIGGER on_ddl ON ddl_command_end EXECUTE FUNCTION public.on_ddl();
		ALTER EVENT TRIGGER on_ddl ENABLE ALWAYS;
		COMMENT ON EVENT TRIGGER on_ddl IS 'logs DDL';
		CREATE PUBLICATION pub FOR TABLE public.t;
		COMMENT ON PUBLICATION pub IS 'for a replica'`)
	store, _ := dump(t, &Dumper{URL: srcURL})
	pre, _ := store.Bytes(preDataStream)
	post, _ := store.Bytes(postDataStream)
	if !bytes.Contains(post, []byte("CREATE EVENT TRIGGER on_ddl")) || !bytes.Contains(post, []byte("CREATE PUBLICATION pub")) {
		t.Fatalf("the dump lacks the event trigger or the publication:\n%s\n%s", pre, post)
	}
	want := contentOf(t, srcURL)
	for _, loaders := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d loaders", loaders), func(t *testing.T) {
			db := fmt.Sprintf("super%d", loaders)
			dst.newDB(t, db, restorer)
			url := dst.dbURL(t, db, restorer, restorerPassword)
			var logs streamtest.LogBuffer
			log := logs.Logger()
			var in snapshot.StreamReader = store.Reader() // one stream at a time
			if loaders > 1 {
				in = newHeldReader(store.Reader(), 0)
			}
			if _, err := (&Restorer{URL: url, Loaders: loaders, Log: log}).Restore(ctx, in); err != nil {
				t.Fatalf("restore: %v", err)
			}
			checkSame(t, want, contentOf(t, url), "content")
			l := logs.String()
			if !strings.Contains(l, "only a superuser may run") || !strings.Contains(l, "event trigger on_ddl") ||
				!strings.Contains(l, "publication pub") || !strings.Contains(l, "statements=6") {
				t.Errorf("the log does not name what was left out:\n%s", l)
			}
			if got := queryStrings(t, url, "SELECT (SELECT count(*) FROM pg_event_trigger), (SELECT count(*) FROM pg_publication)"); !slices.Equal(got, []string{"0 | 0"}) {
				t.Errorf("event triggers, publications: %v", got)
			}
		})
	}
	t.Run("kept by a superuser", func(t *testing.T) {
		dst.newDB(t, "superkept", "postgres")
		url := dst.dbURL(t, "superkept", "postgres", "")
		if _, err := (&Restorer{URL: url, Loaders: 2, KeepOwners: true}).Restore(ctx, newHeldReader(store.Reader(), 0)); err != nil {
			t.Fatalf("restore: %v", err)
		}
		if got := queryStrings(t, url, "SELECT evtname, evtenabled::text, obj_description(oid, 'pg_event_trigger') FROM pg_event_trigger UNION ALL SELECT pubname, '', obj_description(oid, 'pg_publication') FROM pg_publication ORDER BY 1"); !slices.Equal(got, []string{"on_ddl | A | logs DDL", "pub |  | for a replica"}) {
			t.Errorf("event triggers, publications: %v", got)
		}
	})
}

// testExtensionsElsewhere snapshots one schema whose objects use
// extensions installed in other schemas: their CREATE EXTENSION statements
// are in the snapshot (an unused one is not), the restore creates the
// extension's schema, and a failed parallel restore removes both again.
func testExtensionsElsewhere(t *testing.T, src, dst cluster) {
	ctx := context.Background()
	src.newDB(t, "exts", "postgres")
	srcURL := src.dbURL(t, "exts", "postgres", "")
	execSQL(t, srcURL, `CREATE SCHEMA ext; CREATE EXTENSION citext SCHEMA ext;
		CREATE EXTENSION pg_trgm SCHEMA public; CREATE EXTENSION "uuid-ossp" SCHEMA public;
		CREATE SCHEMA app;
		CREATE TABLE app.users (email ext.citext PRIMARY KEY, name text);
		CREATE INDEX users_name ON app.users USING gin (name public.gin_trgm_ops);
		INSERT INTO app.users SELECT 'User' || g || '@example.com', 'name ' || g FROM generate_series(1, 2000) g`)
	store, _ := dump(t, &Dumper{URL: srcURL, Schemas: []string{"app"}})
	pre, _ := store.Bytes(preDataStream)
	for _, want := range []string{"CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA ext;", "CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;"} {
		if !bytes.Contains(pre, []byte(want)) {
			t.Errorf("pre-data lacks %s:\n%s", want, pre)
		}
	}
	if bytes.Contains(pre, []byte("uuid-ossp")) {
		t.Errorf("pre-data has an extension the schema does not use:\n%s", pre)
	}

	dst.newDB(t, "exts", restorer)
	url := dst.dbURL(t, "exts", restorer, restorerPassword)
	bad := store.Reader().Edit(t, "data/app.users.copy", func(b []byte) []byte { return b[:len(b)/2] })
	_, err := (&Restorer{URL: url, Loaders: 2}).Restore(ctx, newHeldReader(bad, 0))
	checkCorrupt(t, err, "app.users")
	if got := restoredObjects(t, url); len(got) != 0 {
		t.Errorf("a failed restore left %v", got)
	}
	if _, err := (&Restorer{URL: url, Loaders: 2}).Restore(ctx, newHeldReader(store.Reader(), 0)); err != nil {
		t.Fatalf("restore: %v", err)
	}
	got := queryStrings(t, url, `SELECT count(*), count(*) FILTER (WHERE email OPERATOR(ext.=) 'user7@EXAMPLE.com'),
		(SELECT string_agg(extname || ' in ' || extnamespace::regnamespace::text, ', ' ORDER BY extname) FROM pg_extension WHERE oid >= 16384),
		(SELECT count(*) FROM pg_indexes WHERE indexname = 'users_name') FROM app.users`)
	if !slices.Equal(got, []string{"2000 | 1 | citext in ext, pg_trgm in public | 1"}) {
		t.Errorf("restored: %v", got)
	}
}
