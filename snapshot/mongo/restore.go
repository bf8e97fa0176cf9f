package mongo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"golang.org/x/sync/errgroup"

	"github.com/stackport/stackport/snapshot"
)

// Restorer loads a mongo snapshot into a server: it creates the collections
// with their options, inserts the documents with unordered bulk inserts from
// parallel workers, then builds the indexes, creates the views and replays
// the oplog, in that order.
//
// Before it writes anything it checks every target: a collection that
// already holds documents, or a view in the way, fails the restore with an
// error wrapping snapshot.ErrTargetNotEmpty that names each one, unless
// Drop. An existing empty collection is kept (its options are not changed).
// It never writes to the databases admin, local and config.
//
// Its Stats are those of Verifier, plus "dropped" (collections and views
// dropped) and "oplog_applied" (operations replayed).
type Restorer struct {
	// URI and TLSCAFile are as for Dumper.
	URI       string
	TLSCAFile string
	// NSFrom and NSTo rename a database: "appsmith" or "appsmith.*"
	// restores appsmith's collections into NSTo ("appsmith_prod" or
	// "appsmith_prod.*"). Both or neither must be set.
	NSFrom, NSTo string
	// Drop drops target collections and views that exist before creating
	// them.
	Drop bool
	// Parallel is how many insert batches (and index builds) are sent at
	// once (default 4).
	Parallel int
	Log      *slog.Logger // progress and warnings (nil = slog.Default())
}

// errStopped ends reading when an insert worker failed; Restore returns the
// worker's error instead.
var errStopped = errors.New("mongo: stopped after an insert failed")

// Restore implements snapshot.Restorer.
func (r *Restorer) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	ren, err := parseRename(r.NSFrom, r.NSTo)
	if err != nil {
		return nil, err
	}
	client, err := connect(ctx, r.URI, r.TLSCAFile)
	if err != nil {
		return nil, err
	}
	defer disconnect(ctx, client)

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, wctx := errgroup.WithContext(wctx)
	g.SetLimit(parallel(r.Parallel))
	s := &restorer{
		r: r, client: client, rename: ren, log: logger(r.Log),
		inserts: g, wctx: wctx, dbs: map[string]bool{},
		stats: snapshot.Stats{"dropped": 0, "oplog_applied": 0},
	}
	stats, err := decode(ctx, in, s, nil)
	if err != nil {
		cancel()
	}
	if werr := g.Wait(); werr != nil && (err == nil || errors.Is(err, errStopped)) {
		err = werr
	}
	for k, v := range s.stats {
		stats[k] = v
	}
	return stats, err
}

// A rename maps the database from to the database to; the zero rename maps
// nothing.
type rename struct{ from, to string }

func (r rename) apply(db string) string {
	if r.from != "" && db == r.from {
		return r.to
	}
	return db
}

// parseRename returns the database rename of NSFrom and NSTo.
func parseRename(from, to string) (rename, error) {
	if from == "" && to == "" {
		return rename{}, nil
	}
	if from == "" || to == "" {
		return rename{}, errors.New("mongo: a rename needs both the old and the new namespace")
	}
	var dbs [2]string
	for i, s := range []string{from, to} {
		dbs[i] = strings.TrimSuffix(s, ".*")
		if err := checkDBName(dbs[i]); err != nil {
			return rename{}, fmt.Errorf("mongo: namespace %q: only whole databases (db or db.*) can be renamed: %w", s, err)
		}
		if systemDB(dbs[i]) {
			return rename{}, fmt.Errorf("mongo: namespace %q: admin, local and config cannot be renamed", s)
		}
	}
	return rename{dbs[0], dbs[1]}, nil
}

// restorer is the sink of a Restorer.
type restorer struct {
	r      *Restorer
	client *mongo.Client
	rename rename
	log    *slog.Logger

	colls []*collection
	dbs   map[string]bool // source databases in the snapshot
	reuse map[namespace]bool

	inserts *errgroup.Group
	wctx    context.Context // the inserts' context
	done    bool            // complete ran

	stats snapshot.Stats
}

// target returns the namespace c is restored to.
func (s *restorer) target(c *collection) namespace {
	return namespace{s.rename.apply(c.ns.db), c.ns.coll}
}

