package volume

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stackport/stackport/snapshot"
)

// Dumper writes a directory tree as the stream "volume.tar".
type Dumper struct {
	Dir string // the volume root
	// Exclude holds filepath.Match patterns, matched against the
	// slash-separated path relative to Dir and against the base name. An
	// excluded directory is skipped entirely.
	Exclude []string
	// SkipUnreadable makes an unreadable file or directory a warning,
	// counted as "unreadable", instead of an error.
	SkipUnreadable bool
	Log            *slog.Logger  // warnings (nil = slog.Default())
	Progress       func(n int64) // optional: called with byte counts of file content as it is read
}

// fileID identifies an inode, to find hard links.
type fileID struct{ dev, ino uint64 }

// Dump implements snapshot.Dumper. On error the stream is left unclosed, so
// the pipeline aborts it.
func (d *Dumper) Dump(ctx context.Context, out snapshot.StreamWriter) (snapshot.Stats, error) {
	stats := snapshot.Stats{}
	for _, k := range []string{"files", "dirs", "symlinks", "hardlinks", "bytes", "changed", "vanished", "unreadable", "skipped_special", "excluded"} {
		stats[k] = 0
	}
	root, err := d.root()
	if err != nil {
		return stats, err
	}
	w, err := out.Create(streamName)
	if err != nil {
		return stats, fmt.Errorf("volume: create %s: %w", streamName, err)
	}
	bw := bufio.NewWriterSize(w, copyBufSize)
	wk := &walker{
		d:     d,
		ctx:   ctx,
		log:   logger(d.Log),
		root:  root,
		tw:    tar.NewWriter(bw),
		stats: stats,
		links: make(map[fileID]string),
		names: &idNames{users: map[uint32]string{}, groups: map[uint32]string{}},
		buf:   make([]byte, copyBufSize),
	}
	if err := filepath.WalkDir(root, wk.visit); err != nil {
		return stats, err
	}
	if err := wk.tw.Close(); err != nil {
		return stats, fmt.Errorf("volume: write %s: %w", streamName, err)
	}
	if err := bw.Flush(); err != nil {
		return stats, fmt.Errorf("volume: write %s: %w", streamName, err)
	}
	if err := w.Close(); err != nil {
		return stats, fmt.Errorf("volume: close %s: %w", streamName, err)
	}
	return stats, nil
}

// Size returns the total size of the regular files Dump would read, each
// hard-linked file once. Entries it cannot read are left out.
func (d *Dumper) Size(ctx context.Context) (int64, error) {
	root, err := d.root()
	if err != nil {
		return 0, err
	}
	var total int64
	seen := make(map[fileID]bool)
	err = filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("volume: %w", cerr)
		}
		if err != nil {
			if p == root {
				return fmt.Errorf("volume: %w", err)
			}
			return skipDir(de)
		}
		if rel := relPath(root, p); rel != "." && d.Excluded(rel) {
			return skipDir(de)
		}
		if !de.Type().IsRegular() {
			return nil
		}
		info, err := de.Info()
		if err != nil {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
			id := fileID{uint64(st.Dev), st.Ino}
			if seen[id] {
				return nil
			}
			seen[id] = true
		}
		total += info.Size()
		return nil
	})
	return total, err
}

// root checks the exclude patterns and returns Dir with symbolic links
// resolved, so that a volume mounted through a link is walked.
func (d *Dumper) root() (string, error) {
	for _, p := range d.Exclude {
		if _, err := filepath.Match(p, ""); err != nil {
			return "", fmt.Errorf("volume: exclude pattern %q: %w", p, err)
		}
	}
	root, err := filepath.EvalSymlinks(d.Dir)
	if err != nil {
		return "", fmt.Errorf("volume: %w", err)
	}
	return root, nil
}

// Excluded reports whether the entry at rel (slash-separated, relative to
// Dir) is left out of the archive: it matches an Exclude pattern by path or
// base name, or it is a leftover of an interrupted restore.
func (d *Dumper) Excluded(rel string) bool {
	if isReserved(rel) {
		return true
	}
	base := path.Base(rel)
	for _, p := range d.Exclude {
		if m, _ := filepath.Match(p, rel); m {
			return true
		}
		if m, _ := filepath.Match(p, base); m {
			return true
		}
	}
	return false
}

// isReserved reports whether rel is a top-level entry named like Restore's
// staging and trash directories, left over by an interrupted restore.
func isReserved(rel string) bool {
	return !strings.Contains(rel, "/") && strings.HasPrefix(rel, reservedPrefix)
}

func relPath(root, p string) string {
	rel, err := filepath.Rel(root, p)
	if err != nil {
		return p
	}
	return filepath.ToSlash(rel)
}

func skipDir(de fs.DirEntry) error {
	if de != nil && de.IsDir() {
		return fs.SkipDir
	}
	return nil
}

// walker holds the state of one Dump.
type walker struct {
	d     *Dumper
	ctx   context.Context
	log   *slog.Logger
	root  string
	tw    *tar.Writer
	stats snapshot.Stats
	links map[fileID]string // first archived path of each inode with several links
	names *idNames
	buf   []byte
}

