package mongo

import (
	"bufio"
	"context"
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
// not one point in time) and per collection "documents:<db>.<coll>",
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
}

// Dump implements snapshot.Dumper. On error, the streams in progress are
// aborted (snapshot.Abort).
func (d *Dumper) Dump(ctx context.Context, out snapshot.StreamWriter) (snapshot.Stats, error) {
	stats := newStats()
	stats["consistency_none"] = 0
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
	if err := d.dumpData(ctx, client, out, colls, stats); err != nil {
		return stats, err
	}
	if hasOplog {
		n, err := dumpOplog(ctx, client, out, start, func(db string) bool { return slices.Contains(dbs, db) })
		stats["oplog_entries"] = n
		if err != nil {
			return stats, err
		}
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

// dumpData writes the data streams of the collections, Parallel at a time.
func (d *Dumper) dumpData(ctx context.Context, client *mongo.Client, out snapshot.StreamWriter, colls []*collection, stats snapshot.Stats) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel(d.Parallel))
	var mu sync.Mutex
	for _, c := range colls {
		if c.meta.isView() || (d.SkipData != nil && d.SkipData(c.ns.db, c.ns.coll)) {
			continue
		}
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			docs, bytes, err := dumpCollection(gctx, client, out, c)
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

// dumpCollection writes the documents of c to its data stream.
func dumpCollection(ctx context.Context, client *mongo.Client, out snapshot.StreamWriter, c *collection) (docs, bytes int64, err error) {
	coll := client.Database(c.ns.db).Collection(c.meta.dataCollection(c.ns.coll))
	err = writeStream(out, c.ns.streamBase()+dataExt, func(w io.Writer) error {
		cur, err := coll.Find(ctx, bson.D{})
		if err != nil {
			return fmt.Errorf("mongo: read %s: %w", c.ns, err)
		}
		defer cur.Close(context.WithoutCancel(ctx))
		if docs, bytes, err = copyDocs(ctx, cursor{cur}, w, nil); err != nil {
			return fmt.Errorf("mongo: dump %s: %w", c.ns, err)
		}
		return nil
	})
	return docs, bytes, err
}

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
