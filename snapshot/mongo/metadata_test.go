package mongo

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/stackport/stackport/snapshot"
)

// indexKinds are index specifications of every kind, as listIndexes
// reports them.
func indexKinds(t testing.TB) []bson.Raw {
	collation := bson.D{
		{Key: "locale", Value: "fr"}, {Key: "caseLevel", Value: false}, {Key: "caseFirst", Value: "off"},
		{Key: "strength", Value: int32(2)}, {Key: "numericOrdering", Value: true}, {Key: "alternate", Value: "non-ignorable"},
		{Key: "maxVariable", Value: "punct"}, {Key: "normalization", Value: false}, {Key: "backwards", Value: false}, {Key: "version", Value: "57.1"},
	}
	specs := []bson.D{
		{{Key: "v", Value: int32(2)}, {Key: "key", Value: bson.D{{Key: "_id", Value: int32(1)}}}, {Key: "name", Value: "_id_"}},
		{{Key: "v", Value: int32(2)}, {Key: "key", Value: bson.D{{Key: "email", Value: int32(1)}}}, {Key: "name", Value: "email_1"}, {Key: "unique", Value: true}},
		{{Key: "v", Value: int32(2)}, {Key: "key", Value: bson.D{{Key: "applicationId", Value: int32(1)}, {Key: "pageId", Value: int32(-1)}}}, {Key: "name", Value: "compound"}},
		{{Key: "v", Value: int32(2)}, {Key: "key", Value: bson.D{{Key: "phone", Value: 1.0}}}, {Key: "name", Value: "phone_sparse"}, {Key: "sparse", Value: true}, {Key: "hidden", Value: true}},
		{{Key: "v", Value: int32(2)}, {Key: "key", Value: bson.D{{Key: "createdAt", Value: int32(1)}}}, {Key: "name", Value: "ttl"}, {Key: "expireAfterSeconds", Value: int32(3600)}},
		{{Key: "v", Value: int32(2)}, {Key: "key", Value: bson.D{{Key: "slug", Value: int32(1)}}}, {Key: "name", Value: "partial"}, {Key: "unique", Value: true},
			{Key: "partialFilterExpression", Value: bson.D{{Key: "deleted", Value: bson.D{{Key: "$eq", Value: false}}}, {Key: "score", Value: bson.D{{Key: "$gt", Value: mustDecimal(t, "0.1")}}}}}},
		{{Key: "v", Value: int32(2)}, {Key: "key", Value: bson.D{{Key: "_fts", Value: "text"}, {Key: "_ftsx", Value: int32(1)}}}, {Key: "name", Value: "text"},
			{Key: "weights", Value: bson.D{{Key: "body", Value: int32(1)}, {Key: "title", Value: int32(10)}}}, {Key: "default_language", Value: "english"},
			{Key: "language_override", Value: "language"}, {Key: "textIndexVersion", Value: int32(3)}},
		{{Key: "v", Value: int32(2)}, {Key: "key", Value: bson.D{{Key: "loc", Value: "2dsphere"}}}, {Key: "name", Value: "loc_2dsphere"}, {Key: "2dsphereIndexVersion", Value: int32(3)}},
		{{Key: "v", Value: int32(2)}, {Key: "key", Value: bson.D{{Key: "pos", Value: "2d"}}}, {Key: "name", Value: "pos_2d"}, {Key: "bits", Value: int32(26)}, {Key: "min", Value: -180.0}, {Key: "max", Value: 180.0}},
		{{Key: "v", Value: int32(2)}, {Key: "key", Value: bson.D{{Key: "tenant", Value: "hashed"}}}, {Key: "name", Value: "tenant_hashed"}},
		{{Key: "v", Value: int32(2)}, {Key: "key", Value: bson.D{{Key: "name", Value: int32(1)}}}, {Key: "name", Value: "collated"}, {Key: "collation", Value: collation}},
		{{Key: "v", Value: int32(2)}, {Key: "key", Value: bson.D{{Key: "$**", Value: int32(1)}}}, {Key: "name", Value: "wildcard"}, {Key: "wildcardProjection", Value: bson.D{{Key: "a", Value: int32(1)}}}},
		{{Key: "v", Value: int32(1)}, {Key: "key", Value: bson.D{{Key: "x", Value: int64(1)}}}, {Key: "name", Value: "legacy"}, {Key: "ns", Value: "app.things"}, {Key: "background", Value: true}},
	}
	out := make([]bson.Raw, len(specs))
	for i, s := range specs {
		out[i] = marshal(t, s)
	}
	return out
}

