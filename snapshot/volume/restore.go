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
	Chown    *Owner
	Log      *slog.Logger  // warnings (nil = slog.Default())
	Progress func(n int64) // optional: called with byte counts of file content as it is read
}

// Restore implements snapshot.Restorer. It extracts into a staging directory
// inside Dir and moves the entries into place only after the whole stream
// has been read and verified; on error Dir is left as it was.
func (r *Restorer) Restore(ctx context.Context, in snapshot.StreamReader) (_ snapshot.Stats, err error) {
	log := logger(r.Log)
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
	var stage string
	var mtime time.Time // of Dir, put back if Restore fails
	committed := false
	defer func() {
		if err != nil && !committed {
			r.abandon(dir, stage, created, mtime, log)
		}
	}()
	prev, err := dir.Stat(".")
	if err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	mtime = prev.ModTime()
	staging, err := os.MkdirTemp(r.Dir, stagingPrefix+"*")
	if err != nil {
		return nil, fmt.Errorf("volume: create staging directory: %w", err)
	}
	stage = filepath.Base(staging)
	root, err := dir.OpenRoot(stage)
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
	if err := r.commit(dir, stage, log); err != nil {
		return stats, err
	}
	committed = true

	// The staging directory is empty now; removing it changes Dir's mtime,
	// so attributes come after.
	if err := dir.Remove(stage); err != nil {
		log.Warn("volume: cannot remove staging directory", "path", staging, "error", err)
	}
	for _, d := range x.topDirs {
		if err := x.setAttrs(dir, d.name, d.hdr); err != nil {
			return stats, fmt.Errorf("volume: %w", err)
		}
	}
	if x.rootHdr == nil {
		return stats, nil // an archive without a "./" entry
	}
	if err := x.setAttrs(dir, ".", x.rootHdr); err != nil {
		if !errors.Is(err, fs.ErrPermission) {
			return stats, fmt.Errorf("volume: %w", err)
		}
		log.Warn("volume: cannot apply the archive's owner, mode or mtime to the target", "path", r.Dir, "error", err)
	}
	return stats, nil
}

// abandon undoes a failed Restore: it removes the staging directory and
// the target if Restore created it, or else puts back the target's mtime
// (if known).
func (r *Restorer) abandon(dir *os.Root, stage string, created bool, mtime time.Time, log *slog.Logger) {
	if stage != "" {
		if err := removeAll(dir, stage); err != nil {
			log.Warn("volume: cannot remove staging directory", "path", filepath.Join(r.Dir, stage), "error", err)
		}
	}
	if created {
		os.Remove(r.Dir)
		return
	}
	if mtime.IsZero() {
		return
	}
	if err := dir.Chtimes(".", time.Time{}, mtime); err != nil {
		log.Warn("volume: cannot restore the target's mtime", "path", r.Dir, "error", err)
	}
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

// commit moves the staged entries into Dir. With Force, the existing
// entries are first moved into a trash directory, removed at the end. If a
// move fails, the moves done are undone.
func (r *Restorer) commit(dir *os.Root, stage string, log *slog.Logger) (err error) {
	staged, err := readNames(dir, stage)
	if err != nil {
		return err
	}
	var trash string
	var trashed, moved []string
	defer func() {
		if err == nil {
			return
		}
		for _, n := range slices.Backward(moved) {
			if uerr := dir.Rename(n, path.Join(stage, n)); uerr != nil {
				log.Error("volume: cannot undo restore", "path", n, "error", uerr)
			}
		}
		for _, n := range trashed {
			if uerr := dir.Rename(path.Join(trash, n), n); uerr != nil {
				log.Error("volume: cannot put back previous content", "path", n, "trash", trash, "error", uerr)
			}
		}
		if trash != "" {
			dir.Remove(trash)
		}
	}()

	if r.Force {
		existing, err := readNames(dir, ".")
		if err != nil {
			return err
		}
		existing = slices.DeleteFunc(existing, func(n string) bool { return n == stage })
		if len(existing) > 0 {
			t, err := os.MkdirTemp(r.Dir, trashPrefix+"*")
			if err != nil {
				return fmt.Errorf("volume: create trash directory: %w", err)
			}
			trash = filepath.Base(t)
			for _, n := range existing {
				if err := dir.Rename(n, path.Join(trash, n)); err != nil {
					return fmt.Errorf("volume: move previous content aside: %w", err)
				}
				trashed = append(trashed, n)
			}
		}
	}
	for _, n := range staged {
		if err := dir.Rename(path.Join(stage, n), n); err != nil {
			return fmt.Errorf("volume: move restored entry into place: %w", err)
		}
		moved = append(moved, n)
	}
	if trash != "" {
		if err := removeAll(dir, trash); err != nil {
			log.Warn("volume: cannot remove previous content", "path", filepath.Join(r.Dir, trash), "error", err)
		}
	}
	return nil
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
