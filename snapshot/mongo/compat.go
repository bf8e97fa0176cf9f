package mongo

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// ErrIncompatible is wrapped by the error of a restore that stops before
// writing anything because the target cannot hold part of the snapshot (a
// "refused" item of the compatibility table), or because Strict is set and
// part of it would be adapted or skipped.
var ErrIncompatible = errors.New("the target cannot hold the snapshot as it is")

// A Verdict says what a restore does with one item of a snapshot (a
// collection, a collection option, an index) on a target flavor.
//
// The rule: "adapted" means the item is restored in a changed form (an index
// built without an option it cannot have, under a shorter name...);
// "skipped" means the item is not restored at all (an index not built, a
// collection option dropped, a view not created) while the rest goes on;
// "refused" means the restore cannot go on (the data itself would not fit,
// such as a time-series collection on a server without them).
type Verdict string

// Verdicts.
const (
	AsIs    Verdict = "as is"
	Adapted Verdict = "adapted"
	Skipped Verdict = "skipped"
	Refused Verdict = "refused"
	// Info rows carry a note about the target (Atlas tier limits); they
	// change nothing.
	Info Verdict = "info"
)

// A CompatRow is one line of the compatibility table.
type CompatRow struct {
	Namespace string  // the target collection, "db.coll" ("" for rows about the whole target)
	Item      string  // "collection", "view", "time-series collection", "option <name>", "index <name>", "target"
	Verdict   Verdict //
	Detail    string  // how (adapted), why (skipped, refused) or the note (info); empty for as is
}

func (r CompatRow) String() string {
	s := r.Item + ": " + string(r.Verdict)
	if r.Namespace != "" {
		s = r.Namespace + " " + s
	}
	if r.Detail != "" {
		s += ": " + r.Detail
	}
	return s
}

// A CollectionSpec is a collection or view as Compatibility sees it: its
// target namespace and its metadata as mongodump records it.
type CollectionSpec struct {
	DB, Name string
	Type     string     // "collection" (or ""), "view" or "timeseries"
	Options  bson.Raw   // the create options (nil for none)
	Indexes  []bson.Raw // as listIndexes reports them, the _id index included
}

// Compatibility returns the compatibility table of colls restored into a
// server of flavor f and version (buildInfo's version; FerretDB's own
// version for FerretDB): one row per collection or view, per collection
// option and per index (except _id's, created with the collection), plus
// info rows about the target. It is a pure function: the rules are those
// documented below, each with its source.
func Compatibility(f Flavor, version string, colls []CollectionSpec) []CompatRow {
	_, rows := planAll(f, version, colls)
	return rows
}

// A collPlan is what a restore creates for one collection or view.
type collPlan struct {
	skip    bool       // not created (a view the target cannot hold)
	refused bool       // the target cannot hold it
	options bson.Raw   // the create options
	indexes []bson.Raw // the indexes built after the data, _id's excluded
}

// planAll returns the plan of each of colls, in order, and the
// compatibility table.
func planAll(f Flavor, version string, colls []CollectionSpec) ([]collPlan, []CompatRow) {
	r := newRules(f, version)
	plans := make([]collPlan, len(colls))
	var rows []CompatRow
	for i, c := range colls {
		var crows []CompatRow
		plans[i], crows = r.collection(c)
		rows = append(rows, crows...)
	}
	if f == FlavorAtlas && len(colls) > 0 {
		// Source: https://www.mongodb.com/docs/atlas/reference/free-shared-limitations/
		// and https://www.mongodb.com/docs/atlas/reference/faq/storage/.
		rows = append(rows, CompatRow{Item: "target", Verdict: Info, Detail: "Atlas Free (M0) and Flex clusters " +
			"have a hard storage limit (512 MB on M0), cap operations per second (100 on M0) and restrict some " +
			"commands; dedicated clusters (M10 and up) have none of these limits"})
	}
	return plans, rows
}

