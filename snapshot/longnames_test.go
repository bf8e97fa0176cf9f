package snapshot_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/storage"
)

// unusualNames are stream names that components produce for long or
// non-ASCII MongoDB collections and PostgreSQL schemas and tables (issue 13),
// and names with slashes, '%' and spaces.
func unusualNames() []string {
	e150 := strings.Repeat("é", 150) // 300 bytes of 2-byte UTF-8
	pct := strings.Repeat("%C3%A9", 50)
	return []string{
		"appsmith/" + e150 + ".bson",
		"appsmith/" + e150 + ".metadata.json",
		"appsmith/" + strings.Repeat("é", 149) + "è.bson", // same prefix, other name
		"data/" + pct + "." + pct + ".copy",               // a PostgreSQL table, escaped
		"data/" + pct + "." + pct + ".1.copy",
		"a dir/with spaces/100% done.bin",
		"日本語/コレクション.bson",
		"é.bson",
		strings.Repeat(strings.Repeat("x", 199)+"/", 5) + "end.bin", // 1007 bytes
		strings.Repeat("y", 240) + ".bin",
		"0-looks-derived-00000000.bin",
		"volume.tar",
		"appsmith/newAction.bson",
	}
}

func unusualStreams(t *testing.T, names []string) streams {
	t.Helper()
	s := streams{names: names, data: map[string][]byte{}}
	for i, n := range names {
		b := make([]byte, (i%4)*40000) // some empty
		rand.Read(b[:len(b)/2])
		s.data[n] = b
	}
	return s
}

