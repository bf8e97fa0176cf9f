package mongo

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

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
