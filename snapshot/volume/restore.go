package volume

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stackport/stackport/snapshot"
)

// Owner is a numeric owner given to every restored entry.
type Owner struct{ UID, GID int }

// ParseOwner parses "UID:GID", both numeric.
func ParseOwner(s string) (*Owner, error) {
	u, g, ok := strings.Cut(s, ":")
	uid, uerr := parseID(u)
	gid, gerr := parseID(g)
	if !ok || uerr != nil || gerr != nil {
		return nil, fmt.Errorf("volume: invalid owner %q: want numeric UID:GID", s)
	}
	return &Owner{UID: uid, GID: gid}, nil
}

// parseID parses a numeric user or group ID; 2^32-1 means "no change" to
// chown and is refused.
func parseID(s string) (int, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, errors.New("invalid id")
	}
	return int(n), nil
}

// Restorer restores a volume.tar stream into a directory.
type Restorer struct {
	Dir   string // target directory (created if missing; its parent must exist)
	Force bool   // allow a non-empty target: its content is replaced once the new tree is in place
	// Chown, if set, is the owner of every restored entry. Otherwise the
	// archive's owners are applied when running as root.
	Chown *Owner
	// Keep lists paths the restore must leave as they are, such as the
	// folder of the file:// repository it reads. One inside Dir stays in
	// place (with --force, its parents stay too, their other content is
	// replaced) and the snapshot's copy of it is not restored; a Dir that
	// is one of them or inside one is refused before anything is written.
	Keep     []string
	Log      *slog.Logger  // warnings (nil = slog.Default())
	Progress func(n int64) // optional: called with byte counts of file content as it is read

	// afterMove, a test seam, is called after each entry moved by the
	// final move, with the number moved so far; an error fails the move
	// there (a panic stops it as a kill would).
	afterMove func(n int) error
}

// ErrKeptTarget is returned when the target is, or is inside, a path the
// Restorer must keep.
var ErrKeptTarget = errors.New("the target holds the repository being read")

// Restore implements snapshot.Restorer. It extracts into a staging directory
// inside Dir and moves the entries into place only after the whole stream
// has been read and verified; on error Dir is left as it was. The final
// move is journaled: a restore interrupted during it is completed (or, if
// that fails, undone) by the next Restore or Recover of Dir.
func (r *Restorer) Restore(ctx context.Context, in snapshot.StreamReader) (_ snapshot.Stats, err error) {
	log := logger(r.Log)
	keep, err := r.keptPaths()
	if err != nil {
		return nil, err
	}
	if fi, serr := os.Stat(r.Dir); serr == nil && fi.IsDir() {
		if _, err := Recover(r.Dir, log); err != nil {
			return nil, err
		}
	}
	created, err := prepareTarget(r.Dir, r.Force)
	if err != nil {
		return nil, err
	}
	dir, err := os.OpenRoot(r.Dir)
	if err != nil {
		if created {
			os.Remove(r.Dir)
		}
		return nil, fmt.Errorf("volume: %w", err)
	}
	defer dir.Close()
	prev, err := dir.Stat(".")
	if err != nil {
		if created {
			os.Remove(r.Dir)
		}
		return nil, fmt.Errorf("volume: %w", err)
	}
	t := newTxn(dir, r.Dir, journal{Version: 1, Phase: phaseStaging, OldMode: permBits(prev.Mode()),
		Old: map[string]time.Time{".": prev.ModTime()}}, log)
	t.afterMove = r.afterMove
	staged := false // the journal exists
	committing := false
	defer func() {
		if err == nil || committing {
			return
		}
		if staged {
			t.discard()
		} else if t.j.ModeChanged {
			dir.Chmod(".", t.j.OldMode)
		}
		if created {
			os.Remove(r.Dir)
		}
	}()
	// A read-only target (restored from an archive) is made writable for
	// the restore, as long as it takes.
	if prev.Mode()&0o200 == 0 && os.Geteuid() != 0 {
		if dir.Chmod(".", t.j.OldMode|0o200) == nil {
			t.j.ModeChanged = true
		}
	}
	staging, err := os.MkdirTemp(r.Dir, stagingPrefix+"*")
	if err != nil {
		return nil, fmt.Errorf("volume: create staging directory: %w", err)
	}
	t.j.Stage = filepath.Base(staging)
	t.j.Trash = trashPrefix + strings.TrimPrefix(t.j.Stage, stagingPrefix)
	staged = true
	if err := t.write(); err != nil {
		return nil, err
	}
	root, err := dir.OpenRoot(t.j.Stage)
	if err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	defer root.Close()

	x := &extractor{root: root, owner: r.owner(), buf: make([]byte, copyBufSize)}
	stats, err := readStream(in, func(rd io.Reader) (snapshot.Stats, error) {
		return decode(ctx, rd, x, r.Progress)
	})
	if err != nil {
		return stats, err
	}
	if err := ctx.Err(); err != nil {
		return stats, fmt.Errorf("volume: %w", err)
	}

	// The new tree is complete: from here on an interruption is completed
	// by the next run.
	t.j.Keep = existing(dir, keep)
	t = newTxn(dir, r.Dir, t.j, log)
	t.afterMove = r.afterMove
	for p := range t.merge {
		if fi, err := dir.Lstat(p); err == nil {
			t.j.Old[p] = fi.ModTime()
		}
	}
	own := r.owner()
	attrs := func(name string, hdr *tar.Header) dirAttrs {
		a := dirAttrs{Name: name, Mode: fileMode(hdr), Mtime: hdr.ModTime}
		a.UID, a.GID, a.Chown = own(hdr)
		return a
	}
	for _, d := range x.topDirs {
		if !t.kept[d.name] {
			t.j.Attrs = append(t.j.Attrs, attrs(d.name, d.hdr))
		}
	}
	if x.rootHdr != nil {
		t.j.Attrs = append(t.j.Attrs, attrs(".", x.rootHdr))
	}
	t.j.Phase = phasePlacing
	if r.Force {
		t.j.Phase = phaseTrashing
	}
	if err := t.write(); err != nil {
		return stats, err
	}
	committing = true
	if placed, err := t.run(); err != nil {
		if placed {
			return stats, err
		}
		if rerr := t.rollback(); rerr != nil {
			return stats, fmt.Errorf("%w; putting back the previous content failed too (%v): the next restore of %s completes or undoes it", err, rerr, r.Dir)
		}
		return stats, err
	}
	return stats, nil
}