// rules are the compatibility rules of one flavor and version.
type rules struct {
	flavor Flavor
	ver    serverVersion
	// kind is the rule set: the flavor, except that FerretDB 2.x and later
	// (built on DocumentDB's PostgreSQL extension, with far fewer gaps than
	// 1.x) is checked as MongoDB and left to refuse what it cannot do.
	kind Flavor
}

func newRules(f Flavor, version string) rules {
	r := rules{flavor: f, ver: parseVersion(version), kind: f}
	switch {
	case f == FlavorAtlas, f == "":
		r.kind = FlavorMongoDB
	case f == FlavorFerretDB && r.ver.atLeast(2, 0, false):
		// Its version is FerretDB's, not the MongoDB one the version
		// gates of MongoDB's rules expect.
		r.kind, r.ver = FlavorMongoDB, serverVersion{}
	}
	return r
}

// DocumentDB limits, from the constants of AWS's own migration tool
// (github.com/awslabs/amazon-documentdb-tools, index-tool,
// DocumentDbLimits), which follow "Amazon DocumentDB Quotas and Limits",
// naming constraints (docs.aws.amazon.com/documentdb/latest/developerguide/limits.html).
const (
	docDBMaxDBName        = 63  // database name
	docDBMaxCollName      = 57  // collection name
	docDBMaxNamespace     = 120 // <db>.<collection>
	docDBMaxCollIndexName = 255 // <collection>$<index>
	docDBMaxFullIndexName = 377 // <db>.<collection>.$<index>
	docDBMaxIndexKeys     = 32  // fields of a compound index
)

// docDBCollation is the collation version DocumentDB 8.0 uses: "if a
// mongodb collection with collation is exported, you will need to update
// the metadata.bson files and change its version from 57.1 to 60.2 prior to
// migration" (docs.aws.amazon.com/documentdb/latest/developerguide/collation.html).
const docDBCollation = "60.2"

// docDBPartialOps are the operators DocumentDB accepts in a
// partialFilterExpression ($and only at the top level), from "Partial
// index", supported operators
// (docs.aws.amazon.com/documentdb/latest/developerguide/partial-index.html).
var docDBPartialOps = map[string]bool{"$eq": true, "$exists": true, "$gt": true, "$gte": true, "$lt": true, "$lte": true}

// collection returns the plan and the rows of one collection or view.
func (r rules) collection(c CollectionSpec) (collPlan, []CompatRow) {
	ns := c.DB + "." + c.Name
	var rows []CompatRow
	add := func(item string, v Verdict, detail string) {
		rows = append(rows, CompatRow{Namespace: ns, Item: item, Verdict: v, Detail: detail})
	}
	item := "collection"
	switch c.Type {
	case typeView:
		item = "view"
	case typeTimeseries:
		item = "time-series collection"
	}
	var p collPlan
	switch {
	case r.kind == FlavorDocumentDB && len(c.DB) > docDBMaxDBName:
		p.refused = true
		add(item, Refused, fmt.Sprintf("DocumentDB database names have at most %d characters; rename the database", docDBMaxDBName))
	case r.kind == FlavorDocumentDB && len(c.Name) > docDBMaxCollName:
		p.refused = true
		add(item, Refused, fmt.Sprintf("DocumentDB collection names have at most %d characters", docDBMaxCollName))
	case r.kind == FlavorDocumentDB && len(ns) > docDBMaxNamespace:
		p.refused = true
		add(item, Refused, fmt.Sprintf("DocumentDB namespaces (<db>.<collection>) have at most %d characters; rename the database", docDBMaxNamespace))
	case r.kind == FlavorMongoDB && len(ns) > mongoMaxNamespace(r.ver):
		p.refused = true
		add(item, Refused, fmt.Sprintf("MongoDB namespaces (<db>.<collection>) have at most %d bytes; rename the database", mongoMaxNamespace(r.ver)))
	case c.Type == typeTimeseries && r.noTimeseries() != "":
		p.refused = true
		add(item, Refused, r.noTimeseries())
	case c.Type == typeView && r.noViews() != "":
		p.skip = true
		add(item, Skipped, r.noViews())
		return p, rows
	default:
		add(item, AsIs, "")
	}
	var orows, irows []CompatRow
	p.options, orows = r.options(ns, c.Options)
	p.indexes, irows = r.indexes(c.DB, c.Name, c.Indexes)
	for _, row := range orows {
		if row.Verdict == Refused {
			p.refused = true
		}
	}
	return p, append(append(rows, orows...), irows...)
}

