package mongo

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/livetest"
	"github.com/stackport/stackport/internal/streamtest"
	"github.com/stackport/stackport/snapshot"
)

// TestPointInTime dumps a replica set while a writer runs, with more
// collections than Parallel, and restores the snapshot into FerretDB (which
// has no applyOps): through a repository-like reader (the oplog read
// ahead), through a Pipe (as migrate does), renamed, with Drop over a
// non-empty target and with the flavor forced to DocumentDB. Each target is
// checked by plain queries to be at one instant of the writer.
func TestPointInTime(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, srcURI := lab.Mongo(t)
	src := connectT(t, srcURI)
	livetest.SeedMongo(t, ctx, src.Database(livetest.MongoDB))

	w := livetest.StartMongoWriter(t, srcURI)
	w.WaitRounds(t, 20)
	store := streamtest.New()
	stats, err := (&Dumper{URI: srcURI, Parallel: 2, Log: quiet}).Dump(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	during := w.Rounds.Load()
	w.WaitRounds(t, during+5) // writes after the dump: not in the snapshot
	w.Halt(t)
	if stats["oplog_entries"] < 4 || stats["consistency_none"] != 0 {
		t.Fatalf("the dump captured %d oplog entries (consistency_none %d): the writer did not run during it", stats["oplog_entries"], stats["consistency_none"])
	}
	t.Logf("dump: %d oplog entries, %d rounds done at its end", stats["oplog_entries"], during)

	restoreCheck := func(t *testing.T, r *Restorer, in snapshot.StreamReader, db string) {
		t.Helper()
		rstats, err := r.Restore(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		if rstats["oplog_applied"] == 0 {
			t.Errorf("nothing replayed: %v", rstats)
		}
		client := connectT(t, r.URI)
		last := livetest.CheckMongo(t, ctx, client.Database(db))
		if last < 1 || last > during+1 {
			t.Errorf("restored to round %d; the dump ended after round %d", last, during)
		}
		for c := range livetest.PadColls {
			if n, err := client.Database(db).Collection(fmt.Sprintf("pad%d", c)).CountDocuments(ctx, bson.D{}); err != nil || n != livetest.PadDocs {
				t.Errorf("pad%d: %d documents, %v", c, n, err)
			}
		}
		// verify --against-mongo: the documents the oplog did not
		// touch match the snapshot's data; those it touched are left out.
		if _, err := (&Checker{URI: r.URI, NSFrom: r.NSFrom, NSTo: r.NSTo, Log: quiet}).Restore(ctx, store.Reader()); err != nil {
			t.Errorf("Checker: %v", err)
		}
		t.Logf("restored to round %d, %d operations replayed", last, rstats["oplog_applied"])
	}

	t.Run("repository", func(t *testing.T) {
		_, dstURI := lab.Mongo(t)
		restoreCheck(t, &Restorer{URI: dstURI, Parallel: 2, Log: quiet}, store.Reader(), livetest.MongoDB)
	})
	t.Run("pipe", func(t *testing.T) {
		_, dstURI := lab.Mongo(t)
		pw, pr := snapshot.Pipe(ctx)
		go func() {
			r := store.Reader()
			for {
				name, rc, err := r.Next()
				if err != nil {
					pw.Close(nil)
					return
				}
				w, _ := pw.Create(name)
				buf := make([]byte, 64<<10)
				for {
					n, rerr := rc.Read(buf)
					if n > 0 {
						if _, err := w.Write(buf[:n]); err != nil {
							break
						}
					}
					if rerr != nil {
						break
					}
				}
				rc.Close()
				w.Close()
			}
		}()
		restoreCheck(t, &Restorer{URI: dstURI, Parallel: 2, Log: quiet}, pr, livetest.MongoDB)
	})
	t.Run("renamed, drop, documentdb", func(t *testing.T) {
		_, dstURI := lab.Mongo(t)
		dst := connectT(t, dstURI)
		if _, err := dst.Database("pit_prod").Collection("ins").InsertOne(ctx, bson.D{{Key: "_id", Value: int64(-1)}}); err != nil {
			t.Fatal(err)
		}
		r := &Restorer{URI: dstURI, NSFrom: livetest.MongoDB, NSTo: "pit_prod", Drop: true, Flavor: FlavorDocumentDB, Parallel: 2, Log: quiet}
		restoreCheck(t, r, store.Reader(), "pit_prod")
	})
}

// TestReplayRefusedBeforeWriting: an oplog entry that cannot be replayed
// as ordinary writes stops a restore before anything is written, when the
// reader can open the oplog ahead (a repository).
func TestReplayRefusedBeforeWriting(t *testing.T) {
	ctx := context.Background()
	_, dstURI := lab.Mongo(t)
	ns := namespace{"appsmith", "user"}
	meta := &collection{ns: ns, meta: &metadata{Options: emptyDoc, Type: typeCollection, CollectionName: "user"}}
	docs := map[namespace][]bson.Raw{ns: {marshal(t, bson.D{{Key: "_id", Value: 1}})}}
	oplog := []bson.Raw{
		entry(t, 11, "i", "appsmith.user", bson.D{{Key: "_id", Value: 2}}),
		entry(t, 12, "c", "appsmith.$cmd", bson.D{{Key: "convertToCapped", Value: "user"}, {Key: "size", Value: 1 << 20}}),
	}
	store := streamtest.New()
	writeSnapshot(t, store, []*collection{meta}, docs, oplog)
	_, err := (&Restorer{URI: dstURI, Log: quiet}).Restore(ctx, store.Reader())
	if !errors.Is(err, ErrIncompatible) {
		t.Fatalf("err = %v, want ErrIncompatible", err)
	}
	t.Log(err)
	names, lerr := connectT(t, dstURI).Database("appsmith").ListCollectionNames(ctx, bson.D{})
	if lerr != nil || len(names) != 0 {
		t.Errorf("the target holds %v (%v): something was written", names, lerr)
	}
}

// TestReplayCommands replays oplog commands and updates that FerretDB does
// not log itself (it logs no DDL and only whole-document updates) into a
// FerretDB: a rename over a collection read after it, a drop, a create, an
// index created and one dropped (built after the replay), a $v 2 diff with
// a nested field and a shortened array, skipped index-build bookkeeping;
// and a write the target refuses, named by namespace, operation and offset.
func TestReplayCommands(t *testing.T) {
	ctx := context.Background()
	_, dstURI := lab.Mongo(t)
	dst := connectT(t, dstURI)
	a, b, c := plainCollection("app", "a"), plainCollection("app", "b"), plainCollection("app", "c")
	d := func(v bson.D) bson.Raw { return marshal(t, v) }
	docs := map[namespace][]bson.Raw{
		a.ns: {d(bson.D{{Key: "_id", Value: 1}, {Key: "arr", Value: bson.A{1, 2, 3}}, {Key: "p", Value: bson.D{{Key: "q", Value: 1}}}}), d(bson.D{{Key: "_id", Value: 2}})},
		b.ns: {d(bson.D{{Key: "_id", Value: 1}})},
		// c: read after the rename, with a document the rename replaces.
		c.ns: {d(bson.D{{Key: "_id", Value: 9}})},
	}
	cmd := func(ts uint32, o bson.D) bson.Raw { return entry(t, ts, "c", "app.$cmd", o) }
	oplog := []bson.Raw{
		entry(t, 11, "i", "app.a", bson.D{{Key: "_id", Value: 3}}),
		cmd(12, bson.D{{Key: "createIndexes", Value: "a"}, {Key: "v", Value: 2}, {Key: "key", Value: bson.D{{Key: "p.q", Value: 1}}}, {Key: "name", Value: "pq"}}),
		cmd(13, bson.D{{Key: "createIndexes", Value: "a"}, {Key: "v", Value: 2}, {Key: "key", Value: bson.D{{Key: "gone", Value: 1}}}, {Key: "name", Value: "gone_1"}}),
		cmd(14, bson.D{{Key: "startIndexBuild", Value: "a"}, {Key: "indexes", Value: bson.A{}}}),
		cmd(15, bson.D{{Key: "renameCollection", Value: "app.a"}, {Key: "to", Value: "app.c"}, {Key: "stayTemp", Value: false}}),
		entry(t, 16, "i", "app.c", bson.D{{Key: "_id", Value: 4}}),
		cmd(17, bson.D{{Key: "dropIndexes", Value: "c"}, {Key: "index", Value: "gone_1"}}),
		cmd(18, bson.D{{Key: "drop", Value: "b"}}),
		cmd(19, bson.D{{Key: "create", Value: "e"}}),
		entry(t, 20, "u", "app.c", bson.D{{Key: "$v", Value: 2}, {Key: "diff", Value: bson.D{
			{Key: "i", Value: bson.D{{Key: "x", Value: 5}}},
			{Key: "sp", Value: bson.D{{Key: "u", Value: bson.D{{Key: "q", Value: 2}}}}},
			{Key: "sarr", Value: bson.D{{Key: "a", Value: true}, {Key: "u0", Value: 7}}},
		}}}, bson.E{Key: "o2", Value: bson.D{{Key: "_id", Value: 1}}}),
		entry(t, 21, "d", "app.c", bson.D{{Key: "_id", Value: 2}}),
	}
	store := streamtest.New()
	writeSnapshot(t, store, []*collection{a, b, c}, docs, oplog)
	stats, err := (&Restorer{URI: dstURI, Log: quiet}).Restore(ctx, store.Reader())
	if err != nil {
		t.Fatal(err)
	}
	if stats["oplog_applied"] != 10 || stats["oplog_skipped"] != 1 {
		t.Errorf("stats %v", stats)
	}
	db := dst.Database("app")
	names, err := db.ListCollectionNames(ctx, bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"c", "e"}) {
		t.Errorf("collections %v, want [c e]", names)
	}
	cur, err := db.Collection("c").Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		t.Fatal(err)
	}
	var got []bson.Raw
	for cur.Next(ctx) {
		got = append(got, slices.Clone(cur.Current))
	}
	want := []bson.Raw{
		d(bson.D{{Key: "_id", Value: 1}, {Key: "arr", Value: bson.A{7, 2, 3}}, {Key: "p", Value: bson.D{{Key: "q", Value: 2}}}, {Key: "x", Value: 5}}),
		d(bson.D{{Key: "_id", Value: 3}}), d(bson.D{{Key: "_id", Value: 4}}),
	}
	if len(got) != len(want) {
		t.Fatalf("app.c holds %v, want %v", got, want)
	}
	for i := range want {
		if !bytesEqual(got[i], want[i]) {
			t.Errorf("app.c document %d: %v, want %v", i, got[i], want[i])
		}
	}
	specs, err := db.Collection("c").Indexes().ListSpecifications(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var idx []string
	for _, s := range specs {
		idx = append(idx, s.Name)
	}
	slices.Sort(idx)
	if !slices.Equal(idx, []string{"_id_", "pq"}) {
		t.Errorf("indexes of app.c: %v, want [_id_ pq]", idx)
	}

	t.Run("shortened array refused on FerretDB", func(t *testing.T) {
		_, uri := lab.Mongo(t)
		shorten := entry(t, 11, "u", "app.a", bson.D{{Key: "$v", Value: 2}, {Key: "diff", Value: bson.D{
			{Key: "sarr", Value: bson.D{{Key: "a", Value: true}, {Key: "l", Value: 2}}}}}}, bson.E{Key: "o2", Value: bson.D{{Key: "_id", Value: 1}}})
		store := streamtest.New()
		writeSnapshot(t, store, []*collection{a}, docs, []bson.Raw{shorten})
		_, err := (&Restorer{URI: uri, Log: quiet}).Restore(ctx, store.Reader())
		if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "shortens an array") {
			t.Fatalf("err = %v", err)
		}
		if names, _ := lab.MongoClient(t, uri).Database("app").ListCollectionNames(ctx, bson.D{}); len(names) != 0 {
			t.Errorf("the target holds %v", names)
		}
	})
	t.Run("refused write", func(t *testing.T) {
		_, uri := lab.Mongo(t)
		// An existing empty collection keeps its unique index, so the
		// second insert of the same email is refused by the target.
		u := lab.MongoClient(t, uri).Database("app").Collection("u")
		if _, err := u.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "email", Value: 1}}, Options: options.Index().SetUnique(true)}); err != nil {
			t.Fatal(err)
		}
		first := entry(t, 11, "i", "app.u", bson.D{{Key: "_id", Value: 1}, {Key: "email", Value: "a@x"}})
		second := entry(t, 12, "i", "app.u", bson.D{{Key: "_id", Value: 2}, {Key: "email", Value: "a@x"}})
		store := streamtest.New()
		writeSnapshot(t, store, []*collection{plainCollection("app", "u")}, nil, []bson.Raw{first, second})
		_, err := (&Restorer{URI: uri, Log: quiet}).Restore(ctx, store.Reader())
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("the insert of app.u (entry at byte offset %d) failed", len(first))) ||
			!strings.Contains(err.Error(), "not at one point in time") {
			t.Fatalf("err = %v", err)
		}
		t.Log(err)
	})
}

