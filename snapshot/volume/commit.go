package volume

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// The final move of a restore is journaled, so that a restore killed half
// way (kill -9, a crash, a power cut) is finished or undone by the next
// run instead of leaving a mix of the old and the new tree.
//
// The journal, journalName in the target, is written and fsynced:
//
//   - before the staging directory is filled (phase "staging"): an
//     interruption leaves the old tree untouched; recovery removes the
//     staging directory;
//   - once the whole stream was read and verified, before the first entry
//     of the old tree is moved into the trash directory (phase "trashing");
//   - once the whole old tree is in the trash, before the first staged
//     entry is moved into place (phase "placing").
//
// In the last two phases the new tree is complete in the staging directory
// or already in place, so recovery completes the restore; only if that
// fails does it put the old tree back. Each entry is in exactly one of the
// target, the staging and the trash directory at any moment (rename is
// atomic), so the phase is all recovery needs to know.

const (
	journalName    = reservedPrefix + "journal"
	journalTmpName = journalName + ".tmp"

	phaseStaging  = "staging"
	phaseTrashing = "trashing"
	phasePlacing  = "placing"
)

// journal is the content of journalName.
type journal struct {
	Version int    `json:"version"`
	Phase   string `json:"phase"`
	Stage   string `json:"stage"` // staging directory, in the target
	Trash   string `json:"trash"` // trash directory, in the target
	// Keep holds the slash-separated paths, relative to the target, that
	// the restore leaves in place (the repository it reads).
	Keep []string `json:"keep,omitempty"`
	// Old holds the mtimes of the target and of the parents of kept paths
	// before the restore, put back if it is undone.
	Old map[string]time.Time `json:"old,omitempty"`
	// OldMode is the target's mode before the restore; ModeChanged tells
	// whether the restore made it writable.
	OldMode     fs.FileMode `json:"old_mode"`
	ModeChanged bool        `json:"mode_changed,omitempty"`
	// Attrs are the archive's attributes of the top-level directories and
	// of the root ("."), applied once the entries are in place.
	Attrs []dirAttrs `json:"attrs,omitempty"`
}

// dirAttrs are the attributes of a directory of the archive.
type dirAttrs struct {
	Name  string      `json:"name"`
	Mode  fs.FileMode `json:"mode"`
	Chown bool        `json:"chown,omitempty"`
	UID   int         `json:"uid"`
	GID   int         `json:"gid"`
	Mtime time.Time   `json:"mtime"`
}

// txn is the final move of one restore, or its recovery.
type txn struct {
	root  *os.Root
	dir   string // the target, for messages
	j     journal
	kept  map[string]bool
	merge map[string]bool // the parents of kept paths: kept in place, their content replaced
	log   *slog.Logger
	// afterMove, a test seam, is called after each entry moved; an error
	// fails the move there.
	afterMove func(n int) error
	moves     int
	warned    map[string]bool
}

func newTxn(root *os.Root, dir string, j journal, log *slog.Logger) *txn {
	t := &txn{root: root, dir: dir, j: j, log: log, kept: map[string]bool{}, merge: map[string]bool{}, warned: map[string]bool{}}
	for _, k := range j.Keep {
		t.kept[k] = true
		for p := path.Dir(k); p != "."; p = path.Dir(p) {
			t.merge[p] = true
		}
	}
	return t
}

