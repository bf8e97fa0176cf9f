// Package livetest runs writers against the lab's sources while stackport
// reads them, and checks by plain queries that a copy holds one instant of
// the writer: what a snapshot, restore or migrate of a live source must
// reach.
package livetest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/stackport/stackport/internal/lab"
)

// The collections of the point-in-time writer: round i inserts {_id: i}
// into ins, sets ctr's counter to i, deletes {_id: i} from del and sets
// round i on document i%updDocs of upd, in that order. pad collections make
// the dump long, so that the collections are read at different moments.
const (
	MongoDB  = "pit" // the database of the writer
	updDocs  = 50
	delDocs  = 5000 // more than the rounds of a test
	PadColls = 4
	PadDocs  = 2000
)

// SeedMongo fills the writer's collections and the padding.
func SeedMongo(t testing.TB, ctx context.Context, db *mongo.Database) {
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
	for c := range PadColls {
		insertAll(fmt.Sprintf("pad%d", c), PadDocs, func(i int) bson.D {
			return bson.D{{Key: "_id", Value: int64(i)}, {Key: "pad", Value: pad}}
		})
	}
}

// A MongoWriter runs rounds against the source until stopped.
type MongoWriter struct {
	Rounds atomic.Int64 // rounds completed
	stop   chan struct{}
	once   sync.Once // of Halt
	done   chan error
}

// StartMongoWriter starts rounds of writes against the database MongoDB of
// uri (seeded with SeedMongo), one after the other, each write
// acknowledged before the next; the test's cleanup halts it.
func StartMongoWriter(t testing.TB, uri string) *MongoWriter {
	t.Helper()
	client := lab.MongoClient(t, uri)
	db := client.Database(MongoDB)
	w := &MongoWriter{stop: make(chan struct{}), done: make(chan error, 1)}
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
			w.Rounds.Store(i)
		}
	}()
	t.Cleanup(func() { w.Halt(t) })
	return w
}

// WaitRounds waits until the writer completed n rounds.
func (w *MongoWriter) WaitRounds(t testing.TB, n int64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for w.Rounds.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("the writer did only %d rounds in a minute", w.Rounds.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Halt stops the writer (once) and fails t on its error.
func (w *MongoWriter) Halt(t testing.TB) int64 {
	t.Helper()
	w.once.Do(func() {
		close(w.stop)
		if err := <-w.done; err != nil {
			t.Errorf("writer: %v", err)
		}
	})
	return w.Rounds.Load()
}

// CheckMongo reads the writer's collections of db by plain queries
// and checks that they hold one instant of the writer: the rounds of every
// collection form a gap-free prefix, and the collections agree on where it
// ends (ins ≥ ctr ≥ del ≥ upd ≥ ins-1, the order of a round). It returns
// the last round.
func CheckMongo(t testing.TB, ctx context.Context, db *mongo.Database) int64 {
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
