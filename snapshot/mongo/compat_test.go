package mongo

import (
	"bytes"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// verdicts returns the rows of a table by "namespace item".
func verdicts(rows []CompatRow) map[string]CompatRow {
	out := map[string]CompatRow{}
	for _, r := range rows {
		out[strings.TrimSpace(r.Namespace+" "+r.Item)] = r
	}
	return out
}

// want checks that the row key has verdict v and a detail containing
// detail.
func want(t *testing.T, rows map[string]CompatRow, key string, v Verdict, detail string) {
	t.Helper()
	r, ok := rows[key]
	if !ok {
		t.Errorf("no row %q", key)
		return
	}
	if r.Verdict != v || !strings.Contains(r.Detail, detail) {
		t.Errorf("%s: %s, want %s: …%s…", key, r, v, detail)
	}
}

// specsByName returns index specifications by name.
func specsByName(specs []bson.Raw) map[string]bson.Raw {
	out := map[string]bson.Raw{}
	for _, s := range specs {
		name, _ := s.Lookup("name").StringValueOK()
		out[name] = s
	}
	return out
}

// appCollections are collections with every option and index kind: a
// capped collection with a $jsonSchema validator and a collation, holding
// indexes of every kind, a view and a time-series collection.
func appCollections(t *testing.T) []CollectionSpec {
	opts := marshal(t, bson.D{
		{Key: "capped", Value: true}, {Key: "size", Value: int64(1 << 20)}, {Key: "max", Value: int64(1000)},
		{Key: "validator", Value: bson.D{{Key: "$jsonSchema", Value: bson.D{{Key: "bsonType", Value: "object"}, {Key: "required", Value: bson.A{"email"}}}}}},
		{Key: "validationLevel", Value: "moderate"}, {Key: "validationAction", Value: "warn"},
		{Key: "collation", Value: bson.D{{Key: "locale", Value: "en"}, {Key: "strength", Value: int32(2)}}},
	})
	view := marshal(t, bson.D{{Key: "viewOn", Value: "log"}, {Key: "pipeline", Value: bson.A{bson.D{{Key: "$match", Value: bson.D{{Key: "a", Value: 1}}}}}}})
	ts := marshal(t, bson.D{{Key: "timeseries", Value: bson.D{{Key: "timeField", Value: "t"}}}})
	return []CollectionSpec{
		{DB: "app", Name: "log", Type: typeCollection, Options: opts, Indexes: indexKinds(t)},
		{DB: "app", Name: "recent", Type: typeView, Options: view},
		{DB: "app", Name: "metrics", Type: typeTimeseries, Options: ts},
	}
}

func TestCompatibilityDocumentDB(t *testing.T) {
	colls := appCollections(t)
	t.Run("4.0", func(t *testing.T) {
		plans, table := planAll(FlavorDocumentDB, "4.0.0", colls)
		rows := verdicts(table)
		want(t, rows, "app.log collection", AsIs, "")
		want(t, rows, "app.log option capped", Skipped, "no capped collections")
		want(t, rows, "app.log option validator", AsIs, "")
		want(t, rows, "app.log option collation", Skipped, "collations from 8.0")
		for _, k := range []string{"size", "max", "validationLevel", "validationAction"} {
			if _, ok := rows["app.log option "+k]; ok {
				t.Errorf("row for %s, which goes with capped or validator", k)
			}
		}
		want(t, rows, "app.log index email_1", AsIs, "")
		want(t, rows, "app.log index compound", AsIs, "")
		want(t, rows, "app.log index ttl", AsIs, "")
		want(t, rows, "app.log index phone_sparse", Adapted, "hidden indexes from 8.0.1")
		want(t, rows, "app.log index partial", Skipped, "partial indexes from 5.0")
		want(t, rows, "app.log index text", Skipped, "text indexes from 5.0")
		want(t, rows, "app.log index loc_2dsphere", Adapted, "2dsphereIndexVersion dropped")
		want(t, rows, "app.log index pos_2d", Skipped, "only 2dsphere")
		want(t, rows, "app.log index tenant_hashed", Skipped, "no hashed indexes")
		want(t, rows, "app.log index collated", Adapted, "built without its collation")
		want(t, rows, "app.log index wildcard", Skipped, "no wildcard indexes")
		want(t, rows, "app.log index legacy", AsIs, "")
		if _, ok := rows["app.log index _id_"]; ok {
			t.Error("row for the _id index")
		}
		want(t, rows, "app.recent view", Skipped, "views from 8.0")
		want(t, rows, "app.metrics time-series collection", Refused, "no time-series")
		if !plans[2].refused || !plans[1].skip || plans[0].skip || plans[0].refused {
			t.Errorf("plans %+v", plans)
		}

		// The plan: options without capped, size, max and collation.
		wantOpts := marshal(t, bson.D{
			{Key: "validator", Value: bson.D{{Key: "$jsonSchema", Value: bson.D{{Key: "bsonType", Value: "object"}, {Key: "required", Value: bson.A{"email"}}}}}},
			{Key: "validationLevel", Value: "moderate"}, {Key: "validationAction", Value: "warn"},
		})
		if !bytes.Equal(plans[0].options, wantOpts) {
			t.Errorf("options %v, want %v", plans[0].options, wantOpts)
		}
		built := specsByName(plans[0].indexes)
		for _, name := range []string{"partial", "text", "pos_2d", "tenant_hashed", "wildcard", "_id_"} {
			if built[name] != nil {
				t.Errorf("index %s built", name)
			}
		}
		if len(built) != 7 {
			t.Errorf("%d indexes built: %v", len(built), plans[0].indexes)
		}
		for name, spec := range built {
			if spec.Lookup("v").Type != 0 || spec.Lookup("ns").Type != 0 {
				t.Errorf("%s keeps v or ns: %v", name, spec)
			}
		}
		if built["collated"].Lookup("collation").Type != 0 || built["phone_sparse"].Lookup("hidden").Type != 0 ||
			built["loc_2dsphere"].Lookup("2dsphereIndexVersion").Type != 0 {
			t.Errorf("adapted indexes keep their options: %v", plans[0].indexes)
		}
		if v, _ := built["ttl"].Lookup("expireAfterSeconds").Int32OK(); v != 3600 {
			t.Errorf("ttl index %v", built["ttl"])
		}
		if b, _ := built["phone_sparse"].Lookup("sparse").BooleanOK(); !b {
			t.Errorf("sparse lost: %v", built["phone_sparse"])
		}
	})

	t.Run("3.6", func(t *testing.T) {
		rows := verdicts(Compatibility(FlavorDocumentDB, "3.6.0", colls))
		want(t, rows, "app.log option validator", Skipped, "validators from 4.0")
	})

	t.Run("5.0", func(t *testing.T) {
		plans, table := planAll(FlavorDocumentDB, "5.0.0", colls)
		rows := verdicts(table)
		want(t, rows, "app.log index partial", AsIs, "")
		want(t, rows, "app.log index text", Adapted, "key rebuilt from the weights")
		want(t, rows, "app.log index collated", Adapted, "collations from 8.0")
		want(t, rows, "app.recent view", Skipped, "views from 8.0")
		text := specsByName(plans[0].indexes)["text"]
		wantKey := marshal(t, bson.D{{Key: "body", Value: "text"}, {Key: "title", Value: "text"}})
		if key, _ := text.Lookup("key").DocumentOK(); !bytes.Equal(key, wantKey) {
			t.Errorf("text key %v, want %v", key, bson.Raw(wantKey))
		}
		for _, opt := range []string{"textIndexVersion", "default_language", "language_override"} {
			if text.Lookup(opt).Type != 0 {
				t.Errorf("text index keeps %s", opt)
			}
		}
		if text.Lookup("weights").Type == 0 {
			t.Error("text index lost its weights")
		}
	})

	t.Run("8.0", func(t *testing.T) {
		plans, table := planAll(FlavorDocumentDB, "8.0.0", colls)
		rows := verdicts(table)
		want(t, rows, "app.log option collation", AsIs, "")
		want(t, rows, "app.log index phone_sparse", AsIs, "")
		want(t, rows, "app.log index collated", Adapted, "collation version 57.1 replaced by 60.2")
		want(t, rows, "app.recent view", AsIs, "")
		want(t, rows, "app.metrics time-series collection", Refused, "")
		coll, _ := specsByName(plans[0].indexes)["collated"].Lookup("collation").DocumentOK()
		if v, _ := coll.Lookup("version").StringValueOK(); v != "60.2" {
			t.Errorf("collation %v", coll)
		}
		if loc, _ := coll.Lookup("locale").StringValueOK(); loc != "fr" {
			t.Errorf("collation %v", coll)
		}
		if !bytes.Equal(plans[1].options, colls[1].Options) {
			t.Error("view options changed")
		}
	})

	t.Run("unknown version", func(t *testing.T) {
		// Version-dependent features are taken as missing.
		rows := verdicts(Compatibility(FlavorDocumentDB, "", colls))
		want(t, rows, "app.log index text", Skipped, "from 5.0")
		want(t, rows, "app.log option validator", Skipped, "from 4.0")
	})

	t.Run("partial filters", func(t *testing.T) {
		idx := func(name string, filter bson.D) bson.Raw {
			return marshal(t, bson.D{{Key: "v", Value: int32(2)}, {Key: "key", Value: bson.D{{Key: name, Value: int32(1)}}}, {Key: "name", Value: name}, {Key: "partialFilterExpression", Value: filter}})
		}
		c := CollectionSpec{DB: "app", Name: "orders", Indexes: []bson.Raw{
			idx("and", bson.D{{Key: "$and", Value: bson.A{bson.D{{Key: "id", Value: bson.D{{Key: "$exists", Value: true}}}}, bson.D{{Key: "done", Value: false}}}}}),
			idx("range", bson.D{{Key: "n", Value: bson.D{{Key: "$gte", Value: 1}, {Key: "$lt", Value: 9}}}, {Key: "sub", Value: bson.D{{Key: "a", Value: 1}}}}),
			idx("in", bson.D{{Key: "s", Value: bson.D{{Key: "$in", Value: bson.A{"a", "b"}}}}}),
			idx("or", bson.D{{Key: "$or", Value: bson.A{bson.D{{Key: "a", Value: 1}}, bson.D{{Key: "b", Value: 1}}}}}),
			idx("nested", bson.D{{Key: "$and", Value: bson.A{bson.D{{Key: "$and", Value: bson.A{bson.D{{Key: "a", Value: 1}}}}}}}}),
			idx("type", bson.D{{Key: "s", Value: bson.D{{Key: "$type", Value: "string"}}}}),
		}}
		rows := verdicts(Compatibility(FlavorDocumentDB, "5.0.0", []CollectionSpec{c}))
		want(t, rows, "app.orders index and", AsIs, "")
		want(t, rows, "app.orders index range", AsIs, "")
		want(t, rows, "app.orders index in", Skipped, "not $in")
		want(t, rows, "app.orders index or", Skipped, "not $or")
		want(t, rows, "app.orders index nested", Skipped, "not $and")
		want(t, rows, "app.orders index type", Skipped, "not $type")
	})

	t.Run("one index per key pattern", func(t *testing.T) {
		idx := func(name string, extra ...bson.E) bson.Raw {
			return marshal(t, append(bson.D{{Key: "key", Value: bson.D{{Key: "email", Value: int32(1)}, {Key: "at", Value: -1.0}}}, {Key: "name", Value: name}}, extra...))
		}
		c := CollectionSpec{DB: "app", Name: "user", Indexes: []bson.Raw{
			idx("email_ci", bson.E{Key: "unique", Value: true}, bson.E{Key: "collation", Value: bson.D{{Key: "locale", Value: "en"}, {Key: "strength", Value: int32(2)}}}),
			idx("email_plain"),
			marshal(t, bson.D{{Key: "key", Value: bson.D{{Key: "email", Value: int64(1)}, {Key: "at", Value: int32(-1)}}}, {Key: "name", Value: "email_other_types"}}),
			marshal(t, bson.D{{Key: "key", Value: bson.D{{Key: "email", Value: int32(1)}}}, {Key: "name", Value: "email_only"}}),
		}}
		rows := verdicts(Compatibility(FlavorDocumentDB, "5.0.0", []CollectionSpec{c}))
		want(t, rows, "app.user index email_ci", Adapted, "uniqueness becomes case- and accent-sensitive")
		want(t, rows, "app.user index email_plain", Skipped, `the index "email_ci" has the same key`)
		want(t, rows, "app.user index email_other_types", Skipped, `"email_ci"`)
		want(t, rows, "app.user index email_only", AsIs, "")
		// MongoDB keeps both (they differ in collation).
		for _, r := range Compatibility(FlavorMongoDB, "7.0.0", []CollectionSpec{c}) {
			if r.Verdict != AsIs {
				t.Errorf("mongodb: %s", r)
			}
		}
	})

	t.Run("names", func(t *testing.T) {
		long := strings.Repeat("n", 58)
		db63 := strings.Repeat("d", 63)
		longIndex := strings.Repeat("i", 250)
		c := []CollectionSpec{
			{DB: "app", Name: long},
			{DB: db63, Name: strings.Repeat("c", 57)},
			{DB: strings.Repeat("d", 64), Name: "x"},
			{DB: "app", Name: "events", Indexes: []bson.Raw{marshal(t, bson.D{{Key: "key", Value: bson.D{{Key: "a", Value: 1}}}, {Key: "name", Value: longIndex}})}},
		}
		plans, table := planAll(FlavorDocumentDB, "5.0.0", c)
		rows := verdicts(table)
		want(t, rows, "app."+long+" collection", Refused, "at most 57 characters")
		want(t, rows, db63+"."+strings.Repeat("c", 57)+" collection", Refused, "at most 120 characters")
		want(t, rows, strings.Repeat("d", 64)+".x collection", Refused, "at most 63 characters")
		want(t, rows, "app.events index "+longIndex, Adapted, "renamed")
		name, _ := plans[3].indexes[0].Lookup("name").StringValueOK()
		if len("events")+1+len(name) > 255 || !strings.HasPrefix(name, "iii") || name == longIndex {
			t.Errorf("shortened name %q (%d)", name, len(name))
		}
		if again := shortIndexName(longIndex, 255-7); again != name {
			t.Errorf("shortened names differ: %q, %q", again, name)
		}
		// MongoDB takes them all, up to 255 bytes (120 before 4.4).
		for _, r := range Compatibility(FlavorMongoDB, "7.0.0", c) {
			if r.Verdict != AsIs {
				t.Errorf("mongodb: %s", r)
			}
		}
		tooLong := []CollectionSpec{{DB: "appsmith_prod", Name: strings.Repeat("c", 242)}, {DB: "app", Name: strings.Repeat("c", 117)}}
		rows = verdicts(Compatibility(FlavorAtlas, "8.0.0", tooLong))
		want(t, rows, "appsmith_prod."+strings.Repeat("c", 242)+" collection", Refused, "at most 255 bytes")
		want(t, rows, "app."+strings.Repeat("c", 117)+" collection", AsIs, "")
		rows = verdicts(Compatibility(FlavorMongoDB, "4.2.0", tooLong))
		want(t, rows, "app."+strings.Repeat("c", 117)+" collection", Refused, "at most 120 bytes")
	})

	t.Run("other options", func(t *testing.T) {
		c := []CollectionSpec{
			{DB: "app", Name: "q", Options: marshal(t, bson.D{{Key: "validator", Value: bson.D{{Key: "age", Value: bson.D{{Key: "$gte", Value: 0}}}}}, {Key: "validationAction", Value: "error"}})},
			{DB: "app", Name: "cl", Options: marshal(t, bson.D{{Key: "clusteredIndex", Value: bson.D{{Key: "key", Value: bson.D{{Key: "_id", Value: 1}}}, {Key: "unique", Value: true}}}, {Key: "expireAfterSeconds", Value: int64(60)}})},
			{DB: "app", Name: "enc", Options: marshal(t, bson.D{{Key: "encryptedFields", Value: bson.D{{Key: "fields", Value: bson.A{}}}}})},
			{DB: "app", Name: "plain", Options: marshal(t, bson.D{{Key: "capped", Value: false}})},
		}
		plans, table := planAll(FlavorDocumentDB, "5.0.0", c)
		rows := verdicts(table)
		want(t, rows, "app.q option validator", Skipped, "only $jsonSchema")
		want(t, rows, "app.cl option clusteredIndex", Skipped, "_id stays unique")
		want(t, rows, "app.cl option expireAfterSeconds", Skipped, "no longer expire")
		want(t, rows, "app.enc option encryptedFields", Refused, "Queryable Encryption")
		want(t, rows, "app.plain option capped", AsIs, "")
		if !bytes.Equal(plans[0].options, emptyDoc) || !bytes.Equal(plans[1].options, emptyDoc) || !plans[2].refused {
			t.Errorf("plans %+v", plans)
		}
	})
}

func TestCompatibilityAtlas(t *testing.T) {
	colls := appCollections(t)
	plans, table := planAll(FlavorAtlas, "8.0.4", colls)
	rows := verdicts(table)
	for _, r := range table {
		switch {
		case r.Verdict == Info:
			if r.Item != "target" || !strings.Contains(r.Detail, "M0") {
				t.Errorf("info row %s", r)
			}
		case r.Verdict != AsIs:
			t.Errorf("atlas: %s", r)
		}
	}
	want(t, rows, "target", Info, "512 MB")
	want(t, rows, "app.log option capped", AsIs, "")
	want(t, rows, "app.log index wildcard", AsIs, "")
	want(t, rows, "app.recent view", AsIs, "")
	want(t, rows, "app.metrics time-series collection", AsIs, "")
	// The plan is the snapshot's metadata, indexes as userIndexes gives
	// them.
	for i, c := range colls {
		if !bytes.Equal(plans[i].options, c.Options) {
			t.Errorf("%s: options changed", c.Name)
		}
		m := &metadata{Indexes: c.Indexes}
		wantIdx := m.userIndexes()
		if len(plans[i].indexes) != len(wantIdx) {
			t.Fatalf("%s: %d indexes, want %d", c.Name, len(plans[i].indexes), len(wantIdx))
		}
		for j := range wantIdx {
			if !bytes.Equal(plans[i].indexes[j], wantIdx[j]) {
				t.Errorf("%s: index %v, want %v", c.Name, plans[i].indexes[j], wantIdx[j])
			}
		}
	}
	// A plain MongoDB target has no info row.
	for _, r := range Compatibility(FlavorMongoDB, "7.0.0", colls) {
		if r.Verdict != AsIs {
			t.Errorf("mongodb: %s", r)
		}
	}
	// Old servers lack recent features.
	old := verdicts(Compatibility(FlavorMongoDB, "4.0.28", colls))
	want(t, old, "app.log index wildcard", Skipped, "MongoDB 4.2")
	want(t, old, "app.log index phone_sparse", Adapted, "MongoDB 4.4")
	want(t, old, "app.metrics time-series collection", Refused, "MongoDB 5.0")
}

func TestCompatibilityFerretDB(t *testing.T) {
	colls := appCollections(t)
	plans, table := planAll(FlavorFerretDB, "v1.24.2", colls)
	rows := verdicts(table)
	want(t, rows, "app.log option capped", AsIs, "")
	want(t, rows, "app.log option validator", Skipped, "validators")
	want(t, rows, "app.log option collation", Skipped, "collations")
	want(t, rows, "app.log index email_1", AsIs, "")
	want(t, rows, "app.log index compound", AsIs, "")
	want(t, rows, "app.log index ttl", Adapted, "without expireAfterSeconds")
	want(t, rows, "app.log index partial", Skipped, "partial")
	want(t, rows, "app.log index text", Skipped, "text")
	want(t, rows, "app.log index loc_2dsphere", Skipped, "2dsphere")
	want(t, rows, "app.log index pos_2d", Skipped, "2d")
	want(t, rows, "app.log index tenant_hashed", Skipped, "hashed")
	want(t, rows, "app.log index collated", Adapted, "collation")
	want(t, rows, "app.log index wildcard", Skipped, "wildcard")
	want(t, rows, "app.log index phone_sparse", Adapted, "hidden")
	want(t, rows, "app.recent view", Skipped, "no views")
	want(t, rows, "app.metrics time-series collection", Refused, "")
	wantOpts := marshal(t, bson.D{{Key: "capped", Value: true}, {Key: "size", Value: int64(1 << 20)}, {Key: "max", Value: int64(1000)}})
	if !bytes.Equal(plans[0].options, wantOpts) {
		t.Errorf("options %v, want %v", plans[0].options, bson.Raw(wantOpts))
	}
	if ttl := specsByName(plans[0].indexes)["ttl"]; ttl == nil || ttl.Lookup("expireAfterSeconds").Type != 0 {
		t.Errorf("ttl index %v", ttl)
	}
	// FerretDB 2.x is checked as MongoDB.
	for _, r := range Compatibility(FlavorFerretDB, "v2.1.0", colls[:1]) {
		if r.Verdict != AsIs {
			t.Errorf("ferretdb 2: %s", r)
		}
	}
}

func TestCompatRowString(t *testing.T) {
	r := CompatRow{Namespace: "app.user", Item: "index ttl", Verdict: Skipped, Detail: "why"}
	if got := r.String(); got != "app.user index ttl: skipped: why" {
		t.Errorf("String() = %q", got)
	}
	r = CompatRow{Namespace: "app.user", Item: "collection", Verdict: AsIs}
	if got := r.String(); got != "app.user collection: as is" {
		t.Errorf("String() = %q", got)
	}
}

func TestParseFlavor(t *testing.T) {
	for in, want := range map[string]Flavor{"": "", "mongodb": FlavorMongoDB, "Atlas": FlavorAtlas, " documentdb ": FlavorDocumentDB, "ferretdb": FlavorFerretDB} {
		got, err := ParseFlavor(in)
		if err != nil || got != want {
			t.Errorf("ParseFlavor(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseFlavor("cosmosdb"); err == nil || !strings.Contains(err.Error(), "mongodb, atlas, documentdb, ferretdb") {
		t.Errorf("ParseFlavor(cosmosdb): %v", err)
	}
}

func TestClassifyFlavor(t *testing.T) {
	doc := func(d bson.D) bson.Raw { return marshal(t, d) }
	mongoBuild := doc(bson.D{{Key: "version", Value: "7.0.12"}, {Key: "gitVersion", Value: "abc"}, {Key: "modules", Value: bson.A{}}, {Key: "ok", Value: 1.0}})
	plainHello := doc(bson.D{{Key: "isWritablePrimary", Value: true}, {Key: "ok", Value: 1.0}})
	rsHello := func(hosts ...string) bson.Raw {
		a := bson.A{}
		for _, h := range hosts {
			a = append(a, h)
		}
		return doc(bson.D{{Key: "isWritablePrimary", Value: true}, {Key: "hosts", Value: a}, {Key: "setName", Value: "rs0"}, {Key: "me", Value: hosts[0]}, {Key: "primary", Value: hosts[0]}})
	}
	// buildInfo of FerretDB 1.24.2 as the lab server answers it.
	ferret1 := doc(bson.D{{Key: "version", Value: "7.0.42"}, {Key: "gitVersion", Value: "unknown"}, {Key: "modules", Value: bson.A{}},
		{Key: "ferretdbVersion", Value: "v1.24.2"}, {Key: "ferretdbFeatures", Value: bson.D{{Key: "aggregationStages", Value: bson.A{"$count"}}}}, {Key: "ok", Value: 1.0}})
	ferret2 := doc(bson.D{{Key: "version", Value: "7.0.77"}, {Key: "ferretdb", Value: bson.D{{Key: "version", Value: "v2.1.0"}}}, {Key: "ok", Value: 1.0}})
	docdb := doc(bson.D{{Key: "version", Value: "5.0.0"}, {Key: "versionArray", Value: bson.A{int32(5), int32(0), int32(0), int32(0)}}, {Key: "ok", Value: 1.0}})

	cases := []struct {
		name, uri    string
		hello, build bson.Raw
		flavor       Flavor
		version      string
	}{
		{"mongodb", "mongodb://127.0.0.1:27017/", plainHello, mongoBuild, FlavorMongoDB, "7.0.12"},
		{"ferretdb 1", "mongodb://127.0.0.1:27017/", plainHello, ferret1, FlavorFerretDB, "v1.24.2"},
		{"ferretdb 2", "mongodb://127.0.0.1:27017/", plainHello, ferret2, FlavorFerretDB, "v2.1.0"},
		{"documentdb uri", "mongodb://app:secret@prod.cluster-c9akciq32.eu-west-1.docdb.amazonaws.com:27017/?tls=true&replicaSet=rs0",
			rsHello("prod.c9akciq32.eu-west-1.docdb.amazonaws.com:27017"), docdb, FlavorDocumentDB, "5.0.0"},
		{"documentdb elastic", "mongodb://u:p@ec.docdb-elastic.amazonaws.com:27017/?tls=true", plainHello, docdb, FlavorDocumentDB, "5.0.0"},
		{"documentdb tunnel", "mongodb://u:p@localhost:27017/?tls=true&tlsAllowInvalidHostnames=true&directConnection=true",
			rsHello("prod-1.c9akciq32.eu-west-1.docdb.amazonaws.com:27017", "prod-2.c9akciq32.eu-west-1.docdb.amazonaws.com:27017"), docdb, FlavorDocumentDB, "5.0.0"},
		{"documentdb china", "mongodb://u:p@x.cluster-abc.cn-north-1.docdb.amazonaws.com.cn:27017/", plainHello, docdb, FlavorDocumentDB, "5.0.0"},
		{"atlas srv", "mongodb+srv://u:p@cluster0.ab1cd.mongodb.net/appsmith?retryWrites=true&w=majority",
			rsHello("ac-x-shard-00-00.ab1cd.mongodb.net:27017"), mongoBuild, FlavorAtlas, "7.0.12"},
		{"atlas hosts", "mongodb://u:p@10.0.0.1:27017/", rsHello("ac-x-shard-00-01.ab1cd.mongodb.net:27017"), mongoBuild, FlavorAtlas, "7.0.12"},
		{"not atlas", "mongodb://mongodb.net.example.com:27017/", plainHello, mongoBuild, FlavorMongoDB, "7.0.12"},
		{"no answers", "mongodb://h/", nil, nil, FlavorMongoDB, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, v := classifyFlavor(tc.uri, tc.hello, tc.build)
			if f != tc.flavor || v != tc.version {
				t.Errorf("classifyFlavor = %s %q, want %s %q", f, v, tc.flavor, tc.version)
			}
		})
	}
}

func TestRetryWritesOff(t *testing.T) {
	for in, want := range map[string]string{
		"mongodb://h:27017":                       "mongodb://h:27017/?retryWrites=false",
		"mongodb://u:p@h:27017/":                  "mongodb://u:p@h:27017/?retryWrites=false",
		"mongodb://u:p@h:27017/db":                "mongodb://u:p@h:27017/db?retryWrites=false",
		"mongodb://u:p@h:27017/?tls=true":         "mongodb://u:p@h:27017/?tls=true&retryWrites=false",
		"mongodb://h1,h2/db?replicaSet=rs0":       "mongodb://h1,h2/db?replicaSet=rs0&retryWrites=false",
		"mongodb://h/?retryWrites=true":           "mongodb://h/?retryWrites=true",
		"mongodb://h/?tls=true&RetryWrites=false": "mongodb://h/?tls=true&RetryWrites=false",
	} {
		if got, _ := retryWritesOff(in); got != want {
			t.Errorf("retryWritesOff(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]serverVersion{
		"5.0.0": {5, 0, true}, "v1.24.2": {1, 24, true}, "8.0.4-rc1": {8, 0, true}, "4.4": {4, 4, true},
		"": {}, "x.y": {}, "7": {},
	} {
		if got := parseVersion(in); got != want {
			t.Errorf("parseVersion(%q) = %+v, want %+v", in, got, want)
		}
	}
	v := parseVersion("5.0.0")
	if !v.atLeast(5, 0, false) || v.atLeast(5, 1, false) || !v.atLeast(4, 9, false) || v.atLeast(8, 0, true) {
		t.Error("atLeast")
	}
	if u := (serverVersion{}); !u.atLeast(9, 9, true) || u.atLeast(1, 0, false) {
		t.Error("atLeast of an unknown version")
	}
}
