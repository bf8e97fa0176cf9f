package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/stackport/stackport/internal/streamtest"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/snapshot"
)

const (
	fixturePath = "../../testdata/postgres/fixture.sql"
	psqlPath    = "/usr/lib/postgresql/15/bin/psql"
	// restorer is the target's non-superuser role, like Cloud SQL's
	// cloudsqlsuperuser: it may create databases and owns the ones it
	// restores into.
	restorer         = "restorer"
	restorerPassword = "restorer-secret"
	fixtureSchemas   = "appsmith,public,temporal"
)

// cluster is a started PostgreSQL server and its superuser URL.
type cluster struct {
	server *lab.Server
	url    string // superuser, database postgres
}

// dbURL returns the URL of database db as user (with password, if any).
func (c cluster) dbURL(t testing.TB, db, user, password string) string {
	t.Helper()
	u, err := url.Parse(c.url)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + db
	if password != "" {
		u.User = url.UserPassword(user, password)
	} else {
		u.User = url.User(user)
	}
	return u.String()
}

// exec runs SQL (several statements allowed) on the database at url.
func execSQL(t testing.TB, url, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
}

// queryStrings returns the rows of a query as strings, the columns joined
// by " | ".
func queryStrings(t testing.TB, url, sql string, args ...any) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			parts[i] = fmt.Sprint(v)
		}
		out = append(out, strings.Join(parts, " | "))
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
	return out
}

// newDB creates an empty database owned by owner and returns its name.
func (c cluster) newDB(t testing.TB, name, owner string) string {
	t.Helper()
	execSQL(t, c.url, fmt.Sprintf("CREATE DATABASE %s OWNER %s", name, owner))
	return name
}

// contentOf returns, per table and materialized view of the fixture's
// schemas, its row count and an md5 of its rows in order.
func contentOf(t testing.TB, url string) map[string]string {
	t.Helper()
	rels := queryStrings(t, url, `SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'm') AND n.nspname = ANY(string_to_array($1, ',')) ORDER BY 1`, fixtureSchemas)
	out := map[string]string{}
	for _, rel := range rels {
		r := queryStrings(t, url, fmt.Sprintf(`SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM %s t`, rel))
		out[rel] = r[0]
	}
	return out
}

// catalogOf describes the objects of the fixture's schemas (without
// owners and privileges).
func catalogOf(t testing.TB, url string) []string {
	t.Helper()
	var out []string
	for _, q := range []string{
		`SELECT 'index', schemaname, tablename, indexdef FROM pg_indexes WHERE schemaname = ANY(string_to_array($1, ','))`,
		`SELECT 'constraint', conrelid::regclass::text, contypid::regtype::text, conname, pg_get_constraintdef(c.oid), condeferrable, condeferred
			FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = ANY(string_to_array($1, ','))`,
		`SELECT 'trigger', t.tgrelid::regclass::text, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
			JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal AND n.nspname = ANY(string_to_array($1, ','))`,
		`SELECT 'relation', n.nspname, c.relname, c.relkind, c.relpersistence, c.relispartition FROM pg_class c
			JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(string_to_array($1, ','))`,
		`SELECT 'function', p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p
			JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = ANY(string_to_array($1, ','))
			AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')`,
		`SELECT 'type', t.oid::regtype::text, t.typtype FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
			WHERE n.nspname = ANY(string_to_array($1, ','))
			AND (t.typtype IN ('e', 'd') OR t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')`,
		`SELECT 'view', schemaname, viewname, definition FROM pg_views WHERE schemaname = ANY(string_to_array($1, ','))`,
		`SELECT 'sequence', schemaname, sequencename, start_value, increment_by FROM pg_sequences WHERE schemaname = ANY(string_to_array($1, ','))`,
		`SELECT 'comment', obj_description('appsmith.pages'::regclass, 'pg_class') WHERE $1 <> ''`,
	} {
		out = append(out, queryStrings(t, url, q, fixtureSchemas)...)
	}
	slices.Sort(out)
	return out
}