// write replaces the journal atomically and durably.
func (t *txn) write() error {
	data, err := json.Marshal(t.j)
	if err != nil {
		return fmt.Errorf("volume: journal: %w", err)
	}
	f, err := t.root.OpenFile(journalTmpName, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("volume: write journal: %w", err)
	}
	_, err = f.Write(append(data, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = t.root.Rename(journalTmpName, journalName)
	}
	if err == nil {
		err = syncDir(t.root, ".")
	}
	if err != nil {
		t.root.Remove(journalTmpName)
		return fmt.Errorf("volume: write journal: %w", err)
	}
	return nil
}

func syncDir(root *os.Root, name string) error {
	d, err := root.Open(name)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// readJournal returns the journal of the target, ok false if there is none.
func readJournal(root *os.Root) (j journal, ok bool, err error) {
	data, err := root.ReadFile(journalName)
	if errors.Is(err, fs.ErrNotExist) {
		return j, false, nil
	}
	if err != nil {
		return j, false, fmt.Errorf("volume: read journal: %w", err)
	}
	if err := json.Unmarshal(data, &j); err != nil || j.Version != 1 || !ours(j.Stage, stagingPrefix) || !ours(j.Trash, trashPrefix) {
		return j, false, fmt.Errorf("volume: journal %s of an interrupted restore is not readable (%v): move it away to go on", journalName, err)
	}
	for _, k := range j.Keep {
		if _, err := cleanName(k, false); err != nil {
			return j, false, fmt.Errorf("volume: journal %s: bad kept path %q", journalName, k)
		}
	}
	return j, true, nil
}

// ours reports whether name is a top-level name with prefix and nothing
// that leads elsewhere.
func ours(name, prefix string) bool {
	return strings.HasPrefix(name, prefix) && !strings.ContainsAny(name, "/\x00") && name != prefix
}

func (t *txn) moved() error {
	t.moves++
	if t.afterMove != nil {
		return t.afterMove(t.moves)
	}
	return nil
}

// run moves the old tree into the trash (phase trashing) and the staged
// tree into place (phase placing), then removes what is left and applies
// the attributes. It can be run again after an interruption. An error with
// placed true came after the new tree was in place: there is nothing to
// undo.
func (t *txn) run() (placed bool, err error) {
	if t.j.Phase == phaseTrashing {
		if err := t.root.Mkdir(t.j.Trash, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return false, fmt.Errorf("volume: create trash directory: %w", err)
		}
		if err := t.trashLevel(""); err != nil {
			return false, err
		}
		t.j.Phase = phasePlacing
		if err := t.write(); err != nil {
			return false, err
		}
	}
	if err := t.placeLevel(""); err != nil {
		return false, err
	}
	// Everything is in place: the rest cannot fail the restore.
	for _, name := range []string{t.j.Trash, t.j.Stage} {
		if err := removeAll(t.root, name); err != nil {
			t.log.Warn("volume: cannot remove previous content", "path", filepath.Join(t.dir, name), "error", err)
		}
	}
	var rootAttrs *dirAttrs
	var errs []error
	for _, a := range t.j.Attrs {
		if a.Name == "." {
			rootAttrs = &a
			continue
		}
		if err := applyAttrs(t.root, a); err != nil {
			errs = append(errs, err)
		}
	}
	if err := t.root.Remove(journalName); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.log.Warn("volume: cannot remove the restore's journal", "path", filepath.Join(t.dir, journalName), "error", err)
	}
	syncDir(t.root, ".")
	switch {
	case rootAttrs != nil:
		if err := applyAttrs(t.root, *rootAttrs); err != nil {
			if !errors.Is(err, fs.ErrPermission) {
				errs = append(errs, err)
			} else {
				t.log.Warn("volume: cannot apply the archive's owner, mode or mtime to the target", "path", t.dir, "error", err)
			}
		}
	case t.j.ModeChanged:
		t.root.Chmod(".", t.j.OldMode)
	}
	if len(errs) > 0 {
		return true, fmt.Errorf("volume: %w", errors.Join(errs...))
	}
	return true, nil
}

// level returns the name in the root of directory rel under top ("" is
// the target itself).
func level(top, rel string) string {
	switch {
	case top == "" && rel == "":
		return "."
	case top == "":
		return rel
	case rel == "":
		return top
	}
	return top + "/" + rel
}

func sortedNames(root *os.Root, name string) ([]string, error) {
	names, err := readNames(root, name)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	return names, nil
}

// skipTop reports whether n, a name in the target itself, is left alone:
// the journal, the staging and trash directories, and folders of earlier
// interrupted restores (which hold what they cannot put back).
func (t *txn) skipTop(rel, n string) bool {
	if rel != "" || !strings.HasPrefix(n, reservedPrefix) {
		return false
	}
	switch n {
	case journalName, journalTmpName, t.j.Stage, t.j.Trash:
	default:
		if !t.warned[n] {
			t.warned[n] = true
			t.log.Warn("volume: left in place: a folder of an earlier interrupted restore (look into it, then remove it)", "path", filepath.Join(t.dir, n))
		}
	}
	return true
}

// trashLevel moves the entries of directory rel of the target into the
// trash, except kept paths; the parents of kept paths stay, their content
// is moved.
func (t *txn) trashLevel(rel string) error {
	names, err := sortedNames(t.root, level("", rel))
	if err != nil {
		return err
	}
	for _, n := range names {
		p := level(rel, n)
		switch {
		case t.skipTop(rel, n), t.kept[p]:
		case t.merge[p]:
			if err := t.root.Mkdir(level(t.j.Trash, p), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("volume: move previous content aside: %w", err)
			}
			if err := t.trashLevel(p); err != nil {
				return err
			}
		default:
			if err := move(t.root, p, level(t.j.Trash, p)); err != nil {
				return fmt.Errorf("volume: move previous content aside: %w", err)
			}
			if err := t.moved(); err != nil {
				return err
			}
		}
	}
	return nil
}

// placeLevel moves the staged entries of directory rel into place, except
// kept paths, which stay as they are.
func (t *txn) placeLevel(rel string) error {
	names, err := sortedNames(t.root, level(t.j.Stage, rel))
	if errors.Is(err, fs.ErrNotExist) {
		return nil // moved in full, or the snapshot has no such directory
	}
	if err != nil {
		return err
	}
	for _, n := range names {
		p := level(rel, n)
		switch {
		case t.kept[p]:
			t.log.Warn("volume: not restored: the snapshot's copy of a path the restore must keep (the repository it reads); the path is left as it is", "path", filepath.Join(t.dir, filepath.FromSlash(p)))
		case t.merge[p]:
			fi, err := t.root.Lstat(level(t.j.Stage, p))
			if err != nil {
				return fmt.Errorf("volume: %w", err)
			}
			if !fi.IsDir() {
				t.log.Warn("volume: not restored: the snapshot holds a non-directory where a folder holding a kept path (the repository) is", "path", filepath.Join(t.dir, filepath.FromSlash(p)))
				continue
			}
			if err := t.placeLevel(p); err != nil {
				return err
			}
			if strings.Contains(p, "/") { // top-level directories get theirs from Attrs
				if err := copyAttrs(t.root, level(t.j.Stage, p), p, fi); err != nil {
					return fmt.Errorf("volume: %w", err)
				}
			}
		default:
			if err := move(t.root, level(t.j.Stage, p), p); err != nil {
				return fmt.Errorf("volume: move restored entry into place: %w", err)
			}
			if err := t.moved(); err != nil {
				return err
			}
		}
	}
	return nil
}

// rollback puts the old tree back: in phase placing, the entries placed go
// back into the staging directory first. Then the staging and trash
// directories and the journal are removed.
func (t *txn) rollback() error {
	if err := t.rollbackLevel(""); err != nil {
		return err
	}
	t.discard()
	return nil
}

// discard removes the staging and trash directories and the journal and
// puts back the target's mtime and mode. The trash must be empty.
func (t *txn) discard() {
	if err := removeAll(t.root, t.j.Stage); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.log.Warn("volume: cannot remove staging directory", "path", filepath.Join(t.dir, t.j.Stage), "error", err)
	}
	if t.j.Trash != "" {
		if err := removeAll(t.root, t.j.Trash); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.log.Warn("volume: cannot remove trash directory", "path", filepath.Join(t.dir, t.j.Trash), "error", err)
		}
	}
	if err := t.root.Remove(journalName); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.log.Warn("volume: cannot remove the restore's journal", "path", filepath.Join(t.dir, journalName), "error", err)
	}
	syncDir(t.root, ".")
	if t.j.ModeChanged {
		t.root.Chmod(".", t.j.OldMode)
	}
	if m, ok := t.j.Old["."]; ok {
		if err := t.root.Chtimes(".", time.Time{}, m); err != nil {
			t.log.Warn("volume: cannot restore the target's mtime", "path", t.dir, "error", err)
		}
	}
}