// mongoMaxNamespace is the longest namespace <db>.<collection> of a MongoDB
// server: 255 bytes since 4.4, 120 before (MongoDB Limits and Thresholds,
// Namespace Length; SERVER-46641).
func mongoMaxNamespace(v serverVersion) int {
	if v.atLeast(4, 4, true) {
		return 255
	}
	return 120
}

// noTimeseries says why the target has no time-series collections, or "".
func (r rules) noTimeseries() string {
	switch {
	case r.kind == FlavorDocumentDB:
		// Source: MongoDB's "Amazon DocumentDB Compatibility" page
		// (mongodb.com/docs/drivers/documentdb-support) lists time-series
		// data among the unsupported features.
		return "DocumentDB has no time-series collections"
	case r.kind == FlavorFerretDB:
		// Source: LAB.md (FerretDB 1.24 answers create with timeseries
		// NotImplemented).
		return "FerretDB 1.x has no time-series collections"
	case !r.ver.atLeast(5, 0, true):
		return "time-series collections need MongoDB 5.0"
	}
	return ""
}

// noViews says why the target has no views, or "".
func (r rules) noViews() string {
	switch {
	case r.kind == FlavorDocumentDB && !r.ver.atLeast(8, 0, false):
		// Source: createView is unsupported before 8.0 (mongo-apis
		// page; mongodb.com/docs/drivers/documentdb-support); "Amazon
		// DocumentDB 8.0 supports collation and views"
		// (docs.aws.amazon.com/documentdb/latest/developerguide/compatibility.html).
		return "DocumentDB supports views from 8.0; recreate it by hand"
	case r.kind == FlavorFerretDB:
		// Source: LAB.md; probed: create with viewOn answers NotImplemented.
		return "FerretDB 1.x has no views; recreate it by hand"
	}
	return ""
}

// optionRule is the fate of one collection option.
type optionRule struct {
	verdict Verdict
	detail  string
	repl    bson.RawValue // for adapted: the new value
}

// options returns the create options of a collection and the rows of its
// options, one per option (size and max go with capped, validationLevel and
// validationAction with validator).
func (r rules) options(ns string, opts bson.Raw) (bson.Raw, []CompatRow) {
	if len(opts) == 0 {
		return emptyDoc, nil
	}
	elems, err := opts.Elements()
	if err != nil {
		return opts, nil // checked when the metadata was decoded
	}
	fate := map[string]optionRule{}
	for _, e := range elems {
		fate[e.Key()] = r.option(e.Key(), e.Value(), opts)
	}
	// Dependent options follow the option they qualify.
	follow := map[string]string{"size": "capped", "max": "capped", "validationLevel": "validator", "validationAction": "validator"}
	var rows []CompatRow
	for _, e := range elems {
		k := e.Key()
		if lead, ok := follow[k]; ok {
			if _, has := fate[lead]; has {
				if fate[lead].verdict == Skipped {
					fate[k] = fate[lead]
				} else {
					fate[k] = optionRule{verdict: AsIs}
				}
				continue
			}
		}
		f := fate[k]
		rows = append(rows, CompatRow{Namespace: ns, Item: "option " + k, Verdict: f.verdict, Detail: f.detail})
	}
	out := rewrite(opts, func(key string, _ bson.RawValue) (bson.RawValue, bool) {
		f := fate[key]
		switch f.verdict {
		case Skipped:
			return bson.RawValue{}, false
		case Adapted:
			return f.repl, true
		}
		return bson.RawValue{}, true
	})
	return out, rows
}