// setup starts the source and target clusters, loads the fixture into the
// source database "app" and creates the restorer role on the target,
// which then requires passwords from everyone but postgres.
func setup(t *testing.T) (src, dst cluster, srcURL string) {
	t.Helper()
	var s, d cluster
	s.server, s.url = lab.Postgres(t)
	d.server, d.url = lab.Postgres(t)
	s.newDB(t, "app", "postgres")
	srcURL = s.dbURL(t, "app", "postgres", "")
	fixture, err := os.ReadFile(fixturePath)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	execSQL(t, srcURL, string(fixture))
	t.Logf("fixture loaded in %v", time.Since(start))

	execSQL(t, d.url, fmt.Sprintf("CREATE ROLE %s LOGIN CREATEDB PASSWORD '%s'", restorer, restorerPassword))
	hba := queryStrings(t, d.url, "SHOW hba_file")[0]
	execSQL(t, d.url, fmt.Sprintf(`COPY (VALUES ('local all all trust'), ('host all postgres 127.0.0.1/32 trust'),
		('host all all 127.0.0.1/32 scram-sha-256')) TO '%s'; SELECT pg_reload_conf()`, hba))
	// The reload is asynchronous: wait until a password is required.
	ctx := context.Background()
	for deadline := time.Now().Add(10 * time.Second); ; {
		conn, err := pgx.Connect(ctx, d.dbURL(t, "postgres", restorer, ""))
		if err != nil {
			break
		}
		conn.Close(ctx)
		if time.Now().After(deadline) {
			t.Fatal("pg_hba.conf reload did not take effect")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s, d, srcURL
}

func dump(t testing.TB, d *Dumper) (*streamtest.Store, snapshot.Stats) {
	t.Helper()
	store := streamtest.New()
	stats, err := d.Dump(context.Background(), store)
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	return store, stats
}

// TestPostgres runs the round trip and the failure cases against two
// PostgreSQL 15 clusters.
func TestPostgres(t *testing.T) {
	src, dst, srcURL := setup(t)
	ctx := context.Background()

	start := time.Now()
	store, stats := dump(t, &Dumper{URL: srcURL, Parallel: 3})
	t.Logf("dump in %v: %v", time.Since(start), stats)
	wantContent := contentOf(t, srcURL)
	wantCatalog := catalogOf(t, srcURL)

	t.Run("streams", func(t *testing.T) {
		r := store.Reader()
		var names []string
		for _, s := range r.Streams {
			names = append(names, s.Name)
		}
		if len(names) < 4 || names[0] != metaStream || names[1] != preDataStream ||
			names[len(names)-2] != postDataStream || names[len(names)-1] != sequencesStream {
			t.Fatalf("stream order: %v", names)
		}
		if !slices.Contains(names, `data/public.Odd%20Name%2Ewith%2Fslash.copy`) || !slices.Contains(names, "data/temporal.history_0.copy") {
			t.Errorf("data streams: %v", names)
		}
		if slices.Contains(names, "data/temporal.history.copy") {
			t.Error("a partitioned table has a data stream of its own")
		}
		for k, v := range map[string]int64{
			"tables": 12, "rows": 300 + 1847 + 2 + 50 + 3 + 3 + 1 + 5000 + 100 + 200000, "sequences": 4,
			"rows:appsmith.users": 300, "rows:public.no_columns": 3, "rows:public.empty": 0, "rows:temporal.events": 200000,
		} {
			if stats[k] != v {
				t.Errorf("stats[%s] = %d, want %d", k, stats[k], v)
			}
		}
		if stats["bytes"] < 10<<20 || stats["bytes:temporal.events"] < 8<<20 {
			t.Errorf("bytes: %d, events %d", stats["bytes"], stats["bytes:temporal.events"])
		}
		vstats, err := Verifier{}.Restore(ctx, store.Reader())
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"tables", "rows", "bytes", "rows:temporal.events", "bytes:public.realm"} {
			if vstats[k] != stats[k] {
				t.Errorf("verify stats[%s] = %d, dump %d", k, vstats[k], stats[k])
			}
		}
		pre, _ := store.Bytes(preDataStream)
		if !bytes.Contains(pre, []byte("OWNER TO fixture_owner")) || !bytes.Contains(pre, []byte("GRANT SELECT ON TABLE appsmith.users TO fixture_reader")) {
			t.Error("pre-data.sql lacks the source's owners and privileges")
		}
	})

	t.Run("round trip as a non-superuser", func(t *testing.T) {
		dst.newDB(t, "restored", restorer)
		url := dst.dbURL(t, "restored", restorer, restorerPassword)
		start := time.Now()
		r := store.Reader()
		rstats, err := (&Restorer{URL: url, Parallel: 2}).Restore(ctx, r)
		if err != nil {
			t.Fatalf("restore: %v", err)
		}
		t.Logf("restore in %v", time.Since(start))
		if !r.AllRead() {
			t.Error("not every stream was read to its end")
		}
		for _, k := range []string{"tables", "rows", "bytes", "rows:appsmith.users"} {
			if rstats[k] != stats[k] {
				t.Errorf("restore stats[%s] = %d, dump %d", k, rstats[k], stats[k])
			}
		}
		checkRestored(t, url, wantContent, wantCatalog)

		// Constraints and triggers work.
		for _, bad := range []string{
			"INSERT INTO appsmith.pages (owner, title) VALUES (gen_random_uuid(), 'orphan')",
			"INSERT INTO appsmith.users (id, email) VALUES (gen_random_uuid(), 'no-at-sign')",
			"INSERT INTO public.realm (id, name) VALUES ('master', 'again')",
		} {
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, bad); err == nil {
				t.Errorf("%s: accepted", bad)
			}
			conn.Close(ctx)
		}
		if got := queryStrings(t, url, "UPDATE appsmith.pages SET body = '{}' WHERE title = 'new' RETURNING updated IS NOT NULL"); !slices.Equal(got, []string{"true", "true"}) {
			t.Errorf("trigger: %v", got)
		}

		// The restored database has the snapshot's digests.
		digests := map[string]TableDigest{}
		if _, err := (Verifier{Digests: digests}).Restore(ctx, store.Reader()); err != nil {
			t.Fatal(err)
		}
		srcDigests, err := Digest(ctx, srcURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := Compare(digests, srcDigests); err != nil {
			t.Errorf("snapshot against source: %v", err)
		}
		execSQL(t, url, "DELETE FROM appsmith.pages WHERE title = 'new'; DELETE FROM temporal.tasks WHERE kind = 'new'; "+
			"DELETE FROM temporal.events WHERE amount IS NULL")
		dstDigests, err := Digest(ctx, url, strings.Split(fixtureSchemas, ","))
		if err != nil {
			t.Fatal(err)
		}
		if err := Compare(digests, dstDigests); err != nil {
			t.Errorf("snapshot against target: %v", err)
		}
		execSQL(t, url, "UPDATE appsmith.users SET balance = balance + 1 WHERE name IS NULL")
		dstDigests, err = Digest(ctx, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := Compare(digests, dstDigests); !errors.Is(err, snapshot.ErrCorrupt) || !strings.Contains(err.Error(), "appsmith.users: the rows differ") {
			t.Errorf("compare after an update: %v", err)
		}
	})

	t.Run("target not empty, then clean", func(t *testing.T) {
		dst.newDB(t, "twice", restorer)
		url := dst.dbURL(t, "twice", restorer, restorerPassword)
		if _, err := (&Restorer{URL: url}).Restore(ctx, store.Reader()); err != nil {
			t.Fatal(err)
		}
		execSQL(t, url, "UPDATE public.realm SET note = 'changed'")
		_, err := (&Restorer{URL: url}).Restore(ctx, store.Reader())
		if !errors.Is(err, snapshot.ErrTargetNotEmpty) || !strings.Contains(err.Error(), "appsmith.page_counts, appsmith.page_totals") {
			t.Fatalf("second restore: %v", err)
		}
		t.Log(err)
		if _, err := (&Restorer{URL: url, Clean: true}).Restore(ctx, store.Reader()); err != nil {
			t.Fatalf("restore with Clean: %v", err)
		}
		checkSame(t, wantContent, contentOf(t, url), "content")

		// A schema that pre-data creates is in the way too.
		dst.newDB(t, "hasschema", restorer)
		url = dst.dbURL(t, "hasschema", restorer, restorerPassword)
		execSQL(t, url, "CREATE SCHEMA temporal")
		if _, err := (&Restorer{URL: url}).Restore(ctx, store.Reader()); !errors.Is(err, snapshot.ErrTargetNotEmpty) || !strings.Contains(err.Error(), "schema temporal") {
			t.Fatalf("restore into a database with schema temporal: %v", err)
		}
	})

	t.Run("keep owners", func(t *testing.T) {
		execSQL(t, dst.url, "CREATE ROLE fixture_owner; CREATE ROLE fixture_reader")
		dst.newDB(t, "owned", "postgres")
		url := dst.dbURL(t, "owned", "postgres", "")
		if _, err := (&Restorer{URL: url, KeepOwners: true}).Restore(ctx, store.Reader()); err != nil {
			t.Fatal(err)
		}
		got := queryStrings(t, url, `SELECT tableowner, has_table_privilege('fixture_reader', 'appsmith.users', 'SELECT'),
			(SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'appsmith') FROM pg_tables WHERE schemaname = 'appsmith' AND tablename = 'users'`)
		if !slices.Equal(got, []string{"fixture_owner | true | fixture_owner"}) {
			t.Errorf("owner, privilege, schema owner: %v", got)
		}
	})

	t.Run("corrupted table stream", func(t *testing.T) {
		const stream = "data/appsmith.users.copy"
		for _, tc := range []struct {
			name string
			edit func([]byte) []byte
			want string
		}{
			{"missing field", func(b []byte) []byte {
				lines := bytes.SplitAfter(b, []byte("\n"))
				lines[4] = bytes.Replace(lines[4], []byte("\t"), nil, 1)
				return bytes.Join(lines, nil)
			}, "row 5: 14 fields, want 15"},
			{"truncated", func(b []byte) []byte { return b[:len(b)-len(endOfData)] }, "without the end-of-data line"},
			{"cut inside a row", func(b []byte) []byte { return b[:len(b)/2] }, "ends inside a row"},
			{"data after the end", func(b []byte) []byte { return append(b, "x\n"...) }, "data after the end-of-data line"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				bad := store.Reader().Edit(t, stream, tc.edit)
				name := "corrupt" + strings.NewReplacer(" ", "_", "-", "_").Replace(tc.name)
				dst.newDB(t, name, restorer)
				url := dst.dbURL(t, name, restorer, restorerPassword)
				_, err := (&Restorer{URL: url}).Restore(ctx, bad)
				checkCorrupt(t, err, "appsmith.users", tc.want)
				_, err = Verifier{}.Restore(ctx, store.Reader().Edit(t, stream, tc.edit))
				checkCorrupt(t, err, "appsmith.users", tc.want)
				if got := queryStrings(t, url, "SELECT count(*) FROM pg_namespace WHERE nspname = 'appsmith'"); !slices.Equal(got, []string{"0"}) {
					t.Error("a failed restore left the schema appsmith behind")
				}
			})
		}

		// A checksum mismatch reported by the stream reader is passed on.
		r := store.Reader()
		for i := range r.Streams {
			if r.Streams[i].Name == stream {
				r.Streams[i].EndErr = fmt.Errorf("checksum mismatch: %w", snapshot.ErrCorrupt)
			}
		}
		_, err := Verifier{}.Restore(ctx, r)
		checkCorrupt(t, err, stream, "checksum mismatch")

		// A missing data stream.
		_, err = Verifier{}.Restore(ctx, store.Reader().Edit(t, "data/public.realm.copy", func([]byte) []byte { return nil }))
		checkCorrupt(t, err, "public.realm", "no data stream")

		// Row content the decoder cannot see is found by the digests.
		digests := map[string]TableDigest{}
		changed := store.Reader().Edit(t, "data/public.realm.copy", func(b []byte) []byte { return bytes.Replace(b, []byte("Master"), []byte("Mister"), 1) })
		if _, err := (Verifier{Digests: digests}).Restore(ctx, changed); err != nil {
			t.Fatal(err)
		}
		srcDigests, err := Digest(ctx, srcURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		checkCorrupt(t, Compare(digests, srcDigests), "public.realm: the rows differ", "1 tables differ")
	})

	t.Run("interrupted", func(t *testing.T) {
		dst.newDB(t, "interrupted", restorer)
		url := dst.dbURL(t, "interrupted", restorer, restorerPassword)
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		_, err := (&Restorer{URL: url}).Restore(cctx, &cancelAt{StreamReader: store.Reader(), name: postDataStream, cancel: cancel})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("restore: %v", err)
		}
		if got := queryStrings(t, url, "SELECT count(*) FROM pg_class WHERE relnamespace::regnamespace::text IN ('appsmith', 'public', 'temporal')"); !slices.Equal(got, []string{"0"}) {
			t.Errorf("an interrupted restore left %s relations behind", got)
		}
	})

	t.Run("missing extension", func(t *testing.T) {
		bad := store.Reader().Edit(t, preDataStream, func(b []byte) []byte {
			return bytes.Replace(b, []byte("CREATE EXTENSION IF NOT EXISTS citext"),
				[]byte("CREATE EXTENSION IF NOT EXISTS no_such_ext WITH SCHEMA public;\nCREATE EXTENSION \"also-missing\";\nCREATE EXTENSION IF NOT EXISTS citext"), 1)
		})
		dst.newDB(t, "noext", restorer)
		url := dst.dbURL(t, "noext", restorer, restorerPassword)
		_, err := (&Restorer{URL: url}).Restore(ctx, bad)
		if err == nil || !strings.Contains(err.Error(), "lacks the extension no_such_ext, also-missing") {
			t.Fatalf("restore: %v", err)
		}
		t.Log(err)
		if got := queryStrings(t, url, "SELECT count(*) FROM pg_namespace WHERE nspname IN ('appsmith', 'temporal')"); !slices.Equal(got, []string{"0"}) {
			t.Error("a failed restore left schemas behind")
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		url := dst.dbURL(t, "postgres", restorer, "wrong-secret")
		_, err := (&Restorer{URL: url}).Restore(ctx, store.Reader())
		if err == nil || !strings.Contains(err.Error(), "password authentication failed") || strings.Contains(err.Error(), "wrong-secret") {
			t.Errorf("restore: %v", err)
		}
		_, err = (&Dumper{URL: url}).Dump(ctx, streamtest.New())
		if err == nil || !strings.Contains(err.Error(), "password authentication failed") || strings.Contains(err.Error(), "wrong-secret") {
			t.Errorf("dump: %v", err)
		}
	})

	t.Run("dump with a password", func(t *testing.T) {
		// pg_dump gets the password through the environment.
		dst.newDB(t, "withpw", restorer)
		url := dst.dbURL(t, "withpw", restorer, restorerPassword)
		execSQL(t, url, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")
		store, stats := dump(t, &Dumper{URL: url})
		if stats["rows:public.t"] != 2 {
			t.Errorf("stats: %v", stats)
		}
		pre, _ := store.Bytes(preDataStream)
		if !bytes.Contains(pre, []byte("CREATE TABLE public.t")) {
			t.Errorf("pre-data:\n%s", pre)
		}
	})

	t.Run("pg_dump missing or too old", func(t *testing.T) {
		_, err := (&Dumper{URL: srcURL, PgDump: "/nonexistent/pg_dump"}).Dump(ctx, streamtest.New())
		if err == nil || !strings.Contains(err.Error(), "pg_dump /nonexistent/pg_dump: not found") {
			t.Errorf("missing pg_dump: %v", err)
		}
		old := filepath.Join(t.TempDir(), "pg_dump")
		if err := os.WriteFile(old, []byte("#!/bin/sh\necho 'pg_dump (PostgreSQL) 13.4'\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		_, err = (&Dumper{URL: srcURL, PgDump: old}).Dump(ctx, streamtest.New())
		if err == nil || !strings.Contains(err.Error(), "pg_dump 13.4") || !strings.Contains(err.Error(), "older than the server (PostgreSQL 15.") {
			t.Errorf("old pg_dump: %v", err)
		}
		t.Log(err)
	})

	t.Run("schemas", func(t *testing.T) {
		store, stats := dump(t, &Dumper{URL: srcURL, Schemas: []string{"temporal"}})
		if stats["tables"] != 4 {
			t.Errorf("stats: %v", stats)
		}
		dst.newDB(t, "partial", restorer)
		url := dst.dbURL(t, "partial", restorer, restorerPassword)
		if _, err := (&Restorer{URL: url}).Restore(ctx, store.Reader()); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{}
		for k, v := range wantContent {
			if strings.HasPrefix(k, "temporal.") {
				want[k] = v
			}
		}
		checkSame(t, want, contentOf(t, url), "content")
		if _, err := (&Dumper{URL: srcURL, Schemas: []string{"temporal", "nope"}}).Dump(ctx, streamtest.New()); err == nil || !strings.Contains(err.Error(), "has no schema nope") {
			t.Errorf("missing schema: %v", err)
		}
	})

	t.Run("large objects", func(t *testing.T) {
		src.newDB(t, "blobs", "postgres")
		url := src.dbURL(t, "blobs", "postgres", "")
		execSQL(t, url, "SELECT lo_from_bytea(0, 'blob'); CREATE TABLE t (x int)")
		if _, err := (&Dumper{URL: url}).Dump(ctx, streamtest.New()); err == nil || !strings.Contains(err.Error(), "has 1 large objects") {
			t.Errorf("dump: %v", err)
		}
		dump(t, &Dumper{URL: url, Schemas: []string{"public"}})
	})

	t.Run("consistent under writes", func(t *testing.T) {
		// Transfers move 1 from account 1 to account 2 and log a row, so
		// in any consistent snapshot the log has 1000 - balance(1) rows.
		src.newDB(t, "busy", "postgres")
		url := src.dbURL(t, "busy", "postgres", "")
		execSQL(t, url, `CREATE TABLE acct (id int PRIMARY KEY, balance int);
			INSERT INTO acct VALUES (1, 1000), (2, 0);
			CREATE TABLE log (id serial, pad text);`)
		wctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			conn, err := pgx.Connect(wctx, url)
			if err != nil {
				done <- err
				return
			}
			defer conn.Close(context.Background())
			for wctx.Err() == nil {
				_, err := conn.Exec(wctx, `BEGIN; UPDATE acct SET balance = balance - 1 WHERE id = 1;
					UPDATE acct SET balance = balance + 1 WHERE id = 2; INSERT INTO log (pad) VALUES (repeat('p', 100)); COMMIT`)
				if err != nil && wctx.Err() == nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
		defer func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("writer: %v", err)
			}
		}()
		for i := 0; i < 5; i++ {
			time.Sleep(50 * time.Millisecond)
			store, stats := dump(t, &Dumper{URL: url, Parallel: 2})
			acct, _ := store.Bytes("data/public.acct.copy")
			var b1, b2 int64
			if _, err := fmt.Sscanf(string(acct), "1\t%d\n2\t%d\n", &b1, &b2); err != nil {
				if _, err := fmt.Sscanf(string(acct), "2\t%d\n1\t%d\n", &b2, &b1); err != nil {
					t.Fatalf("acct stream %q", acct)
				}
			}
			if logRows := stats["rows:public.log"]; b1+b2 != 1000 || logRows != 1000-b1 {
				t.Errorf("inconsistent snapshot: balances %d and %d, %d log rows", b1, b2, logRows)
			}
			// Sequences are not transactional: like pg_dump, Dump reads
			// them after the data, so they are at least the snapshot's.
			seqs, _ := store.Bytes(sequencesStream)
			var last int64
			if _, err := fmt.Sscanf(string(seqs), "SELECT pg_catalog.setval('\"public\".\"log_id_seq\"', %d, true);\n", &last); err != nil || last < stats["rows:public.log"] {
				t.Errorf("sequences.sql %q (%v), %d log rows", seqs, err, stats["rows:public.log"])
			}
		}
	})

	t.Run("parallel", func(t *testing.T) { testParallel(t, dst, store, stats, wantContent, wantCatalog) })
	t.Run("split tables", func(t *testing.T) { testSplit(t, src, dst, srcURL, store, stats, wantContent, wantCatalog) })
	t.Run("superuser objects", func(t *testing.T) { testSuperuserObjects(t, src, dst) })
	t.Run("extensions elsewhere", func(t *testing.T) { testExtensionsElsewhere(t, src, dst) })

	t.Run("export", func(t *testing.T) {
		checkExport(t, src, "exported", store.Reader(), stats, wantContent, wantCatalog)
	})
}

// checkRestored checks a restore of the fixture by the restorer role into
// the database at url: content and catalog as the source's, every table
// owned by the restorer, and sequences continuing past the restored
// maximum.
func checkRestored(t *testing.T, url string, wantContent map[string]string, wantCatalog []string) {
	t.Helper()
	checkSame(t, wantContent, contentOf(t, url), "content")
	checkSame(t, wantCatalog, catalogOf(t, url), "catalog")
	if owners := queryStrings(t, url, `SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = ANY(string_to_array($1, ','))`, fixtureSchemas); !slices.Equal(owners, []string{restorer}) {
		t.Errorf("owners %v, want %s", owners, restorer)
	}
	checkNextval(t, url, "appsmith.pages", "id", "INSERT INTO appsmith.pages (owner, title) SELECT id, 'new' FROM appsmith.users LIMIT 1 RETURNING id")
	checkNextval(t, url, "appsmith.pages", "position", "INSERT INTO appsmith.pages (owner, title) SELECT id, 'new' FROM appsmith.users LIMIT 1 RETURNING position")
	checkNextval(t, url, "temporal.tasks", "id", "INSERT INTO temporal.tasks (kind) VALUES ('new') RETURNING id")
	checkNextval(t, url, "temporal.events", "id", "INSERT INTO temporal.events (shard, at) VALUES (1, now()) RETURNING id")
}

// checkExport exports in as SQL, checks the export's stats against the
// dump's, runs the file with psql -f into a new database db of src (as
// postgres) and checks that it holds wantContent and wantCatalog.
func checkExport(t *testing.T, src cluster, db string, in snapshot.StreamReader, stats snapshot.Stats, wantContent map[string]string, wantCatalog []string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "dump.sql")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	estats, err := ExportSQL(context.Background(), in, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if estats["rows"] != stats["rows"] || estats["tables"] != stats["tables"] {
		t.Errorf("export stats %v, dump %v", estats, stats)
	}
	src.newDB(t, db, "postgres")
	url := src.dbURL(t, db, "postgres", "")
	out, err := exec.Command(psqlPath, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", file).CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	checkSame(t, wantContent, contentOf(t, url), "content")
	checkSame(t, wantCatalog, catalogOf(t, url), "catalog")
}

// cancelAt is a StreamReader that calls cancel when it opens the stream
// called name.
type cancelAt struct {
	snapshot.StreamReader
	name   string
	cancel func()
}

func (c *cancelAt) Next() (string, io.ReadCloser, error) {
	name, rc, err := c.StreamReader.Next()
	if name == c.name {
		c.cancel()
	}
	return name, rc, err
}

// checkCorrupt checks that err wraps snapshot.ErrCorrupt and mentions
// every one of want.
func checkCorrupt(t *testing.T, err error, want ...string) {
	t.Helper()
	if !errors.Is(err, snapshot.ErrCorrupt) {
		t.Errorf("error %v does not wrap ErrCorrupt", err)
		return
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}
}

// checkNextval runs insert, which returns the new value of column, and
// checks that it is above the column's maximum before.
func checkNextval(t *testing.T, url, table, column, insert string) {
	t.Helper()
	before, err := strconv.ParseInt(queryStrings(t, url, fmt.Sprintf("SELECT max(%s) FROM %s", column, table))[0], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	after, err := strconv.ParseInt(queryStrings(t, url, insert)[0], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if after <= before {
		t.Errorf("%s.%s: new value %d, restored maximum %d", table, column, after, before)
	}
}

// checkSame reports the differences between want and got.
func checkSame(t *testing.T, want, got any, what string) {
	t.Helper()
	var diffs []string
	switch w := want.(type) {
	case map[string]string:
		g := got.(map[string]string)
		for k, v := range w {
			if g[k] != v {
				diffs = append(diffs, fmt.Sprintf("%s: %q, want %q", k, g[k], v))
			}
		}
		for k, v := range g {
			if _, ok := w[k]; !ok {
				diffs = append(diffs, fmt.Sprintf("%s: unexpected %q", k, v))
			}
		}
	case []string:
		g := got.([]string)
		for _, v := range w {
			if !slices.Contains(g, v) {
				diffs = append(diffs, "missing: "+v)
			}
		}
		for _, v := range g {
			if !slices.Contains(w, v) {
				diffs = append(diffs, "unexpected: "+v)
			}
		}
	}
	slices.Sort(diffs)
	if len(diffs) > 0 {
		t.Errorf("%s differs:\n%s", what, strings.Join(diffs, "\n"))
	}
}
