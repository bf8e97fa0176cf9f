package postgres

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/stackport/stackport/internal/streamtest"
	"github.com/stackport/stackport/snapshot"
)

// testSplit dumps the fixture with tables split into parts (a threshold
// of one block) and checks that every way of reading the snapshot gets
// each table's rows once: restores in one transaction and with loaders,
// verify and its digests, the SQL export. whole and wholeStats are the
// snapshot of the same database without parts (the format of older
// stackport versions), which the other tests restore.
func testSplit(t *testing.T, src, dst cluster, srcURL string, whole *streamtest.Store, wholeStats snapshot.Stats, wantContent map[string]string, wantCatalog []string) {
	ctx := context.Background()
	store, stats := dump(t, &Dumper{URL: srcURL, Parallel: 3, SplitBytes: 8192})

	readMetaOf := func(s *streamtest.Store) *meta {
		t.Helper()
		b, ok := s.Bytes(metaStream)
		if !ok {
			t.Fatal("no meta.json")
		}
		var m meta
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return &m
	}
	t.Run("streams", func(t *testing.T) {
		if b, _ := whole.Bytes(metaStream); strings.Contains(string(b), `"parts"`) {
			t.Errorf("a snapshot without split tables lists parts: %s", b)
		}
		m := readMetaOf(store)
		parts := map[string][]string{}
		for _, tb := range m.Tables {
			parts[tb.key()] = tb.Parts
		}
		if want := []string{"data/temporal.events.1.copy", "data/temporal.events.2.copy"}; !slices.Equal(parts["temporal.events"], want) {
			t.Errorf("parts of temporal.events: %v, want %v", parts["temporal.events"], want)
		}
		if len(parts["appsmith.users"]) != 2 { // a generated column: the parts list the others
			t.Errorf("parts of appsmith.users: %v", parts["appsmith.users"])
		}
		if len(parts["public.no_columns"]) != 0 {
			t.Errorf("a table without columns was split: %v", parts["public.no_columns"])
		}
		for _, name := range []string{"data/temporal.events.copy", "data/temporal.events.1.copy", "data/temporal.events.2.copy"} {
			if b, _ := store.Bytes(name); len(b) < 1<<20 {
				t.Errorf("%s: %d bytes", name, len(b))
			}
		}
		t.Logf("parts: %v", parts)
		for _, k := range []string{"tables", "rows", "bytes", "rows:temporal.events", "bytes:temporal.events", "rows:appsmith.users", "bytes:appsmith.users", "rows:public.no_columns"} {
			if stats[k] != wholeStats[k] {
				t.Errorf("stats[%s] = %d, without parts %d", k, stats[k], wholeStats[k])
			}
		}
	})

	t.Run("verify", func(t *testing.T) {
		digests := map[string]TableDigest{}
		vstats, err := (Verifier{Digests: digests}).Restore(ctx, store.Reader())
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"tables", "rows", "bytes", "rows:temporal.events", "bytes:appsmith.users"} {
			if vstats[k] != stats[k] {
				t.Errorf("verify stats[%s] = %d, dump %d", k, vstats[k], stats[k])
			}
		}
		srcDigests, err := Digest(ctx, srcURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := Compare(digests, srcDigests); err != nil {
			t.Errorf("snapshot with parts against source: %v", err)
		}
	})

	for _, loaders := range []int{1, 3} {
		t.Run(map[int]string{1: "restore in one transaction", 3: "restore with loaders"}[loaders], func(t *testing.T) {
			name := map[int]string{1: "splitone", 3: "splitloaders"}[loaders]
			dst.newDB(t, name, restorer)
			url := dst.dbURL(t, name, restorer, restorerPassword)
			r := store.Reader()
			rstats, err := (&Restorer{URL: url, Loaders: loaders}).Restore(ctx, r)
			if err != nil {
				t.Fatalf("restore: %v", err)
			}
			if !r.AllRead() {
				t.Error("not every stream was read to its end")
			}
			for _, k := range []string{"tables", "rows", "bytes", "rows:temporal.events", "bytes:temporal.events", "rows:appsmith.users"} {
				if rstats[k] != stats[k] {
					t.Errorf("restore stats[%s] = %d, dump %d", k, rstats[k], stats[k])
				}
			}
			checkSame(t, wantContent, contentOf(t, url), "content")
			checkSame(t, wantCatalog, catalogOf(t, url), "catalog")
		})
	}

	t.Run("missing and extra parts", func(t *testing.T) {
		dst.newDB(t, "splitcorrupt", restorer)
		url := dst.dbURL(t, "splitcorrupt", restorer, restorerPassword)
		for _, loaders := range []int{1, 3} {
			missing := store.Reader().Edit(t, "data/temporal.events.1.copy", func([]byte) []byte { return nil })
			_, err := (&Restorer{URL: url, Loaders: loaders}).Restore(ctx, missing)
			checkCorrupt(t, err, "no data stream for table temporal.events (data/temporal.events.1.copy)")

			extra := store.Reader()
			i := slices.IndexFunc(extra.Streams, func(s streamtest.Stream) bool { return s.Name == postDataStream })
			extra.Streams = slices.Insert(extra.Streams, i, streamtest.Stream{Name: "data/temporal.events.3.copy", Data: []byte(endOfData)})
			_, err = (&Restorer{URL: url, Loaders: loaders}).Restore(ctx, extra)
			checkCorrupt(t, err, "data/temporal.events.3.copy", "unexpected stream")

			twice := store.Reader()
			i = slices.IndexFunc(twice.Streams, func(s streamtest.Stream) bool { return s.Name == postDataStream })
			twice.Streams = slices.Insert(twice.Streams, i, streamtest.Stream{Name: "data/temporal.events.2.copy", Data: []byte(endOfData)})
			_, err = (&Restorer{URL: url, Loaders: loaders}).Restore(ctx, twice)
			checkCorrupt(t, err, "data/temporal.events.2.copy", "unexpected stream")

			bad := store.Reader().Edit(t, "data/appsmith.users.2.copy", func(b []byte) []byte { return append([]byte("x\n"), b...) })
			_, err = (&Restorer{URL: url, Loaders: loaders}).Restore(ctx, bad)
			checkCorrupt(t, err, "data/appsmith.users.2.copy", "table appsmith.users: row 1")
			if got := restoredObjects(t, url); len(got) != 0 {
				t.Errorf("left after the failed restore: %v", got)
			}
		}
		_, err := (Verifier{}).Restore(ctx, store.Reader().Edit(t, "data/temporal.events.2.copy", func([]byte) []byte { return nil }))
		checkCorrupt(t, err, "no data stream for table temporal.events (data/temporal.events.2.copy)")
	})

	t.Run("export", func(t *testing.T) {
		checkExport(t, src, "exportedsplit", store.Reader(), stats, wantContent, wantCatalog)
	})
}