func takeKind(t *testing.T, store snapshot.Store, kind string, d snapshot.Dumper, opts snapshot.Options) (*snapshot.Manifest, error) {
	t.Helper()
	w, err := snapshot.NewWriter(context.Background(), store, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Add(kind, d); err != nil {
		if aerr := w.Abort(); aerr != nil {
			t.Errorf("abort: %v", aerr)
		}
		return nil, err
	}
	return w.Commit()
}

// readBack reads every stream of component kind in order, by Next and by
// Open, and checks them against src; then Verify checks every checksum.
func readBack(t *testing.T, store snapshot.Store, m *snapshot.Manifest, kind string, src streams) {
	t.Helper()
	ctx := context.Background()
	in, err := snapshot.OpenComponent(ctx, store, m, kind, snapshot.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var i int
	for ; ; i++ {
		name, r, err := in.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			t.Fatalf("stream %q: %v", name, err)
		}
		if i >= len(src.names) || name != src.names[i] || !bytes.Equal(b, src.data[name]) {
			t.Fatalf("stream %d: %q, %d bytes; want %q", i, name, len(b), src.names[min(i, len(src.names)-1)])
		}
	}
	if i != len(src.names) {
		t.Fatalf("%d streams, want %d", i, len(src.names))
	}
	opener := in.(snapshot.StreamOpener)
	for _, n := range src.names {
		r, err := opener.Open(n)
		if err != nil {
			t.Fatalf("open %q: %v", n, err)
		}
		b, err := io.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(b, src.data[n]) {
			t.Fatalf("open %q: %d bytes, %v", n, len(b), err)
		}
	}
	if err := snapshot.Verify(ctx, store, m, func(string) snapshot.Restorer { return nil }, snapshot.ReadOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestLongAndUnusualStreamNames takes snapshots of streams with long,
// multi-byte and odd names into a file:// repository: object keys stay short
// and plain whatever the names, the manifest keeps the names, and every
// stream reads back byte for byte with its checksum (issue 13).
func TestLongAndUnusualStreamNames(t *testing.T) {
	for _, c := range []snapshot.Compression{snapshot.Zstd, snapshot.Gzip, snapshot.None} {
		t.Run(string(c), func(t *testing.T) {
			dir := t.TempDir()
			repo, err := storage.Open(context.Background(), "file://"+dir, storage.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer repo.Close()
			src := unusualStreams(t, unusualNames())
			m, err := takeKind(t, repo, "mongo", src, snapshot.Options{Compression: c})
			if err != nil {
				t.Fatal(err)
			}
			loaded, err := snapshot.Load(context.Background(), repo, m.ID)
			if err != nil {
				t.Fatal(err)
			}
			objs := loaded.Component("mongo").Objects
			if len(objs) != len(src.names) {
				t.Fatalf("%d objects, want %d", len(objs), len(src.names))
			}
			seen := map[string]bool{}
			for i, o := range objs {
				if o.Name != src.names[i] {
					t.Errorf("object %d: name %q, want %q", i, o.Name, src.names[i])
				}
				if len(o.Key) > 120 || seen[strings.ToLower(o.Key)] || !strings.HasPrefix(o.Key, "mongo/") || !strings.HasSuffix(o.Key, c.Ext()) {
					t.Errorf("object %q: key %q", o.Name, o.Key)
				}
				seen[strings.ToLower(o.Key)] = true
				for _, r := range o.Key {
					if r >= utf8.RuneSelf || r == ' ' || r == '%' {
						t.Errorf("object %q: key %q is not plain ASCII", o.Name, o.Key)
						break
					}
				}
				if fi, err := os.Stat(filepath.Join(dir, "snapshots", m.ID, filepath.FromSlash(o.Key))); err != nil || fi.Size() != o.Size {
					t.Errorf("object %q: stored file: %v", o.Name, err)
				}
			}
			// Short plain names keep readable keys, as before.
			for i, want := range map[int]string{11: "mongo/volume.tar", 12: "mongo/appsmith/newAction.bson"} {
				if objs[i].Key != want+c.Ext() {
					t.Errorf("object %q: key %q, want %q", objs[i].Name, objs[i].Key, want+c.Ext())
				}
			}
			readBack(t, repo, loaded, "mongo", src)

			// A stream named like another's derived key gets a key of its
			// own.
			mimic := strings.TrimSuffix(path.Base(objs[0].Key), c.Ext())
			src2 := unusualStreams(t, []string{src.names[0], mimic})
			m2, err := takeKind(t, repo, "mongo", src2, snapshot.Options{Compression: c})
			if err != nil {
				t.Fatalf("stream named %q: %v", mimic, err)
			}
			if k := m2.Component("mongo").Objects; k[0].Key == k[1].Key || k[0].Key != objs[0].Key {
				t.Fatalf("keys %q, %q", k[0].Key, k[1].Key)
			}
			readBack(t, repo, m2, "mongo", src2)
		})
	}
}

// TestLongNameObjectDamaged checks that a damaged object with a derived key
// is still reported as corrupt, naming its key.
func TestLongNameObjectDamaged(t *testing.T) {
	repo := openRepo(t)
	src := unusualStreams(t, unusualNames()[:2])
	src.data[src.names[0]] = bytes.Repeat([]byte("é"), 100000)
	m, err := takeKind(t, repo, "mongo", src, snapshot.Options{})
	if err != nil {
		t.Fatal(err)
	}
	key := m.Component("mongo").Objects[0].Key
	damage(t, repo, "snapshots/"+m.ID+"/"+key, func(b []byte) []byte { b[len(b)/2] ^= 0x40; return b })
	err = snapshot.Verify(context.Background(), repo, m, func(string) snapshot.Restorer { return nil }, snapshot.ReadOptions{})
	if !errors.Is(err, snapshot.ErrCorrupt) || !strings.Contains(err.Error(), key) {
		t.Fatalf("verify = %v; want ErrCorrupt naming %s", err, key)
	}
}

// TestOldSnapshotKeys reads a snapshot written before issue 13, whose
// manifest records keys that follow the stream names ("<kind>/<name><ext>",
// percent escapes, spaces and UTF-8 included): readers take each object's
// key from the manifest, whatever scheme made it.
func TestOldSnapshotKeys(t *testing.T) {
	ctx := context.Background()
	for _, url := range []string{"file://" + t.TempDir(), "mem://"} {
		repo, err := storage.Open(ctx, url, storage.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer repo.Close()
		names := []string{
			"appsmith/" + strings.Repeat("é", 60) + ".bson",
			"data/caf%C3%A9.%C3%A9t%C3%A9.copy",
			"a dir/x y.bin",
			"volume.tar",
		}
		if strings.HasPrefix(url, "mem:") {
			// Long keys did work in S3-like stores.
			names = append(names, "appsmith/"+strings.Repeat("é", 150)+".bson")
		}
		src := unusualStreams(t, names)
		m, err := takeKind(t, repo, "mongo", src, snapshot.Options{})
		if err != nil {
			t.Fatal(err)
		}
		// Rewrite it as the old writer laid it out.
		b := repo.Bucket()
		for i, o := range m.Component("mongo").Objects {
			old := "mongo/" + o.Name + ".zst"
			if o.Key == old {
				continue
			}
			data, err := b.ReadAll(ctx, "snapshots/"+m.ID+"/"+o.Key)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.WriteAll(ctx, "snapshots/"+m.ID+"/"+old, data, nil); err != nil {
				t.Fatal(err)
			}
			if err := b.Delete(ctx, "snapshots/"+m.ID+"/"+o.Key); err != nil {
				t.Fatal(err)
			}
			m.Component("mongo").Objects[i].Key = old
		}
		data, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if err := b.WriteAll(ctx, "snapshots/"+m.ID+"/manifest.json", data, nil); err != nil {
			t.Fatal(err)
		}
		loaded, err := snapshot.Load(ctx, repo, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range loaded.Component("mongo").Objects {
			if o.Key != "mongo/"+o.Name+".zst" {
				t.Fatalf("key %q", o.Key)
			}
		}
		readBack(t, repo, loaded, "mongo", src)
	}
}