func (t *txn) rollbackLevel(rel string) error {
	names, err := sortedNames(t.root, level("", rel))
	if err != nil {
		return err
	}
	var merges []string
	for _, n := range names {
		p := level(rel, n)
		switch {
		case t.skipTop(rel, n), t.kept[p]:
		case t.merge[p]:
			merges = append(merges, p)
		case t.j.Phase == phasePlacing:
			// Every old entry is in the trash: this one is new.
			if rel != "" {
				if err := mkdirAll(t.root, level(t.j.Stage, rel)); err != nil {
					return fmt.Errorf("volume: undo restore: %w", err)
				}
			}
			if err := move(t.root, p, level(t.j.Stage, p)); err != nil {
				return fmt.Errorf("volume: undo restore: %w", err)
			}
		}
	}
	for _, p := range merges {
		if err := t.rollbackLevel(p); err != nil {
			return err
		}
	}
	if t.j.Trash != "" {
		names, err := sortedNames(t.root, level(t.j.Trash, rel))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		for _, n := range names {
			p := level(rel, n)
			if t.merge[p] {
				continue // a folder made to mirror the kept path's parents, handled above
			}
			if err := move(t.root, level(t.j.Trash, p), p); err != nil {
				return fmt.Errorf("volume: put back previous content: %w", err)
			}
		}
	}
	if m, ok := t.j.Old[level("", rel)]; ok && rel != "" {
		t.root.Chtimes(rel, time.Time{}, m)
	}
	return nil
}

