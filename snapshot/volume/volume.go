// Package volume snapshots a directory tree, such as an Appsmith persistent
// volume, as one PAX tar stream named "volume.tar", and restores it.
//
// The archive holds the root directory as "./" followed by every entry in
// the lexical depth-first order of filepath.WalkDir, without a "./" prefix,
// directories with a trailing "/". It records regular files, directories,
// symbolic links (never followed) and hard links, with modes including the
// setuid, setgid and sticky bits, numeric owners and names, and modification
// times with nanoseconds.
//
// Restore treats the archive as hostile: it accepts only archives in that
// order (which lets it reject duplicates and writes through symbolic links
// without remembering every name), extracts into a staging directory inside
// the target through an os.Root, and moves the result into place only after
// the whole stream has been read and its checksum verified, so a failed
// restore leaves the target as it was.
//
// Memory use does not depend on file sizes: content is copied through fixed
// buffers. It grows with directory depth and fan-out and with the hard-link
// table of the Dumper.
package volume

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"strings"

	"github.com/stackport/stackport/snapshot"
)

const (
	// streamName is the one stream the component writes.
	streamName = "volume.tar"

	// reservedPrefix starts the names of the staging and trash directories
	// that Restore creates inside the target. The Dumper skips top-level
	// entries with this prefix and archives may not contain them.
	reservedPrefix = ".stackport-"
	stagingPrefix  = reservedPrefix + "restore-"
	trashPrefix    = reservedPrefix + "trash-"

	// copyBufSize is the size of the buffers content is copied through. It
	// is a multiple of holeBlock.
	copyBufSize = 256 << 10

	// holeBlock is the granularity of the holes Restore creates.
	holeBlock = 4 << 10
)

// zeros is a block of zero bytes, used to pad files that shrank while being
// read and to detect runs of zeros.
var zeros [64 << 10]byte

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}

// unsafeEntry returns the error for an archive entry that Restore must not
// extract.
func unsafeEntry(name, reason string) error {
	return fmt.Errorf("volume: entry %q: %s: %w", name, reason, snapshot.ErrUnsafePath)
}

// corrupt returns the error for undecodable archive data.
func corrupt(format string, args ...any) error {
	return fmt.Errorf("volume: %s: %s: %w", streamName, fmt.Sprintf(format, args...), snapshot.ErrCorrupt)
}

func isRoot(name string) bool { return name == "./" || name == "." }

// cleanName checks an entry name or hard-link target of the archive and
// returns it without a leading "./" and, for directories, without the
// trailing "/". It is the one name check shared by Restorer, Verifier and
// Export; it returns the reason a name is rejected.
func cleanName(name string, isDir bool) (string, error) {
	p := strings.TrimPrefix(name, "./")
	if isDir {
		p = strings.TrimSuffix(p, "/")
	}
	switch {
	case p == "":
		return "", errors.New("empty name")
	case strings.HasPrefix(p, "/"):
		return "", errors.New("absolute path")
	case strings.IndexByte(p, 0) >= 0:
		return "", errors.New("NUL byte in name")
	case strings.HasPrefix(p, reservedPrefix):
		return "", errors.New("name reserved for restore staging")
	}
	for c := range strings.SplitSeq(p, "/") {
		switch c {
		case "":
			return "", errors.New("empty path component")
		case ".", "..":
			return "", fmt.Errorf("%q path component", c)
		}
	}
	return p, nil
}

// walkBefore reports whether clean name a comes before b in the order of
// filepath.WalkDir: a parent before its children, siblings sorted bytewise.
func walkBefore(a, b string) bool {
	for {
		ca, ra, aMore := strings.Cut(a, "/")
		cb, rb, bMore := strings.Cut(b, "/")
		if ca != cb {
			return ca < cb
		}
		if !aMore || !bMore {
			return !aMore && bMore
		}
		a, b = ra, rb
	}
}

// checkType returns why hdr's type cannot be restored, or nil.
func checkType(hdr *tar.Header) error {
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink:
	case tar.TypeChar, tar.TypeBlock:
		return errors.New("device file")
	case tar.TypeFifo:
		return errors.New("FIFO")
	default:
		return fmt.Errorf("unsupported entry type %q", hdr.Typeflag)
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return errors.New("GNU sparse entries are not supported")
		}
	}
	return nil
}

// An entry is a validated archive entry.
type entry struct {
	name string // clean name, "" for the root
	link string // clean hard-link target
}

// An openDir is a directory whose entries may still follow.
type openDir struct {
	name string // clean name, "" for the root
	hdr  *tar.Header
	last string // base name of its latest entry
}

