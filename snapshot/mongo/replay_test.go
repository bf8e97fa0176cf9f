package mongo

import (
	"errors"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// model describes a write model as plain BSON, for comparisons.
func model(t *testing.T, m mongo.WriteModel) bson.D {
	t.Helper()
	raw := func(v any) bson.Raw {
		if v == nil {
			return nil
		}
		return marshal(t, v)
	}
	switch m := m.(type) {
	case *mongo.InsertOneModel:
		return bson.D{{Key: "insert", Value: raw(m.Document)}}
	case *mongo.ReplaceOneModel:
		return bson.D{{Key: "replace", Value: raw(m.Filter)}, {Key: "with", Value: raw(m.Replacement)}, {Key: "upsert", Value: m.Upsert != nil && *m.Upsert}}
	case *mongo.UpdateOneModel:
		return bson.D{{Key: "update", Value: raw(m.Filter)}, {Key: "with", Value: raw(m.Update)}}
	case *mongo.DeleteOneModel:
		return bson.D{{Key: "delete", Value: raw(m.Filter)}}
	}
	t.Fatalf("unexpected model %T", m)
	return nil
}

func TestTranslate(t *testing.T) {
	id := bson.D{{Key: "_id", Value: 7}}
	doc := bson.D{{Key: "_id", Value: 7}, {Key: "name", Value: "x"}, {Key: "min", Value: bson.MinKey{}}}
	op := func(kind, ns string, o bson.D, o2 ...bson.D) bson.Raw {
		d := bson.D{{Key: "op", Value: kind}, {Key: "ns", Value: ns}, {Key: "o", Value: o}}
		if len(o2) > 0 {
			d = append(d, bson.E{Key: "o2", Value: o2[0]})
		}
		return marshal(t, d)
	}
	upd := func(o bson.D) bson.Raw { return op("u", "app.c", o, id) }
	setUnset := func(set, unset bson.D) bson.D {
		var d bson.D
		if len(set) > 0 {
			d = append(d, bson.E{Key: "$set", Value: set})
		}
		if len(unset) > 0 {
			d = append(d, bson.E{Key: "$unset", Value: unset})
		}
		return bson.D{{Key: "update", Value: marshal(t, id)}, {Key: "with", Value: marshal(t, d)}}
	}
	replace := func(filter, with bson.D, upsert bool) bson.D {
		return bson.D{{Key: "replace", Value: marshal(t, filter)}, {Key: "with", Value: marshal(t, with)}, {Key: "upsert", Value: upsert}}
	}
	cases := []struct {
		name string
		op   bson.Raw
		kind string
		want []bson.D
		err  string
	}{
		{"insert upserts by _id", op("i", "app.c", doc), opInsert, []bson.D{replace(id, doc, true)}, ""},
		{"insert without _id", op("i", "app.c", bson.D{{Key: "a", Value: 1}}), opInsert,
			[]bson.D{{{Key: "insert", Value: marshal(t, bson.D{{Key: "a", Value: 1}})}}}, ""},
		{"delete by _id", op("d", "app.c", id), opDelete, []bson.D{{{Key: "delete", Value: marshal(t, id)}}}, ""},
		{"delete without _id", op("d", "app.c", bson.D{}), "", nil, "without _id"},
		{"v1 set and unset", upd(bson.D{{Key: "$v", Value: 1}, {Key: "$set", Value: bson.D{{Key: "a.b", Value: 1}}}, {Key: "$unset", Value: bson.D{{Key: "c", Value: true}}}}), opUpdate,
			[]bson.D{setUnset(bson.D{{Key: "a.b", Value: 1}}, bson.D{{Key: "c", Value: ""}})}, ""},
		{"v1 without $v", upd(bson.D{{Key: "$set", Value: bson.D{{Key: "a", Value: 2}}}}), opUpdate,
			[]bson.D{setUnset(bson.D{{Key: "a", Value: 2}}, nil)}, ""},
		{"FerretDB's whole-document $set is a replacement", upd(bson.D{{Key: "$v", Value: 1}, {Key: "$set", Value: doc}}), opUpdate,
			[]bson.D{replace(id, doc, false)}, ""},
		{"legacy replacement", upd(doc), opUpdate, []bson.D{replace(id, doc, false)}, ""},
		{"v1 other operator", upd(bson.D{{Key: "$inc", Value: bson.D{{Key: "a", Value: 1}}}}), opUpdate, nil, "cannot be replayed"},
		{"v2 diff", upd(bson.D{{Key: "$v", Value: 2}, {Key: "diff", Value: bson.D{
			{Key: "d", Value: bson.D{{Key: "old", Value: false}}},
			{Key: "u", Value: bson.D{{Key: "name", Value: "y"}}},
			{Key: "i", Value: bson.D{{Key: "new", Value: bson.D{{Key: "k", Value: 1}}}}},
			{Key: "sprofile", Value: bson.D{{Key: "u", Value: bson.D{{Key: "age", Value: 3}}}, {Key: "sdeep", Value: bson.D{{Key: "d", Value: bson.D{{Key: "x", Value: false}}}}}}},
			{Key: "stags", Value: bson.D{{Key: "a", Value: true}, {Key: "u1", Value: "b"}, {Key: "s0", Value: bson.D{{Key: "u", Value: bson.D{{Key: "z", Value: 0}}}}}}},
			{Key: "slist", Value: bson.D{{Key: "a", Value: true}, {Key: "l", Value: 2}}},
		}}}), opUpdate, []bson.D{
			setUnset(bson.D{{Key: "name", Value: "y"}, {Key: "new", Value: bson.D{{Key: "k", Value: 1}}}, {Key: "profile.age", Value: 3}, {Key: "tags.1", Value: "b"}, {Key: "tags.0.z", Value: 0}},
				bson.D{{Key: "old", Value: ""}, {Key: "profile.deep.x", Value: ""}}),
			{{Key: "update", Value: marshal(t, id)}, {Key: "with", Value: marshal(t, bson.D{{Key: "$push", Value: bson.D{{Key: "list",
				Value: bson.D{{Key: "$each", Value: bson.A{}}, {Key: "$slice", Value: int64(2)}}}}}})}},
		}, ""},
		{"v2 empty diff", upd(bson.D{{Key: "$v", Value: 2}, {Key: "diff", Value: bson.D{}}}), opUpdate, nil, ""},
		{"v2 dotted field", upd(bson.D{{Key: "$v", Value: 2}, {Key: "diff", Value: bson.D{{Key: "u", Value: bson.D{{Key: "a.b", Value: 1}}}}}}), opUpdate, nil, "cannot be addressed"},
		{"v2 unknown field", upd(bson.D{{Key: "$v", Value: 2}, {Key: "diff", Value: bson.D{{Key: "x", Value: 1}}}}), opUpdate, nil, "unknown diff field"},
		{"v3", upd(bson.D{{Key: "$v", Value: 3}, {Key: "diff", Value: bson.D{}}}), opUpdate, nil, "cannot be replayed"},
		{"update without o2", op("u", "app.c", bson.D{{Key: "$set", Value: bson.D{{Key: "a", Value: 1}}}}), opUpdate, nil, "without o2._id"},
		{"system collection", op("i", "app.system.views", doc), opCommand, nil, ""},
		{"time-series buckets", op("i", "app.system.buckets.m", doc), opInsert, []bson.D{replace(id, doc, true)}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := translate(tc.op)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.kind != tc.kind {
				t.Errorf("kind %q, want %q", got.kind, tc.kind)
			}
			if len(got.models) != len(tc.want) {
				t.Fatalf("%d models, want %d", len(got.models), len(tc.want))
			}
			for i, m := range got.models {
				if g, w := marshal(t, model(t, m)), marshal(t, tc.want[i]); !bytesEqual(g, w) {
					t.Errorf("model %d:\n got %v\nwant %v", i, g, w)
				}
			}
		})
	}
}

