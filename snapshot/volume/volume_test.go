package volume

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"github.com/stackport/stackport/internal/streamtest"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/stackport/stackport/snapshot"
)

var quiet = slog.New(slog.DiscardHandler)

// dump dumps d into a new memStore and checks that the stream was committed.
func dump(t *testing.T, d *Dumper) (*streamtest.Store, snapshot.Stats) {
	t.Helper()
	if d.Log == nil {
		d.Log = quiet
	}
	store := streamtest.New()
	stats, err := d.Dump(context.Background(), store)
	if err != nil {
		t.Fatalf("Dump: %v", err)
	}
	if _, ok := store.Bytes(streamName); !ok || len(store.Names()) != 1 {
		t.Fatalf("Dump wrote streams %q, want one committed %s", store.Names(), streamName)
	}
	return store, stats
}

// tarNames returns the entry names of a tar archive.
func tarNames(t *testing.T, data []byte) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
	}
}

func restoreStats(s snapshot.Stats) snapshot.Stats {
	out := snapshot.Stats{}
	for _, k := range []string{"files", "dirs", "symlinks", "hardlinks", "bytes"} {
		out[k] = s[k]
	}
	return out
}

func TestRoundTrip(t *testing.T) {
	src := buildFixture(t)
	store, stats := dump(t, &Dumper{Dir: src})

	want := snapshot.Stats{
		"files": 15, "dirs": 15, "symlinks": 3, "hardlinks": 2,
		"changed": 0, "vanished": 0, "unreadable": 0, "skipped_special": 0, "excluded": 0,
	}
	for k, v := range want {
		if stats[k] != v {
			t.Errorf("dump stats[%q] = %d, want %d (all: %v)", k, stats[k], v, stats)
		}
	}
	size, err := (&Dumper{Dir: src}).Size(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if size != stats["bytes"] || size < sparseSize+3<<20 {
		t.Errorf("Size = %d, dump bytes = %d", size, stats["bytes"])
	}

	data, _ := store.Bytes(streamName)
	names := tarNames(t, data)
	if names[0] != "./" {
		t.Errorf("first entry %q, want ./", names[0])
	}
	for _, n := range names[1:] {
		if strings.HasPrefix(n, "./") || strings.HasPrefix(n, "/") {
			t.Errorf("entry %q has a prefix", n)
		}
	}

	dst := filepath.Join(t.TempDir(), "dst") // created by Restore
	in := store.Reader()
	var progress int64
	rstats, err := (&Restorer{Dir: dst, Log: quiet, Progress: func(n int64) { progress += n }}).Restore(context.Background(), in)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if !in.AllRead() {
		t.Error("Restore did not read and close every stream to its end")
	}
	if !maps.Equal(rstats, restoreStats(stats)) {
		t.Errorf("restore stats %v, want %v", rstats, restoreStats(stats))
	}
	if progress != stats["bytes"] {
		t.Errorf("progress reported %d bytes, want %d", progress, stats["bytes"])
	}
	compareTrees(t, src, dst, compareOpts{})

	// The holes of the sparse file are recreated.
	info, err := os.Stat(filepath.Join(dst, "sparse.img"))
	if err != nil {
		t.Fatal(err)
	}
	if used := info.Sys().(*syscall.Stat_t).Blocks * 512; used > 1<<20 {
		t.Errorf("restored sparse file uses %d bytes on disk, want holes", used)
	}
}

func TestRestoreChown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	src := buildFixture(t)
	store, _ := dump(t, &Dumper{Dir: src})
	dst := filepath.Join(t.TempDir(), "dst")
	owner := &Owner{UID: 4321, GID: 8765}
	if _, err := (&Restorer{Dir: dst, Chown: owner, Log: quiet}).Restore(context.Background(), store.Reader()); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, dst, compareOpts{owner: owner})
}

