package mongo

import (
	"bytes"
	"context"
	"errors"
	"github.com/stackport/stackport/internal/streamtest"
	"strconv"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/stackport/stackport/snapshot"
)

func entry(t testing.TB, ts uint32, op, ns string, o bson.D, extra ...bson.E) bson.Raw {
	d := bson.D{
		{Key: "ts", Value: bson.Timestamp{T: ts, I: 1}}, {Key: "t", Value: int64(1)}, {Key: "op", Value: op}, {Key: "ns", Value: ns},
		{Key: "ui", Value: bson.Binary{Subtype: bson.TypeBinaryUUID, Data: make([]byte, 16)}},
		{Key: "o", Value: o},
	}
	return marshal(t, append(d, extra...))
}

func TestReplayOps(t *testing.T) {
	doc := bson.D{{Key: "_id", Value: bson.NewObjectID()}, {Key: "dec", Value: mustDecimal(t, "1.5")}, {Key: "min", Value: bson.MinKey{}}}
	keep := func(db string) bool { return db == "appsmith" }
	rename := func(db string) string { return strings.Replace(db, "appsmith", "appsmith_prod", 1) }
	txn := entry(t, 5, "c", "admin.$cmd", bson.D{{Key: "applyOps", Value: bson.A{
		bson.D{{Key: "op", Value: "i"}, {Key: "ns", Value: "appsmith.user"}, {Key: "ui", Value: bson.Binary{Subtype: 4, Data: make([]byte, 16)}}, {Key: "o", Value: doc}},
		bson.D{{Key: "op", Value: "d"}, {Key: "ns", Value: "other.user"}, {Key: "o", Value: bson.D{{Key: "_id", Value: 1}}}},
		bson.D{{Key: "op", Value: "u"}, {Key: "ns", Value: "appsmith.page"}, {Key: "o2", Value: bson.D{{Key: "_id", Value: 2}}}, {Key: "o", Value: bson.D{{Key: "$v", Value: int32(2)}, {Key: "diff", Value: bson.D{{Key: "u", Value: bson.D{{Key: "a", Value: 1}}}}}}}},
	}}})

	cases := []struct {
		name  string
		entry bson.Raw
		want  []bson.D // the operations, without ui, renamed
		err   string
	}{
		{"insert", entry(t, 1, "i", "appsmith.user", doc), []bson.D{{
			{Key: "ts", Value: bson.Timestamp{T: 1, I: 1}}, {Key: "t", Value: int64(1)}, {Key: "op", Value: "i"}, {Key: "ns", Value: "appsmith_prod.user"}, {Key: "o", Value: doc},
		}}, ""},
		{"other database", entry(t, 1, "i", "other.user", doc), nil, ""},
		{"config", entry(t, 1, "d", "config.system.sessions", bson.D{{Key: "_id", Value: 1}}), nil, ""},
		{"noop", entry(t, 1, "n", "", bson.D{{Key: "msg", Value: "periodic noop"}}), nil, ""},
		{"rename collection", entry(t, 1, "c", "appsmith.$cmd", bson.D{{Key: "renameCollection", Value: "appsmith.a"}, {Key: "to", Value: "appsmith.b"}, {Key: "stayTemp", Value: false}}), []bson.D{{
			{Key: "ts", Value: bson.Timestamp{T: 1, I: 1}}, {Key: "t", Value: int64(1)}, {Key: "op", Value: "c"}, {Key: "ns", Value: "appsmith_prod.$cmd"},
			{Key: "o", Value: bson.D{{Key: "renameCollection", Value: "appsmith_prod.a"}, {Key: "to", Value: "appsmith_prod.b"}, {Key: "stayTemp", Value: false}}},
		}}, ""},
		{"transaction", txn, []bson.D{
			{{Key: "op", Value: "i"}, {Key: "ns", Value: "appsmith_prod.user"}, {Key: "o", Value: doc}},
			{{Key: "op", Value: "u"}, {Key: "ns", Value: "appsmith_prod.page"}, {Key: "o2", Value: bson.D{{Key: "_id", Value: 2}}}, {Key: "o", Value: bson.D{{Key: "$v", Value: int32(2)}, {Key: "diff", Value: bson.D{{Key: "u", Value: bson.D{{Key: "a", Value: 1}}}}}}}},
		}, ""},
		{"admin command", entry(t, 1, "c", "admin.$cmd", bson.D{{Key: "create", Value: "x"}}), nil, ""},
		{"prepared transaction", entry(t, 1, "c", "admin.$cmd", bson.D{{Key: "applyOps", Value: bson.A{}}, {Key: "prepare", Value: true}}), nil, "prepared"},
		{"unknown op", entry(t, 1, "x", "appsmith.user", doc), nil, "unknown op"},
		{"no op", marshal(t, bson.D{{Key: "ns", Value: "appsmith.user"}}), nil, "without op"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ops, err := replayOps(tc.entry, keep, rename)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(ops) != len(tc.want) {
				t.Fatalf("%d operations, want %d: %v", len(ops), len(tc.want), ops)
			}
			for i, w := range tc.want {
				if want := marshal(t, w); !bytes.Equal(ops[i], want) {
					t.Errorf("operation %d:\n got %v\nwant %v", i, ops[i], want)
				}
			}
		})
	}
}