// A validator checks the entries of an archive in order. It accepts only
// archives in the Dumper's order, which lets it reject duplicates and writes
// through symbolic links while remembering only the directories enclosing
// the current entry.
type validator struct {
	dirs []openDir // enclosing directories, root first; the root's hdr is nil if the archive has no "./" entry
}

// next checks hdr, the next header of the archive. Directories that can have
// no more entries are passed to done, deepest first.
func (v *validator) next(hdr *tar.Header, done func(name string, hdr *tar.Header) error) (entry, error) {
	if isRoot(hdr.Name) {
		switch {
		case len(v.dirs) > 0:
			return entry{}, unsafeEntry(hdr.Name, "duplicate or misplaced root entry")
		case hdr.Typeflag != tar.TypeDir:
			return entry{}, unsafeEntry(hdr.Name, "root entry is not a directory")
		}
		v.dirs = append(v.dirs, openDir{hdr: hdr})
		return entry{}, nil
	}
	if err := checkType(hdr); err != nil {
		return entry{}, unsafeEntry(hdr.Name, err.Error())
	}
	name, err := cleanName(hdr.Name, hdr.Typeflag == tar.TypeDir)
	if err != nil {
		return entry{}, unsafeEntry(hdr.Name, err.Error())
	}
	e := entry{name: name}
	if hdr.Typeflag == tar.TypeLink {
		if e.link, err = cleanName(hdr.Linkname, false); err != nil {
			return entry{}, unsafeEntry(hdr.Name, "hard link target: "+err.Error())
		}
		if !walkBefore(e.link, name) {
			return entry{}, unsafeEntry(hdr.Name, fmt.Sprintf("hard link target %q is not an earlier entry", hdr.Linkname))
		}
	}
	if hdr.Typeflag == tar.TypeSymlink && hdr.Linkname == "" {
		return entry{}, corrupt("entry %q: empty symbolic link target", hdr.Name)
	}

	if len(v.dirs) == 0 {
		v.dirs = append(v.dirs, openDir{}) // an archive without a root entry
	}
	parent, base := path.Split(name)
	parent = strings.TrimSuffix(parent, "/")
	i := len(v.dirs) - 1
	for i >= 0 && v.dirs[i].name != parent {
		i--
	}
	if i < 0 {
		return entry{}, unsafeEntry(hdr.Name, fmt.Sprintf("parent %q is not a directory earlier in the archive", parent))
	}
	if err := v.close(i+1, done); err != nil {
		return entry{}, err
	}
	dir := &v.dirs[i]
	if base <= dir.last {
		return entry{}, unsafeEntry(hdr.Name, "duplicate or out-of-order entry")
	}
	dir.last = base
	if hdr.Typeflag == tar.TypeDir {
		v.dirs = append(v.dirs, openDir{name: name, hdr: hdr})
	}
	return e, nil
}

// finish ends the archive: every directory, the root last, is done.
func (v *validator) finish(done func(name string, hdr *tar.Header) error) error {
	if len(v.dirs) == 0 {
		return corrupt("no entries")
	}
	return v.close(0, done)
}

// close passes the open directories from index i on to done, deepest first.
func (v *validator) close(i int, done func(name string, hdr *tar.Header) error) error {
	for len(v.dirs) > i {
		d := v.dirs[len(v.dirs)-1]
		v.dirs = v.dirs[:len(v.dirs)-1]
		if err := done(d.name, d.hdr); err != nil {
			return err
		}
	}
	return nil
}

// readStream reads the component's one stream with fn, then checks that no
// other stream follows. The content is closed before Next is called again.
func readStream(in snapshot.StreamReader, fn func(io.Reader) (snapshot.Stats, error)) (snapshot.Stats, error) {
	name, rc, err := in.Next()
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("volume: missing stream %s: %w", streamName, snapshot.ErrCorrupt)
	}
	if err != nil {
		return nil, fmt.Errorf("volume: open %s: %w", streamName, err)
	}
	if name != streamName {
		rc.Close()
		return nil, fmt.Errorf("volume: unexpected stream %q, want %s: %w", name, streamName, snapshot.ErrCorrupt)
	}
	stats, err := fn(rc)
	if cerr := rc.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("volume: close %s: %w", streamName, cerr)
	}
	if err != nil {
		return stats, err
	}
	name, rc, err = in.Next()
	switch {
	case errors.Is(err, io.EOF):
		return stats, nil
	case err != nil:
		return stats, fmt.Errorf("volume: after %s: %w", streamName, err)
	}
	rc.Close()
	return stats, fmt.Errorf("volume: unexpected stream %q after %s: %w", name, streamName, snapshot.ErrCorrupt)
}