func TestMetadataRoundTrip(t *testing.T) {
	uuid := bson.Binary{Subtype: bson.TypeBinaryUUID, Data: []byte{0xee, 0xa4, 0x89, 0x87, 0x4c, 0xbf, 0x44, 0x3f, 0x8b, 0x1b, 0x41, 0xd5, 0x3f, 0x16, 0xed, 0x0e}}
	validator := bson.D{{Key: "$jsonSchema", Value: bson.D{
		{Key: "bsonType", Value: "object"}, {Key: "required", Value: bson.A{"email"}},
		{Key: "properties", Value: bson.D{{Key: "age", Value: bson.D{{Key: "minimum", Value: mustDecimal(t, "0")}}}}},
	}}}
	cases := []struct {
		name string
		spec bson.D // a listCollections entry
	}{
		{"plain", bson.D{{Key: "name", Value: "user"}, {Key: "type", Value: "collection"}, {Key: "options", Value: bson.D{}}}},
		{"capped with validator and collation", bson.D{{Key: "name", Value: "log"}, {Key: "type", Value: "collection"}, {Key: "options", Value: bson.D{
			{Key: "capped", Value: true}, {Key: "size", Value: int64(1 << 20)}, {Key: "max", Value: int64(1000)},
			{Key: "validator", Value: validator}, {Key: "validationLevel", Value: "moderate"}, {Key: "validationAction", Value: "warn"},
			{Key: "collation", Value: bson.D{{Key: "locale", Value: "en"}, {Key: "strength", Value: int32(1)}}},
		}}}},
		{"view", bson.D{{Key: "name", Value: "activeUsers"}, {Key: "type", Value: "view"}, {Key: "options", Value: bson.D{
			{Key: "viewOn", Value: "user"},
			{Key: "pipeline", Value: bson.A{bson.D{{Key: "$match", Value: bson.D{{Key: "active", Value: true}, {Key: "since", Value: bson.DateTime(-1000)}}}}, bson.D{{Key: "$project", Value: bson.D{{Key: "email", Value: int32(1)}}}}}},
		}}}},
		{"time series", bson.D{{Key: "name", Value: "metrics"}, {Key: "type", Value: "timeseries"}, {Key: "options", Value: bson.D{
			{Key: "timeseries", Value: bson.D{{Key: "timeField", Value: "t"}, {Key: "metaField", Value: "m"}, {Key: "granularity", Value: "seconds"}, {Key: "bucketMaxSpanSeconds", Value: int32(3600)}}},
			{Key: "expireAfterSeconds", Value: int64(86400)},
		}}}},
		{"clustered", bson.D{{Key: "name", Value: "events"}, {Key: "type", Value: "collection"}, {Key: "options", Value: bson.D{
			{Key: "clusteredIndex", Value: bson.D{{Key: "v", Value: int32(2)}, {Key: "key", Value: bson.D{{Key: "_id", Value: int32(1)}}}, {Key: "name", Value: "_id_"}, {Key: "unique", Value: true}}},
		}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := append(tc.spec, bson.E{Key: "info", Value: bson.D{{Key: "readOnly", Value: false}, {Key: "uuid", Value: uuid}}})
			var indexes []bson.Raw
			if tc.name != "view" {
				indexes = indexKinds(t)
			}
			m, err := newMetadata(marshal(t, spec), indexes)
			if err != nil {
				t.Fatal(err)
			}
			name, _ := tc.spec[0].Value.(string)
			if m.CollectionName != name || m.UUID != "eea489874cbf443f8b1b41d53f16ed0e" || m.Type != tc.spec[1].Value {
				t.Errorf("metadata %+v", m)
			}
			data := mustEncode(t, m)

			// mongodump's format: these keys, canonical extended JSON.
			var top map[string]json.RawMessage
			if err := json.Unmarshal(data, &top); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, data)
			}
			for _, k := range []string{"options", "indexes", "uuid", "collectionName", "type"} {
				if _, ok := top[k]; !ok {
					t.Errorf("no %q in %s", k, data)
				}
			}
			if len(indexes) > 0 && !strings.Contains(string(data), `"v":{"$numberInt":"2"}`) {
				t.Errorf("not canonical extended JSON: %s", data)
			}

			back, err := decodeMetadata(data, namespace{"app", name})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(back.Options, m.Options) {
				t.Errorf("options differ:\n got %v\nwant %v", back.Options, m.Options)
			}
			if len(back.Indexes) != len(m.Indexes) {
				t.Fatalf("%d indexes, want %d", len(back.Indexes), len(m.Indexes))
			}
			for i := range m.Indexes {
				if !bytes.Equal(back.Indexes[i], m.Indexes[i]) {
					t.Errorf("index %d differs:\n got %v\nwant %v", i, back.Indexes[i], m.Indexes[i])
				}
			}
			if back.UUID != m.UUID || back.Type != m.Type || back.CollectionName != m.CollectionName {
				t.Errorf("decoded %+v, want %+v", back, m)
			}
		})
	}
}