func (wk *walker) visit(p string, de fs.DirEntry, err error) error {
	if cerr := wk.ctx.Err(); cerr != nil {
		return fmt.Errorf("volume: %w", cerr)
	}
	rel := relPath(wk.root, p)
	if err != nil {
		if rel == "." {
			return fmt.Errorf("volume: %w", err)
		}
		return wk.skip(p, de, err)
	}
	if rel != "." && wk.d.Excluded(rel) {
		if isReserved(rel) {
			wk.log.Warn("volume: skipping leftover restore directory", "path", p)
		}
		wk.stats.Add("excluded", 1)
		return skipDir(de)
	}
	info, err := de.Info()
	if err != nil {
		return wk.skip(p, de, err)
	}
	mode := info.Mode()
	switch {
	case rel == "." && !mode.IsDir():
		return fmt.Errorf("volume: %s is not a directory", wk.d.Dir)
	case rel == ".":
		return wk.write(info, "./", "", "dirs")
	case mode.IsDir():
		return wk.write(info, rel+"/", "", "dirs")
	case mode.IsRegular():
		return wk.file(p, rel, info)
	case mode&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			return wk.skip(p, de, err)
		}
		return wk.write(info, rel, target, "symlinks")
	default:
		wk.log.Warn("volume: skipping special file", "path", p, "mode", mode.String())
		wk.stats.Add("skipped_special", 1)
		return nil
	}
}

// skip handles err about the entry at p: a vanished entry, or an unreadable
// one with SkipUnreadable, is a warning; anything else fails the dump.
func (wk *walker) skip(p string, de fs.DirEntry, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		wk.log.Warn("volume: entry vanished during snapshot", "path", p)
		wk.stats.Add("vanished", 1)
	case errors.Is(err, fs.ErrPermission) && wk.d.SkipUnreadable:
		wk.log.Warn("volume: skipping unreadable entry", "path", p, "error", err)
		wk.stats.Add("unreadable", 1)
	default:
		return fmt.Errorf("volume: %w", err)
	}
	return skipDir(de)
}

// write writes the header of a directory or symbolic link and counts it.
func (wk *walker) write(info fs.FileInfo, name, link, counter string) error {
	hdr, err := wk.header(info, name, link)
	if err != nil {
		return err
	}
	if err := wk.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("volume: write %s: %w", streamName, err)
	}
	wk.stats.Add(counter, 1)
	return nil
}

func (wk *walker) header(info fs.FileInfo, name, link string) (*tar.Header, error) {
	hdr, err := tar.FileInfoHeader(namedInfo{info, wk.names}, link)
	if err != nil {
		return nil, fmt.Errorf("volume: %s: %w", name, err)
	}
	hdr.Name = name
	hdr.Format = tar.FormatPAX
	hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
	return hdr, nil
}

// file archives the regular file at p, or a hard link to the first path of
// its inode.
func (wk *walker) file(p, rel string, info fs.FileInfo) error {
	st, _ := info.Sys().(*syscall.Stat_t)
	if st != nil && st.Nlink > 1 {
		if first, ok := wk.links[fileID{uint64(st.Dev), st.Ino}]; ok {
			hdr, err := wk.header(info, rel, "")
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			if err := wk.tw.WriteHeader(hdr); err != nil {
				return fmt.Errorf("volume: write %s: %w", streamName, err)
			}
			wk.stats.Add("hardlinks", 1)
			return nil
		}
	}

	// O_NONBLOCK: should the file have been replaced by a FIFO, opening it
	// must not wait for a writer.
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		err = fs.ErrNotExist // replaced by a symbolic link: the file we listed is gone
	}
	if err != nil {
		return wk.skip(p, nil, err)
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	if !before.Mode().IsRegular() {
		return wk.skip(p, nil, fs.ErrNotExist)
	}
	hdr, err := wk.header(before, rel, "")
	if err != nil {
		return err
	}
	if err := wk.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("volume: write %s: %w", streamName, err)
	}
	src := &countingReader{ctx: wk.ctx, r: f, progress: wk.d.Progress}
	n, err := io.CopyBuffer(wk.tw, io.LimitReader(src, hdr.Size), wk.buf)
	if err != nil {
		return fmt.Errorf("volume: copy %s: %w", p, err)
	}
	changed := n < hdr.Size
	for n < hdr.Size {
		k, err := wk.tw.Write(zeros[:min(hdr.Size-n, int64(len(zeros)))])
		if err != nil {
			return fmt.Errorf("volume: write %s: %w", streamName, err)
		}
		n += int64(k)
	}
	if after, err := f.Stat(); err == nil && (after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime())) {
		changed = true
	}
	if changed {
		wk.log.Warn("volume: file changed while being read", "path", p)
		wk.stats.Add("changed", 1)
	}
	wk.stats.Add("files", 1)
	wk.stats.Add("bytes", hdr.Size)
	if st, ok := before.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
		wk.links[fileID{uint64(st.Dev), st.Ino}] = rel
	}
	return nil
}

// namedInfo gives tar.FileInfoHeader the owner names from a cache.
type namedInfo struct {
	fs.FileInfo
	names *idNames
}

func (i namedInfo) Uname() (string, error) {
	if st, ok := i.Sys().(*syscall.Stat_t); ok {
		return i.names.user(st.Uid), nil
	}
	return "", nil
}

func (i namedInfo) Gname() (string, error) {
	if st, ok := i.Sys().(*syscall.Stat_t); ok {
		return i.names.group(st.Gid), nil
	}
	return "", nil
}

// idNames caches user and group names, including the IDs that have none.
type idNames struct {
	users, groups map[uint32]string
}

func (c *idNames) user(uid uint32) string {
	name, ok := c.users[uid]
	if !ok {
		if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
			name = u.Username
		}
		c.users[uid] = name
	}
	return name
}

func (c *idNames) group(gid uint32) string {
	name, ok := c.groups[gid]
	if !ok {
		if g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10)); err == nil {
			name = g.Name
		}
		c.groups[gid] = name
	}
	return name
}