// option returns the fate of the collection option key with value v (opts
// are all the options).
func (r rules) option(key string, v bson.RawValue, opts bson.Raw) optionRule {
	asIs := optionRule{verdict: AsIs}
	skip := func(format string, args ...any) optionRule {
		return optionRule{verdict: Skipped, detail: fmt.Sprintf(format, args...)}
	}
	switch r.kind {
	case FlavorDocumentDB:
		switch key {
		case "capped":
			if b, ok := v.BooleanOK(); ok && !b {
				return asIs
			}
			// Source: "Supported MongoDB APIs, operations, and data
			// types", Capped Collections: No on 3.6, 4.0, 5.0, 8.0 and
			// elastic clusters (docs.aws.amazon.com/documentdb/latest/developerguide/mongo-apis.html);
			// awslabs/amazon-documentdb-tools index-tool,
			// UNSUPPORTED_COLLECTION_OPTIONS = ['capped'].
			return skip("DocumentDB has no capped collections: created as a normal collection (without capped, size and max), so old documents are no longer rolled over")
		case "collation":
			// Source: "Using Collation in Amazon DocumentDB 8.0": collation
			// at collection or index level from 8.0, with ICU version 60.2
			// instead of MongoDB's 57.1.
			if !r.ver.atLeast(8, 0, false) {
				return skip("DocumentDB supports collations from 8.0: created without its default collation, so string comparisons and sorts are binary")
			}
			return docDBCollationRule(v)
		case "validator", "validationLevel", "validationAction":
			// Source: "Using JSON schema validation"
			// (docs.aws.amazon.com/documentdb/latest/developerguide/json-schema-validation.html);
			// "Schema validation is available in Amazon DocumentDB 5.0 and
			// 4.0 instance-based clusters" (AWS What's New, 2023-09-25);
			// $jsonSchema "New from version 4.0. Not supported by Elastic
			// cluster". Only $jsonSchema validators are documented.
			if !r.ver.atLeast(4, 0, false) {
				return skip("DocumentDB supports validators from 4.0: created without it")
			}
			if val, ok := opts.Lookup("validator").DocumentOK(); ok {
				if elems, err := val.Elements(); err == nil && (len(elems) != 1 || elems[0].Key() != "$jsonSchema") {
					return skip("DocumentDB supports only $jsonSchema validators: created without this one")
				}
			}
			return asIs
		case "clusteredIndex":
			// Source: not among DocumentDB's supported features (mongo-apis
			// page); the _id index keeps _id unique.
			return skip("DocumentDB has no clustered collections: created as a normal collection (_id stays unique)")
		case "expireAfterSeconds":
			return skip("DocumentDB has no collection-level TTL (clustered collections): documents no longer expire")
		case "changeStreamPreAndPostImages":
			return skip("DocumentDB has no change stream pre- and post-images")
		case "storageEngine", "indexOptionDefaults":
			// Source: awslabs/amazon-documentdb-tools index-tool treats
			// storageEngine as unsupported; storage settings are
			// WiredTiger's, not DocumentDB's.
			return skip("storage engine settings do not apply to DocumentDB")
		case "encryptedFields":
			// Source: mongodb.com/docs/drivers/documentdb-support lists
			// Queryable Encryption among the unsupported features.
			return optionRule{verdict: Refused, detail: "DocumentDB has no Queryable Encryption: the encrypted fields would be unreadable"}
		}
	case FlavorFerretDB:
		// Source: LAB.md and probes of FerretDB 1.24.2: create answers
		// NotImplemented for collation, validator, validationLevel,
		// validationAction, viewOn and timeseries; capped, size, max,
		// clusteredIndex and storageEngine are accepted.
		switch key {
		case "collation":
			return skip("FerretDB 1.x does not implement collations: created without its default collation, so string comparisons and sorts are binary")
		case "validator", "validationLevel", "validationAction":
			return skip("FerretDB 1.x does not implement validators: created without it")
		case "expireAfterSeconds":
			return skip("FerretDB 1.x has no TTL: documents no longer expire")
		case "changeStreamPreAndPostImages":
			return skip("FerretDB 1.x has no change streams")
		case "encryptedFields":
			return optionRule{verdict: Refused, detail: "FerretDB has no Queryable Encryption: the encrypted fields would be unreadable"}
		}
	default:
		// MongoDB and Atlas: versions of the server that lack an option
		// (MongoDB release notes: clustered collections 5.3, change
		// stream pre- and post-images 6.0).
		switch key {
		case "clusteredIndex":
			if !r.ver.atLeast(5, 3, true) {
				return skip("clustered collections need MongoDB 5.3: created as a normal collection (_id stays unique)")
			}
		case "changeStreamPreAndPostImages":
			if !r.ver.atLeast(6, 0, true) {
				return skip("change stream pre- and post-images need MongoDB 6.0")
			}
		}
	}
	return asIs
}

