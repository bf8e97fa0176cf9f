package mongo

import (
	"bytes"
	"context"
	"errors"
	"github.com/stackport/stackport/internal/streamtest"
	"io"
	"os"
	"path/filepath"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/stackport/stackport/snapshot"
)

// fuzzSeeds is the seed corpus of FuzzBSONStream: raw .bson streams.
const fuzzSeeds = "../../testdata/mongo/fuzz/FuzzBSONStream"

// TestWriteFuzzSeeds rewrites the seed corpus of FuzzBSONStream when
// MONGO_WRITE_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("MONGO_WRITE_SEEDS") != "1" {
		t.Skip("set MONGO_WRITE_SEEDS=1 to rewrite the fuzz seeds")
	}
	if err := os.MkdirAll(fuzzSeeds, 0o755); err != nil {
		t.Fatal(err)
	}
	docs := everyType(t)
	all := bytes.Join(bytesOf(docs), nil)
	seeds := map[string][]byte{
		"empty.bson":         nil,
		"every-type.bson":    all,
		"one-document.bson":  marshal(t, bson.D{{Key: "_id", Value: int32(1)}, {Key: "a", Value: bson.A{bson.D{}}}}),
		"truncated.bson":     all[:len(all)-7],
		"length-only.bson":   all[:3],
		"oplog-entry.bson":   entry(t, 1, "i", "appsmith.user", bson.D{{Key: "_id", Value: int32(1)}}),
		"bad-nested.bson":    append(bytes.Clone(docs[3][:len(docs[3])-2]), 0, 0),
		"scope-invalid.bson": marshal(t, bson.D{{Key: "cws", Value: bson.CodeWithScope{Code: "x", Scope: bson.D{{Key: "x", Value: "y"}}}}}),
	}
	// A code-with-scope whose scope's length is wrong.
	s := seeds["scope-invalid.bson"]
	s[bytes.Index(s, []byte("x\x00"))+2]++
	for name, data := range seeds {
		if err := os.WriteFile(filepath.Join(fuzzSeeds, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzBSONStream feeds arbitrary bytes to the .bson stream reader: it must
// never panic, accept only valid documents that make up the stream exactly,
// and report anything else as ErrCorrupt.
func FuzzBSONStream(f *testing.F) {
	streamtest.AddSeeds(f, fuzzSeeds)
	meta := mustEncode(f, plainCollection("app", "user").meta)
	f.Fuzz(func(t *testing.T, data []byte) {
		d := newDocReader(bytes.NewReader(data), "collection app.user")
		var read []byte
		var err error
		for {
			var doc bson.Raw
			if doc, err = d.next(nil); err != nil {
				break
			}
			if verr := validate(doc, 0); verr != nil {
				t.Fatalf("accepted an invalid document: %v", verr)
			}
			read = append(read, doc...)
		}
		if err == io.EOF {
			if !bytes.Equal(read, data) {
				t.Fatal("documents read do not make up the stream")
			}
		} else if !errors.Is(err, snapshot.ErrCorrupt) {
			t.Fatalf("err = %v, want ErrCorrupt", err)
		}

		// Verifier agrees, whether the bytes are a collection or the oplog.
		in := &streamtest.Reader{Streams: []streamtest.Stream{{Name: "app/user.metadata.json", Data: meta}, {Name: "app/user.bson", Data: data}}}
		_, verr := Verifier{}.Restore(context.Background(), in)
		if (verr == nil) != (err == io.EOF) {
			t.Fatalf("Verifier: %v, reader: %v", verr, err)
		}
		_, _ = Verifier{}.Restore(context.Background(), &streamtest.Reader{Streams: []streamtest.Stream{{Name: oplogStream, Data: data}}})
	})
}
