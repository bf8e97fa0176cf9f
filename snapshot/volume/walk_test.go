package volume

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/stackport/stackport/internal/streamtest"
	"github.com/stackport/stackport/snapshot"
)

// The tests in this file replace entries while the walk runs, from the
// Dumper's beforeOpen seam, and check that nothing outside the volume is
// read.

// secret is the content of every file outside the volume: no byte of it may
// reach an archive.
const secret = "TOP-SECRET-outside-the-volume-7d1f0c"

// swapFixture is a volume next to a directory outside it.
type swapFixture struct {
	base    string // holds src, outside and moved-aside entries
	src     string // the volume
	outside string // a directory outside the volume, its files holding secret
}

// newSwapFixture creates the volume
//
//	a.txt  d/  d/a  d/b  d/sub/  d/sub/c  f.txt  z/  z/x
//
// and outside, with files named like those of d, all holding secret.
func newSwapFixture(t *testing.T) swapFixture {
	t.Helper()
	base := t.TempDir()
	fx := swapFixture{base: base, src: filepath.Join(base, "src"), outside: filepath.Join(base, "outside")}
	for name, content := range map[string]string{
		"src/a.txt":       "a",
		"src/d/a":         "d/a",
		"src/d/b":         "d/b",
		"src/d/sub/c":     "d/sub/c",
		"src/f.txt":       "file content",
		"src/z/x":         "z/x",
		"outside/a":       secret,
		"outside/b":       secret,
		"outside/sub/c":   secret,
		"outside/secret":  secret,
		"outside/f.txt":   secret,
		"outside/x":       secret,
		"outside/z.txt":   secret,
		"outside/deep/yy": secret,
	} {
		p := filepath.Join(base, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return fx
}

// moveAside moves the volume's entry rel out of the volume.
func (fx swapFixture) moveAside(t *testing.T, rel string) {
	t.Helper()
	to := filepath.Join(fx.base, "moved-"+strings.ReplaceAll(rel, "/", "-"))
	if err := os.Rename(filepath.Join(fx.src, rel), to); err != nil {
		t.Error(err)
	}
}

// onceAt returns a beforeOpen seam that runs swap the first time the walk
// is about to open rel, and records that it ran in *ran.
func onceAt(rel string, ran *bool, swap func()) func(string) {
	return func(name string) {
		if name == rel && !*ran {
			*ran = true
			swap()
		}
	}
}

// archived is one entry of an archive.
type archived struct {
	typ  byte
	link string
	body string
}

// readArchive returns the entries of a dump by name, checking that no byte
// of secret is in it, that every name is a clean relative one, and that
// the Verifier accepts it.
func readArchive(t *testing.T, store *streamtest.Store) (map[string]archived, []string) {
	t.Helper()
	data, _ := store.Bytes(streamName)
	if bytes.Contains(data, []byte(secret)) {
		t.Error("the archive holds the secret from outside the volume")
	}
	entries := map[string]archived{}
	var names []string
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !isRoot(hdr.Name) {
			if _, err := cleanName(hdr.Name, hdr.Typeflag == tar.TypeDir); err != nil {
				t.Errorf("entry %q: %v", hdr.Name, err)
			}
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		entries[hdr.Name] = archived{hdr.Typeflag, hdr.Linkname, string(body)}
		names = append(names, hdr.Name)
	}
	if _, err := (Verifier{}).Restore(context.Background(), store.Reader()); err != nil {
		t.Errorf("Verifier: %v", err)
	}
	return entries, names
}

// dumpLogged dumps d like dump, returning the warnings logged too.
func dumpLogged(t *testing.T, d *Dumper) (*streamtest.Store, snapshot.Stats, string) {
	t.Helper()
	var logs bytes.Buffer
	d.Log = slog.New(slog.NewTextHandler(&logs, nil))
	store, stats := dump(t, d)
	return store, stats, logs.String()
}

// restoreOK restores store into a new directory and returns it, checking
// that nothing was written outside it.
func restoreOK(t *testing.T, fx swapFixture, store *streamtest.Store) string {
	t.Helper()
	before := listing(t, fx.outside)
	dst := filepath.Join(t.TempDir(), "dst")
	if _, err := (&Restorer{Dir: dst, Log: quiet}).Restore(context.Background(), store.Reader()); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if after := listing(t, fx.outside); after != before {
		t.Errorf("restore changed the directory outside:\n%s\nwant:\n%s", after, before)
	}
	return dst
}

func TestDirSwappedForSymlink(t *testing.T) {
	for _, tc := range []struct {
		name   string
		target func(fx swapFixture) string
	}{
		{"absolute link outside", func(fx swapFixture) string { return fx.outside }},
		{"relative link outside", func(swapFixture) string { return "../outside" }},
		// os.Root would follow this one, archiving z's content as d's.
		{"link inside the volume", func(swapFixture) string { return "z" }},
		{"link to the root", func(swapFixture) string { return "." }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := newSwapFixture(t)
			target := tc.target(fx)
			var ran bool
			d := &Dumper{Dir: fx.src, beforeOpen: onceAt("d", &ran, func() {
				fx.moveAside(t, "d")
				if err := os.Symlink(target, filepath.Join(fx.src, "d")); err != nil {
					t.Error(err)
				}
			})}
			store, stats, logs := dumpLogged(t, d)
			if !ran {
				t.Fatal("the walk never opened d")
			}
			entries, names := readArchive(t, store)
			want := []string{"./", "a.txt", "d", "f.txt", "z/", "z/x"}
			if !slices.Equal(names, want) {
				t.Errorf("entries %q, want %q", names, want)
			}
			if e := entries["d"]; e.typ != tar.TypeSymlink || e.link != target {
				t.Errorf("d archived as type %q -> %q, want the symbolic link -> %q", e.typ, e.link, target)
			}
			if stats["changed"] != 1 || stats["dirs"] != 2 || stats["symlinks"] != 1 || stats["files"] != 3 {
				t.Errorf("stats %v, want 1 changed, 2 dirs, 1 symlink, 3 files", stats)
			}
			if !strings.Contains(logs, "volume: entry replaced during snapshot") || !strings.Contains(logs, filepath.Join(fx.src, "d")) {
				t.Errorf("no warning naming d in:\n%s", logs)
			}

			// The snapshot restores: d is the symbolic link.
			dst := restoreOK(t, fx, store)
			if got, err := os.Readlink(filepath.Join(dst, "d")); err != nil || got != target {
				t.Errorf("restored d -> %q, %v; want -> %q", got, err, target)
			}
		})
	}
}

func TestFileSwappedForSymlink(t *testing.T) {
	for _, tc := range []struct {
		name   string
		target func(fx swapFixture) string
	}{
		{"absolute link outside", func(fx swapFixture) string { return filepath.Join(fx.outside, "secret") }},
		{"relative link outside", func(swapFixture) string { return "../outside/secret" }},
		{"link inside the volume", func(swapFixture) string { return "a.txt" }},
		{"link to a directory outside", func(fx swapFixture) string { return fx.outside }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := newSwapFixture(t)
			target := tc.target(fx)
			var ran bool
			d := &Dumper{Dir: fx.src, beforeOpen: onceAt("f.txt", &ran, func() {
				if err := os.Remove(filepath.Join(fx.src, "f.txt")); err != nil {
					t.Error(err)
				}
				if err := os.Symlink(target, filepath.Join(fx.src, "f.txt")); err != nil {
					t.Error(err)
				}
			})}
			store, stats, logs := dumpLogged(t, d)
			if !ran {
				t.Fatal("the walk never opened f.txt")
			}
			entries, names := readArchive(t, store)
			want := []string{"./", "a.txt", "d/", "d/a", "d/b", "d/sub/", "d/sub/c", "f.txt", "z/", "z/x"}
			if !slices.Equal(names, want) {
				t.Errorf("entries %q, want %q", names, want)
			}
			if e := entries["f.txt"]; e.typ != tar.TypeSymlink || e.link != target || e.body != "" {
				t.Errorf("f.txt archived as type %q -> %q with %d bytes, want the symbolic link -> %q", e.typ, e.link, len(e.body), target)
			}
			if stats["changed"] != 1 || stats["symlinks"] != 1 || stats["files"] != 5 || stats["vanished"] != 0 {
				t.Errorf("stats %v, want 1 changed, 1 symlink, 5 files", stats)
			}
			if !strings.Contains(logs, "volume: entry replaced during snapshot") || !strings.Contains(logs, filepath.Join(fx.src, "f.txt")) {
				t.Errorf("no warning naming f.txt in:\n%s", logs)
			}
			dst := restoreOK(t, fx, store)
			if got, err := os.Readlink(filepath.Join(dst, "f.txt")); err != nil || got != target {
				t.Errorf("restored f.txt -> %q, %v; want -> %q", got, err, target)
			}
		})
	}
}

