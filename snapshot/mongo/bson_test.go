package mongo

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"github.com/stackport/stackport/internal/streamtest"
	"io"
	"math"
	"strconv"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"

	"github.com/stackport/stackport/snapshot"
)

// sliceSource is a docSource over documents in memory.
type sliceSource struct {
	docs []bson.Raw
	i    int
	err  error // returned by Err at the end
}

func (s *sliceSource) Next(context.Context) bool {
	if s.i >= len(s.docs) {
		return false
	}
	s.i++
	return true
}
func (s *sliceSource) Doc() bson.Raw { return s.docs[s.i-1] }
func (s *sliceSource) Err() error    { return s.err }

func marshal(t testing.TB, v any) bson.Raw {
	t.Helper()
	b, err := bson.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawDoc builds a document from raw elements, which bson.Marshal would not
// produce (duplicate keys, odd doubles).
func rawDoc(elems ...[]byte) bson.Raw {
	idx, b := bsoncore.AppendDocumentStart(nil)
	for _, e := range elems {
		b = append(b, e...)
	}
	b, _ = bsoncore.AppendDocumentEnd(b, idx)
	return b
}

func mustDecimal(t testing.TB, s string) bson.Decimal128 {
	t.Helper()
	d, err := bson.ParseDecimal128(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// everyType returns documents with every BSON type, including those
// FerretDB cannot store, and shapes the driver would not build.
func everyType(t testing.TB) []bson.Raw {
	oid := bson.NewObjectID()
	deep := bson.D{{Key: "leaf", Value: int32(1)}}
	for i := range 100 {
		if i%2 == 0 {
			deep = bson.D{{Key: "d", Value: deep}}
		} else {
			deep = bson.D{{Key: "a", Value: bson.A{deep}}}
		}
	}
	docs := []bson.Raw{
		marshal(t, bson.D{
			{Key: "_id", Value: oid},
			{Key: "double", Value: 3.25},
			{Key: "nan", Value: math.NaN()},
			{Key: "negzero", Value: math.Copysign(0, -1)},
			{Key: "inf", Value: math.Inf(1)},
			{Key: "ninf", Value: math.Inf(-1)},
			{Key: "string", Value: "héllo ☃ \u0000-free"},
			{Key: "empty", Value: ""},
			{Key: "doc", Value: bson.D{{Key: "z", Value: 1}, {Key: "a", Value: 2}}},
			{Key: "emptydoc", Value: bson.D{}},
			{Key: "array", Value: bson.A{int32(1), "x", bson.D{{Key: "y", Value: 2}}}},
			{Key: "nested", Value: bson.A{bson.A{int32(1), bson.A{int32(2), bson.A{}}}, bson.A{}}},
			{Key: "emptyarr", Value: bson.A{}},
			{Key: "undefined", Value: bson.Undefined{}},
			{Key: "oid", Value: oid},
			{Key: "true", Value: true},
			{Key: "false", Value: false},
			{Key: "date1900", Value: bson.DateTime(-2208988800000)},
			{Key: "date0", Value: bson.DateTime(0)},
			{Key: "datemin", Value: bson.DateTime(math.MinInt64)},
			{Key: "null", Value: nil},
			{Key: "regex", Value: bson.Regex{Pattern: `^a.*\d+$`, Options: "imsx"}},
			{Key: "dbpointer", Value: bson.DBPointer{DB: "app.user", Pointer: oid}},
			{Key: "js", Value: bson.JavaScript("function () { return 1 }")},
			{Key: "symbol", Value: bson.Symbol("sym")},
			{Key: "cws", Value: bson.CodeWithScope{Code: "x + y", Scope: bson.D{{Key: "x", Value: int32(1)}, {Key: "y", Value: bson.A{bson.MinKey{}}}}}},
			{Key: "int32", Value: int32(math.MinInt32)},
			{Key: "ts", Value: bson.Timestamp{T: math.MaxUint32, I: 7}},
			{Key: "int64", Value: int64(math.MaxInt64)},
			{Key: "dec", Value: mustDecimal(t, "1234.5678E-300")},
			{Key: "decnan", Value: mustDecimal(t, "NaN")},
			{Key: "decneg0", Value: mustDecimal(t, "-0.00")},
			{Key: "minkey", Value: bson.MinKey{}},
			{Key: "maxkey", Value: bson.MaxKey{}},
			{Key: "deep", Value: deep},
		}),
		// Field order is kept, not sorted; _id need not come first.
		marshal(t, bson.D{{Key: "z", Value: int32(1)}, {Key: "_id", Value: "string id"}, {Key: "a", Value: int64(1)}}),
		// Duplicate, dotted, dollar and empty keys; a NaN with a payload.
		rawDoc(
			bsoncore.AppendInt32Element(nil, "_id", 7),
			bsoncore.AppendInt32Element(nil, "k", 1),
			bsoncore.AppendInt32Element(nil, "k", 2),
			bsoncore.AppendStringElement(nil, "a.b", "dotted"),
			bsoncore.AppendStringElement(nil, "$dollar", "x"),
			bsoncore.AppendStringElement(nil, "", "empty key"),
			binary.LittleEndian.AppendUint64(bsoncore.AppendHeader(nil, bsoncore.TypeDouble, "nanpayload"), 0x7ff8dead0000beef),
		),
		marshal(t, bson.D{{Key: "_id", Value: bson.D{{Key: "compound", Value: int32(1)}, {Key: "id", Value: bson.A{}}}}}),
	}
	var binaries bson.D
	binaries = append(binaries, bson.E{Key: "_id", Value: int32(8)})
	for _, sub := range []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x80, 0xff} {
		binaries = append(binaries, bson.E{Key: "b" + string(rune('a'+sub%26)) + string(rune('0'+sub/26)), Value: bson.Binary{Subtype: sub, Data: []byte{sub, 0, 1, 2}}})
	}
	binaries = append(binaries, bson.E{Key: "emptybin", Value: bson.Binary{}})
	docs = append(docs, marshal(t, binaries))
	for _, d := range docs {
		if err := validate(d, 0); err != nil {
			t.Fatalf("test document %s: %v", d, err)
		}
	}
	return docs
}

// capture is a sink that keeps everything it receives.
type capture struct {
	colls   []*collection
	docs    map[namespace][]bson.Raw
	entries []bson.Raw
	calls   []string
}

func (c *capture) metadata(col *collection) error {
	c.colls = append(c.colls, col)
	c.calls = append(c.calls, "metadata "+col.ns.String())
	return nil
}

func (c *capture) startData(context.Context) error {
	c.calls = append(c.calls, "startData")
	return nil
}

func (c *capture) documents(ctx context.Context, col *collection, docs *docReader) error {
	c.calls = append(c.calls, "documents "+col.ns.String())
	if c.docs == nil {
		c.docs = map[namespace][]bson.Raw{}
	}
	for {
		doc, err := docs.next(nil)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		c.docs[col.ns] = append(c.docs[col.ns], doc)
	}
}

func (c *capture) oplog(ctx context.Context, docs *docReader) error {
	c.calls = append(c.calls, "oplog")
	return readAll(ctx, docs, func(doc []byte) error {
		c.entries = append(c.entries, bytes.Clone(doc))
		return nil
	})
}

func (c *capture) finish(context.Context) error {
	c.calls = append(c.calls, "finish")
	return nil
}

// writeSnapshot writes collections, their documents and oplog entries
// through the Dumper's stream code.
func writeSnapshot(t testing.TB, store *streamtest.Store, colls []*collection, docs map[namespace][]bson.Raw, oplog []bson.Raw) {
	t.Helper()
	ctx := context.Background()
	for _, c := range colls {
		if err := writeMetadata(store, c); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range colls {
		if c.meta.isView() {
			continue
		}
		err := writeStream(store, c.ns.streamBase()+dataExt, func(w io.Writer) error {
			_, _, err := copyDocs(ctx, &sliceSource{docs: docs[c.ns]}, w, nil)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if oplog != nil {
		err := writeStream(store, oplogStream, func(w io.Writer) error {
			_, _, err := copyDocs(ctx, &sliceSource{docs: oplog}, w, nil)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func plainCollection(db, coll string) *collection {
	return &collection{ns: namespace{db, coll}, meta: &metadata{Options: emptyDoc, Indexes: []bson.Raw{}, CollectionName: coll, Type: typeCollection}}
}

func TestEveryBSONTypeRoundTrip(t *testing.T) {
	docs := everyType(t)
	big := marshal(t, bson.D{{Key: "_id", Value: int32(15)}, {Key: "blob", Value: bson.Binary{Data: bytes.Repeat([]byte("appsmith"), 15<<20/8)}}})
	docs = append(docs, big)
	c := plainCollection("app", "all types/ok%")
	oplog := []bson.Raw{marshal(t, bson.D{{Key: "ts", Value: bson.Timestamp{T: 5, I: 1}}, {Key: "op", Value: "i"}, {Key: "ns", Value: "app.x"}, {Key: "o", Value: docs[0]}})}
	store := streamtest.New()
	writeSnapshot(t, store, []*collection{c}, map[namespace][]bson.Raw{c.ns: docs}, oplog)

	// The stream is mongodump's format: the documents concatenated.
	data, ok := store.Bytes("app/all%20types%2Fok%25.bson")
	if !ok {
		t.Fatalf("streams %v", store.Names())
	}
	if !bytes.Equal(data, bytes.Join(bytesOf(docs), nil)) {
		t.Fatal("the .bson stream is not the documents concatenated")
	}

	var got capture
	r := store.Reader()
	stats, err := decode(context.Background(), r, &got, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !r.AllRead() {
		t.Error("not every stream was read to its end")
	}
	if len(got.colls) != 1 || got.colls[0].ns != c.ns {
		t.Fatalf("collections %v", got.colls)
	}
	back := got.docs[c.ns]
	if len(back) != len(docs) {
		t.Fatalf("read %d documents, wrote %d", len(back), len(docs))
	}
	for i := range docs {
		if !bytes.Equal(back[i], docs[i]) {
			t.Errorf("document %d differs:\n got %v\nwant %v", i, back[i], docs[i])
		}
	}
	if len(got.entries) != 1 || !bytes.Equal(got.entries[0], oplog[0]) {
		t.Error("oplog entry differs")
	}
	want := []string{"metadata app.all types/ok%", "startData", "documents app.all types/ok%", "oplog", "finish"}
	if strings.Join(got.calls, "|") != strings.Join(want, "|") {
		t.Errorf("calls %q, want %q", got.calls, want)
	}
	if stats["documents"] != int64(len(docs)) || stats["bytes"] != int64(len(data)) || stats["oplog_entries"] != 1 ||
		stats["documents:app.all types/ok%"] != int64(len(docs)) || stats["collections"] != 1 {
		t.Errorf("stats %v", stats)
	}

	// Verifier reads the same.
	vstats, err := Verifier{}.Restore(context.Background(), store.Reader())
	if err != nil || vstats["documents"] != stats["documents"] {
		t.Errorf("Verifier: %v, %v", vstats, err)
	}
}

func bytesOf(docs []bson.Raw) [][]byte {
	out := make([][]byte, len(docs))
	for i, d := range docs {
		out[i] = d
	}
	return out
}

func TestCorruptBSONStream(t *testing.T) {
	docs := everyType(t)
	good := bytes.Join(bytesOf(docs), nil)
	second := int64(len(docs[0])) // offset of the second document
	withLen := func(b []byte, at int64, n uint32) []byte {
		b = bytes.Clone(b)
		binary.LittleEndian.PutUint32(b[at:], n)
		return b
	}
	nested := bytes.Clone(good)
	// The length of the first document's "doc" field, made too large.
	i := bytes.Index(nested, []byte("doc\x00")) + 4
	binary.LittleEndian.PutUint32(nested[i:], 200)
	badType := bytes.Clone(good)
	badType[second+4] = 0x42 // the type byte of the second document's first element

	cases := []struct {
		name   string
		data   []byte
		offset int64
		msg    string
	}{
		{"truncated length", good[:second+2], second, "truncated document length"},
		{"truncated document", good[:len(good)-3], int64(len(good) - len(docs[len(docs)-1])), "truncated document"},
		{"length too small", withLen(good, second, 4), second, "invalid document length 4"},
		{"negative length", withLen(good, second, 0xffffffff), second, "invalid document length -1"},
		{"length too large", withLen(good, 0, 17<<20), 0, "invalid document length"},
		{"length past the terminator", withLen(good, 0, uint32(len(docs[0])+1)), 0, "invalid document"},
		{"bad nested length", nested, 0, "invalid document"},
		{"unknown element type", badType, second, "invalid document"},
		{"trailing garbage", append(bytes.Clone(good), 1, 2, 3), int64(len(good)), "truncated document length"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := &streamtest.Reader{Streams: []streamtest.Stream{
				{Name: "app/user.metadata.json", Data: mustEncode(t, plainCollection("app", "user").meta)},
				{Name: "app/user.bson", Data: tc.data},
			}}
			_, err := Verifier{}.Restore(context.Background(), in)
			if !errors.Is(err, snapshot.ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
			for _, s := range []string{"collection app.user", "byte offset " + strconv.FormatInt(tc.offset, 10), tc.msg} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not name %q", err, s)
				}
			}
		})
	}

	// An error of the stream itself (a checksum mismatch) is passed on.
	sumErr := errors.New("sha256 mismatch")
	in := &streamtest.Reader{Streams: []streamtest.Stream{
		{Name: "app/user.metadata.json", Data: mustEncode(t, plainCollection("app", "user").meta)},
		{Name: "app/user.bson", Data: good, EndErr: sumErr},
	}}
	if _, err := (Verifier{}).Restore(context.Background(), in); !errors.Is(err, sumErr) {
		t.Errorf("err = %v, want the stream's error", err)
	}
}

func mustEncode(t testing.TB, m *metadata) []byte {
	t.Helper()
	b, err := m.encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStreamOrder(t *testing.T) {
	meta := func(db, coll string) streamtest.Stream {
		return streamtest.Stream{Name: db + "/" + coll + metadataExt, Data: mustEncode(t, plainCollection(db, coll).meta)}
	}
	view := streamtest.Stream{Name: "app/v.metadata.json", Data: mustEncode(t, &metadata{
		Options: marshal(t, bson.D{{Key: "viewOn", Value: "a"}, {Key: "pipeline", Value: bson.A{}}}), CollectionName: "v", Type: typeView,
	})}
	data := func(db, coll string) streamtest.Stream { return streamtest.Stream{Name: db + "/" + coll + dataExt} }
	oplog := streamtest.Stream{Name: oplogStream}
	cases := []struct {
		name    string
		streams []streamtest.Stream
		msg     string // "" for a valid order
	}{
		{"valid", []streamtest.Stream{meta("app", "a"), meta("app", "b"), view, data("app", "b"), data("app", "a"), oplog}, ""},
		{"empty", nil, ""},
		{"metadata only", []streamtest.Stream{meta("app", "a"), view}, ""},
		{"metadata after data", []streamtest.Stream{meta("app", "a"), data("app", "a"), meta("app", "b")}, "metadata after the data streams"},
		{"data without metadata", []streamtest.Stream{meta("app", "a"), data("app", "b")}, "data stream without metadata"},
		{"data twice", []streamtest.Stream{meta("app", "a"), data("app", "a"), data("app", "a")}, "data stream twice"},
		{"metadata twice", []streamtest.Stream{meta("app", "a"), meta("app", "a")}, "metadata stream twice"},
		{"data for a view", []streamtest.Stream{view, data("app", "v")}, "data stream for a view"},
		{"data after oplog", []streamtest.Stream{meta("app", "a"), oplog, data("app", "a")}, "data after oplog.bson"},
		{"oplog twice", []streamtest.Stream{oplog, oplog}, "oplog.bson twice"},
		{"unknown stream", []streamtest.Stream{{Name: "app/a.json"}}, "unexpected stream"},
		{"bad database", []streamtest.Stream{{Name: "a.b/c.bson"}}, "invalid database name"},
		{"nested path", []streamtest.Stream{{Name: "app/x/y.bson"}}, "invalid collection name"},
		{"bad escape", []streamtest.Stream{{Name: "app/%zz.bson"}}, "collection name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &streamtest.Reader{Streams: tc.streams}
			_, err := Verifier{}.Restore(context.Background(), r)
			if tc.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				if !r.AllRead() {
					t.Error("not every stream was read")
				}
				return
			}
			if !errors.Is(err, snapshot.ErrCorrupt) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("err = %v, want ErrCorrupt with %q", err, tc.msg)
			}
		})
	}
}

func TestStreamNames(t *testing.T) {
	for _, coll := range []string{"user", "a b", "with/slash", "100%", "dots.in.name", "ünïcode", "$weird?#"} {
		ns := namespace{"appsmith", coll}
		for ext, kind := range map[string]streamKind{dataExt: kindData, metadataExt: kindMetadata} {
			name := ns.streamBase() + ext
			if strings.Count(name, "/") != 1 {
				t.Errorf("%s: stream name %q has more than one slash", coll, name)
			}
			k, got, err := parseStreamName(name)
			if err != nil || k != kind || got != ns {
				t.Errorf("parseStreamName(%q) = %v, %v, %v", name, k, got, err)
			}
		}
	}
	if k, _, err := parseStreamName("oplog.bson"); err != nil || k != kindOplog {
		t.Errorf("oplog.bson: %v %v", k, err)
	}
	for _, name := range []string{"", "user.bson", "app/", "app/.bson", "/user.bson", "app/user.txt", "app/x/y.bson", "a$b/c.bson", "app/a%00.bson"} {
		if _, _, err := parseStreamName(name); err == nil {
			t.Errorf("parseStreamName(%q) accepted", name)
		}
	}
}

func TestRedact(t *testing.T) {
	cases := map[string]string{
		"mongodb://u:secret@h:27017/db?tls=true":       "mongodb://u:REDACTED@h:27017/db?tls=true",
		"mongodb+srv://u:p%40ss@cluster.x.net/":        "mongodb+srv://u:REDACTED@cluster.x.net/",
		"mongodb://u:pw@a:1,b:2/?replicaSet=rs0":       "mongodb://u:REDACTED@a:1,b:2/?replicaSet=rs0",
		"mongodb://h:27017/":                           "mongodb://h:27017/",
		"mongodb://user@h/?authMechanism=MONGODB-X509": "mongodb://user@h/?authMechanism=MONGODB-X509",
		"not a uri": "(invalid URI)",
	}
	for in, want := range cases {
		if got := redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseRename(t *testing.T) {
	same, err := parseRename("", "")
	if err != nil || same.apply("appsmith") != "appsmith" {
		t.Fatal("no rename")
	}
	for _, p := range [][2]string{{"appsmith.*", "appsmith_prod.*"}, {"appsmith", "appsmith_prod"}, {"appsmith.*", "appsmith_prod"}} {
		f, err := parseRename(p[0], p[1])
		if err != nil || f.apply("appsmith") != "appsmith_prod" || f.apply("other") != "other" {
			t.Errorf("%v: %v", p, err)
		}
	}
	for _, p := range [][2]string{{"appsmith", ""}, {"", "x"}, {"appsmith.user", "x.user"}, {"appsmith", "admin"}, {"local", "x"}, {"a/b", "c"}} {
		if _, err := parseRename(p[0], p[1]); err == nil {
			t.Errorf("%v accepted", p)
		}
	}
}