func TestCaptureOplog(t *testing.T) {
	ctx := context.Background()
	keep := func(db string) bool { return db == "appsmith" }
	start := bson.Timestamp{T: 10, I: 1}
	first := entry(t, 10, "n", "", bson.D{{Key: "msg", Value: "x"}})
	e1 := entry(t, 11, "i", "appsmith.user", bson.D{{Key: "_id", Value: 1}})
	e2 := entry(t, 12, "i", "other.user", bson.D{{Key: "_id", Value: 1}})
	e3 := entry(t, 13, "u", "appsmith.user", bson.D{{Key: "$set", Value: bson.D{{Key: "a", Value: 1}}}}, bson.E{Key: "o2", Value: bson.D{{Key: "_id", Value: 1}}})
	var buf bytes.Buffer
	n, err := captureOplog(ctx, &sliceSource{docs: []bson.Raw{first, e1, e2, e3}}, &buf, start, keep)
	if err != nil || n != 2 {
		t.Fatalf("n = %d, err = %v", n, err)
	}
	// The entries are kept as they are (ui included): oplog.bson is
	// mongodump's.
	if !bytes.Equal(buf.Bytes(), append(bytes.Clone(e1), e3...)) {
		t.Error("captured entries differ")
	}
	for name, docs := range map[string][]bson.Raw{"start gone": {e1, e3}, "empty": nil} {
		if _, err := captureOplog(ctx, &sliceSource{docs: docs}, &bytes.Buffer{}, start, keep); !errors.Is(err, errOplogRolledOver) {
			t.Errorf("%s: err = %v, want errOplogRolledOver", name, err)
		}
	}
	srcErr := errors.New("cursor killed")
	if _, err := captureOplog(ctx, &sliceSource{docs: []bson.Raw{first}, err: srcErr}, &bytes.Buffer{}, start, keep); !errors.Is(err, srcErr) {
		t.Errorf("err = %v, want the cursor's", err)
	}

	// The captured oplog goes through Verifier; an entry that cannot be
	// replayed is corrupt, named by its offset.
	store := streamtest.New()
	writeSnapshot(t, store, nil, nil, []bson.Raw{e1, e3})
	if stats, err := (Verifier{}).Restore(ctx, store.Reader()); err != nil || stats["oplog_entries"] != 2 {
		t.Errorf("Verifier: %v, %v", stats, err)
	}
	bad := marshal(t, bson.D{{Key: "op", Value: "?"}, {Key: "ns", Value: "appsmith.user"}})
	store = streamtest.New()
	writeSnapshot(t, store, nil, nil, []bson.Raw{e1, bad})
	_, err = (Verifier{}).Restore(ctx, store.Reader())
	if !errors.Is(err, snapshot.ErrCorrupt) || !strings.Contains(err.Error(), "oplog: byte offset "+strconv.Itoa(len(e1))) {
		t.Errorf("err = %v", err)
	}
}
