package mongo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"golang.org/x/sync/errgroup"

	"github.com/stackport/stackport/snapshot"
)

// Dumper writes the databases of a MongoDB server (or a server speaking its
// protocol) as the streams described in the package documentation.
//
// Its Stats are "collections", "views", "indexes" (without the _id
// indexes), "documents", "bytes" (of BSON), "oplog_entries",
// "consistency_none" (1 when the source has no oplog, so the snapshot is
// not one point in time), "oplog_end" (for a source with an oplog, the
// Unix time in seconds of the point in time the snapshot restores to) and
// per collection "documents:<db>.<coll>",
// "bytes:<db>.<coll>" and "indexes:<db>.<coll>".
type Dumper struct {
	// URI is a mongodb:// or mongodb+srv:// connection string, with
	// credentials and TLS options.
	URI string
	// TLSCAFile is an optional PEM file of certificate authorities to
	// trust for TLS.
	TLSCAFile string
	// DBs are the databases to dump; empty means every database but
	// admin, local and config (which are never dumped).
	DBs []string
	// Parallel is how many collections are dumped at once (default 4).
	Parallel int
	// SkipData, when set, names collections whose documents are left out:
	// their metadata stream is written, their data stream is not (for a
	// Restorer whose Skip names the same collections).
	SkipData func(db, coll string) bool
	Log      *slog.Logger // progress and warnings (nil = slog.Default())

	mu       sync.Mutex
	position bson.Timestamp // of the last Dump, see Position
	hasPos   bool
}

// Position returns the oplog timestamp that the streams of the last
// successful Dump are consistent with (the newest entry they replay to),
// and false when there is none: the source has no oplog, or no Dump
// succeeded. A check of a target against a source that kept changing
// compares the documents the source did not change after it.
func (d *Dumper) Position() (bson.Timestamp, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.position, d.hasPos
}

// Dump implements snapshot.Dumper. On error, the streams in progress are
// aborted (snapshot.Abort).
func (d *Dumper) Dump(ctx context.Context, out snapshot.StreamWriter) (snapshot.Stats, error) {
	ctx = WithoutDeadline(ctx)
	stats := newStats()
	stats["consistency_none"] = 0
	d.mu.Lock()
	d.hasPos = false
	d.mu.Unlock()
	log := logger(d.Log)
	client, err := Connect(ctx, d.URI, d.TLSCAFile)
	if err != nil {
		return stats, err
	}
	defer Disconnect(ctx, client)

	dbs, err := d.databases(ctx, client)
	if err != nil {
		return stats, err
	}
	start, hasOplog, err := oplogStart(ctx, client, log)
	if err != nil {
		return stats, err
	}
	if !hasOplog {
		stats["consistency_none"] = 1
		log.Warn("mongo: the source has no oplog, so the snapshot is not one point in time: writes during the dump may be partly included")
	}
	var colls []*collection
	for _, db := range dbs {
		cs, err := listCollections(ctx, client.Database(db), log)
		if err != nil {
			return stats, err
		}
		if len(cs) == 0 {
			log.Warn("mongo: database has no collections", "db", db)
		}
		colls = append(colls, cs...)
	}
	log.Info("mongo: dumping", "databases", strings.Join(dbs, ","), "collections", len(colls), "oplog", hasOplog)

	for _, c := range colls {
		if err := writeMetadata(out, c); err != nil {
			return stats, err
		}
		countCollection(stats, c.ns, c.meta)
	}
	if err := d.dumpData(ctx, client, out, colls, stats, hasOplog); err != nil {
		return stats, err
	}
	if !hasOplog {
		// Nothing replays a drop or a rename that happened while the
		// collections were read: check that each is still there.
		if err := d.checkUnchanged(ctx, client, dbs, colls, stats); err != nil {
			return stats, err
		}
	}
	if hasOplog {
		n, end, err := dumpOplog(ctx, client, out, start, func(db string) bool { return slices.Contains(dbs, db) })
		stats["oplog_entries"] = n
		stats["oplog_end"] = int64(end.T)
		if err != nil {
			return stats, err
		}
		d.mu.Lock()
		d.position, d.hasPos = end, true
		d.mu.Unlock()
	}
	log.Info("mongo: dumped", "collections", stats["collections"], "views", stats["views"],
		"documents", stats["documents"], "bytes", stats["bytes"], "oplog_entries", stats["oplog_entries"])
	return stats, nil
}

