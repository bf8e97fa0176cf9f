package volume

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The Dumper walks the volume through open directory handles: every entry
// is looked up by its one name relative to the open directory that holds it
// (openat, fstatat, readlinkat), never by a path. An entry is opened with
// O_NOFOLLOW, a directory also with O_DIRECTORY, so a symbolic link is never
// followed, whatever the walk met before or replaced meanwhile: nothing
// outside the volume is opened, and paths have no length limit.
//
// os.Root is not used: it follows symbolic links that stay inside the root,
// even with O_NOFOLLOW, so a directory replaced by a link to another one of
// the volume would be archived with that one's content.

// errReplaced is returned when an entry is no longer of the type it was
// listed with: it was replaced between fstatat and open.
var errReplaced = errors.New("replaced during the snapshot")

// openRootDir opens the volume root; a symbolic link to it is followed.
func openRootDir(path string) (*os.File, error) {
	fd, err := retryEINTR(func() (int, error) {
		return unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	})
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// openDirAt opens directory name of dir without following a symbolic link.
// It returns errReplaced if name is not a directory. path names it in
// errors.
func openDirAt(dir *os.File, name, path string) (*os.File, error) {
	fd, err := retryEINTR(func() (int, error) {
		return unix.Openat(int(dir.Fd()), name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	})
	switch {
	case err == unix.ELOOP || err == unix.ENOTDIR:
		return nil, errReplaced
	case err != nil:
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// openFileAt opens regular file name of dir for reading, without following
// a symbolic link. It returns errReplaced if name is not a regular file.
// O_NONBLOCK: should the file have been replaced by a FIFO, opening it must
// not wait for a writer.
func openFileAt(dir *os.File, name, path string) (*os.File, fs.FileInfo, error) {
	fd, err := retryEINTR(func() (int, error) {
		return unix.Openat(int(dir.Fd()), name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	})
	switch {
	case err == unix.ELOOP || err == unix.ENXIO: // a symbolic link, a socket
		return nil, nil, errReplaced
	case err != nil:
		return nil, nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !info.Mode().IsRegular() {
		f.Close()
		return nil, nil, errReplaced
	}
	return f, info, nil
}

// lstatAt returns the attributes of entry name of dir, not following a
// symbolic link.
func lstatAt(dir *os.File, name, path string) (fs.FileInfo, error) {
	var st unix.Stat_t
	_, err := retryEINTR(func() (int, error) {
		return 0, unix.Fstatat(int(dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	return newStatInfo(name, &st), nil
}

// readlinkAt returns the target of symbolic link name of dir, or
// errReplaced if it is no longer a symbolic link.
func readlinkAt(dir *os.File, name, path string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := retryEINTR(func() (int, error) { return unix.Readlinkat(int(dir.Fd()), name, buf) })
		switch {
		case err == unix.EINVAL:
			return "", errReplaced
		case err != nil:
			return "", &fs.PathError{Op: "readlink", Path: path, Err: err}
		case n < size:
			return string(buf[:n]), nil
		}
	}
}

func retryEINTR(fn func() (int, error)) (int, error) {
	for {
		n, err := fn()
		if err != unix.EINTR {
			return n, err
		}
	}
}

// childPath returns the archive name and the path (for messages only) of
// entry name of the directory with archive name rel ("" for the root).
func childPath(root, rel, name string) (childRel, path string) {
	if rel != "" {
		name = rel + "/" + name
	}
	return name, filepath.Join(root, filepath.FromSlash(name))
}

// statInfo is the fs.FileInfo of an fstatat result. Sys returns a
// *syscall.Stat_t, as os.Lstat's does, for tar.FileInfoHeader and the
// hard-link table.
type statInfo struct {
	name string
	sys  syscall.Stat_t
}

func newStatInfo(name string, st *unix.Stat_t) *statInfo {
	return &statInfo{name: name, sys: syscall.Stat_t{
		Dev:     st.Dev,
		Ino:     st.Ino,
		Nlink:   st.Nlink,
		Mode:    st.Mode,
		Uid:     st.Uid,
		Gid:     st.Gid,
		Rdev:    st.Rdev,
		Size:    st.Size,
		Blksize: st.Blksize,
		Blocks:  st.Blocks,
		Atim:    syscall.Timespec(st.Atim),
		Mtim:    syscall.Timespec(st.Mtim),
		Ctim:    syscall.Timespec(st.Ctim),
	}}
}

func (s *statInfo) Name() string       { return s.name }
func (s *statInfo) Size() int64        { return s.sys.Size }
func (s *statInfo) ModTime() time.Time { return time.Unix(s.sys.Mtim.Unix()) }
func (s *statInfo) IsDir() bool        { return s.Mode().IsDir() }
func (s *statInfo) Sys() any           { return &s.sys }

// Mode converts the mode as os.Lstat does.
func (s *statInfo) Mode() fs.FileMode {
	m := fs.FileMode(s.sys.Mode & 0o777)
	switch s.sys.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		m |= fs.ModeDir
	case unix.S_IFLNK:
		m |= fs.ModeSymlink
	case unix.S_IFIFO:
		m |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		m |= fs.ModeSocket
	case unix.S_IFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		m |= fs.ModeDevice
	}
	if s.sys.Mode&unix.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if s.sys.Mode&unix.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if s.sys.Mode&unix.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}