func mkdirAll(root *os.Root, name string) error {
	err := root.MkdirAll(name, 0o700)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	return err
}

// recoverTarget finishes or undoes a restore into root that was
// interrupted, as its journal says. It returns what it did ("" if there
// was nothing to do).
func recoverTarget(root *os.Root, dir string, log *slog.Logger) (string, error) {
	j, ok, err := readJournal(root)
	if err != nil || !ok {
		return "", err
	}
	t := newTxn(root, dir, j, log)
	if j.Phase == phaseStaging {
		t.j.Trash = "" // not created before phase trashing
		t.discard()
		return "an interrupted restore had not finished unpacking: its staging folder was removed, the target keeps its previous content", nil
	}
	if j.Phase != phaseTrashing && j.Phase != phasePlacing {
		return "", fmt.Errorf("volume: journal %s: unknown phase %q: move it away to go on", journalName, j.Phase)
	}
	placed, rerr := t.run()
	if placed && rerr != nil {
		return "", fmt.Errorf("volume: an interrupted restore was completed, but: %w", rerr)
	}
	if rerr == nil {
		return "an interrupted restore was completed (the snapshot had been unpacked and verified in full before the interruption): the target holds the restored tree", nil
	}
	if err := t.rollback(); err != nil {
		return "", fmt.Errorf("volume: an interrupted restore into %s could not be completed (%v) nor undone: %w; its journal %s is kept, fix the cause and run again", dir, rerr, err, journalName)
	}
	return fmt.Sprintf("an interrupted restore could not be completed (%v): the previous content was put back", rerr), nil
}

// Recover finishes or undoes a restore into dir that was interrupted (a
// kill or a crash during its final move), as the journal the restore keeps
// in dir says, and returns what it did ("" if there was nothing to do).
// Restore calls it first; a snapshot of dir should too, so that it never
// archives a half-restored tree.
func Recover(dir string, log *slog.Logger) (string, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", fmt.Errorf("volume: %w", err)
	}
	defer root.Close()
	msg, err := recoverTarget(root, dir, logger(log))
	if msg != "" {
		logger(log).Warn("volume: "+msg, "path", dir)
	}
	return msg, err
}

// applyAttrs applies a to directory a.Name in root. The owner comes first:
// chown clears the setuid and setgid bits.
func applyAttrs(root *os.Root, a dirAttrs) error {
	if a.Chown {
		if err := root.Lchown(a.Name, a.UID, a.GID); err != nil {
			return err
		}
	}
	if err := root.Chmod(a.Name, a.Mode); err != nil {
		return err
	}
	return root.Chtimes(a.Name, time.Time{}, a.Mtime)
}

// copyAttrs gives directory to the owner (when root), mode and mtime of
// from, whose info is fi.
func copyAttrs(root *os.Root, from, to string, fi fs.FileInfo) error {
	a := dirAttrs{Name: to, Mode: fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), Mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 {
		a.Chown, a.UID, a.GID = true, int(st.Uid), int(st.Gid)
	}
	return applyAttrs(root, a)
}

// move renames from to to in root. Renaming needs write permission on both
// parent directories and, for a directory moved to another parent, on the
// directory itself (its ".." entry changes): users other than root lack it
// on read-only directories, as restored from an archive. On a permission
// error, move adds u+w to those directories it owns and tries again, then
// puts their modes back.
func move(root *os.Root, from, to string) error {
	err := root.Rename(from, to)
	if err == nil || !errors.Is(err, fs.ErrPermission) {
		return err
	}
	type changed struct {
		name string
		mode fs.FileMode
	}
	var undo []changed
	writable := func(name string) {
		if slices.ContainsFunc(undo, func(c changed) bool { return c.name == name }) {
			return
		}
		fi, err := root.Lstat(name)
		if err != nil || !fi.IsDir() || fi.Mode()&0o200 != 0 {
			return
		}
		mode := fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		if root.Chmod(name, mode|0o200) == nil {
			undo = append(undo, changed{name, mode})
		}
	}
	writable(path.Dir(from))
	writable(path.Dir(to))
	writable(from)
	err = root.Rename(from, to)
	for _, c := range undo {
		name := c.name
		if name == from && err == nil {
			name = to
		}
		root.Chmod(name, c.mode)
	}
	return err
}