// TestReplayManyUpdates replays 300 updates of existing documents of one
// collection into FerretDB, which waits forever on an update command of
// about 100 matching statements (one backend connection each): the replay
// bounds its bulk writes there.
func TestReplayManyUpdates(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, uri := lab.Mongo(t)
	c := plainCollection("app", "u")
	var docs, oplog []bson.Raw
	for i := range 300 {
		docs = append(docs, marshal(t, bson.D{{Key: "_id", Value: i}, {Key: "n", Value: 0}}))
		oplog = append(oplog, entry(t, uint32(11+i), "u", "app.u", bson.D{{Key: "$v", Value: 1}, {Key: "$set", Value: bson.D{{Key: "n", Value: i + 1}}}},
			bson.E{Key: "o2", Value: bson.D{{Key: "_id", Value: i}}}))
	}
	store := streamtest.New()
	writeSnapshot(t, store, []*collection{c}, map[namespace][]bson.Raw{c.ns: docs}, oplog)
	stats, err := (&Restorer{URI: uri, Log: quiet}).Restore(ctx, store.Reader())
	if err != nil || stats["oplog_applied"] != 300 {
		t.Fatalf("restore: %v, %v", stats, err)
	}
	cur, err := lab.MongoClient(t, uri).Database("app").Collection("u").Find(ctx, bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	held := 0
	for cur.Next(ctx) {
		id, _ := cur.Current.Lookup("_id").AsInt64OK()
		n, _ := cur.Current.Lookup("n").AsInt64OK()
		if n == id+1 {
			held++
		}
	}
	if held != 300 {
		t.Errorf("%d of 300 documents hold their update", held)
	}
}