func bytesEqual(a, b bson.Raw) bool { return string(a) == string(b) }

func TestTranslateCommands(t *testing.T) {
	cmd := func(o bson.D) bson.Raw {
		return marshal(t, bson.D{{Key: "op", Value: "c"}, {Key: "ns", Value: "app.$cmd"}, {Key: "o", Value: o}})
	}
	cases := []struct {
		o          bson.D
		name, coll string
		skip       bool
		refused    bool
	}{
		{bson.D{{Key: "create", Value: "c"}, {Key: "capped", Value: true}}, "create", "c", false, false},
		{bson.D{{Key: "drop", Value: "c"}}, "drop", "c", false, false},
		{bson.D{{Key: "renameCollection", Value: "app.a"}, {Key: "to", Value: "app.b"}}, "renameCollection", "a", false, false},
		{bson.D{{Key: "createIndexes", Value: "c"}, {Key: "v", Value: 2}, {Key: "key", Value: bson.D{{Key: "a", Value: 1}}}, {Key: "name", Value: "a_1"}}, "createIndexes", "c", false, false},
		{bson.D{{Key: "commitIndexBuild", Value: "c"}, {Key: "indexes", Value: bson.A{}}}, "commitIndexBuild", "c", false, false},
		{bson.D{{Key: "dropIndexes", Value: "c"}, {Key: "index", Value: "a_1"}}, "dropIndexes", "c", false, false},
		{bson.D{{Key: "collMod", Value: "c"}, {Key: "validationLevel", Value: "off"}}, "collMod", "c", false, false},
		{bson.D{{Key: "dropDatabase", Value: 1}}, "dropDatabase", "", false, false},
		{bson.D{{Key: "startIndexBuild", Value: "c"}}, "startIndexBuild", "c", true, false},
		{bson.D{{Key: "abortIndexBuild", Value: "c"}}, "abortIndexBuild", "c", true, false},
		{bson.D{{Key: "dropIdent", Value: "c"}}, "dropIdent", "c", true, false},
		{bson.D{{Key: "create", Value: "system.profile"}}, "create", "system.profile", true, false},
		{bson.D{{Key: "convertToCapped", Value: "c"}, {Key: "size", Value: 1}}, "convertToCapped", "c", false, true},
		{bson.D{{Key: "emptycapped", Value: "c"}}, "emptycapped", "c", false, true},
		{bson.D{{Key: "somethingNew", Value: "c"}}, "somethingNew", "c", false, true},
	}
	for _, tc := range cases {
		got, err := translate(cmd(tc.o))
		if tc.refused {
			if !errors.Is(err, errUnreplayable) || !strings.Contains(err.Error(), tc.name) {
				t.Errorf("%s: err = %v, want errUnreplayable naming it", tc.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got.kind != opCommand || got.name != tc.name || got.ns.coll != tc.coll || (got.skip != "") != tc.skip {
			t.Errorf("%s: got kind %q name %q coll %q skip %q", tc.name, got.kind, got.name, got.ns.coll, got.skip)
		}
	}
}