func TestDirSwappedForFile(t *testing.T) {
	fx := newSwapFixture(t)
	var ran bool
	d := &Dumper{Dir: fx.src, beforeOpen: onceAt("d", &ran, func() {
		fx.moveAside(t, "d")
		if err := os.WriteFile(filepath.Join(fx.src, "d"), []byte("now a file"), 0o644); err != nil {
			t.Error(err)
		}
	})}
	store, stats, logs := dumpLogged(t, d)
	if !ran {
		t.Fatal("the walk never opened d")
	}
	entries, names := readArchive(t, store)
	want := []string{"./", "a.txt", "d", "f.txt", "z/", "z/x"}
	if !slices.Equal(names, want) {
		t.Errorf("entries %q, want %q", names, want)
	}
	if e := entries["d"]; e.typ != tar.TypeReg || e.body != "now a file" {
		t.Errorf("d archived as type %q with %q, want the regular file", e.typ, e.body)
	}
	if stats["changed"] != 1 || stats["files"] != 4 || stats["dirs"] != 2 {
		t.Errorf("stats %v, want 1 changed, 4 files, 2 dirs", stats)
	}
	if !strings.Contains(logs, "volume: entry replaced during snapshot") || !strings.Contains(logs, "was=directory") {
		t.Errorf("no warning about d in:\n%s", logs)
	}
	dst := restoreOK(t, fx, store)
	if b, err := os.ReadFile(filepath.Join(dst, "d")); err != nil || string(b) != "now a file" {
		t.Errorf("restored d = %q, %v", b, err)
	}
}