// docDBCollationRule returns the fate of a collation (collection option or
// index option) on DocumentDB 8.0: its ICU version, when recorded, is
// replaced by DocumentDB's.
func docDBCollationRule(v bson.RawValue) optionRule {
	doc, ok := v.DocumentOK()
	if !ok {
		return optionRule{verdict: AsIs}
	}
	ver, ok := doc.Lookup("version").StringValueOK()
	if !ok || ver == docDBCollation {
		return optionRule{verdict: AsIs}
	}
	repl := rewrite(doc, func(key string, _ bson.RawValue) (bson.RawValue, bool) {
		if key == "version" {
			return stringValue(docDBCollation), true
		}
		return bson.RawValue{}, true
	})
	return optionRule{verdict: Adapted, detail: fmt.Sprintf("collation version %s replaced by %s, as DocumentDB 8.0 requires", ver, docDBCollation), repl: docValue(repl)}
}

// indexes returns the indexes to build for the collection db.coll from the
// specifications of the snapshot, and their rows.
func (r rules) indexes(db, coll string, specs []bson.Raw) ([]bson.Raw, []CompatRow) {
	ns := db + "." + coll
	var out []bson.Raw
	var rows []CompatRow
	keys := map[string]string{} // key pattern → name of the index built on it
	for _, spec := range specs {
		name, _ := spec.Lookup("name").StringValueOK()
		if name == idIndex {
			continue
		}
		built, verdict, detail := r.index(db, coll, spec)
		if verdict != Skipped && (r.kind == FlavorDocumentDB || r.kind == FlavorFerretDB) {
			// Source: DocumentDB and FerretDB allow one index per key
			// pattern; MongoDB allows several that differ in collation or
			// partial filter (FerretDB 1.24 answers
			// IndexOptionsConflict, probed).
			pattern := keyPattern(built)
			if other, ok := keys[pattern]; ok {
				verdict, detail = Skipped, fmt.Sprintf("the index %q has the same key and %s allows one index per key pattern", other, r.flavor)
			} else {
				keys[pattern] = name
			}
		}
		rows = append(rows, CompatRow{Namespace: ns, Item: "index " + name, Verdict: verdict, Detail: detail})
		if verdict != Skipped {
			out = append(out, built)
		}
	}
	return out, rows
}

