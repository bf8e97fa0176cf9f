package volume

import (
	"bytes"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	sparseSize  = 64 << 20
	fixtureUID  = 1234
	fixtureGID  = 5678
	longDirPart = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrs" // 100 bytes
)

var longFileName = strings.Repeat("f", 196) + ".txt" // 200 bytes

// fixtureTime returns a distinct mtime with nanoseconds for the i-th entry;
// every third one is before 1970.
func fixtureTime(i int) time.Time {
	base := time.Date(2021, 7, 8, 9, 10, 11, 0, time.UTC)
	if i%3 == 0 {
		base = time.Date(1961, 2, 3, 4, 5, 6, 0, time.UTC)
	}
	return base.Add(time.Duration(i)*time.Hour + time.Duration(100000007*i+123456789)%time.Second)
}

// randomBytes returns n deterministic pseudo-random bytes.
func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// buildFixture creates the reference tree in a new directory and returns its
// path. Owners are set only when running as root.
func buildFixture(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "src")
	asRoot := os.Geteuid() == 0
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	p := func(rel string) string { return filepath.Join(root, filepath.FromSlash(rel)) }
	mkdir := func(rel string) { must(os.MkdirAll(p(rel), 0o755)) }
	write := func(rel string, data []byte, mode fs.FileMode) {
		must(os.WriteFile(p(rel), data, 0o600))
		must(os.Chmod(p(rel), mode))
	}
	chown := func(rel string) {
		if asRoot {
			must(os.Lchown(p(rel), fixtureUID, fixtureGID))
		}
	}

	mkdir(".")
	write("empty.txt", nil, 0o644)
	write("small.txt", []byte("hello, volume\n"), 0o644)
	chown("small.txt")
	write("big.bin", randomBytes(3<<20, 1), 0o640)
	write("readonly.txt", []byte("read only\n"), 0o444)
	write("secret.txt", []byte("no permissions\n"), 0o000)
	chown("secret.txt")

	// setuid: the owner is set first, as chown clears the bit.
	write("setuid-bin", []byte("#!/bin/sh\n"), 0o755)
	chown("setuid-bin")
	must(os.Chmod(p("setuid-bin"), 0o4755))

	mkdir("nested/empty/deeper")
	mkdir("ro-dir")
	write("ro-dir/inside.txt", []byte("inside a read-only directory\n"), 0o644)
	mkdir("setgid-dir")
	write("setgid-dir/file", []byte("group\n"), 0o664)
	chown("setgid-dir")
	mkdir("sticky")
	write("sticky/tmpfile", []byte("sticky\n"), 0o666)

	mkdir("links")
	must(os.Symlink("../small.txt", p("links/rel")))
	chown("links/rel")
	must(os.Symlink("/etc/passwd", p("links/abs")))
	must(os.Symlink("does/not/exist", p("links/dangling")))

	mkdir("hard")
	mkdir("other")
	write("hard/a", []byte("three names, one inode\n"), 0o600)
	must(os.Link(p("hard/a"), p("hard/b")))
	must(os.Link(p("hard/a"), p("other/c")))

	long := "long/" + longDirPart + "/" + longDirPart + "/" + longDirPart
	mkdir(long)
	write(long+"/file.txt", []byte("long path\n"), 0o644)
	if n := len(long + "/file.txt"); n <= 255 {
		t.Fatalf("long path is only %d bytes", n)
	}
	write(longFileName, []byte("long name\n"), 0o644)

	mkdir("ünïcødé")
	write("ünïcødé/日本語.txt", []byte("unicode\n"), 0o644)
	write("emoji-😀 space.txt", []byte("emoji\n"), 0o644)

	// A sparse file: 64 MiB with three written blocks.
	f, err := os.Create(p("sparse.img"))
	must(err)
	for i, off := range []int64{0, 10 << 20, sparseSize - 4096} {
		_, err := f.WriteAt(randomBytes(4096, uint64(10+i)), off)
		must(err)
	}
	must(f.Truncate(sparseSize))
	must(f.Close())

	// Modes and mtimes come last, directories deepest first.
	var dirs []string
	i := 0
	must(filepath.WalkDir(root, func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.IsDir() {
			dirs = append(dirs, path)
			return nil
		}
		i++
		return setMtime(path, fixtureTime(i))
	}))
	modes := map[string]fs.FileMode{
		p("."):            0o750,
		p("ro-dir"):       0o555,
		p("setgid-dir"):   0o775 | fs.ModeSetgid,
		p("sticky"):       0o777 | fs.ModeSticky,
		p("nested"):       0o700,
		p("nested/empty"): 0o555,
	}
	for _, d := range slices.Backward(dirs) {
		i++
		if m, ok := modes[d]; ok {
			must(os.Chmod(d, m))
		}
		must(setMtime(d, fixtureTime(i)))
	}
	return root
}