func TestRestoreNonEmptyTarget(t *testing.T) {
	src := buildFixture(t)
	store, _ := dump(t, &Dumper{Dir: src})
	dst := t.TempDir()
	if err := os.WriteFile(filepath.Join(dst, "keep.txt"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := listing(t, dst)
	_, err := (&Restorer{Dir: dst, Log: quiet}).Restore(context.Background(), store.Reader())
	if !errors.Is(err, snapshot.ErrTargetNotEmpty) || !strings.Contains(err.Error(), dst) {
		t.Fatalf("Restore into a non-empty target: %v, want ErrTargetNotEmpty naming %s", err, dst)
	}
	if after := listing(t, dst); after != before {
		t.Errorf("target changed:\n%s\nwant:\n%s", after, before)
	}
}

func TestRestoreForce(t *testing.T) {
	src := buildFixture(t)
	store, _ := dump(t, &Dumper{Dir: src})
	dst := t.TempDir()
	for name, content := range map[string]string{"old.txt": "old", "small.txt": "to be replaced", "olddir/x": "x"} {
		p := filepath.Join(dst, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dst, "olddir"), 0o555); err != nil {
		t.Fatal(err)
	}
	if _, err := (&Restorer{Dir: dst, Force: true, Log: quiet}).Restore(context.Background(), store.Reader()); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, dst, compareOpts{})
}

func TestExclude(t *testing.T) {
	src := buildFixture(t)
	d := &Dumper{Dir: src, Exclude: []string{"*.bin", "nested", "ünïcødé/日本語.txt", "hard/a"}}
	store, stats := dump(t, d)
	if stats["excluded"] != 4 {
		t.Errorf("excluded = %d, want 4", stats["excluded"])
	}
	data, _ := store.Bytes(streamName)
	names := tarNames(t, data)
	for _, gone := range []string{"big.bin", "nested/", "nested/empty/", "ünïcødé/日本語.txt", "hard/a"} {
		if slices.Contains(names, gone) {
			t.Errorf("excluded %q is in the archive", gone)
		}
	}
	for _, kept := range []string{"small.txt", "ünïcødé/", "hard/b", "other/c"} {
		if !slices.Contains(names, kept) {
			t.Errorf("%q is missing from the archive", kept)
		}
	}
	// With the first name excluded, the next one carries the content.
	dst := filepath.Join(t.TempDir(), "dst")
	if _, err := (&Restorer{Dir: dst, Log: quiet}).Restore(context.Background(), store.Reader()); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "other/c")); err != nil || string(b) != "three names, one inode\n" {
		t.Errorf("other/c = %q, %v", b, err)
	}
	size, err := d.Size(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if size != stats["bytes"] {
		t.Errorf("Size with excludes = %d, dump bytes = %d", size, stats["bytes"])
	}

	_, err = (&Dumper{Dir: src, Exclude: []string{"["}}).Dump(context.Background(), streamtest.New())
	if err == nil || !strings.Contains(err.Error(), `"["`) {
		t.Errorf("Dump with a bad pattern: %v", err)
	}
}

func TestSpecialFilesSkipped(t *testing.T) {
	src := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(src, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(src, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	want := int64(2)
	if os.Geteuid() == 0 {
		if err := syscall.Mknod(filepath.Join(src, "null"), syscall.S_IFCHR|0o666, 1<<8|3); err != nil {
			t.Fatal(err)
		}
		want++
	}
	if err := os.WriteFile(filepath.Join(src, "z.txt"), []byte("z"), 0o644); err != nil {
		t.Fatal(err)
	}
	store, stats := dump(t, &Dumper{Dir: src})
	if stats["skipped_special"] != want || stats["files"] != 1 {
		t.Errorf("stats %v, want %d skipped_special and 1 file", stats, want)
	}
	data, _ := store.Bytes(streamName)
	if names := tarNames(t, data); !slices.Equal(names, []string{"./", "z.txt"}) {
		t.Errorf("entries %q", names)
	}
}

// TestChangedFile changes files while Dump reads them, from the Progress
// callback.
func TestChangedFile(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(path string) error
	}{
		{"shrinks", func(path string) error { return os.Truncate(path, 1000) }},
		{"grows", func(path string) error {
			f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.Write(make([]byte, 1<<20))
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := t.TempDir()
			path := filepath.Join(src, "big")
			content := randomBytes(3<<20, 7)
			if err := os.WriteFile(path, content, 0o644); err != nil {
				t.Fatal(err)
			}
			changed := false
			d := &Dumper{Dir: src, Progress: func(int64) {
				if !changed {
					changed = true
					if err := tc.change(path); err != nil {
						t.Error(err)
					}
				}
			}}
			store, stats := dump(t, d)
			if stats["changed"] != 1 || stats["bytes"] != int64(len(content)) {
				t.Errorf("stats %v, want 1 changed and %d bytes", stats, len(content))
			}
			dst := filepath.Join(t.TempDir(), "dst")
			if _, err := (&Restorer{Dir: dst, Log: quiet}).Restore(context.Background(), store.Reader()); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(dst, "big"))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(content) || !bytes.Equal(got[:copyBufSize], content[:copyBufSize]) {
				t.Errorf("restored %d bytes, want %d starting with the content read", len(got), len(content))
			}
		})
	}
}