// index returns the specification to build for one index (without the
// fields "ns" and "v", which the target sets), what is done with it and how
// or why.
func (r rules) index(db, coll string, spec bson.Raw) (bson.Raw, Verdict, string) {
	name, _ := spec.Lookup("name").StringValueOK()
	key, _ := spec.Lookup("key").DocumentOK()
	elems, _ := key.Elements()
	types := map[string]bool{}
	wildcard, textWildcard := false, false
	for _, e := range elems {
		if s, ok := e.Value().StringValueOK(); ok {
			types[s] = true
		}
		if k := e.Key(); k == "$**" || strings.HasSuffix(k, ".$**") {
			wildcard = true
		}
	}
	if types["text"] {
		if w, ok := spec.Lookup("weights").DocumentOK(); ok && w.Lookup("$**").Type != 0 {
			textWildcard = true
		}
	}
	has := func(opt string) bool { return spec.Lookup(opt).Type != 0 }
	truthy := func(opt string) bool {
		v := spec.Lookup(opt)
		if b, ok := v.BooleanOK(); ok {
			return b
		}
		return v.Type != 0 && v.Type != bson.TypeNull
	}

	drop := map[string]bool{"ns": true, "v": true}
	var how []string
	adapt := func(opt, why string) {
		drop[opt] = true
		how = append(how, why)
	}
	var newKey bson.Raw
	var newName, newCollation string

	switch r.kind {
	case FlavorDocumentDB:
		switch {
		case len(elems) > docDBMaxIndexKeys:
			return nil, Skipped, fmt.Sprintf("DocumentDB indexes have at most %d fields", docDBMaxIndexKeys)
		case types["hashed"]:
			// Source: awslabs/amazon-documentdb-tools index-tool,
			// UNSUPPORTED_INDEX_TYPES; the supported index types of
			// "Index Property: name" (single field, compound,
			// multi-key, text, geospatial, vector) have no hashed.
			return nil, Skipped, "DocumentDB has no hashed indexes"
		case types["2d"], types["geoHaystack"], types["2dsphere_bucket"]:
			// Source: "Geospatial Indexes": "Amazon DocumentDB supports
			// 2dsphere indexes".
			return nil, Skipped, "DocumentDB supports only 2dsphere geospatial indexes"
		case wildcard || textWildcard:
			// Source: awslabs/amazon-documentdb-tools index-tool,
			// UNSUPPORTED_FIELD_NAMES_PATTERN ^\$\*{2,}$.
			return nil, Skipped, "DocumentDB has no wildcard indexes"
		case types["text"] && !r.ver.atLeast(5, 0, false):
			// Source: "Index Property: name", text: No on 3.6 and 4.0,
			// Yes on 5.0 and 8.0; "Index type not supported : text"
			// (error 303) on 4.0.
			return nil, Skipped, "DocumentDB supports text indexes from 5.0"
		case has("partialFilterExpression") && !r.ver.atLeast(5, 0, false):
			// Source: "Partial index": "supported in Amazon DocumentDB 5.0
			// instance-based clusters".
			return nil, Skipped, "DocumentDB supports partial indexes from 5.0"
		case has("partialFilterExpression"):
			f, _ := spec.Lookup("partialFilterExpression").DocumentOK()
			if op := docDBPartialFilter(f, true); op != "" {
				return nil, Skipped, fmt.Sprintf("DocumentDB partial filters support only $eq, $exists, $gt, $gte, $lt, $lte and a top-level $and, not %s", op)
			}
		}
		if types["text"] {
			// Source: awslabs/amazon-documentdb-tools index-tool, which
			// rebuilds a text index's key from its weights ({field:
			// "text"}) and drops IGNORED_INDEX_OPTIONS; "Performing text
			// search": one text index per collection, weights supported.
			for _, e := range elems {
				if k := e.Key(); k != "_fts" && k != "_ftsx" {
					return nil, Skipped, "a compound text index (with other fields) cannot be rebuilt from its weights for DocumentDB"
				}
			}
			if w, ok := spec.Lookup("weights").DocumentOK(); ok {
				newKey = textKey(w)
				how = append(how, "key rebuilt from the weights")
			}
			for _, opt := range []string{"textIndexVersion", "default_language", "language_override"} {
				if has(opt) {
					drop[opt] = true
				}
			}
			if has("textIndexVersion") || has("default_language") || has("language_override") {
				how = append(how, "textIndexVersion, default_language and language_override dropped (as AWS's index tool does)")
			}
		}
		if has("2dsphereIndexVersion") {
			// Source: awslabs/amazon-documentdb-tools index-tool,
			// IGNORED_INDEX_OPTIONS; its --support-2dsphere note:
			// "collections data must use GeoJSON Point type".
			adapt("2dsphereIndexVersion", "2dsphereIndexVersion dropped (DocumentDB indexes GeoJSON points only)")
		}
		if has("collation") {
			if !r.ver.atLeast(8, 0, false) {
				adapt("collation", collationDropped(truthy("unique"), "DocumentDB supports collations from 8.0"))
			} else if f := docDBCollationRule(spec.Lookup("collation")); f.verdict == Adapted {
				newCollation = f.detail
			}
		}
		if has("hidden") {
			// Source: "Index property: hidden": "supports the hidden index
			// property beginning with Amazon DocumentDB 8.0.1".
			if !truthy("hidden") {
				drop["hidden"] = true
			} else if !r.ver.atLeast(8, 0, false) {
				adapt("hidden", "built visible: DocumentDB supports hidden indexes from 8.0.1")
			}
		}
		for _, opt := range []string{"storageEngine", "dropDups"} {
			// Source: awslabs/amazon-documentdb-tools index-tool,
			// UNSUPPORTED_INDEX_OPTIONS (storageEngine, collation,
			// dropDuplicates).
			if has(opt) {
				adapt(opt, opt+" dropped")
			}
		}
		if len(coll)+1+len(name) > docDBMaxCollIndexName || len(db)+len(coll)+3+len(name) > docDBMaxFullIndexName {
			// Source: DocumentDB naming constraints (see the constants);
			// the index tool's --shorten-index-name does the same.
			newName = shortIndexName(name, min(docDBMaxCollIndexName-len(coll)-1, docDBMaxFullIndexName-len(db)-len(coll)-3))
			how = append(how, fmt.Sprintf("renamed %s (DocumentDB limits <collection>$<index> to %d and <db>.<collection>.$<index> to %d characters)", newName, docDBMaxCollIndexName, docDBMaxFullIndexName))
		}
	case FlavorFerretDB:
		// Source: LAB.md and probes of FerretDB 1.24.2: createIndexes
		// answers NotImplemented for expireAfterSeconds,
		// partialFilterExpression, collation, hidden and storageEngine,
		// and IndexNotFound for text, hashed, 2d and 2dsphere keys; a
		// "$**" key is taken as a field name (FerretDB issue #2947:
		// wildcard indexes not supported).
		for _, t := range []string{"text", "hashed", "2d", "2dsphere", "2dsphere_bucket", "geoHaystack"} {
			if types[t] {
				return nil, Skipped, fmt.Sprintf("FerretDB 1.x has no %s indexes", t)
			}
		}
		switch {
		case wildcard:
			return nil, Skipped, "FerretDB 1.x has no wildcard indexes"
		case has("partialFilterExpression"):
			return nil, Skipped, "FerretDB 1.x has no partial indexes"
		}
		if has("expireAfterSeconds") {
			adapt("expireAfterSeconds", "built without expireAfterSeconds: FerretDB 1.x has no TTL indexes, so documents no longer expire")
		}
		if has("collation") {
			adapt("collation", collationDropped(truthy("unique"), "FerretDB 1.x has no collations"))
		}
		if has("hidden") {
			if truthy("hidden") {
				adapt("hidden", "built visible: FerretDB 1.x has no hidden indexes")
			} else {
				drop["hidden"] = true
			}
		}
		if has("storageEngine") {
			adapt("storageEngine", "storageEngine dropped")
		}
	default:
		// MongoDB and Atlas: versions of the server that lack an index kind
		// (MongoDB release notes: wildcard indexes 4.2, hidden indexes
		// 4.4).
		if wildcard && !r.ver.atLeast(4, 2, true) {
			return nil, Skipped, "wildcard indexes need MongoDB 4.2"
		}
		if has("hidden") && truthy("hidden") && !r.ver.atLeast(4, 4, true) {
			adapt("hidden", "built visible: hidden indexes need MongoDB 4.4")
		}
	}

	out := rewrite(spec, func(k string, v bson.RawValue) (bson.RawValue, bool) {
		switch {
		case drop[k]:
			return bson.RawValue{}, false
		case k == "key" && newKey != nil:
			return docValue(newKey), true
		case k == "name" && newName != "":
			return stringValue(newName), true
		case k == "collation" && newCollation != "":
			return docDBCollationRule(v).repl, true
		}
		return bson.RawValue{}, true
	})
	if newCollation != "" {
		how = append(how, newCollation)
	}
	if len(how) == 0 {
		return out, AsIs, ""
	}
	return out, Adapted, strings.Join(how, "; ")
}