// TestEntryReplacedTwice replaces a directory by a file, then the file by a
// directory: the entry is left out, the snapshot succeeds.
func TestEntryReplacedTwice(t *testing.T) {
	fx := newSwapFixture(t)
	calls := 0
	d := &Dumper{Dir: fx.src, beforeOpen: func(rel string) {
		if rel != "d" {
			return
		}
		calls++
		p := filepath.Join(fx.src, "d")
		switch calls {
		case 1:
			fx.moveAside(t, "d")
			if err := os.WriteFile(p, []byte("a file"), 0o644); err != nil {
				t.Error(err)
			}
		case 2:
			if err := os.Remove(p); err != nil {
				t.Error(err)
			}
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Error(err)
			}
		}
	}}
	store, stats, logs := dumpLogged(t, d)
	if calls != 2 {
		t.Fatalf("d opened %d times, want 2", calls)
	}
	_, names := readArchive(t, store)
	want := []string{"./", "a.txt", "f.txt", "z/", "z/x"}
	if !slices.Equal(names, want) {
		t.Errorf("entries %q, want %q", names, want)
	}
	if stats["changed"] != 1 {
		t.Errorf("stats %v, want 1 changed", stats)
	}
	if !strings.Contains(logs, "volume: entry replaced again during snapshot: left out") {
		t.Errorf("no warning about d left out in:\n%s", logs)
	}
}

// TestParentSwappedDuringWalk moves the directory being walked out of the
// volume and puts a symbolic link to outside in its place: the walk goes on
// in the directory it opened (whose names outside also has) and reads
// nothing through the link.
func TestParentSwappedDuringWalk(t *testing.T) {
	fx := newSwapFixture(t)
	var ran bool
	d := &Dumper{Dir: fx.src, beforeOpen: onceAt("d/a", &ran, func() {
		fx.moveAside(t, "d")
		if err := os.Symlink(fx.outside, filepath.Join(fx.src, "d")); err != nil {
			t.Error(err)
		}
	})}
	store, stats, _ := dumpLogged(t, d)
	if !ran {
		t.Fatal("the walk never opened d/a")
	}
	entries, names := readArchive(t, store)
	want := []string{"./", "a.txt", "d/", "d/a", "d/b", "d/sub/", "d/sub/c", "f.txt", "z/", "z/x"}
	if !slices.Equal(names, want) {
		t.Errorf("entries %q, want %q", names, want)
	}
	for _, name := range []string{"d/a", "d/b", "d/sub/c"} {
		if e := entries[name]; e.body != name {
			t.Errorf("%s archived with %q, want the volume's content", name, e.body)
		}
	}
	if stats["files"] != 6 {
		t.Errorf("stats %v, want 6 files", stats)
	}
}