// CheckKeep returns an error wrapping ErrKeptTarget if Dir is, or is
// inside, a path of Keep, so that callers can refuse before any component
// starts.
func (r *Restorer) CheckKeep() error {
	_, err := r.keptPaths()
	return err
}

// keptPaths returns the paths of Keep inside Dir, relative to it and
// slash-separated. It refuses a Dir that is one of them or inside one.
func (r *Restorer) keptPaths() ([]string, error) {
	if len(r.Keep) == 0 {
		return nil, nil
	}
	target, err := resolvePath(r.Dir)
	if err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	var rels []string
	for _, k := range r.Keep {
		kp, err := resolvePath(k)
		if err != nil {
			return nil, fmt.Errorf("volume: %w", err)
		}
		rel, err := filepath.Rel(kp, target)
		if err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			return nil, fmt.Errorf("volume: %s is inside %s, which the restore must keep (the repository it reads): restore into another folder: %w", r.Dir, kp, ErrKeptTarget)
		}
		rel, err = filepath.Rel(target, kp)
		if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			continue // outside the target
		}
		rels = append(rels, filepath.ToSlash(rel))
	}
	return rels, nil
}

// resolvePath returns the absolute path p with symbolic links resolved, as
// far as it exists.
func resolvePath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	var rest []string
	for {
		r, err := filepath.EvalSymlinks(abs)
		if err == nil {
			return filepath.Join(append([]string{r}, rest...)...), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(abs)
		if parent == abs {
			return "", err
		}
		rest = append([]string{filepath.Base(abs)}, rest...)
		abs = parent
	}
}

