package mongo

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/streamtest"
	"github.com/stackport/stackport/snapshot"
)

// The collections of the point-in-time writer: round i inserts {_id: i}
// into ins, sets ctr's counter to i, deletes {_id: i} from del and sets
// round i on document i%updDocs of upd, in that order. pad collections make
// the dump long, so that the collections are read at different moments.
const (
	pitDB    = "pit"
	updDocs  = 50
	delDocs  = 5000 // more than the rounds of a test
	padColls = 4
	padDocs  = 2000
)

// seedPointInTime fills the writer's collections and the padding.
func seedPointInTime(t testing.TB, ctx context.Context, db *mongo.Database) {
	t.Helper()
	insertAll := func(coll string, n int, doc func(i int) bson.D) {
		var batch []any
		for i := range n {
			batch = append(batch, doc(i))
			if len(batch) == 1000 || i == n-1 {
				if _, err := db.Collection(coll).InsertMany(ctx, batch); err != nil {
					t.Fatal(err)
				}
				batch = nil
			}
		}
	}
	insertAll("ctr", 1, func(int) bson.D { return bson.D{{Key: "_id", Value: "c"}, {Key: "n", Value: int64(0)}} })
	insertAll("del", delDocs, func(i int) bson.D { return bson.D{{Key: "_id", Value: int64(i + 1)}} })
	insertAll("upd", updDocs, func(i int) bson.D {
		return bson.D{{Key: "_id", Value: int64(i)}, {Key: "round", Value: int64(0)}, {Key: "gone", Value: true}}
	})
	pad := make([]byte, 512)
	for c := range padColls {
		insertAll(fmt.Sprintf("pad%d", c), padDocs, func(i int) bson.D {
			return bson.D{{Key: "_id", Value: int64(i)}, {Key: "pad", Value: pad}}
		})
	}
}

// A pitWriter runs rounds against the source until stopped.
type pitWriter struct {
	rounds atomic.Int64
	stop   chan struct{}
	done   chan error
}

func startWriter(t testing.TB, uri string) *pitWriter {
	t.Helper()
	client := lab.MongoClient(t, uri)
	db := client.Database(pitDB)
	w := &pitWriter{stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		ctx := context.Background()
		for i := int64(1); ; i++ {
			select {
			case <-w.stop:
				w.done <- nil
				return
			default:
			}
			steps := []func() error{
				func() error {
					_, err := db.Collection("ins").InsertOne(ctx, bson.D{{Key: "_id", Value: i}})
					return err
				},
				func() error {
					_, err := db.Collection("ctr").UpdateOne(ctx, bson.D{{Key: "_id", Value: "c"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "n", Value: i}}}})
					return err
				},
				func() error {
					_, err := db.Collection("del").DeleteOne(ctx, bson.D{{Key: "_id", Value: i}})
					return err
				},
				func() error {
					_, err := db.Collection("upd").UpdateOne(ctx, bson.D{{Key: "_id", Value: i % updDocs}},
						bson.D{{Key: "$set", Value: bson.D{{Key: "round", Value: i}}}, {Key: "$unset", Value: bson.D{{Key: "gone", Value: ""}}}})
					return err
				},
			}
			for _, step := range steps {
				if err := step(); err != nil {
					w.done <- fmt.Errorf("round %d: %w", i, err)
					return
				}
			}
			w.rounds.Store(i)
		}
	}()
	t.Cleanup(func() { w.halt(t) })
	return w
}

