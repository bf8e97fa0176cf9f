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
	"sync/atomic"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"golang.org/x/sync/errgroup"

	"github.com/stackport/stackport/snapshot"
)

// Restorer loads a mongo snapshot into a server: it creates the collections
// with their options, inserts the documents with unordered bulk inserts from
// parallel workers, replays the captured oplog as ordinary writes (see
// replay.go: no applyOps, which DocumentDB and FerretDB lack), then builds
// the indexes and creates the views, in that order, so that the target
// holds the source as of the end of the oplog capture.
//
// When the StreamReader can open oplog.bson ahead (snapshot.StreamOpener: a
// repository), every entry is translated before anything is written: an
// entry that cannot be replayed, or a command the target's flavor refuses,
// fails the restore then, and the compatibility table counts the replay.
//
// Before it writes anything it checks every target: a collection that
// already holds documents, or a view in the way, fails the restore with an
// error wrapping snapshot.ErrTargetNotEmpty that names each one, unless
// Drop. An existing empty collection is kept (its options are not changed).
// It never writes to the databases admin, local and config.
//
// Before it writes anything it also checks every collection, collection
// option and index against what the target's flavor supports (detected from
// the server unless Flavor is set; see Compatibility) and logs the
// compatibility table: one line per item adapted, skipped or refused, and a
// count of those restored as is. It then creates the collections and builds
// the indexes as adapted, and fails with an error wrapping ErrIncompatible
// that names the items when anything is refused, or, with Strict, when
// anything would be adapted or skipped. Against DocumentDB it turns
// retryable writes off (retryWrites=false), which DocumentDB refuses.
//
// Its Stats are those of Verifier (without the documents of the collections
// named by Skip, counted as "skipped_documents"), plus "dropped"
// (collections and views dropped), "oplog_applied" (operations replayed),
// "oplog_skipped" (operations that change no data, skipped),
// "compat_adapted" and "compat_skipped" (items of the compatibility table
// adapted and skipped).
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
	// Flavor is the kind of target server (see ParseFlavor); empty detects
	// it from the server's hello and buildInfo and its host names.
	Flavor Flavor
	// Strict fails the restore, before anything is written, when any
	// collection option or index would be adapted or skipped for the
	// target's flavor (a refused item always fails it).
	Strict bool
	// Skip, when set, names collections (by source database and name)
	// that the target already holds in full, loaded by an earlier restore
	// that was interrupted: they are neither checked, dropped, created nor
	// loaded, and their data streams, if any, are read and discarded.
	// Their indexes are built again (an existing identical index is
	// kept).
	Skip func(db, coll string) bool
	// Starting, when set, is called once, after every check passed and
	// before the first write; its error stops the restore with nothing
	// written.
	Starting func(ctx context.Context) error
	// Loaded, when set, is called once every document of a collection's
	// data stream was inserted and acknowledged, with the collection's
	// source database and name and the number of documents. It may be
	// called from several goroutines at once.
	Loaded func(db, coll string, docs int64)
	Log    *slog.Logger // progress and warnings (nil = slog.Default())
}

// errStopped ends reading when an insert worker failed; Restore returns the
// worker's error instead.
var errStopped = errors.New("mongo: stopped after an insert failed")