// collationDropped says how an index is built without its collation.
func collationDropped(unique bool, why string) string {
	s := "built without its collation (" + why + "): string keys compare binary"
	if unique {
		s += ", so uniqueness becomes case- and accent-sensitive"
	}
	return s
}

// docDBPartialFilter returns the first operator of a partial filter that
// DocumentDB does not accept, or "".
func docDBPartialFilter(f bson.Raw, top bool) string {
	elems, err := f.Elements()
	if err != nil {
		return "a malformed filter"
	}
	for _, e := range elems {
		k := e.Key()
		if k == "$and" && top {
			arr, ok := e.Value().ArrayOK()
			if !ok {
				return "$and without an array"
			}
			vals, _ := arr.Values()
			for _, v := range vals {
				sub, ok := v.DocumentOK()
				if !ok {
					return "$and with a non-document"
				}
				if op := docDBPartialFilter(sub, false); op != "" {
					return op
				}
			}
			continue
		}
		if strings.HasPrefix(k, "$") {
			return k
		}
		cond, ok := e.Value().DocumentOK()
		if !ok {
			continue // {field: value} is $eq
		}
		ops, err := cond.Elements()
		if err != nil || len(ops) == 0 || !strings.HasPrefix(ops[0].Key(), "$") {
			continue // equality to a document
		}
		for _, op := range ops {
			if !docDBPartialOps[op.Key()] {
				return op.Key()
			}
		}
	}
	return ""
}