// waitRounds waits until the writer completed n rounds.
func (w *pitWriter) waitRounds(t testing.TB, n int64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for w.rounds.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("the writer did only %d rounds in a minute", w.rounds.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var haltOnce sync.Map

// halt stops the writer (once) and fails t on its error.
func (w *pitWriter) halt(t testing.TB) int64 {
	t.Helper()
	if _, stopped := haltOnce.LoadOrStore(w, true); !stopped {
		close(w.stop)
		if err := <-w.done; err != nil {
			t.Errorf("writer: %v", err)
		}
	}
	return w.rounds.Load()
}

// checkPointInTime reads the writer's collections of db by plain queries
// and checks that they hold one instant of the writer: the rounds of every
// collection form a gap-free prefix, and the collections agree on where it
// ends (ins ≥ ctr ≥ del ≥ upd ≥ ins-1, the order of a round). It returns
// the last round.
func checkPointInTime(t testing.TB, ctx context.Context, db *mongo.Database) int64 {
	t.Helper()
	ins := readIDs(t, ctx, db.Collection("ins"))
	for i, id := range ins {
		if id != int64(i+1) {
			t.Fatalf("ins: ids are not the gap-free prefix 1..%d: at position %d: %d", len(ins), i, id)
		}
	}
	a := int64(len(ins))
	var ctr struct {
		N int64 `bson:"n"`
	}
	if err := db.Collection("ctr").FindOne(ctx, bson.D{}).Decode(&ctr); err != nil {
		t.Fatalf("ctr: %v", err)
	}
	left := readIDs(t, ctx, db.Collection("del"))
	c := int64(0)
	if len(left) > 0 {
		c = left[0] - 1
	}
	for i, id := range left {
		if id != c+1+int64(i) {
			t.Fatalf("del: the deleted ids are not the prefix 1..%d: remaining id %d at position %d", c, id, i)
		}
	}
	cur, err := db.Collection("upd").Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		t.Fatal(err)
	}
	var upd []struct {
		ID    int64 `bson:"_id"`
		Round int64 `bson:"round"`
		Gone  *bool `bson:"gone"`
	}
	if err := cur.All(ctx, &upd); err != nil || len(upd) != updDocs {
		t.Fatalf("upd: %d documents, %v", len(upd), err)
	}
	d := int64(0)
	for _, u := range upd {
		d = max(d, u.Round)
	}
	for _, u := range upd {
		// The last round ≤ d that touched document u.ID.
		want := d - (((d-u.ID)%updDocs)+updDocs)%updDocs
		if want < 1 {
			want = 0
		}
		if u.Round != want {
			t.Errorf("upd: document %d has round %d, want %d (the last round is %d)", u.ID, u.Round, want, d)
		}
		if (u.Gone != nil) != (want == 0) {
			t.Errorf("upd: document %d (round %d): the field gone is %v", u.ID, u.Round, u.Gone != nil)
		}
	}
	b := ctr.N
	if !(a >= b && b >= c && c >= d && d >= a-1) {
		t.Fatalf("the collections are not at one instant: ins %d, ctr %d, del %d, upd %d", a, b, c, d)
	}
	return a
}

// readIDs returns the int64 _ids of coll, sorted.
func readIDs(t testing.TB, ctx context.Context, coll *mongo.Collection) []int64 {
	t.Helper()
	cur, err := coll.Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).SetProjection(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for cur.Next(ctx) {
		id, ok := cur.Current.Lookup("_id").AsInt64OK()
		if !ok {
			t.Fatalf("%s: _id %v", coll.Name(), cur.Current.Lookup("_id"))
		}
		ids = append(ids, id)
	}
	if err := cur.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

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
	seedPointInTime(t, ctx, src.Database(pitDB))

	w := startWriter(t, srcURI)
	w.waitRounds(t, 20)
	store := streamtest.New()
	stats, err := (&Dumper{URI: srcURI, Parallel: 2, Log: quiet}).Dump(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	during := w.rounds.Load()
	w.waitRounds(t, during+5) // writes after the dump: not in the snapshot
	w.halt(t)
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
		last := checkPointInTime(t, ctx, client.Database(db))
		if last < 1 || last > during+1 {
			t.Errorf("restored to round %d; the dump ended after round %d", last, during)
		}
		for c := range padColls {
			if n, err := client.Database(db).Collection(fmt.Sprintf("pad%d", c)).CountDocuments(ctx, bson.D{}); err != nil || n != padDocs {
				t.Errorf("pad%d: %d documents, %v", c, n, err)
			}
		}
		t.Logf("restored to round %d, %d operations replayed", last, rstats["oplog_applied"])
	}

	t.Run("repository", func(t *testing.T) {
		_, dstURI := lab.Mongo(t)
		restoreCheck(t, &Restorer{URI: dstURI, Parallel: 2, Log: quiet}, store.Reader(), pitDB)
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
		restoreCheck(t, &Restorer{URI: dstURI, Parallel: 2, Log: quiet}, pr, pitDB)
	})
	t.Run("renamed, drop, documentdb", func(t *testing.T) {
		_, dstURI := lab.Mongo(t)
		dst := connectT(t, dstURI)
		if _, err := dst.Database("pit_prod").Collection("ins").InsertOne(ctx, bson.D{{Key: "_id", Value: int64(-1)}}); err != nil {
			t.Fatal(err)
		}
		r := &Restorer{URI: dstURI, NSFrom: pitDB, NSTo: "pit_prod", Drop: true, Flavor: FlavorDocumentDB, Parallel: 2, Log: quiet}
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