func TestUserIndexes(t *testing.T) {
	m := &metadata{Indexes: indexKinds(t)}
	got := m.userIndexes()
	if len(got) != len(m.Indexes)-1 {
		t.Fatalf("%d user indexes of %d", len(got), len(m.Indexes))
	}
	for _, spec := range got {
		if name, _ := spec.Lookup("name").StringValueOK(); name == idIndex {
			t.Error("_id index kept")
		}
		if spec.Lookup("ns").Type != 0 || spec.Lookup("v").Type != 0 {
			t.Errorf("%v keeps ns or v", spec)
		}
	}
	legacy := got[len(got)-1]
	want := marshal(t, bson.D{{Key: "key", Value: bson.D{{Key: "x", Value: int64(1)}}}, {Key: "name", Value: "legacy"}, {Key: "background", Value: true}})
	if !bytes.Equal(legacy, want) {
		t.Errorf("legacy index %v, want %v", legacy, want)
	}
}

// mongodumpMetadata is a metadata file as mongodump 100.x writes it.
const mongodumpMetadata = `{"indexes":[{"v":{"$numberInt":"2"},"key":{"_id":{"$numberInt":"1"}},"name":"_id_"},` +
	`{"v":{"$numberInt":"2"},"key":{"email":{"$numberInt":"1"}},"name":"email_1","unique":true}],` +
	`"uuid":"5b7e3e5c0f6b4b1c9d6f3a2e1c0d9b8a","collectionName":"user","type":"collection"}`

func TestDecodeMongodumpMetadata(t *testing.T) {
	m, err := decodeMetadata([]byte(mongodumpMetadata), namespace{"appsmith", "user"})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Indexes) != 2 || !bytes.Equal(m.Options, emptyDoc) || m.UUID == "" {
		t.Errorf("%+v", m)
	}
}

func TestBadMetadata(t *testing.T) {
	idx := func(key bson.D, name string) bson.Raw {
		return marshal(t, bson.D{{Key: "v", Value: int32(2)}, {Key: "key", Value: key}, {Key: "name", Value: name}})
	}
	encode := func(m *metadata) string { return string(mustEncode(t, m)) }
	cases := []struct {
		name, data, msg string
	}{
		{"not JSON", `{"indexes":[`, "metadata"},
		{"unknown index type", encode(&metadata{CollectionName: "user", Indexes: []bson.Raw{idx(bson.D{{Key: "a", Value: "columnar"}}, "a_columnar")}}), `unknown index type "columnar"`},
		{"index without name", encode(&metadata{CollectionName: "user", Indexes: []bson.Raw{marshal(t, bson.D{{Key: "key", Value: bson.D{{Key: "a", Value: 1}}}})}}), "no name"},
		{"index without key", encode(&metadata{CollectionName: "user", Indexes: []bson.Raw{marshal(t, bson.D{{Key: "name", Value: "x"}})}}), "no key"},
		{"empty key", encode(&metadata{CollectionName: "user", Indexes: []bson.Raw{idx(bson.D{}, "x")}}), "empty key"},
		{"key of a bad type", encode(&metadata{CollectionName: "user", Indexes: []bson.Raw{idx(bson.D{{Key: "a", Value: true}}, "x")}}), "has a boolean value"},
		{"duplicate index", encode(&metadata{CollectionName: "user", Indexes: []bson.Raw{idx(bson.D{{Key: "a", Value: 1}}, "x"), idx(bson.D{{Key: "b", Value: 1}}, "x")}}), "duplicate index"},
		{"other collection", encode(&metadata{CollectionName: "page"}), "does not match"},
		{"unknown type", encode(&metadata{CollectionName: "user", Type: "table"}), "unknown type"},
		{"view without viewOn", encode(&metadata{CollectionName: "user", Type: "view"}), "without viewOn"},
		{"view without options", `{"collectionName":"user","type":"view"}`, "without viewOn"},
		{"options not a document", `{"options":[1],"collectionName":"user"}`, "metadata"},
		{"indexes not documents", `{"indexes":[1],"collectionName":"user"}`, "metadata"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeMetadata([]byte(tc.data), namespace{"appsmith", "user"})
			if !errors.Is(err, snapshot.ErrCorrupt) || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), "appsmith.user") {
				t.Errorf("err = %v, want ErrCorrupt naming appsmith.user and %q", err, tc.msg)
			}
		})
	}
}