func TestVanishedFile(t *testing.T) {
	src := t.TempDir()
	for name, size := range map[string]int{"a": 1 << 20, "b": 10} {
		if err := os.WriteFile(filepath.Join(src, name), make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d := &Dumper{Dir: src, Progress: func(int64) { os.Remove(filepath.Join(src, "b")) }}
	store, stats := dump(t, d)
	if stats["vanished"] != 1 || stats["files"] != 1 {
		t.Errorf("stats %v, want 1 vanished, 1 file", stats)
	}
	data, _ := store.Bytes(streamName)
	if names := tarNames(t, data); !slices.Equal(names, []string{"./", "a"}) {
		t.Errorf("entries %q", names)
	}
}

func TestCancel(t *testing.T) {
	src := buildFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	store := streamtest.New()
	d := &Dumper{Dir: src, Log: quiet, Progress: func(int64) { cancel() }}
	if _, err := d.Dump(ctx, store); !errors.Is(err, context.Canceled) {
		t.Fatalf("Dump: %v, want context.Canceled", err)
	}
	if _, ok := store.Bytes(streamName); ok {
		t.Error("a cancelled Dump committed its stream")
	}

	store, _ = dump(t, &Dumper{Dir: src})
	dst := t.TempDir()
	ctx, cancel = context.WithCancel(context.Background())
	r := &Restorer{Dir: dst, Log: quiet, Progress: func(int64) { cancel() }}
	if _, err := r.Restore(ctx, store.Reader()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Restore: %v, want context.Canceled", err)
	}
	if entries, _ := os.ReadDir(dst); len(entries) != 0 {
		t.Errorf("cancelled Restore left %v", entries)
	}
}

func TestCorruptStream(t *testing.T) {
	src := buildFixture(t)
	store, _ := dump(t, &Dumper{Dir: src})
	good, _ := store.Bytes(streamName)
	checksum := errors.Join(errors.New("checksum mismatch"), snapshot.ErrCorrupt)

	for _, tc := range []struct {
		name string
		in   func() snapshot.StreamReader
	}{
		{"checksum error at the end", func() snapshot.StreamReader { return streamtest.One(streamName, good, checksum) }},
		{"truncated", func() snapshot.StreamReader { return streamtest.One(streamName, good[:len(good)/2], nil) }},
		{"truncated in a header", func() snapshot.StreamReader { return streamtest.One(streamName, good[:700], nil) }},
		{"not a tar", func() snapshot.StreamReader { return streamtest.One(streamName, randomBytes(10000, 3), nil) }},
		{"empty", func() snapshot.StreamReader { return streamtest.One(streamName, nil, nil) }},
		{"zeros", func() snapshot.StreamReader { return streamtest.One(streamName, make([]byte, 4096), nil) }},
		{"no stream", func() snapshot.StreamReader { return &streamtest.Reader{} }},
		{"wrong stream", func() snapshot.StreamReader { return streamtest.One("other.tar", good, nil) }},
		{"extra stream", func() snapshot.StreamReader {
			return &streamtest.Reader{Streams: []streamtest.Stream{{Name: streamName, Data: good}, {Name: "extra", Data: []byte("x")}}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A non-empty target with Force: nothing may be replaced.
			dst := t.TempDir()
			if err := os.WriteFile(filepath.Join(dst, "small.txt"), []byte("previous"), 0o644); err != nil {
				t.Fatal(err)
			}
			before := listing(t, dst)
			_, err := (&Restorer{Dir: dst, Force: true, Log: quiet}).Restore(context.Background(), tc.in())
			if !errors.Is(err, snapshot.ErrCorrupt) {
				t.Fatalf("Restore: %v, want ErrCorrupt", err)
			}
			if !strings.HasPrefix(err.Error(), "volume: ") {
				t.Errorf("error %q lacks the volume: prefix", err)
			}
			if after := listing(t, dst); after != before {
				t.Errorf("target changed:\n%s\nwant:\n%s", after, before)
			}

			// A missing target is not left behind.
			missing := filepath.Join(t.TempDir(), "new")
			if _, err := (&Restorer{Dir: missing, Log: quiet}).Restore(context.Background(), tc.in()); !errors.Is(err, snapshot.ErrCorrupt) {
				t.Fatalf("Restore: %v, want ErrCorrupt", err)
			}
			if _, err := os.Lstat(missing); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("failed Restore left the target it created: %v", err)
			}

			if _, err := (Verifier{}).Restore(context.Background(), tc.in()); !errors.Is(err, snapshot.ErrCorrupt) {
				t.Errorf("Verifier: %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestVerifierAndExport(t *testing.T) {
	src := buildFixture(t)
	store, stats := dump(t, &Dumper{Dir: src})
	in := store.Reader()
	vstats, err := (Verifier{}).Restore(context.Background(), in)
	if err != nil {
		t.Fatalf("Verifier: %v", err)
	}
	if !in.AllRead() {
		t.Error("Verifier did not read every stream to its end")
	}
	if !maps.Equal(vstats, restoreStats(stats)) {
		t.Errorf("verify stats %v, want %v", vstats, restoreStats(stats))
	}

	var buf bytes.Buffer
	estats, err := Export(context.Background(), store.Reader(), &buf)
	if err != nil {
		t.Fatalf("Export: %v", err)
	}
	if !maps.Equal(estats, vstats) {
		t.Errorf("export stats %v, want %v", estats, vstats)
	}
	good, _ := store.Bytes(streamName)
	if !bytes.Equal(buf.Bytes(), good) {
		t.Fatalf("Export wrote %d bytes, not the %d-byte stream", buf.Len(), len(good))
	}

	// GNU tar extracts the export.
	if _, err := exec.LookPath("tar"); err != nil || os.Geteuid() != 0 {
		t.Skip("GNU tar extraction needs tar and root")
	}
	dst := t.TempDir()
	cmd := exec.Command("tar", "--extract", "--numeric-owner", "--same-permissions", "--same-owner", "--directory", dst)
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	compareTrees(t, src, dst, compareOpts{})
}

func TestParseOwner(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want *Owner
	}{
		{"1000:1000", &Owner{1000, 1000}},
		{"0:0", &Owner{0, 0}},
		{"65534:4294967294", &Owner{65534, 4294967294}},
		{"1000", nil},
		{"a:b", nil},
		{"-1:0", nil},
		{"1:", nil},
		{":1", nil},
		{"1:2:3", nil},
		{"4294967295:0", nil},
		{"4294967296:0", nil},
		{" 1:2", nil},
	} {
		got, err := ParseOwner(tc.in)
		if tc.want == nil {
			if err == nil || !strings.HasPrefix(err.Error(), "volume: ") {
				t.Errorf("ParseOwner(%q) = %v, %v; want a volume: error", tc.in, got, err)
			}
			continue
		}
		if err != nil || *got != *tc.want {
			t.Errorf("ParseOwner(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestWalkBefore(t *testing.T) {
	// WalkDir order of a few tricky names.
	order := []string{"a", "a/b", "a/b/c", "a b", "a-c", "a-c/x", "b", "ü"}
	for i, a := range order {
		for j, b := range order {
			if got := walkBefore(a, b); got != (i < j) {
				t.Errorf("walkBefore(%q, %q) = %v", a, b, got)
			}
		}
	}
}

// pipeStreams connects a Dumper to a Restorer through an io.Pipe.
type pipeStreams struct {
	pr     *io.PipeReader
	pw     *io.PipeWriter
	opened bool
}

func (p *pipeStreams) Create(string) (io.WriteCloser, error) { return p.pw, nil }

func (p *pipeStreams) Next() (string, io.ReadCloser, error) {
	if p.opened {
		return "", nil, io.EOF
	}
	p.opened = true
	return streamName, p.pr, nil
}

// TestStreamingMemory dumps and restores a 64 MiB file through a pipe and
// checks that memory allocated does not grow with its size.
func TestStreamingMemory(t *testing.T) {
	src := t.TempDir()
	f, err := os.Create(filepath.Join(src, "big"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(randomBytes(1<<20, 5), 32<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dst := filepath.Join(t.TempDir(), "dst")

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	pr, pw := io.Pipe()
	p := &pipeStreams{pr: pr, pw: pw}
	errc := make(chan error, 1)
	go func() {
		_, err := (&Dumper{Dir: src, Log: quiet}).Dump(context.Background(), p)
		pw.CloseWithError(err)
		errc <- err
	}()
	if _, err := (&Restorer{Dir: dst, Log: quiet}).Restore(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d bytes", alloc)
	if alloc > 8<<20 {
		t.Errorf("dump and restore of a 64 MiB file allocated %d bytes", alloc)
	}
	compareTrees(t, src, dst, compareOpts{})
}