// TestLongPaths snapshots and restores a tree whose paths are longer than
// PATH_MAX (4096 bytes): nested directories with 200-byte names, holding a
// file, a symbolic link with a long target and a hard link.
func TestLongPaths(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(src)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	var parts []string
	for i := range 24 {
		parts = append(parts, fmt.Sprintf("%03d-%s", i, strings.Repeat("d", 196)))
	}
	deep := strings.Join(parts, "/")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(root.MkdirAll(deep, 0o755))
	half := strings.Join(parts[:12], "/")
	must(root.WriteFile(half+"/half.txt", []byte("half way down\n"), 0o644))
	must(root.WriteFile(deep+"/"+longFileName, randomBytes(100000, 9), 0o640))
	must(root.Link(deep+"/"+longFileName, deep+"/hard"))
	linkTarget := "../" + parts[len(parts)-1] + "/" + longFileName // longer than the 100 bytes of a plain header
	must(root.Symlink(linkTarget, deep+"/link"))
	must(root.WriteFile("top.txt", []byte("top\n"), 0o644))
	longest := deep + "/" + longFileName
	if len(longest) <= 4096 || len(filepath.Join(src, longest)) <= 4096 {
		t.Fatalf("longest path is only %d bytes", len(longest))
	}

	store, stats := dump(t, &Dumper{Dir: src})
	want := snapshot.Stats{"files": 3, "dirs": 25, "symlinks": 1, "hardlinks": 1, "changed": 0, "vanished": 0, "bytes": 100000 + 14 + 4}
	for k, v := range want {
		if stats[k] != v {
			t.Errorf("dump stats[%q] = %d, want %d (all: %v)", k, stats[k], v, stats)
		}
	}
	size, err := (&Dumper{Dir: src}).Size(context.Background())
	if err != nil || size != stats["bytes"] {
		t.Errorf("Size = %d, %v; want %d", size, err, stats["bytes"])
	}

	// The names are carried by PAX records.
	data, _ := store.Bytes(streamName)
	tr := tar.NewReader(bytes.NewReader(data))
	var sawLongest, sawLink bool
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch hdr.Name {
		case longest:
			sawLongest = hdr.Format == tar.FormatPAX && hdr.PAXRecords["path"] == longest
		case deep + "/link":
			sawLink = hdr.Linkname == linkTarget && hdr.PAXRecords["linkpath"] == linkTarget
		case deep + "/hard":
			if hdr.Typeflag != tar.TypeLink || hdr.Linkname != longest {
				t.Errorf("hard link %q -> %q", hdr.Typeflag, hdr.Linkname)
			}
		}
	}
	if !sawLongest || !sawLink {
		t.Errorf("longest path in a PAX record: %v; long link target: %v", sawLongest, sawLink)
	}

	dst := filepath.Join(t.TempDir(), "dst")
	rstats, err := (&Restorer{Dir: dst, Log: quiet}).Restore(context.Background(), store.Reader())
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if !maps.Equal(rstats, restoreStats(stats)) {
		t.Errorf("restore stats %v, want %v", rstats, restoreStats(stats))
	}
	if w, g := describeTree(t, src), describeTree(t, dst); !slices.Equal(g, w) {
		t.Errorf("restored tree:\n%s\nwant:\n%s", strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
}

// describeTree describes every entry under dir (name, type, mode, mtime,
// link count, content digest, link target), through an os.Root so that
// paths may be longer than PATH_MAX.
func describeTree(t *testing.T, dir string) []string {
	t.Helper()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	var out []string
	err = fs.WalkDir(root.FS(), ".", func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := root.Lstat(p)
		if err != nil {
			return err
		}
		s := fmt.Sprintf("%s %v %v nlink=%d", p, info.Mode(), info.ModTime(), info.Sys().(*syscall.Stat_t).Nlink)
		switch {
		case info.Mode().IsRegular():
			b, err := root.ReadFile(p)
			if err != nil {
				return err
			}
			s += fmt.Sprintf(" sha256=%x", sha256.Sum256(b))
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := root.Readlink(p)
			if err != nil {
				return err
			}
			s += " -> " + target
		}
		out = append(out, s)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