// databases returns the databases to dump, sorted.
func (d *Dumper) databases(ctx context.Context, client *mongo.Client) ([]string, error) {
	if len(d.DBs) > 0 {
		for _, db := range d.DBs {
			if err := checkDBName(db); err != nil {
				return nil, fmt.Errorf("mongo: %w", err)
			}
			if systemDB(db) {
				return nil, fmt.Errorf("mongo: database %s cannot be dumped: admin, local and config never are", db)
			}
		}
		dbs := slices.Clone(d.DBs)
		slices.Sort(dbs)
		return slices.Compact(dbs), nil
	}
	names, err := client.ListDatabaseNames(ctx, bson.D{})
	if err != nil {
		return nil, fmt.Errorf("mongo: list databases: %w", err)
	}
	names = slices.DeleteFunc(names, systemDB)
	slices.Sort(names)
	return names, nil
}

// listCollections returns the collections and views of db with their
// metadata, sorted by name. System collections (system.*) are left out:
// views and time-series buckets are dumped through their own entries.
func listCollections(ctx context.Context, db *mongo.Database, log *slog.Logger) ([]*collection, error) {
	cur, err := db.ListCollections(ctx, bson.D{})
	if err != nil {
		return nil, fmt.Errorf("mongo: list collections of %s: %w", db.Name(), err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	var colls []*collection
	for cur.Next(ctx) {
		spec := bson.Raw(slices.Clone(cur.Current))
		m, err := newMetadata(spec, nil)
		if err != nil {
			return nil, fmt.Errorf("mongo: list collections of %s: %w", db.Name(), err)
		}
		if strings.HasPrefix(m.CollectionName, "system.") {
			log.Debug("mongo: skipping system collection", "db", db.Name(), "collection", m.CollectionName)
			continue
		}
		colls = append(colls, &collection{ns: namespace{db.Name(), m.CollectionName}, meta: m})
	}
	if err := cur.Err(); err != nil {
		return nil, fmt.Errorf("mongo: list collections of %s: %w", db.Name(), err)
	}
	slices.SortFunc(colls, func(a, b *collection) int { return strings.Compare(a.ns.coll, b.ns.coll) })
	for _, c := range colls {
		if c.meta.isView() {
			continue
		}
		if c.meta.Indexes, err = listIndexes(ctx, db.Collection(c.ns.coll)); err != nil {
			return nil, fmt.Errorf("mongo: list indexes of %s: %w", c.ns, err)
		}
	}
	return colls, nil
}

// listIndexes returns the index specifications of coll as the server
// reports them.
func listIndexes(ctx context.Context, coll *mongo.Collection) ([]bson.Raw, error) {
	cur, err := coll.Indexes().List(ctx)
	if err != nil {
		return nil, err
	}
	defer cur.Close(context.WithoutCancel(ctx))
	specs := []bson.Raw{}
	for cur.Next(ctx) {
		specs = append(specs, bson.Raw(slices.Clone(cur.Current)))
	}
	return specs, cur.Err()
}

// writeMetadata writes the metadata stream of c.
func writeMetadata(out snapshot.StreamWriter, c *collection) error {
	data, err := c.meta.encode()
	if err != nil {
		return fmt.Errorf("mongo: %s: encode metadata: %w", c.ns, err)
	}
	return writeStream(out, c.ns.streamBase()+metadataExt, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// dumpsData reports whether the data stream of c is written.
func (d *Dumper) dumpsData(c *collection) bool {
	return !c.meta.isView() && (d.SkipData == nil || !d.SkipData(c.ns.db, c.ns.coll))
}

// dumpData writes the data streams of the collections, Parallel at a time.
// Without an oplog, a collection found empty, or whose read failed, is
// checked at once for a drop or a rename (ErrChangedDuringDump).
func (d *Dumper) dumpData(ctx context.Context, client *mongo.Client, out snapshot.StreamWriter, colls []*collection, stats snapshot.Stats, hasOplog bool) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel(d.Parallel))
	var mu sync.Mutex
	for _, c := range colls {
		if !d.dumpsData(c) {
			continue
		}
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			docs, bytes, err := dumpCollection(gctx, client, out, c, !hasOplog)
			mu.Lock()
			countData(stats, c.ns, docs, bytes)
			mu.Unlock()
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mongo: %w", err)
	}
	return nil
}

// dumpCollection writes the documents of c to its data stream. With check
// set (a source without an oplog), when the read finds no document or
// fails, it checks that c still exists under its name and uuid: a
// collection dropped or renamed since it was listed reads as empty.
func dumpCollection(ctx context.Context, client *mongo.Client, out snapshot.StreamWriter, c *collection, check bool) (docs, bytes int64, err error) {
	db := client.Database(c.ns.db)
	coll := db.Collection(c.meta.dataCollection(c.ns.coll))
	err = writeStream(out, c.ns.streamBase()+dataExt, func(w io.Writer) error {
		cur, err := coll.Find(ctx, bson.D{})
		if err != nil {
			return changedOr(ctx, check, db, c, fmt.Errorf("mongo: read %s: %w", c.ns, err))
		}
		defer cur.Close(context.WithoutCancel(ctx))
		if docs, bytes, err = copyDocs(ctx, cursor{cur}, w, nil); err != nil {
			return changedOr(ctx, check, db, c, fmt.Errorf("mongo: dump %s: %w", c.ns, err))
		}
		if docs == 0 {
			return changedOr(ctx, check, db, c, nil)
		}
		return nil
	})
	return docs, bytes, err
}

// changedOr returns, when check is set, an ErrChangedDuringDump error if c
// was dropped, renamed or replaced since it was listed (with cause, the
// failure of its read, if any), else cause.
func changedOr(ctx context.Context, check bool, db *mongo.Database, c *collection, cause error) error {
	if !check || ctx.Err() != nil {
		return cause
	}
	// The cheap question first: is c still there under its name?
	now, err := listNamespaces(ctx, db, bson.D{{Key: "name", Value: c.ns.coll}})
	if err != nil {
		return errors.Join(cause, err)
	}
	if len(findChanges([]*collection{c}, now, nil)) == 0 {
		return cause
	}
	// It is not: the whole database tells whether it was renamed.
	if now, err = listNamespaces(ctx, db, bson.D{}); err != nil {
		return errors.Join(cause, err)
	}
	if changes := findChanges([]*collection{c}, now, nil); len(changes) > 0 {
		return &changedError{changes: changes, cause: cause}
	}
	return cause
}

// checkUnchanged lists the collections of dbs again and returns an
// ErrChangedDuringDump error naming each collection of colls whose data
// stream was written that has been dropped, renamed or replaced since the
// first listing.
func (d *Dumper) checkUnchanged(ctx context.Context, client *mongo.Client, dbs []string, colls []*collection, stats snapshot.Stats) error {
	var dumped []*collection
	for _, c := range colls {
		if d.dumpsData(c) {
			dumped = append(dumped, c)
		}
	}
	if len(dumped) == 0 {
		return nil
	}
	var now []listedNS
	for _, db := range dbs {
		l, err := listNamespaces(ctx, client.Database(db), bson.D{})
		if err != nil {
			return err
		}
		now = append(now, l...)
	}
	changes := findChanges(dumped, now, func(ns namespace) int64 { return stats[statKey("documents", ns)] })
	if len(changes) > 0 {
		return &changedError{changes: changes}
	}
	return nil
}

// A listedNS is a collection as a later listing reports it: its namespace
// and, when the server reports it, its uuid (hex).
type listedNS struct {
	ns   namespace
	uuid string
}

// listNamespaces returns the collections and views of db that filter (a
// listCollections filter) selects, without system collections.
func listNamespaces(ctx context.Context, db *mongo.Database, filter bson.D) ([]listedNS, error) {
	cur, err := db.ListCollections(ctx, filter)
	if err != nil {
		return nil, fmt.Errorf("mongo: list collections of %s again: %w", db.Name(), err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	var out []listedNS
	for cur.Next(ctx) {
		m, err := newMetadata(cur.Current, nil)
		if err != nil {
			return nil, fmt.Errorf("mongo: list collections of %s again: %w", db.Name(), err)
		}
		if !strings.HasPrefix(m.CollectionName, "system.") {
			out = append(out, listedNS{namespace{db.Name(), m.CollectionName}, m.UUID})
		}
	}
	if err := cur.Err(); err != nil {
		return nil, fmt.Errorf("mongo: list collections of %s again: %w", db.Name(), err)
	}
	return out, nil
}

// ErrChangedDuringDump is matched (errors.Is) by the error of a Dump of a
// source without an oplog when a collection was dropped, renamed or
// replaced while the collections were dumped: nothing can replay the
// change, so the snapshot would hold the collection empty, under its old
// name or with another collection's documents.
var ErrChangedDuringDump = errors.New("mongo: a collection changed during the dump")

// A change is what happened to a dumped collection during the dump.
type change struct {
	ns     namespace
	what   string // "was renamed to appsmith.page2"
	effect string // "its documents are in neither"
}

// findChanges compares the collections dumped with the listing now and
// returns what happened to those that are gone or replaced. docs returns
// how many documents of a collection were dumped (nil: none).
func findChanges(dumped []*collection, now []listedNS, docs func(namespace) int64) []change {
	uuidOf := make(map[namespace]string, len(now))
	byUUID := make(map[string]namespace, len(now))
	for _, l := range now {
		uuidOf[l.ns] = l.uuid
		if l.uuid != "" {
			byUUID[l.uuid] = l.ns
		}
	}
	var changes []change
	for _, c := range dumped {
		empty := docs == nil || docs(c.ns) == 0
		uuid, exists := uuidOf[c.ns]
		to, moved := byUUID[c.meta.UUID]
		switch {
		case c.meta.UUID != "" && moved && to != c.ns:
			ch := change{ns: c.ns, what: "was renamed to " + to.String(), effect: "its documents are in neither"}
			if !empty {
				ch.effect = "the snapshot would hold its documents under the old name"
			}
			changes = append(changes, ch)
		case !exists:
			ch := change{ns: c.ns, what: "was dropped", effect: "it would be stored empty"}
			if c.meta.UUID == "" {
				ch.what = "was dropped or renamed" // no uuid to tell
			}
			if !empty {
				ch.effect = "the snapshot would hold documents of a collection that is gone"
			}
			changes = append(changes, ch)
		case c.meta.UUID != "" && uuid != c.meta.UUID:
			changes = append(changes, change{ns: c.ns, what: "was replaced (dropped and recreated, or renamed over)",
				effect: "the snapshot would hold the documents of the old collection, of the new one, or of neither"})
		}
	}
	return changes
}

// changedError is the error of a dump during which collections changed; it
// matches ErrChangedDuringDump.
type changedError struct {
	changes []change
	cause   error // the failed read that revealed the change, or nil
}

func (e *changedError) Error() string {
	var b strings.Builder
	if len(e.changes) == 1 {
		ch := e.changes[0]
		fmt.Fprintf(&b, "mongo: %s %s during the dump (no oplog to replay it): %s", ch.ns, ch.what, ch.effect)
	} else {
		fmt.Fprintf(&b, "mongo: %d collections changed during the dump (no oplog to replay it):", len(e.changes))
		for i, ch := range e.changes {
			if i > 0 {
				b.WriteString(";")
			}
			fmt.Fprintf(&b, " %s %s (%s)", ch.ns, ch.what, ch.effect)
		}
	}
	b.WriteString("; retry the snapshot with writers stopped, or snapshot a replica set")
	if e.cause != nil {
		fmt.Fprintf(&b, " (%v)", e.cause)
	}
	return b.String()
}

func (e *changedError) Is(target error) bool { return target == ErrChangedDuringDump }

func (e *changedError) Unwrap() error { return e.cause }

// writeStream creates the stream name, writes it with fn through a buffer
// and closes it. On error the stream is aborted (snapshot.Abort).
func writeStream(out snapshot.StreamWriter, name string, fn func(w io.Writer) error) error {
	w, err := out.Create(name)
	if err != nil {
		return fmt.Errorf("mongo: create stream %s: %w", name, err)
	}
	bw := bufio.NewWriterSize(w, bufSize)
	err = fn(bw)
	if err == nil {
		if err = bw.Flush(); err != nil {
			err = fmt.Errorf("mongo: write %s: %w", name, err)
		}
	}
	if err != nil {
		snapshot.Abort(w, err)
		return err
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("mongo: close %s: %w", name, err)
	}
	return nil
}
