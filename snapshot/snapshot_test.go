package snapshot_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/storage"
)

// streams is a Dumper that writes fixed named streams.
type streams struct {
	names []string
	data  map[string][]byte
	fail  error // returned after writing everything
	leak  bool  // leave the last stream open
	abort bool  // abort the last stream (snapshot.Abort), yet return nil
}

func (s streams) Dump(ctx context.Context, out snapshot.StreamWriter) (snapshot.Stats, error) {
	for i, n := range s.names {
		w, err := out.Create(n)
		if err != nil {
			return nil, err
		}
		if _, err := w.Write(s.data[n]); err != nil {
			return nil, err
		}
		if s.leak && i == len(s.names)-1 {
			break
		}
		if s.abort && i == len(s.names)-1 {
			snapshot.Abort(w, errors.New("cursor lost"))
			break
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
	}
	return snapshot.Stats{"streams": int64(len(s.names))}, s.fail
}

func testStreams(t *testing.T) streams {
	t.Helper()
	random := make([]byte, 3<<20)
	rand.Read(random)
	text := bytes.Repeat([]byte("appsmith stacks are portable\n"), 100000)
	return streams{
		names: []string{"a/random.bin", "b/text.txt", "empty"},
		data:  map[string][]byte{"a/random.bin": random, "b/text.txt": text, "empty": nil},
	}
}

func openRepo(t *testing.T) *storage.Repo {
	t.Helper()
	repo, err := storage.Open(context.Background(), "file://"+t.TempDir(), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { repo.Close() })
	return repo
}

func take(t *testing.T, store snapshot.Store, d snapshot.Dumper, opts snapshot.Options) (*snapshot.Manifest, error) {
	t.Helper()
	w, err := snapshot.NewWriter(context.Background(), store, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Add("files", d); err != nil {
		if aerr := w.Abort(); aerr != nil {
			t.Errorf("abort: %v", aerr)
		}
		return nil, err
	}
	return w.Commit()
}

// readAll reads every stream of a component back.
func readAll(t *testing.T, store snapshot.Store, m *snapshot.Manifest) (map[string][]byte, error) {
	t.Helper()
	in, err := snapshot.OpenComponent(context.Background(), store, m, "files", snapshot.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]byte{}
	for {
		name, r, err := in.Next()
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		b, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			return got, err
		}
		got[name] = b
	}
}

func TestRoundTripEachCompression(t *testing.T) {
	for _, c := range []snapshot.Compression{snapshot.Zstd, snapshot.Gzip, snapshot.None} {
		t.Run(string(c), func(t *testing.T) {
			repo := openRepo(t)
			src := testStreams(t)
			m, err := take(t, repo, src, snapshot.Options{Compression: c, Host: "h", Version: "v", Tags: map[string]string{"env": "test"}})
			if err != nil {
				t.Fatal(err)
			}
			loaded, err := snapshot.Load(context.Background(), repo, snapshot.Latest)
			if err != nil {
				t.Fatal(err)
			}
			if loaded.ID != m.ID || loaded.Host != "h" || loaded.Tags["env"] != "test" || loaded.Component("files").Stats["streams"] != 3 {
				t.Fatalf("loaded manifest differs: %+v", loaded)
			}
			comp := loaded.Component("files")
			if comp.Compression != string(c) || len(comp.Objects) != 3 {
				t.Fatalf("component: %+v", comp)
			}
			for i, o := range comp.Objects {
				if o.Name != src.names[i] || o.RawSize != int64(len(src.data[o.Name])) || o.Key != "files/"+o.Name+c.Ext() {
					t.Errorf("object %d: %+v", i, o)
				}
			}
			got, err := readAll(t, repo, loaded)
			if err != nil {
				t.Fatal(err)
			}
			for n, want := range src.data {
				if !bytes.Equal(got[n], want) {
					t.Errorf("stream %s: got %d bytes, want %d", n, len(got[n]), len(want))
				}
			}
			if err := snapshot.Verify(context.Background(), repo, loaded, func(string) snapshot.Restorer { return nil }, snapshot.ReadOptions{}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestFailedSnapshotLeavesNothing(t *testing.T) {
	repo := openRepo(t)
	good, err := take(t, repo, testStreams(t), snapshot.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for name, d := range map[string]streams{
		"dumper error": func() streams { s := testStreams(t); s.fail = errors.New("boom"); return s }(),
		"leaked":       func() streams { s := testStreams(t); s.leak = true; return s }(),
		"aborted":      func() streams { s := testStreams(t); s.abort = true; return s }(),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := take(t, repo, d, snapshot.Options{}); err == nil {
				t.Fatal("snapshot succeeded")
			}
			ids, err := repo.List(context.Background())
			if err != nil || len(ids) != 1 || ids[0] != good.ID {
				t.Fatalf("list after failure = %v, %v; want only %s", ids, err, good.ID)
			}
			// No object of the failed run is left behind.
			iter := repo.Bucket().List(nil)
			for {
				obj, err := iter.Next(context.Background())
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if !strings.HasPrefix(obj.Key, "snapshots/"+good.ID+"/") {
					t.Errorf("left behind: %s", obj.Key)
				}
			}
			if _, err := readAll(t, repo, good); err != nil {
				t.Fatalf("earlier snapshot damaged: %v", err)
			}
		})
	}
}

func TestCancelledSnapshotCommitsNothing(t *testing.T) {
	repo := openRepo(t)
	ctx, cancel := context.WithCancel(context.Background())
	w, err := snapshot.NewWriter(ctx, repo, snapshot.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = w.Add("files", dumperFunc(func(ctx context.Context, out snapshot.StreamWriter) (snapshot.Stats, error) {
		s, err := out.Create("x")
		if err != nil {
			return nil, err
		}
		s.Write([]byte("partial"))
		cancel() // SIGINT arrives mid-stream
		_, werr := s.Write([]byte("more"))
		cerr := s.Close()
		return nil, errors.Join(werr, cerr)
	}))
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("Add = %v, want context.Canceled", err)
	}
	if aerr := w.Abort(); aerr != nil {
		t.Fatal(aerr)
	}
	if _, err := w.Commit(); err == nil {
		t.Fatal("commit after cancel succeeded")
	}
	ok, _ := repo.Bucket().Exists(context.Background(), "snapshots/"+w.ID()+"/files/x.zst")
	if ok {
		t.Fatal("aborted object was committed")
	}
}

type dumperFunc func(context.Context, snapshot.StreamWriter) (snapshot.Stats, error)

func (f dumperFunc) Dump(ctx context.Context, out snapshot.StreamWriter) (snapshot.Stats, error) {
	return f(ctx, out)
}

// damage rewrites one stored object.
func damage(t *testing.T, repo *storage.Repo, key string, f func([]byte) []byte) {
	t.Helper()
	ctx := context.Background()
	b, err := repo.Bucket().ReadAll(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Bucket().WriteAll(ctx, key, f(b), nil); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptObjects(t *testing.T) {
	cases := map[string]func(*storage.Repo, string){
		"flipped byte": func(r *storage.Repo, k string) {
			damage(t, r, k, func(b []byte) []byte { b[len(b)/2] ^= 0x40; return b })
		},
		"truncated":      func(r *storage.Repo, k string) { damage(t, r, k, func(b []byte) []byte { return b[:len(b)-100] }) },
		"trailing bytes": func(r *storage.Repo, k string) { damage(t, r, k, func(b []byte) []byte { return append(b, 0) }) },
		"missing": func(r *storage.Repo, k string) {
			if err := r.Bucket().Delete(context.Background(), k); err != nil {
				t.Fatal(err)
			}
		},
		"swapped": func(r *storage.Repo, k string) {
			other, _ := r.Bucket().ReadAll(context.Background(), strings.Replace(k, "a/random.bin", "b/text.txt", 1))
			damage(t, r, k, func([]byte) []byte { return other })
		},
	}
	for _, c := range []snapshot.Compression{snapshot.Zstd, snapshot.None} {
		for name, breakIt := range cases {
			t.Run(string(c)+"/"+name, func(t *testing.T) {
				repo := openRepo(t)
				m, err := take(t, repo, testStreams(t), snapshot.Options{Compression: c})
				if err != nil {
					t.Fatal(err)
				}
				key := "files/a/random.bin" + c.Ext()
				breakIt(repo, "snapshots/"+m.ID+"/"+key)
				_, err = readAll(t, repo, m)
				if !errors.Is(err, snapshot.ErrCorrupt) || !strings.Contains(err.Error(), key) {
					t.Fatalf("read = %v; want ErrCorrupt naming %s", err, key)
				}
				err = snapshot.Verify(context.Background(), repo, m, func(string) snapshot.Restorer { return nil }, snapshot.ReadOptions{})
				if !errors.Is(err, snapshot.ErrCorrupt) || !strings.Contains(err.Error(), key) {
					t.Fatalf("verify = %v; want ErrCorrupt naming %s", err, key)
				}
			})
		}
	}
}

func TestLoad(t *testing.T) {
	repo := openRepo(t)
	ctx := context.Background()
	if _, err := snapshot.Load(ctx, repo, snapshot.Latest); !errors.Is(err, snapshot.ErrNotFound) {
		t.Fatalf("latest of empty repo: %v", err)
	}
	if _, err := snapshot.Load(ctx, repo, "20200101T000000Z-000000"); !errors.Is(err, snapshot.ErrNotFound) {
		t.Fatalf("unknown ID: %v", err)
	}
	if _, err := snapshot.Load(ctx, repo, "../etc"); err == nil || errors.Is(err, snapshot.ErrNotFound) {
		t.Fatalf("invalid ID: %v", err)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var last string
	for i := range 3 {
		m, err := take(t, repo, testStreams(t), snapshot.Options{Now: func() time.Time { return now.Add(time.Duration(i) * time.Hour) }})
		if err != nil {
			t.Fatal(err)
		}
		last = m.ID
	}
	m, err := snapshot.Load(ctx, repo, snapshot.Latest)
	if err != nil || m.ID != last {
		t.Fatalf("latest = %v, %v; want %s", m, err, last)
	}
	// A manifest whose ID differs from its folder is refused.
	b, _ := repo.Bucket().ReadAll(ctx, "snapshots/"+last+"/manifest.json")
	other := "20990101T000000Z-abcdef"
	repo.Bucket().WriteAll(ctx, "snapshots/"+other+"/manifest.json", b, nil)
	if _, err := snapshot.Load(ctx, repo, other); !errors.Is(err, snapshot.ErrCorrupt) {
		t.Fatalf("moved manifest: %v", err)
	}
}

func TestManifestGolden(t *testing.T) {
	path := filepath.Join("..", "testdata", "manifest", "v1.json")
	m := &snapshot.Manifest{
		Version: 1, ID: "20261125T210000Z-3f9a1c", Created: time.Date(2026, 11, 25, 21, 0, 0, 0, time.UTC),
		Host: "appsmith-0", Stackport: "v0.1.0", Tags: map[string]string{"env": "prod"},
		Components: []snapshot.Component{{
			Kind: "volume", Compression: "zstd", Encryption: "none",
			Objects: []snapshot.Object{{Key: "volume/volume.tar.zst", Name: "volume.tar", Size: 1234, RawSize: 10240,
				SHA256: strings.Repeat("ab", 32)}},
			Stats: snapshot.Stats{"files": 3, "dirs": 2, "bytes": 9000},
		}},
	}
	got, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("UPDATE_GOLDEN") != "" {
		os.WriteFile(path, got, 0o644)
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("manifest encoding changed (UPDATE_GOLDEN=1 to accept):\n%s", got)
	}
	back, err := snapshot.DecodeManifest(want)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := back.Encode(); !bytes.Equal(again, want) {
		t.Fatal("decode/encode is not the identity")
	}
}

func TestHostileManifests(t *testing.T) {
	golden, err := os.ReadFile(filepath.Join("..", "testdata", "manifest", "v1.json"))
	if err != nil {
		t.Fatal(err)
	}
	ok := string(golden)
	cases := map[string]string{
		"newer version":    strings.Replace(ok, `"version": 1`, `"version": 2`, 1),
		"no version":       strings.Replace(ok, `"version": 1,`, ``, 1),
		"dotdot key":       strings.Replace(ok, `"volume/volume.tar.zst"`, `"../../etc/passwd"`, 1),
		"absolute key":     strings.Replace(ok, `"volume/volume.tar.zst"`, `"/etc/passwd"`, 1),
		"manifest key":     strings.Replace(ok, `"volume/volume.tar.zst"`, `"manifest.json"`, 1),
		"negative size":    strings.Replace(ok, `"size": 1234`, `"size": -1`, 1),
		"huge size":        strings.Replace(ok, `"size": 1234`, `"size": 99999999999999999999999`, 1),
		"bad sha":          strings.Replace(ok, strings.Repeat("ab", 32), "xyz", 1),
		"no components":    `{"version":1,"id":"20261125T210000Z-3f9a1c","components":[]}`,
		"bad id":           strings.Replace(ok, `"20261125T210000Z-3f9a1c"`, `"../x"`, 1),
		"unknown encrypt":  strings.Replace(ok, `"encryption": "none"`, `"encryption": "rot13"`, 1),
		"unknown compress": strings.Replace(ok, `"compression": "zstd"`, `"compression": "lz4"`, 1),
		"not json":         `<html>`,
		"truncated":        ok[:len(ok)/2],
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := snapshot.DecodeManifest([]byte(data)); !errors.Is(err, snapshot.ErrCorrupt) {
				t.Fatalf("DecodeManifest = %v; want ErrCorrupt", err)
			}
		})
	}
	// Unknown fields are tolerated: a newer stackport may add some.
	extra := strings.Replace(ok, `"host"`, `"future_field": {"x": 1}, "host"`, 1)
	if _, err := snapshot.DecodeManifest([]byte(extra)); err != nil {
		t.Fatalf("unknown field: %v", err)
	}
}

func FuzzDecodeManifest(f *testing.F) {
	golden, err := os.ReadFile(filepath.Join("..", "testdata", "manifest", "v1.json"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(golden)
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := snapshot.DecodeManifest(data)
		if err != nil {
			if !errors.Is(err, snapshot.ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		// What validates must re-encode and validate again.
		b, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := snapshot.DecodeManifest(b); err != nil {
			t.Fatal(fmt.Errorf("re-decode: %w", err))
		}
	})
}

// TestStockZstdReadsObjects checks that stored zstd objects — a series of
// independent frames — are ordinary zstd streams for the stock tool.
func TestStockZstdReadsObjects(t *testing.T) {
	repo := openRepo(t)
	src := testStreams(t)
	big := bytes.Repeat([]byte("frames, frames, frames\n"), 600000) // several frames
	src.names = append(src.names, "big")
	src.data["big"] = big
	m, err := take(t, repo, src, snapshot.Options{Compression: snapshot.Zstd})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range m.Component("files").Objects {
		stored, err := repo.Bucket().ReadAll(context.Background(), "snapshots/"+m.ID+"/"+o.Key)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("zstd", "-d", "-c", "-q")
		cmd.Stdin = bytes.NewReader(stored)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("zstd -d %s: %v", o.Key, err)
		}
		if !bytes.Equal(out, src.data[o.Name]) {
			t.Fatalf("zstd -d %s: %d bytes, want %d", o.Key, len(out), len(src.data[o.Name]))
		}
	}
}

// TestConcurrentStreams holds every stream of a component at once and reads
// them on goroutines of their own, as snapshot/postgres loads tables: Next
// before Close is allowed, each stream is still checked, and Verify drains
// what a decoder left open.
func TestConcurrentStreams(t *testing.T) {
	for _, c := range []snapshot.Compression{snapshot.Zstd, snapshot.Gzip, snapshot.None} {
		t.Run(string(c), func(t *testing.T) {
			repo := openRepo(t)
			src := testStreams(t)
			m, err := take(t, repo, src, snapshot.Options{Compression: c})
			if err != nil {
				t.Fatal(err)
			}
			in, err := snapshot.OpenComponent(context.Background(), repo, m, "files", snapshot.ReadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			type result struct {
				name string
				data []byte
				err  error
			}
			results := make(chan result, len(src.names))
			var held []io.ReadCloser
			for {
				name, r, err := in.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				held = append(held, r)
				go func() {
					defer r.Close()
					b, err := io.ReadAll(r)
					results <- result{name, b, err}
				}()
			}
			if len(held) != len(src.names) {
				t.Fatalf("%d streams, want %d", len(held), len(src.names))
			}
			for range held {
				res := <-results
				if res.err != nil || !bytes.Equal(res.data, src.data[res.name]) {
					t.Errorf("stream %s: %d bytes, %v", res.name, len(res.data), res.err)
				}
			}

			// A damaged object is still found when several are held.
			damage(t, repo, "snapshots/"+m.ID+"/files/b/text.txt"+c.Ext(), func(b []byte) []byte { b[len(b)/3] ^= 1; return b })
			in, err = snapshot.OpenComponent(context.Background(), repo, m, "files", snapshot.ReadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var errs []error
			var readers []io.ReadCloser
			for {
				_, r, err := in.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				readers = append(readers, r)
			}
			done := make(chan error, len(readers))
			for _, r := range readers {
				go func() {
					defer r.Close()
					_, err := io.Copy(io.Discard, r)
					done <- err
				}()
			}
			for range readers {
				if err := <-done; err != nil {
					errs = append(errs, err)
				}
			}
			if len(errs) != 1 || !errors.Is(errs[0], snapshot.ErrCorrupt) || !strings.Contains(errs[0].Error(), "b/text.txt") {
				t.Fatalf("errors %v; want one ErrCorrupt naming b/text.txt", errs)
			}

			// Verify drains the streams a decoder holds open and those it
			// never asked for.
			err = snapshot.Verify(context.Background(), repo, m, func(string) snapshot.Restorer { return holdTwo{} }, snapshot.ReadOptions{})
			if !errors.Is(err, snapshot.ErrCorrupt) || !strings.Contains(err.Error(), "b/text.txt") {
				t.Fatalf("verify = %v; want ErrCorrupt naming b/text.txt", err)
			}
		})
	}
}

// holdTwo is a decoder that opens two streams and returns without reading
// or closing them.
type holdTwo struct{}

func (holdTwo) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	for range 2 {
		if _, _, err := in.Next(); err != nil {
			return nil, err
		}
	}
	return nil, nil
}
