package mongo

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/streamtest"
)

// injectOplog inserts entries into local.oplog.rs as a server would log
// them (FerretDB logs no DDL, and stores what is inserted there).
func injectOplog(t testing.TB, c *mongo.Client, entries ...bson.D) {
	t.Helper()
	for _, e := range entries {
		if _, err := c.Database("local").Collection("oplog.rs").InsertOne(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
}

// oplogEntry is an entry of a command (op c) or a write at now.
func oplogEntry(i uint32, op, ns string, o bson.D) bson.D {
	return bson.D{{Key: "ts", Value: bson.Timestamp{T: uint32(time.Now().Unix()), I: 100000 + i}}, {Key: "t", Value: int64(1)},
		{Key: "op", Value: op}, {Key: "ns", Value: ns}, {Key: "o", Value: o}}
}

// TestPlanInspectOplog: on a replica set with writes, InspectOplog reports
// the window and sizes, counts the entries of the databases moved as a
// replay translates them (writes of other databases left out), lists the
// refused ones with their timestamps, gives the compatibility rows of the
// commands on the target, and stops at its bounds (entries, time) when
// told to.
func TestPlanInspectOplog(t *testing.T) {
	ctx := context.Background()
	_, uri := lab.Mongo(t)
	c := connectT(t, uri)
	user := c.Database("appsmith").Collection("user")
	for i := range 5 {
		if _, err := user.InsertOne(ctx, bson.D{{Key: "_id", Value: i}, {Key: "a", Value: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := user.UpdateOne(ctx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$set", Value: bson.D{{Key: "a", Value: 2}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := user.DeleteOne(ctx, bson.D{{Key: "_id", Value: 2}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Database("other").Collection("x").InsertOne(ctx, bson.D{{Key: "_id", Value: 1}}); err != nil {
		t.Fatal(err)
	}
	injectOplog(t, c,
		oplogEntry(1, "c", "appsmith.$cmd", bson.D{{Key: "createIndexes", Value: "user"}, {Key: "v", Value: 2},
			{Key: "key", Value: bson.D{{Key: "at", Value: 1}}}, {Key: "name", Value: "at_1"}, {Key: "expireAfterSeconds", Value: 60}}),
		oplogEntry(2, "c", "appsmith.$cmd", bson.D{{Key: "startIndexBuild", Value: "user"}}),
		oplogEntry(3, "c", "appsmith.$cmd", bson.D{{Key: "convertToCapped", Value: "user"}, {Key: "size", Value: 4096}}),
		oplogEntry(4, "c", "other.$cmd", bson.D{{Key: "convertToCapped", Value: "x"}, {Key: "size", Value: 4096}}),
	)

	w, err := InspectOplog(ctx, c, []string{"appsmith"}, OplogScan{})
	if err != nil {
		t.Fatal(err)
	}
	if !w.HasOplog || w.Oldest.IsZero() || w.Newest.Before(w.Oldest) || w.MaxSize != 1<<30 || w.Size <= 0 || w.Count < 12 {
		t.Fatalf("window: %+v", w)
	}
	if w.Span > 0 && w.Window < w.Span {
		t.Errorf("window %v shorter than the span %v of an oplog that is not full", w.Window, w.Span)
	}
	// 5 inserts, 1 update, 1 delete of appsmith.user, 3 commands; the
	// write to other, the entries FerretDB logs of the inserts into
	// local.oplog.rs and the other database's command are left out.
	if w.Bound != "" || w.Scanned != w.Count || w.Entries != 10 || w.Inserts != 5 || w.Updates != 1 || w.Deletes != 1 ||
		len(w.Commands) != 1 || w.Commands["createIndexes"] != 1 || len(w.Skipped) != 1 || w.RefusedCount != 1 {
		t.Fatalf("counts: %+v", w)
	}
	want := "10 entries touch the databases moved: 5 inserts, 1 updates, 1 deletes, 1 commands (createIndexes 1), 1 skipped, 1 refused"
	if got := w.Summary(); got != want {
		t.Errorf("summary:\n got %s\nwant %s", got, want)
	}
	if r := w.Refused[0].String(); !strings.HasPrefix(r, "the command convertToCapped of appsmith.user at ts ") ||
		!strings.Contains(r, ":100003 (") || !strings.HasSuffix(r, "cannot be replayed as ordinary writes") {
		t.Errorf("refused: %s", r)
	}
	rows := w.Compat(FlavorFerretDB, "v1.24.2")
	if len(rows) != 1 || rows[0].Verdict != Adapted || rows[0].Namespace != "appsmith.user" ||
		!strings.HasPrefix(rows[0].Item, "oplog createIndexes: index at_1") || !strings.Contains(rows[0].Detail, "no TTL") {
		t.Errorf("compat: %v", rows)
	}

	// Renamed, the namespaces are the target's.
	w, err = InspectOplog(ctx, c, []string{"appsmith"}, OplogScan{Rename: func(db string) string { return "prod" }})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Refused) != 1 || !strings.Contains(w.Refused[0].Entry, "prod.user") {
		t.Errorf("renamed: %+v", w.Refused)
	}

	// Bounded: the newest entries only, and it says so.
	w, err = InspectOplog(ctx, c, []string{"appsmith"}, OplogScan{MaxEntries: 3})
	if err != nil {
		t.Fatal(err)
	}
	if w.Scanned != 3 || w.Bound != "the scan reads the newest 3 entries at most" || w.ScannedFrom.Equal(w.Oldest) ||
		!strings.HasPrefix(w.Scope(), "back to ts ") {
		t.Errorf("bounded: %+v, %s", w, w.Scope())
	}
	w, err = InspectOplog(ctx, c, []string{"appsmith"}, OplogScan{Budget: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if !w.HasOplog || w.Scanned != 0 || w.Bound != "the scan's time budget (1ns) ran out" || w.Oldest.IsZero() {
		t.Errorf("out of time: %+v", w)
	}
}

// TestPlanInspectOplogNone: a standalone server has no oplog, and says
// why; a replica set whose oplog is still empty has one, without a window.
func TestPlanInspectOplogNone(t *testing.T) {
	ctx := context.Background()
	_, uri := lab.MongoStandalone(t)
	w, err := InspectOplog(ctx, connectT(t, uri), []string{"appsmith"}, OplogScan{})
	if err != nil {
		t.Fatal(err)
	}
	if w.HasOplog || w.NoOplog != "the source is not a replica set: no oplog" {
		t.Errorf("standalone: %+v", w)
	}

	_, uri = lab.Mongo(t)
	w, err = InspectOplog(ctx, connectT(t, uri), []string{"appsmith"}, OplogScan{})
	if err != nil {
		t.Fatal(err)
	}
	if !w.HasOplog || !w.Newest.IsZero() || w.Window != 0 || w.Scanned != 0 {
		t.Errorf("empty oplog: %+v", w)
	}
}

// TestPlanOplogWindowSize: the window is the span of a full oplog, and
// the span scaled by how much of it is used while it fills.
func TestPlanOplogWindowSize(t *testing.T) {
	for _, tc := range []struct {
		name          string
		span          uint32 // seconds
		size, maxSize int64
		want          time.Duration
	}{
		{"full", 3600, 1 << 20, 1 << 20, time.Hour},
		{"over full", 3600, 2 << 20, 1 << 20, time.Hour},
		{"a quarter used", 3600, 1 << 20, 4 << 20, 4 * time.Hour},
		{"size unknown", 3600, 0, 0, time.Hour},
		{"within a second", 0, 1 << 20, 4 << 20, 0},
	} {
		w := &OplogWindow{Oldest: bson.Timestamp{T: 1000, I: 1}, Newest: bson.Timestamp{T: 1000 + tc.span, I: 9}, Size: tc.size, MaxSize: tc.maxSize}
		w.setWindow()
		if w.Window != tc.want || w.Span != time.Duration(tc.span)*time.Second {
			t.Errorf("%s: window %v, span %v; want %v", tc.name, w.Window, w.Span, tc.want)
		}
	}
}

// rollingOff is a StreamWriter that, at its first stream, removes the
// oplog's entries up to the newest (the dump's start entry rolls off, as
// in a capped oplog too small for the dump) and writes one more.
type rollingOff struct {
	*streamtest.Store
	t    testing.TB
	c    *mongo.Client
	once sync.Once
}

func (r *rollingOff) Create(name string) (io.WriteCloser, error) {
	r.once.Do(func() {
		ctx := context.Background()
		newest, err := newestEntry(ctx, r.c)
		if err != nil {
			r.t.Error(err)
			return
		}
		if _, err := r.c.Database("local").Collection("oplog.rs").DeleteMany(ctx, bson.D{{Key: "ts", Value: bson.D{{Key: "$lte", Value: newest}}}}); err != nil {
			r.t.Error(err)
		}
		if _, err := r.c.Database("appsmith").Collection("user").InsertOne(ctx, bson.D{{Key: "_id", Value: "late"}}); err != nil {
			r.t.Error(err)
		}
	})
	return r.Store.Create(name)
}

// TestPlanOplogRolledOver: a dump whose start entry rolls off the oplog
// before the dump reads it fails, saying so (the plan's window warns of
// it beforehand).
func TestPlanOplogRolledOver(t *testing.T) {
	ctx := context.Background()
	_, uri := lab.Mongo(t)
	c := connectT(t, uri)
	for i := range 3 {
		if _, err := c.Database("appsmith").Collection("user").InsertOne(ctx, bson.D{{Key: "_id", Value: i}}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := (&Dumper{URI: uri, Log: quiet}).Dump(ctx, &rollingOff{Store: streamtest.New(), t: t, c: c})
	if !errors.Is(err, errOplogRolledOver) || !strings.Contains(err.Error(), "the oplog rolled over during the dump (its start entry is gone); retry, or enlarge the oplog") {
		t.Errorf("dump: %v", err)
	}
}