// existing returns the paths of keep that exist in dir through
// directories only (not through a symbolic link).
func existing(dir *os.Root, keep []string) []string {
	var out []string
	for _, k := range keep {
		ok := true
		for p := path.Dir(k); p != "." && ok; p = path.Dir(p) {
			fi, err := dir.Lstat(p)
			ok = err == nil && fi.IsDir()
		}
		if _, err := dir.Lstat(k); ok && err == nil && !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out
}

func permBits(m fs.FileMode) fs.FileMode {
	return m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

// owner returns the function that decides the owner of a restored entry.
func (r *Restorer) owner() func(*tar.Header) (uid, gid int, ok bool) {
	switch {
	case r.Chown != nil:
		o := *r.Chown
		return func(*tar.Header) (int, int, bool) { return o.UID, o.GID, true }
	case os.Geteuid() == 0:
		return func(h *tar.Header) (int, int, bool) { return h.Uid, h.Gid, true }
	default:
		return func(*tar.Header) (int, int, bool) { return 0, 0, false }
	}
}

// prepareTarget creates dir if it is missing and checks that it is empty
// unless force is set.
func prepareTarget(dir string, force bool) (created bool, err error) {
	err = os.Mkdir(dir, 0o700)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return false, fmt.Errorf("volume: create target: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return false, fmt.Errorf("volume: %w", err)
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	switch {
	case errors.Is(err, io.EOF):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("volume: %w", err)
	case !force:
		return false, fmt.Errorf("volume: %s: %w", dir, snapshot.ErrTargetNotEmpty)
	}
	return false, nil
}

// readNames returns the names in directory name of dir.
func readNames(dir *os.Root, name string) ([]string, error) {
	f, err := dir.Open(name)
	if err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	return names, nil
}

// removeAll removes name from dir. Read-only directories, as restored from
// an archive, block that for users other than root: on a permission error
// it makes the directories writable and tries again.
func removeAll(dir *os.Root, name string) error {
	err := dir.RemoveAll(name)
	if !errors.Is(err, fs.ErrPermission) {
		return err
	}
	fs.WalkDir(dir.FS(), name, func(p string, de fs.DirEntry, err error) error {
		if err == nil && de.IsDir() {
			dir.Chmod(p, 0o700)
		}
		return nil
	})
	return dir.RemoveAll(name)
}

// A namedHeader is a directory whose attributes are applied after it has
// been moved into place.
type namedHeader struct {
	name string
	hdr  *tar.Header
}

// extractor is the sink of Restorer: it creates the entries under root.
type extractor struct {
	root    *os.Root
	owner   func(*tar.Header) (uid, gid int, ok bool)
	buf     []byte
	rootHdr *tar.Header
	topDirs []namedHeader
}

func (x *extractor) dir(name string, _ *tar.Header) error {
	// Created private and writable; the final mode comes in dirDone.
	if err := x.root.Mkdir(name, 0o700); err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	return nil
}

func (x *extractor) dirDone(name string, hdr *tar.Header) error {
	switch {
	case name == "":
		x.rootHdr = hdr
	case !strings.Contains(name, "/"):
		// Moving a read-only directory to another parent needs write
		// permission on it: the attributes are applied after the move.
		x.topDirs = append(x.topDirs, namedHeader{name, hdr})
	default:
		if err := x.setAttrs(x.root, name, hdr); err != nil {
			return fmt.Errorf("volume: %w", err)
		}
	}
	return nil
}

// setAttrs applies the owner, mode and mtime of hdr to directory name in
// root. The owner comes first: chown clears the setuid and setgid bits.
func (x *extractor) setAttrs(root *os.Root, name string, hdr *tar.Header) error {
	if uid, gid, ok := x.owner(hdr); ok {
		if err := root.Lchown(name, uid, gid); err != nil {
			return err
		}
	}
	if err := root.Chmod(name, fileMode(hdr)); err != nil {
		return err
	}
	return root.Chtimes(name, time.Time{}, hdr.ModTime)
}

func fileMode(hdr *tar.Header) fs.FileMode {
	return hdr.FileInfo().Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

func (x *extractor) file(name string, hdr *tar.Header, r io.Reader) error {
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	err = writeSparse(f, r, x.buf)
	if uid, gid, ok := x.owner(hdr); ok && err == nil {
		err = f.Chown(uid, gid)
	}
	if err == nil {
		err = f.Chmod(fileMode(hdr))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = x.root.Chtimes(name, time.Time{}, hdr.ModTime)
	}
	if err != nil {
		return fmt.Errorf("volume: %s: %w", name, err)
	}
	return nil
}

// writeSparse copies r to f, seeking over blocks of zeros instead of
// writing them, so that holes are recreated.
func writeSparse(f *os.File, r io.Reader, buf []byte) error {
	var off int64
	for {
		n, rerr := fill(r, buf)
		chunk := buf[:n]
		for len(chunk) > 0 {
			end := 0
			for end < len(chunk) && !isZero(chunk[end:min(end+holeBlock, len(chunk))]) {
				end = min(end+holeBlock, len(chunk))
			}
			if end == 0 {
				end = min(holeBlock, len(chunk)) // a block of zeros: skip it
			} else if _, err := f.WriteAt(chunk[:end], off); err != nil {
				return err
			}
			off += int64(end)
			chunk = chunk[end:]
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	return f.Truncate(off)
}

// fill reads into buf until it is full or r returns an error, io.EOF included.
func fill(r io.Reader, buf []byte) (n int, err error) {
	for n < len(buf) && err == nil {
		var m int
		m, err = r.Read(buf[n:])
		n += m
	}
	return n, err
}

func isZero(b []byte) bool { return bytes.Equal(b, zeros[:len(b)]) }

func (x *extractor) symlink(name string, hdr *tar.Header) error {
	if err := x.root.Symlink(hdr.Linkname, name); err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	if uid, gid, ok := x.owner(hdr); ok {
		if err := x.root.Lchown(name, uid, gid); err != nil {
			return fmt.Errorf("volume: %w", err)
		}
	}
	if err := lutimes(x.root, name, hdr.ModTime); err != nil {
		return fmt.Errorf("volume: %s: %w", name, err)
	}
	return nil
}

// lutimes sets the mtime of symbolic link name in root, not following it.
func lutimes(root *os.Root, name string, mtime time.Time) error {
	ts, err := unix.TimeToTimespec(mtime)
	if err != nil {
		return err
	}
	d, err := root.Open(path.Dir(name))
	if err != nil {
		return err
	}
	defer d.Close()
	rc, err := d.SyscallConn()
	if err != nil {
		return err
	}
	times := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, ts}
	cerr := rc.Control(func(fd uintptr) {
		err = unix.UtimesNanoAt(int(fd), path.Base(name), times, unix.AT_SYMLINK_NOFOLLOW)
	})
	if cerr != nil {
		return cerr
	}
	return err
}

func (x *extractor) link(name, target string, hdr *tar.Header) error {
	// Anything under root was created by this archive: the target must be
	// one of its regular files.
	if fi, err := x.root.Lstat(target); err != nil || !fi.Mode().IsRegular() {
		return unsafeEntry(hdr.Name, fmt.Sprintf("hard link target %q is not a regular file of the archive", hdr.Linkname))
	}
	if err := x.root.Link(target, name); err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	return nil
}
