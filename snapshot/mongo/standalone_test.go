package mongo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/streamtest"
	"github.com/stackport/stackport/snapshot"
)

// hookWriter is a StreamWriter that calls fn, once, just before the stream
// named at is created: with Parallel 1 the collections are read one after
// the other in name order, so fn changes the source between the listing
// and the read of every collection that sorts after at's.
type hookWriter struct {
	snapshot.StreamWriter
	at string

	mu    sync.Mutex
	fn    func()
	fired bool
}

func (w *hookWriter) Create(name string) (io.WriteCloser, error) {
	w.mu.Lock()
	if name == w.at && !w.fired {
		w.fired = true
		w.fn()
	}
	w.mu.Unlock()
	return w.StreamWriter.Create(name)
}

// standaloneSizes are the collections of the appsmith database that
// TestStandaloneChangedDuringDump dumps, with their number of documents.
var standaloneSizes = map[string]int{"action": 3, "page": 5, "user": 2}

// seedStandalone replaces the appsmith database with the collections of
// standaloneSizes.
func seedStandalone(t *testing.T, ctx context.Context, db *mongo.Database) {
	t.Helper()
	if err := db.Drop(ctx); err != nil {
		t.Fatal(err)
	}
	for name, n := range standaloneSizes {
		docs := make([]any, n)
		for i := range docs {
			docs[i] = bson.D{{Key: "_id", Value: fmt.Sprintf("%s-%d", name, i)}, {Key: "n", Value: int32(i)}}
		}
		if _, err := db.Collection(name).InsertMany(ctx, docs); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStandaloneChangedDuringDump dumps a standalone FerretDB (no oplog)
// while another client drops or renames collections between their listing
// and their read, or after it: the Dump fails with ErrChangedDuringDump
// naming each collection and what happened, instead of storing it empty
// (issue 12). Nothing changing, or a change to a collection whose data is
// not dumped, is no error.
func TestStandaloneChangedDuringDump(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, uri := lab.MongoStandalone(t)
	admin := connectT(t, uri)
	db := admin.Database("appsmith")

	rename := func(from, to string) func() {
		return func() {
			cmd := bson.D{{Key: "renameCollection", Value: "appsmith." + from}, {Key: "to", Value: "appsmith." + to}}
			if err := admin.Database("admin").RunCommand(ctx, cmd).Err(); err != nil {
				t.Errorf("rename %s to %s: %v", from, to, err)
			}
		}
	}
	drop := func(coll string) func() {
		return func() {
			if err := db.Collection(coll).Drop(ctx); err != nil {
				t.Errorf("drop %s: %v", coll, err)
			}
		}
	}
	recreate := func(coll string) func() {
		return func() {
			drop(coll)()
			if _, err := db.Collection(coll).InsertOne(ctx, bson.D{{Key: "_id", Value: "new"}}); err != nil {
				t.Errorf("recreate %s: %v", coll, err)
			}
		}
	}
	both := func(fns ...func()) func() {
		return func() {
			for _, fn := range fns {
				fn()
			}
		}
	}

	for _, tc := range []struct {
		name string
		at   string // the data stream before whose creation change runs
		do   func()
		skip string // a collection whose data is not dumped (SkipData)
		want []string
	}{
		{name: "renamed before its read", at: "appsmith/action.bson", do: rename("page", "page2"), want: []string{
			"mongo: appsmith.page was renamed to appsmith.page2 during the dump (no oplog to replay it): its documents are in neither; " +
				"retry the snapshot with writers stopped, or snapshot a replica set"}},
		{name: "dropped before its read", at: "appsmith/action.bson", do: drop("page"), want: []string{
			"mongo: appsmith.page was dropped during the dump (no oplog to replay it): it would be stored empty; retry the snapshot"}},
		{name: "recreated before its read", at: "appsmith/action.bson", do: recreate("page"), want: []string{
			"mongo: appsmith.page was replaced (dropped and recreated, or renamed over) during the dump (no oplog to replay it)"}},
		{name: "renamed after its read", at: "appsmith/user.bson", do: rename("action", "action2"), want: []string{
			"mongo: appsmith.action was renamed to appsmith.action2 during the dump (no oplog to replay it): " +
				"the snapshot would hold its documents under the old name; retry the snapshot"}},
		{name: "two changes", at: "appsmith/user.bson", do: both(rename("action", "action2"), drop("page")), want: []string{
			"mongo: 2 collections changed during the dump (no oplog to replay it): ",
			"appsmith.action was renamed to appsmith.action2 (the snapshot would hold its documents under the old name)",
			"appsmith.page was dropped (the snapshot would hold documents of a collection that is gone)",
			"; retry the snapshot with writers stopped, or snapshot a replica set"}},
		{name: "data not dumped", at: "appsmith/action.bson", do: drop("user"), skip: "user"},
		{name: "unchanged", at: "appsmith/action.bson", do: func() {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seedStandalone(t, ctx, db)
			store := streamtest.New()
			w := &hookWriter{StreamWriter: store, at: tc.at, fn: tc.do}
			d := &Dumper{URI: uri, DBs: []string{"appsmith"}, Parallel: 1, Log: quiet}
			if tc.skip != "" {
				d.SkipData = func(_, coll string) bool { return coll == tc.skip }
			}
			stats, err := d.Dump(ctx, w)
			if !w.fired {
				t.Fatalf("stream %s never created: streams %v, err %v", tc.at, store.Names(), err)
			}
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				want := int64(0)
				for name, n := range standaloneSizes {
					if name != tc.skip {
						want += int64(n)
					}
				}
				if stats["documents"] != want || stats["consistency_none"] != 1 {
					t.Errorf("stats %v, want %d documents", stats, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Dump succeeded (stats %v), want an error", stats)
			}
			t.Logf("Dump: %v", err)
			if !errors.Is(err, ErrChangedDuringDump) {
				t.Errorf("err = %v, want ErrChangedDuringDump", err)
			}
			for _, s := range tc.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q\ndoes not hold %q", err, s)
				}
			}
			// The changed collection's data stream is not committed
			// empty.
			if data, ok := store.Bytes("appsmith/page.bson"); ok && len(data) == 0 {
				t.Errorf("appsmith/page.bson committed empty (streams %v)", store.Names())
			}
			if slices.Contains(store.Names(), oplogStream) {
				t.Error("oplog.bson without an oplog")
			}
		})
	}
}
