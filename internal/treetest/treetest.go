// Package treetest builds fixture directory trees that cover every kind of
// file a volume holds, and compares two trees byte for byte with their
// metadata. It is imported only by tests.
package treetest

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Fixture fills dir (which must exist and be empty) with a tree that covers
// regular files (empty, small, random, sparse), empty and read-only
// directories, setuid/setgid/sticky modes, relative, absolute and dangling
// symlinks, hard links, long paths, unicode names, nanosecond and pre-1970
// mtimes and, as root, foreign owners. It returns dir.
func Fixture(t testing.TB, dir string) string {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	p := func(rel string) string { return filepath.Join(dir, rel) }
	file := func(rel string, data []byte, mode os.FileMode) {
		t.Helper()
		must(os.MkdirAll(filepath.Dir(p(rel)), 0o755))
		must(os.WriteFile(p(rel), data, 0o600))
		must(os.Chmod(p(rel), mode))
	}

	file("configuration/docker.env", []byte("APPSMITH_ENCRYPTION_PASSWORD=fixture-secret\n"), 0o600)
	file("empty.txt", nil, 0o644)
	file("random.bin", random(1<<20+123), 0o644)
	file("text/log.txt", bytes.Repeat([]byte("a line of compressible log text\n"), 20000), 0o644)
	file("readonly.txt", []byte("read only"), 0o444)
	file("bin/setuid", []byte("#!/bin/sh\n"), 0o755|os.ModeSetuid)
	file("ünïcødé/名前.txt", []byte("unicode"), 0o644)
	file(strings.Repeat("x", 200)+".txt", []byte("long name"), 0o644)
	long := filepath.Join(strings.Repeat("d", 100), strings.Repeat("e", 100), strings.Repeat("f", 100))
	file(filepath.Join(long, "deep.txt"), []byte("long path"), 0o644)

	must(os.MkdirAll(p("data/empty"), 0o755))
	must(os.Mkdir(p("shared"), 0o755))
	must(os.Chmod(p("shared"), 0o777|os.ModeSticky))
	must(os.Mkdir(p("group"), 0o755))
	must(os.Chmod(p("group"), 0o775|os.ModeSetgid))

	// Sparse: 32 MiB apparent, a few written blocks.
	f, err := os.Create(p("sparse.img"))
	must(err)
	for _, off := range []int64{0, 10 << 20, 32<<20 - 4096} {
		_, err := f.WriteAt(random(4096), off)
		must(err)
	}
	must(f.Close())

	must(os.Symlink("../random.bin", p("text/rel-link")))
	must(os.Symlink("/etc/hostname", p("abs-link")))
	must(os.Symlink("does/not/exist", p("dangling")))
	must(os.Link(p("random.bin"), p("text/hardlink.bin")))
	must(os.Link(p("random.bin"), p("data/hardlink2.bin")))

	if os.Geteuid() == 0 {
		must(os.Lchown(p("text/log.txt"), 1234, 5678))
		must(os.Lchown(p("data"), 1234, 5678))
		must(os.Lchown(p("abs-link"), 1234, 5678))
	}
	// The read-only directory is filled before it loses its write bit.
	file("locked/inside.txt", []byte("inside a 0555 dir"), 0o644)

	// Mtimes last, deepest first, so that creating children does not move
	// them; some with nanoseconds, one before 1970.
	times := []time.Time{
		time.Date(2024, 2, 29, 12, 34, 56, 123456789, time.UTC),
		time.Date(1969, 7, 20, 20, 17, 40, 0, time.UTC),
		time.Date(2026, 11, 25, 21, 0, 0, 987654321, time.UTC),
	}
	var paths []string
	must(filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		paths = append(paths, path)
		return err
	}))
	for i := len(paths) - 1; i >= 0; i-- {
		ts := unix.NsecToTimespec(times[i%len(times)].UnixNano())
		must(unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
	}
	must(os.Chmod(p("locked"), 0o555))
	ts := unix.NsecToTimespec(times[0].UnixNano())
	must(unix.UtimesNanoAt(unix.AT_FDCWD, p("locked"), []unix.Timespec{ts, ts}, 0))
	must(unix.UtimesNanoAt(unix.AT_FDCWD, dir, []unix.Timespec{ts, ts}, 0))
	return dir
}

// Options tune Compare.
type Options struct {
	Owners bool // compare uid and gid
	Root   bool // compare the mode and mtime of the roots themselves
}

// Compare fails t for every difference between the trees a and b: the set of
// paths, types, modes (with special bits), sizes, contents, mtimes (ns),
// symlink targets, hard-link groups and, with opts.Owners, owners.
func Compare(t testing.TB, a, b string, opts Options) {
	t.Helper()
	as, err := scan(a)
	if err != nil {
		t.Fatal(err)
	}
	bs, err := scan(b)
	if err != nil {
		t.Fatal(err)
	}
	errs := 0
	report := func(format string, args ...any) {
		t.Helper()
		if errs++; errs <= 20 {
			t.Errorf(format, args...)
		}
	}
	for rel, x := range as {
		y, ok := bs[rel]
		if !ok {
			report("%s: missing in %s", rel, b)
			continue
		}
		if rel == "." && !opts.Root {
			continue
		}
		if x.mode != y.mode {
			report("%s: mode %v, want %v", rel, y.mode, x.mode)
		}
		if x.mode.IsRegular() && (x.size != y.size || x.sum != y.sum) {
			report("%s: content differs (%d bytes, want %d)", rel, y.size, x.size)
		}
		if x.link != y.link {
			report("%s: symlink to %q, want %q", rel, y.link, x.link)
		}
		if x.mtime != y.mtime {
			report("%s: mtime %v, want %v", rel, time.Unix(0, y.mtime).UTC(), time.Unix(0, x.mtime).UTC())
		}
		if opts.Owners && (x.uid != y.uid || x.gid != y.gid) {
			report("%s: owner %d:%d, want %d:%d", rel, y.uid, y.gid, x.uid, x.gid)
		}
		if x.linkGroup != y.linkGroup {
			report("%s: hard-link group %q, want %q", rel, y.linkGroup, x.linkGroup)
		}
	}
	for rel := range bs {
		if _, ok := as[rel]; !ok {
			report("%s: unexpected in %s", rel, b)
		}
	}
}

// Owners fails t unless every entry under dir (the root included) belongs to
// uid:gid.
func Owners(t testing.TB, dir string, uid, gid int) {
	t.Helper()
	s, err := scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	for rel, e := range s {
		if e.uid != uid || e.gid != gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", rel, e.uid, e.gid, uid, gid)
		}
	}
}

// Blocks returns the 512-byte blocks allocated to a file.
func Blocks(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks
}

type entry struct {
	mode      os.FileMode
	size      int64
	sum       [32]byte
	link      string
	mtime     int64
	uid, gid  int
	linkGroup string // the first path (in walk order) of the inode, for files with several links
}

func scan(root string) (map[string]entry, error) {
	out := map[string]entry{}
	firstPath := map[uint64]string{}
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		e := entry{mode: fi.Mode(), size: fi.Size(), mtime: st.Mtim.Nano(), uid: int(st.Uid), gid: int(st.Gid)}
		switch {
		case fi.Mode().IsRegular():
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
			copy(e.sum[:], h.Sum(nil))
			if st.Nlink > 1 {
				if first, ok := firstPath[st.Ino]; ok {
					e.linkGroup = first
				} else {
					firstPath[st.Ino] = rel
					e.linkGroup = rel
				}
			}
		case fi.Mode()&os.ModeSymlink != 0:
			if e.link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("treetest: scan %s: %w", root, err)
	}
	return out, nil
}