// Restore implements snapshot.Restorer.
func (r *Restorer) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	ctx = WithoutDeadline(ctx)
	ren, err := parseRename(r.NSFrom, r.NSTo)
	if err != nil {
		return nil, err
	}
	forced, err := ParseFlavor(string(r.Flavor))
	if err != nil {
		return nil, err
	}
	client, flavor, detected, version, err := r.connectTarget(ctx, forced)
	if err != nil {
		return nil, err
	}
	defer Disconnect(ctx, client)

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, wctx := errgroup.WithContext(wctx)
	g.SetLimit(parallel(r.Parallel))
	s := &restorer{
		r: r, client: client, rename: ren, log: logger(r.Log),
		flavor: flavor, server: detected, version: version,
		inserts: g, wctx: wctx, dbs: map[string]bool{},
		stats: snapshot.Stats{"dropped": 0, "oplog_applied": 0, "oplog_skipped": 0, "compat_adapted": 0, "compat_skipped": 0},
	}
	if o, ok := in.(snapshot.StreamOpener); ok {
		s.openOplog = func() (io.ReadCloser, error) { return o.Open(oplogStream) }
	}
	stats, err := decode(ctx, in, s, nil)
	if err != nil {
		cancel()
	}
	if werr := g.Wait(); werr != nil && (err == nil || errors.Is(err, errStopped)) {
		err = werr
	}
	// The documents of skipped collections were read, not inserted.
	stats["documents"] -= s.stats["skipped_documents"]
	stats["bytes"] -= s.stats["skipped_bytes"]
	delete(s.stats, "skipped_bytes")
	for k, v := range s.stats {
		stats[k] = v
	}
	return stats, err
}

