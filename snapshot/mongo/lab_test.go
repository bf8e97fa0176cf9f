package mongo

import (
	"context"
	"errors"
	"github.com/stackport/stackport/internal/streamtest"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/snapshot"
)

func connectT(t testing.TB, uri string) *mongo.Client {
	t.Helper()
	c, err := Connect(context.Background(), uri, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Disconnect(context.Background(), c) })
	return c
}

// streams returns a reader over the committed streams of store, with fn
// applied to each stream's content.
func streams(store *streamtest.Store, fn func(name string, data []byte) []byte) *streamtest.Reader {
	r := store.Reader()
	for i := range r.Streams {
		r.Streams[i].Data = fn(r.Streams[i].Name, r.Streams[i].Data)
	}
	return r
}

// TestLab dumps Appsmith-like data from one FerretDB and restores it into
// another: as is, refused into a non-empty target, with Drop, renamed, and
// from a damaged snapshot.
func TestLab(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	_, srcURI := lab.Mongo(t)
	_, dstURI := lab.Mongo(t)
	src, dst := connectT(t, srcURI), connectT(t, dstURI)

	seedAppsmith(t, ctx, src.Database("appsmith"))
	if _, err := src.Database("other").Collection("odd name%").InsertOne(ctx, bson.D{{Key: "_id", Value: "x"}}); err != nil {
		t.Fatal(err)
	}
	want := readDB(t, ctx, src.Database("appsmith"))
	wantOther := readDB(t, ctx, src.Database("other"))

	store := streamtest.New()
	stats, err := (&Dumper{URI: srcURI, Log: quiet}).Dump(ctx, store)
	if err != nil {
		t.Fatal(err)
	}

	// A snapshot of appsmith alone, for the restores under another name.
	one := streamtest.New()
	ostats, err := (&Dumper{URI: srcURI, DBs: []string{"appsmith"}, Parallel: 2, Log: quiet}).Dump(ctx, one)
	if err != nil {
		t.Fatal(err)
	}
	if ostats["collections"] != 9 || ostats["documents:other.odd name%"] != 0 {
		t.Errorf("DBs: stats %v", ostats)
	}

	t.Run("streams", func(t *testing.T) {
		var meta, data []string
		for _, name := range store.Names() {
			switch {
			case strings.HasSuffix(name, metadataExt):
				if len(data) > 0 {
					t.Errorf("metadata stream %s after data streams", name)
				}
				meta = append(meta, name)
			case strings.HasSuffix(name, dataExt) && name != oplogStream:
				data = append(data, strings.TrimSuffix(name, dataExt))
			}
		}
		if !slices.IsSorted(meta) || len(meta) != 10 {
			t.Errorf("metadata streams %v", meta)
		}
		if !slices.Contains(store.Names(), oplogStream) {
			t.Error("no oplog.bson from a replica set")
		}
		slices.Sort(data)
		for i := range meta {
			meta[i] = strings.TrimSuffix(meta[i], metadataExt)
		}
		if !slices.Equal(meta, data) {
			t.Errorf("data streams %v, want %v", data, meta)
		}
		if !slices.Contains(meta, "other/odd%20name%25") {
			t.Errorf("no stream for other.odd name%%: %v", meta)
		}
	})

	t.Run("stats", func(t *testing.T) {
		total := int64(1) // other.odd name%
		for _, c := range want {
			total += int64(len(c.docs))
		}
		for k, v := range map[string]int64{
			"collections": 10, "views": 0, "documents": total, "consistency_none": 0, "oplog_entries": 0,
			"indexes": 6, "indexes:appsmith.user": 2, "documents:appsmith.newAction": fixtureSize,
			"documents:appsmith.application": 20, "documents:other.odd name%": 1,
		} {
			if stats[k] != v {
				t.Errorf("stats[%s] = %d, want %d", k, stats[k], v)
			}
		}
		if stats["bytes:appsmith.application"] < 15<<20 {
			t.Errorf("application holds %d bytes, want the 15 MiB document", stats["bytes:appsmith.application"])
		}
		// Verifier counts the same.
		r := store.Reader()
		vstats, err := Verifier{}.Restore(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		if !r.AllRead() {
			t.Error("Verifier did not read every stream")
		}
		dstats := maps.Clone(stats)
		delete(dstats, "consistency_none")
		delete(dstats, "oplog_end")
		if !maps.Equal(vstats, dstats) {
			t.Errorf("Verifier stats %v, Dumper stats %v", vstats, dstats)
		}
	})

	t.Run("restore", func(t *testing.T) {
		r := store.Reader()
		rstats, err := (&Restorer{URI: dstURI, Parallel: 3, Log: quiet}).Restore(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		if !r.AllRead() {
			t.Error("Restore did not read every stream")
		}
		if rstats["documents"] != stats["documents"] || rstats["dropped"] != 0 {
			t.Errorf("stats %v", rstats)
		}
		compareDBs(t, want, readDB(t, ctx, dst.Database("appsmith")))
		compareDBs(t, wantOther, readDB(t, ctx, dst.Database("other")))
	})

	t.Run("refuse non-empty target", func(t *testing.T) {
		_, err := (&Restorer{URI: dstURI, Log: quiet}).Restore(ctx, store.Reader())
		if !errors.Is(err, snapshot.ErrTargetNotEmpty) {
			t.Fatalf("err = %v, want ErrTargetNotEmpty", err)
		}
		for _, ns := range []string{"appsmith.user", "appsmith.newAction", "other.odd name%"} {
			if !strings.Contains(err.Error(), ns) {
				t.Errorf("error %q does not name %s", err, ns)
			}
		}
		// Nothing was written.
		compareDBs(t, want, readDB(t, ctx, dst.Database("appsmith")))
	})

	t.Run("drop", func(t *testing.T) {
		users := dst.Database("appsmith").Collection("user")
		if _, err := users.InsertOne(ctx, bson.D{{Key: "_id", Value: "intruder"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := users.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "intruder", Value: 1}}}); err != nil {
			t.Fatal(err)
		}
		rstats, err := (&Restorer{URI: dstURI, Drop: true, Log: quiet}).Restore(ctx, store.Reader())
		if err != nil {
			t.Fatal(err)
		}
		if rstats["dropped"] != 10 {
			t.Errorf("dropped %d collections, want 10", rstats["dropped"])
		}
		compareDBs(t, want, readDB(t, ctx, dst.Database("appsmith")))
		compareDBs(t, wantOther, readDB(t, ctx, dst.Database("other")))
	})

	t.Run("rename", func(t *testing.T) {
		_, err := (&Restorer{URI: dstURI, NSFrom: "appsmith.*", NSTo: "appsmith_prod.*", Log: quiet}).Restore(ctx, one.Reader())
		if err != nil {
			t.Fatal(err)
		}
		compareDBs(t, want, readDB(t, ctx, dst.Database("appsmith_prod")))

		_, err = (&Restorer{URI: dstURI, NSFrom: "nosuch", NSTo: "x", Log: quiet}).Restore(ctx, one.Reader())
		if err == nil || !strings.Contains(err.Error(), "cannot rename database nosuch: the snapshot holds appsmith") {
			t.Errorf("rename of a missing database: %v", err)
		}
	})

	t.Run("existing empty collection", func(t *testing.T) {
		if err := dst.Database("appsmith_empty").CreateCollection(ctx, "user"); err != nil {
			t.Fatal(err)
		}
		_, err := (&Restorer{URI: dstURI, NSFrom: "appsmith", NSTo: "appsmith_empty", Log: quiet}).Restore(ctx, one.Reader())
		if err != nil {
			t.Fatal(err)
		}
		compareDBs(t, want, readDB(t, ctx, dst.Database("appsmith_empty")))
	})

	t.Run("resume", func(t *testing.T) {
		// A first restore reports each collection loaded.
		var mu sync.Mutex
		loaded := map[string]int64{}
		starting := 0
		r := &Restorer{URI: dstURI, NSFrom: "appsmith", NSTo: "appsmith_resume", Log: quiet,
			Starting: func(context.Context) error { starting++; return nil },
			Loaded: func(db, coll string, docs int64) {
				mu.Lock()
				defer mu.Unlock()
				loaded[db+"."+coll] += docs
			}}
		if _, err := r.Restore(ctx, one.Reader()); err != nil {
			t.Fatal(err)
		}
		if starting != 1 || len(loaded) != 9 || loaded["appsmith.newAction"] != fixtureSize || loaded["appsmith.application"] != 20 {
			t.Fatalf("starting %d, loaded %v", starting, loaded)
		}
		// Interrupted half way: newAction is gone again. A restore that
		// skips the others loads it alone; the skipped keep their
		// documents and indexes.
		if err := dst.Database("appsmith_resume").Collection("newAction").Drop(ctx); err != nil {
			t.Fatal(err)
		}
		skip := func(db, coll string) bool { return db == "appsmith" && coll != "newAction" }
		part := streamtest.New()
		pstats, err := (&Dumper{URI: srcURI, DBs: []string{"appsmith"}, SkipData: skip, Log: quiet}).Dump(ctx, part)
		if err != nil {
			t.Fatal(err)
		}
		if pstats["collections"] != 9 || pstats["documents"] != fixtureSize || slices.Contains(part.Names(), "appsmith/user.bson") {
			t.Errorf("SkipData: stats %v, streams %v", pstats, part.Names())
		}
		clear(loaded)
		r.Skip = skip
		if _, err := r.Restore(ctx, part.Reader()); err != nil {
			t.Fatal(err)
		}
		if len(loaded) != 1 || loaded["appsmith.newAction"] != fixtureSize {
			t.Errorf("loaded %v, want newAction alone", loaded)
		}
		compareDBs(t, want, readDB(t, ctx, dst.Database("appsmith_resume")))
		// Skip also discards the data streams of a full snapshot.
		if err := dst.Database("appsmith_resume").Collection("newAction").Drop(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Restore(ctx, one.Reader()); err != nil {
			t.Fatal(err)
		}
		compareDBs(t, want, readDB(t, ctx, dst.Database("appsmith_resume")))
	})

	t.Run("corrupt stream", func(t *testing.T) {
		var cut int
		r := streams(one, func(name string, data []byte) []byte {
			if name == "appsmith/newAction.bson" {
				cut = len(data) - 10
				return data[:cut]
			}
			return data
		})
		_, err := (&Restorer{URI: dstURI, NSFrom: "appsmith", NSTo: "appsmith_bad", Log: quiet}).Restore(ctx, r)
		if !errors.Is(err, snapshot.ErrCorrupt) {
			t.Fatalf("err = %v, want ErrCorrupt", err)
		}
		if !strings.Contains(err.Error(), "collection appsmith.newAction") || !strings.Contains(err.Error(), "byte offset") ||
			!strings.Contains(err.Error(), "truncated document") {
			t.Errorf("error %q does not name the collection and the offset", err)
		}
	})

	t.Run("bad connections", func(t *testing.T) {
		_, err := (&Dumper{URI: "mongodb://u:secret@127.0.0.1:1/?serverSelectionTimeoutMS=300", Log: quiet}).Dump(ctx, streamtest.New())
		if err == nil || !strings.Contains(err.Error(), "cannot reach") || strings.Contains(err.Error(), "secret") {
			t.Errorf("unreachable: %v", err)
		}
		_, err = (&Restorer{URI: "http://example.com", Log: quiet}).Restore(ctx, store.Reader())
		if err == nil {
			t.Error("restore with an invalid URI succeeded")
		}
		_, err = (&Dumper{URI: srcURI, DBs: []string{"admin"}, Log: quiet}).Dump(ctx, streamtest.New())
		if err == nil || !strings.Contains(err.Error(), "admin") {
			t.Errorf("dump of admin: %v", err)
		}
		_, err = (&Dumper{URI: srcURI, TLSCAFile: "/nonexistent.pem", Log: quiet}).Dump(ctx, streamtest.New())
		if err == nil || !strings.Contains(err.Error(), "TLS CA file") {
			t.Errorf("missing CA file: %v", err)
		}
	})
}