// textKey returns the key {field: "text", ...} of a text index's weights.
func textKey(weights bson.Raw) bson.Raw {
	var d bson.D
	elems, _ := weights.Elements()
	for _, e := range elems {
		d = append(d, bson.E{Key: e.Key(), Value: "text"})
	}
	raw, err := bson.Marshal(d)
	if err != nil {
		return nil
	}
	return raw
}

// keyPattern returns a canonical form of an index specification's key:
// fields in order with 1, -1 or their index type.
func keyPattern(spec bson.Raw) string {
	key, _ := spec.Lookup("key").DocumentOK()
	elems, _ := key.Elements()
	var b strings.Builder
	for _, e := range elems {
		b.WriteString(e.Key())
		b.WriteByte(0)
		v := e.Value()
		if s, ok := v.StringValueOK(); ok {
			b.WriteString(s)
		} else if f, ok := v.AsFloat64OK(); ok && !math.IsNaN(f) {
			if f < 0 {
				b.WriteString("-1")
			} else {
				b.WriteString("1")
			}
		} else {
			b.WriteString(v.String())
		}
		b.WriteByte(0)
	}
	return b.String()
}

// shortIndexName returns a name of at most max bytes for an index named
// name: a prefix of it and a hash of the whole name, so that it is stable
// and distinct.
func shortIndexName(name string, max int) string {
	sum := sha256.Sum256([]byte(name))
	suffix := "_" + hex.EncodeToString(sum[:4])
	keep := max - len(suffix)
	if keep < 1 {
		keep = 1
	}
	prefix := name
	if len(prefix) > keep {
		prefix = prefix[:keep]
		// Do not cut a UTF-8 sequence.
		for len(prefix) > 0 && prefix[len(prefix)-1]&0xc0 == 0x80 {
			prefix = prefix[:len(prefix)-1]
		}
		if len(prefix) > 0 && prefix[len(prefix)-1] >= 0xc0 {
			prefix = prefix[:len(prefix)-1]
		}
	}
	return prefix + suffix
}
