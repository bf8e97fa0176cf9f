package mongo

import (
	"encoding/hex"
	"errors"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// Collection types, as listCollections reports them and mongodump records
// them.
const (
	typeCollection = "collection"
	typeView       = "view"
	typeTimeseries = "timeseries"
)

// idIndex is the name of the index every collection has on _id; the server
// creates it with the collection.
const idIndex = "_id_"

// indexTypes are the index types (string values in an index key) that
// metadata may hold; numbers (1, -1) are ascending and descending keys.
var indexTypes = map[string]bool{
	"text": true, "2d": true, "2dsphere": true, "2dsphere_bucket": true,
	"geoHaystack": true, "hashed": true,
}

// emptyDoc is the empty BSON document.
var emptyDoc = bson.Raw{5, 0, 0, 0, 0}

// metadata is the content of a "<db>/<coll>.metadata.json" stream, in
// mongodump's format. Options and index specifications are kept as raw BSON
// (in canonical extended JSON in the stream), so every value keeps its type.
type metadata struct {
	Options        bson.Raw   `bson:"options"`
	Indexes        []bson.Raw `bson:"indexes"`
	UUID           string     `bson:"uuid,omitempty"`
	CollectionName string     `bson:"collectionName"`
	Type           string     `bson:"type,omitempty"`
}

// newMetadata builds the metadata of a collection from its listCollections
// entry and its listIndexes results.
func newMetadata(spec bson.Raw, indexes []bson.Raw) (*metadata, error) {
	m := &metadata{Options: emptyDoc, Indexes: indexes, Type: typeCollection}
	var ok bool
	if m.CollectionName, ok = spec.Lookup("name").StringValueOK(); !ok {
		return nil, errors.New("listCollections entry without a name")
	}
	if t, ok := spec.Lookup("type").StringValueOK(); ok {
		m.Type = t
	}
	if opts, ok := spec.Lookup("options").DocumentOK(); ok {
		m.Options = opts
	}
	if sub, data, ok := spec.Lookup("info", "uuid").BinaryOK(); ok && sub == bson.TypeBinaryUUID {
		m.UUID = hex.EncodeToString(data)
	}
	if m.Indexes == nil {
		m.Indexes = []bson.Raw{}
	}
	return m, nil
}

// encode returns the metadata as canonical extended JSON.
func (m *metadata) encode() ([]byte, error) {
	c := *m
	if c.Options == nil {
		c.Options = emptyDoc
	}
	if c.Indexes == nil {
		c.Indexes = []bson.Raw{}
	}
	return bson.MarshalExtJSON(c, true, false)
}

// decodeMetadata parses and checks the metadata stream of ns.
func decodeMetadata(data []byte, ns namespace) (*metadata, error) {
	var m metadata
	if err := bson.UnmarshalExtJSON(data, false, &m); err != nil {
		return nil, corrupt("%s: metadata: %v", ns, err)
	}
	if err := m.check(ns); err != nil {
		return nil, corrupt("%s: metadata: %v", ns, err)
	}
	if m.Options == nil {
		m.Options = emptyDoc
	}
	return &m, nil
}

// check returns what is wrong with the metadata of ns, or nil.
func (m *metadata) check(ns namespace) error {
	if m.CollectionName != "" && m.CollectionName != ns.coll {
		return fmt.Errorf("collectionName %q does not match the stream", m.CollectionName)
	}
	if m.Options != nil {
		if err := validate(m.Options, 0); err != nil {
			return fmt.Errorf("options: %v", err)
		}
	}
	switch m.Type {
	case "", typeCollection, typeTimeseries:
	case typeView:
		if on, ok := m.Options.Lookup("viewOn").StringValueOK(); !ok || on == "" {
			return errors.New("view without viewOn")
		}
		if len(m.Indexes) > 0 {
			return errors.New("view with indexes")
		}
	default:
		return fmt.Errorf("unknown type %q", m.Type)
	}
	seen := map[string]bool{}
	for i, spec := range m.Indexes {
		name, err := checkIndex(spec)
		if err != nil {
			return fmt.Errorf("index %d: %v", i, err)
		}
		if seen[name] {
			return fmt.Errorf("duplicate index %q", name)
		}
		seen[name] = true
	}
	return nil
}

// checkIndex checks an index specification and returns its name.
func checkIndex(spec bson.Raw) (string, error) {
	if err := validate(spec, 0); err != nil {
		return "", err
	}
	name, ok := spec.Lookup("name").StringValueOK()
	if !ok || name == "" {
		return "", errors.New("no name")
	}
	key, ok := spec.Lookup("key").DocumentOK()
	if !ok {
		return "", fmt.Errorf("%q: no key", name)
	}
	elems, err := key.Elements()
	if err != nil || len(elems) == 0 {
		return "", fmt.Errorf("%q: empty key", name)
	}
	for _, e := range elems {
		v := e.Value()
		if s, ok := v.StringValueOK(); ok {
			if !indexTypes[s] {
				return "", fmt.Errorf("%q: unknown index type %q", name, s)
			}
			continue
		}
		if !v.IsNumber() {
			return "", fmt.Errorf("%q: key %q has a %s value", name, e.Key(), v.Type)
		}
	}
	return name, nil
}

func (m *metadata) isView() bool { return m.Type == typeView }

// dataCollection is the collection that holds the documents of collection
// name: the buckets of a time-series collection, else the collection
// itself.
func (m *metadata) dataCollection(name string) string {
	if m.Type == typeTimeseries {
		return "system.buckets." + name
	}
	return name
}

// userIndexes returns the index specifications to create after the data:
// all but the _id index (created with the collection), without the "ns"
// field that servers before 4.4 report and without the index version "v",
// which some servers (FerretDB) refuse: the target builds its default
// version (2 since MongoDB 3.4).
func (m *metadata) userIndexes() []bson.Raw {
	var out []bson.Raw
	for _, spec := range m.Indexes {
		if name, _ := spec.Lookup("name").StringValueOK(); name == idIndex {
			continue
		}
		out = append(out, rewrite(spec, func(key string, _ bson.RawValue) (bson.RawValue, bool) {
			return bson.RawValue{}, key != "ns" && key != "v"
		}))
	}
	return out
}
