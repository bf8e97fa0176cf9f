package migrate

import (
	"cmp"
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
	"sync"
	"syscall"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"golang.org/x/sync/errgroup"

	"github.com/stackport/stackport/snapshot"
	mongosnap "github.com/stackport/stackport/snapshot/mongo"
	"github.com/stackport/stackport/snapshot/volume"
)

// maxReported bounds the differences an error names.
const maxReported = 10

// differences collects what differs between a source and a target.
type differences struct {
	mu    sync.Mutex
	n     int
	first []string
}

func (d *differences) add(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.n++; d.n <= maxReported {
		d.first = append(d.first, fmt.Sprintf(format, args...))
	}
}

// err returns nil without differences, or an error wrapping
// snapshot.ErrDiffers that names the first ones.
func (d *differences) err(what string) error {
	if d.n == 0 {
		return nil
	}
	more := ""
	if d.n > len(d.first) {
		more = fmt.Sprintf("; and %d more", d.n-len(d.first))
	}
	plural := "s"
	if d.n == 1 {
		plural = ""
	}
	return fmt.Errorf("%s: %d difference%s: %s%s: %w", what, d.n, plural, strings.Join(d.first, "; "), more, snapshot.ErrDiffers)
}

// Volume is the move of a directory tree, for what happens around it:
// Plan inspects it beforehand, Check compares the target with the source
// afterwards.
//
// Check sees the source as snapshot/volume's Dumper does: excluded paths,
// Restore's leftover ".stackport-*" folders at the top and special files
// (sockets, devices, FIFOs) are left out. For every other entry the type,
// mode (with setuid, setgid and sticky bits), size, SHA-256 of the content,
// symlink target and mtime (ns) must match, and the target must hold
// nothing else. The roots' own attributes and owners are not compared (a
// target may be a mount point; --chown changes owners).
type Volume struct {
	Source, Target string
	Exclude        []string // as volume.Dumper's
	// SkipUnreadable leaves out source entries that cannot be read, as
	// volume.Dumper does with the same option.
	SkipUnreadable bool
	Force          bool // the target may hold data (volume.Restorer's Force)
}

// volumeEntry is what Volume compares of one entry.
type volumeEntry struct {
	mode  fs.FileMode
	size  int64
	sum   [sha256.Size]byte
	link  string
	mtime int64
}

// Check implements Pair.Check.
func (c Volume) Check(ctx context.Context) error {
	src, err := filepath.EvalSymlinks(c.Source)
	if err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	var diffs differences
	seen := map[string]bool{}
	err = filepath.WalkDir(src, func(p string, de fs.DirEntry, err error) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		rel = filepath.ToSlash(rel)
		if rel != "." && c.excluded(rel) {
			return skip(de)
		}
		var want volumeEntry
		if err == nil {
			want, err = readEntry(p)
		}
		switch {
		case err != nil && c.SkipUnreadable && rel != ".":
			return skip(de)
		case err != nil:
			return fmt.Errorf("volume: source: %w", err)
		case !want.mode.IsRegular() && want.mode&(fs.ModeSymlink|fs.ModeDir) == 0:
			return nil // special files are not archived
		}
		seen[rel] = true
		if rel == "." {
			return nil
		}
		got, err := readEntry(filepath.Join(c.Target, rel))
		switch {
		case err != nil:
			diffs.add("%s: missing in the target (%v)", rel, err)
		case got.mode != want.mode:
			diffs.add("%s: mode %v, source %v", rel, got.mode, want.mode)
		case got.link != want.link:
			diffs.add("%s: symlink to %q, source %q", rel, got.link, want.link)
		case got.size != want.size || got.sum != want.sum:
			diffs.add("%s: content differs (%d bytes, source %d)", rel, got.size, want.size)
		case got.mtime != want.mtime:
			diffs.add("%s: mtime differs (%d ns, source %d ns)", rel, got.mtime, want.mtime)
		}
		return nil
	})
	if err != nil {
		return err
	}
	err = filepath.WalkDir(c.Target, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("volume: target: %w", err)
		}
		rel, _ := filepath.Rel(c.Target, p)
		if rel = filepath.ToSlash(rel); !seen[rel] {
			diffs.add("%s: only in the target", rel)
			return skip(de)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return diffs.err(fmt.Sprintf("volume: %s and %s", c.Source, c.Target))
}

// excluded sees the source as volume.Dumper does.
func (c Volume) excluded(rel string) bool {
	return (&volume.Dumper{Exclude: c.Exclude}).Excluded(rel)
}

// skip skips a directory's content, or nothing for other entries.
func skip(de fs.DirEntry) error {
	if de != nil && de.IsDir() {
		return filepath.SkipDir
	}
	return nil
}

// readEntry reads what Volume compares of the entry at p.
func readEntry(p string) (volumeEntry, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return volumeEntry{}, err
	}
	e := volumeEntry{mode: fi.Mode(), size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.mtime = st.Mtim.Nano()
	}
	switch {
	case fi.Mode().IsRegular():
		f, err := os.Open(p)
		if err != nil {
			return e, err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return e, err
		}
		h.Sum(e.sum[:0])
	case fi.Mode()&fs.ModeSymlink != 0:
		if e.link, err = os.Readlink(p); err != nil {
			return e, err
		}
	case fi.IsDir():
		e.size = 0 // directory sizes depend on the file system
	}
	return e, nil
}