func (s *restorer) metadata(c *collection) error {
	s.colls = append(s.colls, c)
	s.dbs[c.ns.db] = true
	return nil
}

// startData checks the targets, drops them with Drop and creates the
// collections.
func (s *restorer) startData(ctx context.Context) error {
	if from := s.rename.from; from != "" && !s.dbs[from] {
		return fmt.Errorf("mongo: cannot rename database %s: the snapshot holds %s", from, strings.Join(slices.Sorted(maps.Keys(s.dbs)), ", "))
	}
	exist := map[string]map[string]string{} // db → name → type
	from := map[namespace]namespace{}       // target → source
	for _, c := range s.colls {
		t := s.target(c)
		if systemDB(t.db) {
			return fmt.Errorf("mongo: %s: refusing to write to database %s", t, t.db)
		}
		if other, ok := from[t]; ok {
			return fmt.Errorf("mongo: %s and %s would both be restored as %s", other, c.ns, t)
		}
		from[t] = c.ns
		if exist[t.db] != nil {
			continue
		}
		colls, err := listNames(ctx, s.client.Database(t.db))
		if err != nil {
			return err
		}
		exist[t.db] = colls
	}

	var problems []string
	var drop []namespace
	s.reuse = map[namespace]bool{}
	for _, c := range s.colls {
		t := s.target(c)
		typ, ok := exist[t.db][t.coll]
		switch {
		case !ok:
		case s.r.Drop:
			drop = append(drop, t)
		case typ == typeView || c.meta.isView():
			problems = append(problems, fmt.Sprintf("%s already exists as a %s", t, typ))
		default:
			n, err := s.client.Database(t.db).Collection(t.coll).CountDocuments(ctx, bson.D{}, options.Count().SetLimit(1))
			if err != nil {
				return fmt.Errorf("mongo: count the documents of %s: %w", t, err)
			}
			if n > 0 {
				problems = append(problems, fmt.Sprintf("collection %s already has documents", t))
				continue
			}
			s.reuse[t] = true
			s.log.Warn("mongo: restoring into an existing empty collection; its options are kept", "collection", t.String())
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("mongo: %s: %w", strings.Join(problems, "; "), snapshot.ErrTargetNotEmpty)
	}

	for _, t := range drop {
		if err := s.client.Database(t.db).Collection(t.coll).Drop(ctx); err != nil {
			return fmt.Errorf("mongo: drop %s: %w", t, err)
		}
		s.stats.Add("dropped", 1)
	}
	for _, c := range s.colls {
		if !c.meta.isView() && !s.reuse[s.target(c)] {
			if err := s.create(ctx, c); err != nil {
				return err
			}
		}
	}
	return nil
}

// listNames returns the names and types of the collections and views of db.
func listNames(ctx context.Context, db *mongo.Database) (map[string]string, error) {
	specs, err := db.ListCollectionSpecifications(ctx, bson.D{}, options.ListCollections().SetNameOnly(true))
	if err != nil {
		return nil, fmt.Errorf("mongo: list collections of %s: %w", db.Name(), err)
	}
	names := map[string]string{}
	for _, sp := range specs {
		names[sp.Name] = sp.Type
	}
	return names, nil
}

// create creates the collection or view of c with its options.
func (s *restorer) create(ctx context.Context, c *collection) error {
	t := s.target(c)
	cmd := bson.D{{Key: "create", Value: t.coll}}
	elems, err := c.meta.Options.Elements()
	if err != nil {
		return corrupt("%s: options: %v", c.ns, err)
	}
	for _, e := range elems {
		cmd = append(cmd, bson.E{Key: e.Key(), Value: e.Value()})
	}
	if err := s.client.Database(t.db).RunCommand(ctx, cmd).Err(); err != nil {
		return fmt.Errorf("mongo: create %s %s: %s", c.meta.Type, t, serverMessage(err))
	}
	return nil
}

// documents reads the documents of c into batches and hands them to the
// insert workers.
func (s *restorer) documents(ctx context.Context, c *collection, docs *docReader) error {
	t := s.target(c)
	coll := s.client.Database(t.db).Collection(c.meta.dataCollection(t.coll))
	var batch []any
	size := 0
	flush := func() error {
		if s.wctx.Err() != nil {
			return s.stopped(ctx)
		}
		b := batch
		s.inserts.Go(func() error { return insert(s.wctx, coll, t, b) })
		batch, size = nil, 0
		return nil
	}
	for {
		if s.wctx.Err() != nil {
			return s.stopped(ctx)
		}
		doc, err := docs.next(nil)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if len(batch) > 0 && (len(batch) >= batchDocs || size+len(doc) > batchBytes) {
			if err := flush(); err != nil {
				return err
			}
		}
		batch = append(batch, doc)
		size += len(doc)
	}
	if len(batch) > 0 {
		return flush()
	}
	return nil
}

// stopped returns the error for the insert workers' context being done.
func (s *restorer) stopped(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mongo: %w", err)
	}
	return errStopped
}

