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
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stackport/stackport/snapshot"
)

// Dumper writes a directory tree as the stream "volume.tar".
//
// It walks the tree through open directory handles (see walk.go): symbolic
// links are archived as links and never followed, so nothing outside Dir is
// read, whatever is renamed or replaced during the walk. An entry replaced
// by another type between being listed and opened (a directory by a
// symbolic link or a file, say) is archived as what it has become, counted
// as "changed", with a warning. It holds one open directory per level of
// depth.
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

	// beforeOpen, a test seam, is called with the archive name of a
	// directory or regular file listed by the walk just before it is
	// opened.
	beforeOpen func(rel string)
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
	// A restore into this folder that was killed during its final move
	// left a journal: complete it or put the old tree back first (and say
	// which), so that a half-restored tree is never archived.
	if _, err := Recover(root, d.Log); err != nil {
		return stats, err
	}
	dir, err := d.openRoot(root)
	if err != nil {
		return stats, err
	}
	defer dir.Close()
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
	if err := wk.walkRoot(dir); err != nil {
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
	dir, err := d.openRoot(root)
	if err != nil {
		return 0, err
	}
	defer dir.Close()
	s := &sizer{d: d, ctx: ctx, root: root, seen: make(map[fileID]bool)}
	if err := s.dir(dir, ""); err != nil {
		return 0, err
	}
	return s.total, nil
}

// sizer holds the state of one Size.
type sizer struct {
	d     *Dumper
	ctx   context.Context
	root  string
	seen  map[fileID]bool
	total int64
}

// dir adds the sizes of the files under the directory open as dir, with
// archive name rel.
func (s *sizer) dir(dir *os.File, rel string) error {
	names, err := dir.Readdirnames(-1)
	if err != nil && rel == "" {
		return fmt.Errorf("volume: %w", err)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := s.ctx.Err(); err != nil {
			return fmt.Errorf("volume: %w", err)
		}
		crel, p := childPath(s.root, rel, name)
		if s.d.Excluded(crel) {
			continue
		}
		info, err := lstatAt(dir, name, p)
		if err != nil {
			continue
		}
		switch mode := info.Mode(); {
		case mode.IsDir():
			sub, err := openDirAt(dir, name, p)
			if err != nil {
				continue
			}
			err = s.dir(sub, crel)
			sub.Close()
			if err != nil {
				return err
			}
		case mode.IsRegular():
			if st := info.Sys().(*syscall.Stat_t); st.Nlink > 1 {
				id := fileID{uint64(st.Dev), st.Ino}
				if s.seen[id] {
					continue
				}
				s.seen[id] = true
			}
			s.total += info.Size()
		}
	}
	return nil
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

// openRoot opens the volume root, the resolved Dir.
func (d *Dumper) openRoot(root string) (*os.File, error) {
	f, err := openRootDir(root)
	if errors.Is(err, syscall.ENOTDIR) {
		return nil, fmt.Errorf("volume: %s is not a directory", d.Dir)
	}
	if err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	return f, nil
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

// walker holds the state of one Dump.
type walker struct {
	d     *Dumper
	ctx   context.Context
	log   *slog.Logger
	root  string // the resolved Dir, for messages only
	tw    *tar.Writer
	stats snapshot.Stats
	links map[fileID]string // first archived path of each inode with several links
	names *idNames
	buf   []byte
}

// walkRoot archives the root, open as dir, and everything under it.
func (wk *walker) walkRoot(dir *os.File) error {
	info, err := dir.Stat()
	if err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	if err := wk.write(info, "./", "", "dirs"); err != nil {
		return err
	}
	return wk.walkDir(dir, "", wk.root)
}

// walkDir archives the entries of the directory open as dir, with archive
// name rel ("" for the root) and path p, in the order of filepath.WalkDir.
func (wk *walker) walkDir(dir *os.File, rel, p string) error {
	names, err := dir.Readdirnames(-1)
	if err != nil {
		if rel == "" {
			return fmt.Errorf("volume: %w", err)
		}
		// The directory's entry is archived, without its content.
		return wk.skip(p, err)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := wk.ctx.Err(); err != nil {
			return fmt.Errorf("volume: %w", err)
		}
		if err := wk.entry(dir, rel, name); err != nil {
			return err
		}
	}
	return nil
}

// entry archives entry name of dir, the directory with archive name rel. An
// entry replaced by another type between fstatat and open is archived as
// what it has become; replaced again, it is left out.
func (wk *walker) entry(dir *os.File, rel, name string) error {
	crel, p := childPath(wk.root, rel, name)
	if wk.d.Excluded(crel) {
		if isReserved(crel) {
			wk.log.Warn("volume: skipping leftover restore directory", "path", p)
		}
		wk.stats.Add("excluded", 1)
		return nil
	}
	for attempt := 0; ; attempt++ {
		info, err := lstatAt(dir, name, p)
		if err != nil {
			return wk.skip(p, err)
		}
		err = wk.archive(dir, name, crel, p, info)
		if !errors.Is(err, errReplaced) {
			return err
		}
		if attempt > 0 {
			wk.log.Warn("volume: entry replaced again during snapshot: left out", "path", p)
			return nil
		}
		wk.log.Warn("volume: entry replaced during snapshot: archived as what it has become", "path", p, "was", typeName(info.Mode()))
		wk.stats.Add("changed", 1)
	}
}

// typeName names the type of an entry in warnings.
func typeName(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m.IsRegular():
		return "file"
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	default:
		return "special file"
	}
}

// archive archives entry name of dir, with archive name rel and path p, of
// which fstatat returned info. It returns errReplaced if the entry is no
// longer of info's type.
func (wk *walker) archive(dir *os.File, name, rel, p string, info fs.FileInfo) error {
	mode := info.Mode()
	switch {
	case mode.IsDir():
		if wk.d.beforeOpen != nil {
			wk.d.beforeOpen(rel)
		}
		sub, err := openDirAt(dir, name, p)
		if errors.Is(err, errReplaced) {
			return err
		}
		if err != nil {
			if serr := wk.skip(p, err); serr != nil || !errors.Is(err, fs.ErrPermission) {
				return serr
			}
			// Unreadable: its entry is archived, without its content.
			return wk.write(info, rel+"/", "", "dirs")
		}
		defer sub.Close()
		if info, err = sub.Stat(); err != nil {
			return fmt.Errorf("volume: %w", err)
		}
		if err := wk.write(info, rel+"/", "", "dirs"); err != nil {
			return err
		}
		return wk.walkDir(sub, rel, p)
	case mode.IsRegular():
		return wk.file(dir, name, rel, p, info)
	case mode&fs.ModeSymlink != 0:
		target, err := readlinkAt(dir, name, p)
		if errors.Is(err, errReplaced) {
			return err
		}
		if err != nil {
			return wk.skip(p, err)
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
func (wk *walker) skip(p string, err error) error {
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
	return nil
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

// file archives regular file name of dir, with archive name rel and path
// p, of which fstatat returned info, or a hard link to the first archived
// name of its inode. It returns errReplaced if the entry is no longer a
// regular file.
func (wk *walker) file(dir *os.File, name, rel, p string, info fs.FileInfo) error {
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

	if wk.d.beforeOpen != nil {
		wk.d.beforeOpen(rel)
	}
	f, before, err := openFileAt(dir, name, p)
	if errors.Is(err, errReplaced) {
		return err
	}
	if err != nil {
		return wk.skip(p, err)
	}
	defer f.Close()
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