// Mongo is the move of MongoDB databases, for what happens around it: Plan
// inspects both servers beforehand, Check compares the target with the
// source afterwards.
//
// Check compares every collection: the number of documents, their bytes and
// an order-independent digest (the XOR of the SHA-256 of each raw
// document), so that every document must be byte for byte the same. Views,
// system.* collections and collections only in the target are not compared.
type Mongo struct {
	Source, Target                   string // connection URIs
	SourceTLSCAFile, TargetTLSCAFile string // optional PEM files of CAs to trust
	// DBs are the source databases compared; empty means every database
	// but admin, local and config.
	DBs []string
	// NSFrom and NSTo rename a database, as for mongo.Restorer.
	NSFrom, NSTo string
	// Parallel is how many collections are compared at once (default 4).
	Parallel int
	Drop     bool // target collections may hold documents (mongo.Restorer's Drop)
	// Flavor and Strict are mongo.Restorer's, for Plan's compatibility
	// table (an empty Flavor is detected).
	Flavor mongosnap.Flavor
	Strict bool
	// Copied, when set, returns the oplog position the copy is consistent
	// with (mongo.Dumper.Position), for a source that writers kept
	// changing during the move; see Check.
	Copied func() (bson.Timestamp, bool)
	Log    *slog.Logger // notes of Check (nil: none)
}

// Check implements Pair.Check.
//
// With Copied set and a position known, the source may have kept changing
// after the copy (writers running during the move): each collection is
// compared in parts (mongosnap.DigestBuckets, by _id), the source's oplog
// after that position is read once both sides are read, and the parts of
// the documents it changed, and the collections a command changed, are
// left out (and counted in a note).
func (c Mongo) Check(ctx context.Context) error {
	ctx = mongosnap.WithoutDeadline(ctx)
	src, err := mongosnap.Connect(ctx, c.Source, c.SourceTLSCAFile)
	if err != nil {
		return err
	}
	defer mongosnap.Disconnect(ctx, src)
	dst, err := mongosnap.Connect(ctx, c.Target, c.TargetTLSCAFile)
	if err != nil {
		return err
	}
	defer mongosnap.Disconnect(ctx, dst)

	dbs, err := c.databases(ctx, src)
	if err != nil {
		return err
	}
	var since bson.Timestamp
	live := false
	if c.Copied != nil {
		since, live = c.Copied()
	}
	type pair struct{ want, got []mongosnap.Digest }
	read := map[string]*pair{} // source "db.coll" → its parts on both sides
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cmp.Or(max(c.Parallel, 0), 4))
	for _, db := range dbs {
		colls, err := collections(ctx, src.Database(db))
		if err != nil {
			return err
		}
		target := c.targetDB(db)
		for _, coll := range colls {
			g.Go(func() error {
				want, err := digest(gctx, src.Database(db).Collection(coll), live)
				if err != nil {
					return fmt.Errorf("mongo: source %s.%s: %w", db, coll, err)
				}
				got, err := digest(gctx, dst.Database(target).Collection(coll), live)
				if err != nil {
					return fmt.Errorf("mongo: target %s.%s: %w", target, coll, err)
				}
				mu.Lock()
				read[db+"."+coll] = &pair{want, got}
				mu.Unlock()
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil {
		return err
	}
	changes := &mongosnap.Changes{}
	if live {
		// Read after both sides: every change made before or while
		// they were read is in it.
		if changes, err = mongosnap.ChangedSince(ctx, src, since, dbs); err != nil {
			return err
		}
	}
	var diffs differences
	var leftDocs, leftColls int64
	for _, ns := range slices.Sorted(maps.Keys(read)) {
		db, coll, _ := strings.Cut(ns, ".")
		p := read[ns]
		if changes.Touched(db, coll) {
			leftColls++
			continue
		}
		want, got, left := changes.Compare(ns, p.want, p.got)
		leftDocs += left
		target := c.targetDB(db) + "." + coll
		switch {
		case got.Docs != want.Docs:
			diffs.add("%s: %d documents, source %d", target, got.Docs, want.Docs)
		case got != want:
			diffs.add("%s: the documents differ (%d bytes, source %d)", target, got.Bytes, want.Bytes)
		}
	}
	if live && c.Log != nil && (changes.Writes > 0 || leftColls > 0) {
		c.Log.Info("mongo: the source changed after the copy's point in time: what it changed is left out of the check",
			"writes", changes.Writes, "documents_left_out", leftDocs, "collections_left_out", leftColls)
	}
	return diffs.err("mongo")
}

// digest reads coll whole, or in parts when live.
func digest(ctx context.Context, coll *mongo.Collection, live bool) ([]mongosnap.Digest, error) {
	if live {
		return mongosnap.DigestBuckets(ctx, coll)
	}
	d, err := mongosnap.DigestCollection(ctx, coll)
	return []mongosnap.Digest{d}, err
}

// databases returns the source databases to compare.
func (c Mongo) databases(ctx context.Context, src *mongo.Client) ([]string, error) {
	if len(c.DBs) > 0 {
		return c.DBs, nil
	}
	names, err := src.ListDatabaseNames(ctx, bson.D{})
	if err != nil {
		return nil, fmt.Errorf("mongo: source: list databases: %w", err)
	}
	return slices.DeleteFunc(names, func(db string) bool { return db == "admin" || db == "local" || db == "config" }), nil
}

// targetDB returns the name of the source database db in the target.
func (c Mongo) targetDB(db string) string {
	if from := strings.TrimSuffix(c.NSFrom, ".*"); from != "" && db == from {
		return strings.TrimSuffix(c.NSTo, ".*")
	}
	return db
}

// collections returns the names of db's collections, without views and
// system collections.
func collections(ctx context.Context, db *mongo.Database) ([]string, error) {
	specs, err := db.ListCollectionSpecifications(ctx, bson.D{})
	if err != nil {
		return nil, fmt.Errorf("mongo: source: list collections of %s: %w", db.Name(), err)
	}
	var names []string
	for _, s := range specs {
		if s.Type != "view" && !strings.HasPrefix(s.Name, "system.") {
			names = append(names, s.Name)
		}
	}
	return names, nil
}