// connectTarget connects to the target and finds its flavor and version:
// forced if set, else the detected one. For DocumentDB it connects with
// retryWrites=false unless the URI sets retryWrites.
//
// detected is the flavor the server reports ("" when it cannot tell).
func (r *Restorer) connectTarget(ctx context.Context, forced Flavor) (client *mongo.Client, flavor, detected Flavor, version string, err error) {
	log := logger(r.Log)
	uri, off := r.URI, false
	if forced == FlavorDocumentDB || slices.ContainsFunc(uriHosts(uri), documentDBHost.MatchString) {
		uri, off = retryWritesOff(uri)
	}
	client, err = Connect(ctx, uri, r.TLSCAFile)
	if err != nil {
		return nil, "", "", "", err
	}
	detected, version, err = DetectFlavor(ctx, client, uri)
	flavor = forced
	switch {
	case err != nil && flavor == "":
		Disconnect(ctx, client)
		return nil, "", "", "", fmt.Errorf("%w (set the target's flavor to skip the detection)", err)
	case err != nil:
		log.Warn("mongo: cannot ask the target what it is: using the flavor set with an unknown version (DocumentDB features that depend on the version are taken as missing)", "flavor", flavor, "error", err)
	case flavor == "":
		flavor = detected
	case detected != flavor:
		log.Warn("mongo: the target looks like another flavor than the one set", "set", flavor, "detected", detected, "version", version)
	}
	if flavor == FlavorDocumentDB && !off {
		if u, changed := retryWritesOff(uri); changed {
			// Detected from hello's host list (a tunnel): reconnect without
			// retryable writes.
			Disconnect(ctx, client)
			if client, err = Connect(ctx, u, r.TLSCAFile); err != nil {
				return nil, "", "", "", err
			}
			off = true
		}
	}
	log.Info("mongo: target", "flavor", flavor, "version", version, "retryWrites_off", off)
	return client, flavor, detected, version, nil
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

	flavor  Flavor // the rules the restore follows
	server  Flavor // what the server reports being ("" unknown)
	version string
	plans   map[*collection]collPlan // what is created for each collection

	colls []*collection
	dbs   map[string]bool // source databases in the snapshot
	reuse map[namespace]bool

	inserts *errgroup.Group
	wctx    context.Context // the inserts' context
	pending *pendingMeta    // set once the data is loaded
	done    bool            // complete ran
	// openOplog opens oplog.bson ahead of the data, when the StreamReader
	// can (snapshot.StreamOpener); nil otherwise.
	openOplog func() (io.ReadCloser, error)
	replay    *replayPlan // what the replay of the oplog will do, when read ahead

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
	if err := s.readAhead(ctx); err != nil {
		return err
	}
	if err := s.compatibility(); err != nil {
		return err
	}
	exist := map[string]map[string]string{} // db → name → type
	from := map[namespace]namespace{}       // target → source
	for _, c := range s.colls {
		t := s.target(c)
		if s.plans[c].skip || s.skipped(c) {
			continue
		}
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
		if s.plans[c].skip || s.skipped(c) {
			continue
		}
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
	if s.r.Starting != nil {
		if err := s.r.Starting(ctx); err != nil {
			return err
		}
	}

	for _, t := range drop {
		if err := s.client.Database(t.db).Collection(t.coll).Drop(ctx); err != nil {
			return fmt.Errorf("mongo: drop %s: %w", t, err)
		}
		s.stats.Add("dropped", 1)
	}
	for _, c := range s.colls {
		if !c.meta.isView() && !s.reuse[s.target(c)] && !s.skipped(c) {
			if err := s.create(ctx, c); err != nil {
				return err
			}
		}
	}
	return nil
}

// skipped reports whether the target holds c already (Restorer.Skip).
func (s *restorer) skipped(c *collection) bool {
	return s.r.Skip != nil && s.r.Skip(c.ns.db, c.ns.coll)
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

// create creates the collection or view of c with its planned options.
func (s *restorer) create(ctx context.Context, c *collection) error {
	return s.createNS(ctx, s.target(c), c.meta.Type, s.plans[c].options)
}

// createNS creates the collection or view t (typ names it in errors) with
// the create options opts.
func (s *restorer) createNS(ctx context.Context, t namespace, typ string, opts bson.Raw) error {
	cmd := bson.D{{Key: "create", Value: t.coll}}
	elems, err := opts.Elements()
	if err != nil {
		return corrupt("%s: options: %v", t, err)
	}
	for _, e := range elems {
		cmd = append(cmd, bson.E{Key: e.Key(), Value: e.Value()})
	}
	db := s.client.Database(t.db)
	for attempt := 1; ; attempt++ {
		err := db.RunCommand(ctx, cmd).Err()
		if err == nil {
			return nil
		}
		if !s.r.Drop || !namespaceExists(err) || attempt == createAttempts {
			return fmt.Errorf("mongo: create %s %s: %s", typ, t, serverMessage(err))
		}
		// With Drop, the target's collection was dropped (or absent)
		// but exists again: writes that an earlier, interrupted restore
		// sent on a connection that was then reset can still land on
		// the server (FerretDB finishes them) and recreate it. Drop it
		// again and retry, after a wait.
		s.log.Warn("mongo: a collection that was dropped exists again (writes of an interrupted restore landing late?); dropping it again",
			"collection", t.String(), "attempt", attempt)
		wait := time.NewTimer(createBackoff << (attempt - 1))
		select {
		case <-ctx.Done():
			wait.Stop()
			return fmt.Errorf("mongo: create %s %s: %w", typ, t, ctx.Err())
		case <-wait.C:
		}
		if err := db.Collection(t.coll).Drop(ctx); err != nil {
			return fmt.Errorf("mongo: drop %s: %w", t, err)
		}
	}
}

// A create that finds the namespace taken again after Drop dropped it is
// retried createAttempts times in all, waiting createBackoff, then twice as
// long each time (about 3 s in all).
const (
	createAttempts = 5
	createBackoff  = 200 * time.Millisecond
)

// namespaceExists reports whether err is the server's NamespaceExists
// (code 48): the collection or view exists already.
func namespaceExists(err error) bool {
	var se mongo.ServerError
	return errors.As(err, &se) && se.HasErrorCode(48)
}

// documents reads the documents of c into batches and hands them to the
// insert workers.
func (s *restorer) documents(ctx context.Context, c *collection, docs *docReader) error {
	if s.skipped(c) {
		err := readAll(ctx, docs, nil)
		s.stats.Add("skipped_documents", docs.docs)
		s.stats.Add("skipped_bytes", docs.off)
		return err
	}
	t := s.target(c)
	coll := s.client.Database(t.db).Collection(c.meta.dataCollection(t.coll))
	var load *loading
	if s.r.Loaded != nil {
		load = &loading{done: func(n int64) { s.r.Loaded(c.ns.db, c.ns.coll, n) }}
		load.pending.Store(1) // the reading, below
	}
	var batch []any
	size := 0
	flush := func() error {
		if s.wctx.Err() != nil {
			return s.stopped(ctx)
		}
		b := batch
		load.add()
		s.inserts.Go(func() error {
			err := insert(s.wctx, coll, t, b)
			load.settle(err)
			return err
		})
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
		if err := flush(); err != nil {
			return err
		}
	}
	if load != nil {
		load.docs = docs.docs
		load.settle(nil)
	}
	return nil
}

// loading follows the insert batches of one collection, to call done once
// the stream was read to its end and every batch succeeded. A nil loading
// follows nothing.
type loading struct {
	pending atomic.Int64 // batches in flight, plus one until the stream's end
	failed  atomic.Bool
	docs    int64 // set before the reading's settle
	done    func(docs int64)
}

func (l *loading) add() {
	if l != nil {
		l.pending.Add(1)
	}
}

func (l *loading) settle(err error) {
	if l == nil {
		return
	}
	if err != nil {
		l.failed.Store(true)
	}
	if l.pending.Add(-1) == 0 && !l.failed.Load() {
		l.done(l.docs)
	}
}

// stopped returns the error for the insert workers' context being done.
func (s *restorer) stopped(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mongo: %w", err)
	}
	return errStopped
}

// A full batch is sent as insertWorkers insert commands at once, each of
// at least minInsertDocs documents: more insertion workers per collection
// than batches in flight, without more documents in memory. A server that
// takes each command in order on its connection (FerretDB parses a whole
// command, then writes it in transactions of 100 documents) is kept busy
// while one command waits for a lock or a disk flush; MongoDB inserts into
// one collection from several connections at once.
const (
	insertWorkers = 2
	minInsertDocs = 250
)

// insert inserts one batch of documents into coll, unordered, as up to
// insertWorkers commands at once.
func insert(ctx context.Context, coll *mongo.Collection, t namespace, docs []any) error {
	parts := min(insertWorkers, len(docs)/minInsertDocs)
	if parts <= 1 {
		return insertPart(ctx, coll, t, docs)
	}
	var g errgroup.Group
	n := (len(docs) + parts - 1) / parts
	for part := range slices.Chunk(docs, n) {
		g.Go(func() error { return insertPart(ctx, coll, t, part) })
	}
	return g.Wait()
}

// insertPart inserts documents into coll with one unordered insert
// command (the driver splits it at the server's message and batch sizes).
func insertPart(ctx context.Context, coll *mongo.Collection, t namespace, docs []any) error {
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

// loaded waits once for the insert workers and then plans what is built
// after the data (s.pending). It runs before the oplog is replayed, or at
// the end.
func (s *restorer) loaded() error {
	if s.pending != nil {
		return nil
	}
	if err := s.inserts.Wait(); err != nil {
		return err
	}
	s.pending = &pendingMeta{indexes: map[namespace][]bson.Raw{}, views: map[namespace]bson.Raw{}}
	for _, c := range s.colls {
		t := s.target(c)
		switch p := s.plans[c]; {
		case c.meta.isView():
			if !p.skip && !s.skipped(c) {
				s.pending.views[t] = p.options
				s.pending.order = append(s.pending.order, t)
			}
		case len(p.indexes) > 0:
			s.pending.indexes[t] = p.indexes
		}
	}
	return nil
}

// pendingMeta is what a restore builds after the data and the replay of the
// oplog, which changes it (an index created or dropped, a collection
// renamed): the indexes and the views, by target namespace.
type pendingMeta struct {
	indexes map[namespace][]bson.Raw // without _id's
	views   map[namespace]bson.Raw   // their create options
	order   []namespace              // the views in creation order (a view may be on another)
}

// complete builds the indexes and creates the views. It runs once, after
// the oplog was replayed or at the end.
func (s *restorer) complete(ctx context.Context) error {
	if s.done {
		return nil
	}
	s.done = true
	if err := s.loaded(); err != nil {
		return err
	}
	if err := s.createIndexes(ctx); err != nil {
		return err
	}
	for _, t := range s.pending.order {
		if opts, ok := s.pending.views[t]; ok {
			if err := s.createNS(ctx, t, typeView, opts); err != nil {
				return err
			}
		}
	}
	return nil
}

// createIndexes builds the pending indexes, one index per command so that
// a refusal names its index, Parallel collections at a time. It tries every
// index and reports every refusal.
func (s *restorer) createIndexes(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel(s.r.Parallel))
	var mu sync.Mutex
	var errs []error
	for _, t := range slices.SortedFunc(maps.Keys(s.pending.indexes), compareNS) {
		specs := s.pending.indexes[t]
		if len(specs) == 0 {
			continue
		}
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

// compareNS orders namespaces by database, then collection.
func compareNS(a, b namespace) int {
	if c := strings.Compare(a.db, b.db); c != 0 {
		return c
	}
	return strings.Compare(a.coll, b.coll)
}

func (s *restorer) oplog(ctx context.Context, docs *docReader) error {
	if err := s.loaded(); err != nil {
		return err
	}
	return s.replayOplog(ctx, docs)
}

func (s *restorer) finish(ctx context.Context) error {
	if err := s.complete(ctx); err != nil {
		return err
	}
	s.log.Info("mongo: restored", "collections", len(s.colls), "dropped", s.stats["dropped"], "oplog_applied", s.stats["oplog_applied"])
	return nil
}

// compatibility computes the compatibility table of the snapshot on the
// target and the plan of every collection, logs the table and fails when
// anything is refused or, with Strict, adapted or skipped.
func (s *restorer) compatibility() error {
	specs := make([]CollectionSpec, len(s.colls))
	for i, c := range s.colls {
		t := s.target(c)
		specs[i] = CollectionSpec{DB: t.db, Name: t.coll, Type: c.meta.Type, Options: c.meta.Options, Indexes: c.meta.Indexes}
	}
	plans, rows := planAll(s.flavor, s.version, specs)
	if s.replay != nil {
		rows = append(append(rows, s.replay.rows...), s.replay.summary())
	}
	s.plans = make(map[*collection]collPlan, len(s.colls))
	for i, c := range s.colls {
		s.plans[c] = plans[i]
	}
	count := map[Verdict]int{}
	var refused, changed []string
	for _, row := range rows {
		count[row.Verdict]++
		attrs := []any{"target", row.Namespace, "item", row.Item, "detail", row.Detail}
		switch row.Verdict {
		case Refused:
			refused = append(refused, row.String())
			s.log.Error("mongo: compatibility: refused", attrs...)
		case Adapted, Skipped:
			changed = append(changed, row.String())
			s.log.Warn("mongo: compatibility: "+string(row.Verdict), attrs...)
		case Info:
			s.log.Info("mongo: compatibility: note", "detail", row.Detail)
		}
	}
	s.stats["compat_adapted"] = int64(count[Adapted])
	s.stats["compat_skipped"] = int64(count[Skipped])
	target := strings.TrimSpace(string(s.flavor) + " " + s.version)
	s.log.Info("mongo: compatibility", "flavor", s.flavor, "version", s.version, "as_is", count[AsIs],
		"adapted", count[Adapted], "skipped", count[Skipped], "refused", count[Refused])
	switch {
	case len(refused) > 0:
		return fmt.Errorf("mongo: the target (%s) cannot hold %d item(s) of the snapshot, nothing was written: %s: %w",
			target, len(refused), strings.Join(refused, "; "), ErrIncompatible)
	case s.r.Strict && len(changed) > 0:
		return fmt.Errorf("mongo: strict: %d item(s) of the snapshot would be adapted or skipped on the target (%s), nothing was written: %s: %w",
			len(changed), target, strings.Join(changed, "; "), ErrIncompatible)
	}
	return nil
}