// insert inserts one batch of documents into coll, unordered.
func insert(ctx context.Context, coll *mongo.Collection, t namespace, docs []any) error {
	_, err := coll.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false).SetBypassDocumentValidation(true))
	var bwe mongo.BulkWriteException
	switch {
	case err == nil:
		return nil
	case errors.As(err, &bwe) && len(bwe.WriteErrors) > 0:
		we := bwe.WriteErrors[0]
		return fmt.Errorf("mongo: insert into %s: the server refused %d of %d documents; the first: %s (code %d)",
			t, len(bwe.WriteErrors), len(docs), we.Message, we.Code)
	default:
		return fmt.Errorf("mongo: insert into %s: %w", t, err)
	}
}

// complete waits for the inserts, then builds the indexes and creates the
// views. It runs once, before the oplog is replayed or at the end.
func (s *restorer) complete(ctx context.Context) error {
	if s.done {
		return nil
	}
	s.done = true
	if err := s.inserts.Wait(); err != nil {
		return err
	}
	if err := s.createIndexes(ctx); err != nil {
		return err
	}
	for _, c := range s.colls {
		if c.meta.isView() {
			if err := s.create(ctx, c); err != nil {
				return err
			}
		}
	}
	return nil
}

// createIndexes builds the indexes of every collection, one index per
// command so that a refusal names its index, Parallel collections at a
// time. It tries every index and reports every refusal.
func (s *restorer) createIndexes(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel(s.r.Parallel))
	var mu sync.Mutex
	var errs []error
	for _, c := range s.colls {
		specs := c.meta.userIndexes()
		if len(specs) == 0 {
			continue
		}
		t := s.target(c)
		g.Go(func() error {
			for _, spec := range specs {
				if err := gctx.Err(); err != nil {
					return fmt.Errorf("mongo: %w", err)
				}
				cmd := bson.D{{Key: "createIndexes", Value: t.coll}, {Key: "indexes", Value: bson.A{spec}}}
				if err := s.client.Database(t.db).RunCommand(gctx, cmd).Err(); err != nil {
					name, _ := spec.Lookup("name").StringValueOK()
					mu.Lock()
					errs = append(errs, fmt.Errorf("mongo: create index %q on %s: %s", name, t, serverMessage(err)))
					mu.Unlock()
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return errors.Join(errs...)
}

func (s *restorer) oplog(ctx context.Context, docs *docReader) error {
	if err := s.complete(ctx); err != nil {
		return err
	}
	admin := s.client.Database("admin") // applyOps runs on admin; it writes to the operations' namespaces
	return replayEntries(ctx, docs, func(db string) bool { return s.dbs[db] }, s.rename.apply, func(off int64, op bson.Raw) error {
		if err := admin.RunCommand(ctx, bson.D{{Key: "applyOps", Value: bson.A{op}}}).Err(); err != nil {
			return fmt.Errorf("mongo: replay the oplog entry at byte offset %d: %s", off, serverMessage(err))
		}
		s.stats.Add("oplog_applied", 1)
		return nil
	})
}

func (s *restorer) finish(ctx context.Context) error {
	if err := s.complete(ctx); err != nil {
		return err
	}
	s.log.Info("mongo: restored", "collections", len(s.colls), "dropped", s.stats["dropped"], "oplog_applied", s.stats["oplog_applied"])
	return nil
}