// setMtime sets the mtime of path without following a symbolic link.
func setMtime(path string, mtime time.Time) error {
	ts, err := unix.TimeToTimespec(mtime)
	if err != nil {
		return err
	}
	return unix.UtimesNanoAt(unix.AT_FDCWD, path, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}

// node is what compareTrees compares of one entry.
type node struct {
	mode     fs.FileMode
	size     int64
	mtime    time.Time
	uid, gid uint32
	nlink    uint64
	ino      uint64
	target   string
}

// scanTree returns the entries under root by slash-separated relative path,
// the root as ".".
func scanTree(t *testing.T, root string) map[string]node {
	t.Helper()
	nodes := map[string]node{}
	err := filepath.WalkDir(root, func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := os.Lstat(path)
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		n := node{mode: info.Mode(), mtime: info.ModTime(), uid: st.Uid, gid: st.Gid, nlink: uint64(st.Nlink), ino: st.Ino}
		if info.Mode().IsRegular() {
			n.size = info.Size()
		}
		if info.Mode()&fs.ModeSymlink != 0 {
			if n.target, err = os.Readlink(path); err != nil {
				return err
			}
		}
		rel, _ := filepath.Rel(root, path)
		nodes[filepath.ToSlash(rel)] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return nodes
}

// compareOpts adjusts compareTrees.
type compareOpts struct {
	owner *Owner // if set, every entry of got must have this owner
}

// compareTrees fails t unless the tree got equals want: same entries with
// the same type, mode, size, content, mtime, symbolic link target, owner and
// hard-link identity.
func compareTrees(t *testing.T, want, got string, opts compareOpts) {
	t.Helper()
	w, g := scanTree(t, want), scanTree(t, got)
	for _, name := range slices.Sorted(maps.Keys(w)) {
		if _, ok := g[name]; !ok {
			t.Errorf("%s: missing in %s", name, got)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(g)) {
		if _, ok := w[name]; !ok {
			t.Errorf("%s: unexpected in %s", name, got)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(w)) {
		a, ok := w[name]
		b, ok2 := g[name]
		if !ok || !ok2 {
			continue
		}
		if a.mode != b.mode {
			t.Errorf("%s: mode %v, want %v", name, b.mode, a.mode)
		}
		if !a.mtime.Equal(b.mtime) {
			t.Errorf("%s: mtime %v, want %v", name, b.mtime, a.mtime)
		}
		wantUID, wantGID := a.uid, a.gid
		if opts.owner != nil {
			wantUID, wantGID = uint32(opts.owner.UID), uint32(opts.owner.GID)
		}
		if b.uid != wantUID || b.gid != wantGID {
			t.Errorf("%s: owner %d:%d, want %d:%d", name, b.uid, b.gid, wantUID, wantGID)
		}
		if a.target != b.target {
			t.Errorf("%s: link target %q, want %q", name, b.target, a.target)
		}
		if !a.mode.IsRegular() {
			continue
		}
		if a.size != b.size {
			t.Errorf("%s: size %d, want %d", name, b.size, a.size)
		} else if !sameContent(t, filepath.Join(want, name), filepath.Join(got, name)) {
			t.Errorf("%s: content differs", name)
		}
		if a.nlink != b.nlink {
			t.Errorf("%s: %d links, want %d", name, b.nlink, a.nlink)
		}
		if wl, gl := linkGroup(w, a.ino), linkGroup(g, b.ino); !slices.Equal(wl, gl) {
			t.Errorf("%s: hard-linked with %q, want %q", name, gl, wl)
		}
	}
}

// linkGroup returns the sorted names of the regular files with inode ino.
func linkGroup(nodes map[string]node, ino uint64) []string {
	var names []string
	for name, n := range nodes {
		if n.mode.IsRegular() && n.ino == ino {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// sameContent compares two files in fixed-size chunks.
func sameContent(t *testing.T, a, b string) bool {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		na, erra := io.ReadFull(fa, ba)
		nb, errb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false
		}
		if erra != nil || errb != nil {
			return erra != nil && errb != nil
		}
	}
}

// listing describes every entry under root (type, mode, size, content
// digest, mtime), to check that a failed restore changed nothing.
func listing(t *testing.T, root string) string {
	t.Helper()
	var sb strings.Builder
	err := filepath.WalkDir(root, func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := os.Lstat(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		sb.WriteString(rel + " " + info.Mode().String() + " " + info.ModTime().String())
		if info.Mode().IsRegular() {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sb.WriteString(" " + string(data))
		}
		sb.WriteString("\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return sb.String()
}
