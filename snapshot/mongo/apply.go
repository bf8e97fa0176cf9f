package mongo

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"golang.org/x/sync/errgroup"
)

// Bounds of the writes a replay holds before it sends them: per collection
// (one ordered bulk write) and in all.
const (
	replayBatchOps   = 1000
	replayPendingOps = 10000
	replayBytes      = 16 << 20
	// ferretBatchOps bounds one bulk write to FerretDB: 1.24 keeps one of
	// its 100 backend connections per matching statement of an update
	// command until the command ends, so a command of about 100 updates
	// waits for a connection forever (found by the replay benchmark).
	ferretBatchOps = 50
)

// replayProgress is how often a replay logs its progress.
const replayProgress = 5 * time.Second

// A replayPlan sums up what replaying an oplog does: the operations by
// kind, the commands by name, those skipped and those refused.
type replayPlan struct {
	entries  int64
	ops      map[string]int64 // opInsert, opUpdate, opDelete → count
	commands map[string]int64 // command name → count
	skipped  map[string]int64 // why → count
	rows     []CompatRow      // of the commands, and of what is refused
}

func newReplayPlan() *replayPlan {
	return &replayPlan{ops: map[string]int64{}, commands: map[string]int64{}, skipped: map[string]int64{}}
}

// add counts one operation, with the rows of its command (if any).
func (p *replayPlan) add(op replayOp, rows []CompatRow) {
	switch {
	case op.skip != "":
		p.skipped[op.describe()+" ("+op.skip+")"]++
	case op.kind == opCommand:
		p.commands[op.name]++
	default:
		p.ops[op.kind]++
	}
	p.rows = append(p.rows, rows...)
}

// refuse records an operation that cannot be replayed (err says which).
func (p *replayPlan) refuse(off int64, err error) {
	p.rows = append(p.rows, CompatRow{Namespace: "oplog.bson", Item: fmt.Sprintf("entry at byte offset %d", off),
		Verdict: Refused, Detail: err.Error()})
}

// summary is the info row of the compatibility table about the replay.
func (p *replayPlan) summary() CompatRow {
	counts, skipped := replayCounts(p.ops[opInsert], p.ops[opUpdate], p.ops[opDelete], p.commands, p.skipped)
	detail := fmt.Sprintf("the oplog's %d entries are replayed as ordinary writes: %s", p.entries, counts)
	if skipped > 0 {
		detail += fmt.Sprintf(", %d skipped (they change no data)", skipped)
	}
	return CompatRow{Namespace: "oplog.bson", Item: "replay", Verdict: Info, Detail: detail}
}

// replayCounts describes the operations of a replay: "3 inserts, 1
// updates, 0 deletes, 2 commands (create 1, drop 1)", and returns how many
// were skipped.
func replayCounts(inserts, updates, deletes int64, commands, skipped map[string]int64) (string, int64) {
	var cmds []string
	for _, name := range slices.Sorted(maps.Keys(commands)) {
		cmds = append(cmds, fmt.Sprintf("%s %d", name, commands[name]))
	}
	s := fmt.Sprintf("%d inserts, %d updates, %d deletes, %d commands", inserts, updates, deletes, len(cmds))
	if len(cmds) > 0 {
		s += " (" + strings.Join(cmds, ", ") + ")"
	}
	var n int64
	for _, k := range skipped {
		n += k
	}
	return s, n
}

// readAhead reads oplog.bson before anything is written, when the
// StreamReader can open it out of order: it translates every entry and
// plans every command, so that what cannot be replayed is refused before
// the first write (compatibility adds s.replay's rows to the table).
func (s *restorer) readAhead(ctx context.Context) error {
	if s.openOplog == nil {
		return nil
	}
	rc, err := s.openOplog()
	if err != nil {
		// A snapshot without an oplog: nothing to replay.
		return nil
	}
	defer rc.Close()
	p := newReplayPlan()
	docs := newDocReader(rc, "oplog")
	err = replayEntries(ctx, docs, s.keepDB, s.rename.apply, func(off int64, raw bson.Raw) error {
		op, err := translate(raw)
		if err == nil {
			err = s.unsupported(op)
		}
		switch {
		case errors.Is(err, errUnreplayable):
			p.refuse(off, err)
			return nil
		case err != nil:
			return corrupt("oplog: byte offset %d: %v", off, err)
		}
		var rows []CompatRow
		if op.kind == opCommand && op.skip == "" {
			_, rows = s.planCommand(op)
		}
		p.add(op, rows)
		return nil
	})
	if err != nil {
		return err
	}
	p.entries = docs.docs
	s.replay = p
	return nil
}

// ferret reports whether the target is FerretDB (as it reports itself, or
// as the flavor set says).
func (s *restorer) ferret() bool { return s.server == FlavorFerretDB || s.flavor == FlavorFerretDB }

// unsupported returns why the target cannot replay op, wrapping
// errUnreplayable, or nil.
func (s *restorer) unsupported(op replayOp) error {
	if op.slices && s.ferret() {
		// Probed: FerretDB 1.24 answers $push with $slice, and $pop,
		// with success and leaves the array as it was.
		return fmt.Errorf("update of %s shortens an array, which FerretDB 1.x cannot do (it ignores $slice and $pop): %w", op.ns, errUnreplayable)
	}
	return nil
}

// keepDB reports whether the replay writes to the (source) database db:
// those of the snapshot.
func (s *restorer) keepDB(db string) bool { return s.dbs[db] }

// A cmdPlan is what replaying one command does on the target.
type cmdPlan struct {
	coll    collPlan   // create: the collection or view
	view    bool       // create: of a view
	indexes []bson.Raw // createIndexes, commitIndexBuild: the indexes to build
	options bson.Raw   // collMod: the options to send (nil: none)
	skip    bool       // the target cannot hold it; skipped (see rows)
}

// planCommand returns what replaying the command op does on the target and
// its rows of the compatibility table, by the rules of the restore's own
// metadata.
func (s *restorer) planCommand(op replayOp) (cmdPlan, []CompatRow) {
	r := newRules(s.flavor, s.version)
	var p cmdPlan
	var rows []CompatRow
	t := op.ns
	switch op.name {
	case "create":
		typ := typeCollection
		switch {
		case op.o.Lookup("viewOn").Type != 0:
			typ, p.view = typeView, true
		case op.o.Lookup("timeseries").Type != 0:
			typ = typeTimeseries
		}
		p.coll, rows = r.collection(CollectionSpec{DB: t.db, Name: t.coll, Type: typ, Options: withoutKeys(op.o, "create", "idIndex")})
		p.skip = p.coll.skip
	case "createIndexes", "commitIndexBuild":
		specs := []bson.Raw{withoutKeys(op.o, "createIndexes", "v", "ns")}
		if op.name == "commitIndexBuild" {
			specs = nil
			arr, _ := op.o.Lookup("indexes").ArrayOK()
			vals, _ := arr.Values()
			for _, v := range vals {
				if doc, ok := v.DocumentOK(); ok {
					specs = append(specs, withoutKeys(doc, "v", "ns"))
				}
			}
		}
		p.indexes, rows = r.indexes(t.db, t.coll, specs)
	case "collMod":
		opts := withoutKeys(op.o, "collMod", "index")
		if len(opts) <= len(emptyDoc) {
			break
		}
		if r.kind == FlavorFerretDB {
			// Source: LAB.md (FerretDB 1.24 has no collMod).
			p.skip = true
			rows = []CompatRow{{Namespace: t.String(), Item: "oplog collMod", Verdict: Skipped, Detail: "FerretDB 1.x has no collMod; the options it changes are not restored"}}
			break
		}
		p.options, rows = r.options(t.String(), opts)
	}
	for i := range rows {
		if !strings.HasPrefix(rows[i].Item, "oplog ") {
			rows[i].Item = "oplog " + op.name + ": " + rows[i].Item
		}
	}
	return p, rows
}

// A replayer applies the operations of an oplog in order: the writes of
// each collection batched into ordered bulk writes (writes of different
// collections commute), each command alone once every write before it was
// acknowledged.
type replayer struct {
	s       *restorer
	batches map[namespace]*replayBatch
	order   []namespace // of batches, by first write
	ops     int         // writes held
	bytes   int
	applied int64 // operations acknowledged
	last    int64 // the byte offset of the last entry acknowledged
}

// A replayBatch is the held writes of one collection.
type replayBatch struct {
	models []mongo.WriteModel
	of     []int      // the index in ops of each model's operation
	ops    []replayOp // in oplog order
}

// replayOplog replays the oplog entries of docs on the target (see
// replay.go). An operation that fails stops the replay with an error that
// names its namespace, operation and byte offset and says what the target
// holds.
func (s *restorer) replayOplog(ctx context.Context, docs *docReader) error {
	rp := &replayer{s: s, batches: map[namespace]*replayBatch{}, last: -1}
	plan := newReplayPlan()
	tick := time.Now()
	var until uint32 // seconds of the last entry's ts
	err := replayEntries(ctx, docs, s.keepDB, s.rename.apply, func(off int64, raw bson.Raw) error {
		if t, _, ok := raw.Lookup("ts").TimestampOK(); ok {
			until = max(until, t)
		}
		op, err := translate(slices.Clone(raw))
		op.off = off
		if err == nil {
			err = s.unsupported(op)
		}
		switch {
		case errors.Is(err, errUnreplayable):
			return rp.stopped(ctx, fmt.Errorf("mongo: replay the oplog: the entry at byte offset %d: %w", off, err))
		case err != nil:
			return corrupt("oplog: byte offset %d: %v", off, err)
		}
		if time.Since(tick) >= replayProgress {
			tick = time.Now()
			s.log.Info("mongo: replaying the oplog", "applied", rp.applied, "byte_offset", off)
		}
		switch {
		case op.skip != "":
			plan.add(op, nil)
			s.stats.Add("oplog_skipped", 1)
			s.log.Debug("mongo: oplog entry skipped", "entry", op.describe(), "why", op.skip, "byte_offset", off)
			return nil
		case op.kind == opCommand:
			if err := rp.flush(ctx); err != nil {
				return err
			}
			cp, rows := s.planCommand(op)
			plan.add(op, rows)
			if err := rp.command(ctx, op, cp, rows); err != nil {
				return err
			}
			rp.done(op)
			return nil
		}
		plan.add(op, nil)
		return rp.hold(ctx, op)
	})
	if err == nil {
		err = rp.flush(ctx)
	}
	if err != nil {
		return err
	}
	var skipped []string
	for _, what := range slices.Sorted(maps.Keys(plan.skipped)) {
		skipped = append(skipped, fmt.Sprintf("%s ×%d", what, plan.skipped[what]))
	}
	if len(skipped) > 0 {
		s.log.Warn("mongo: oplog entries skipped (they change no data)", "entries", strings.Join(skipped, "; "))
	}
	if until > 0 {
		s.log.Info("mongo: the target holds the source as of its oplog's last captured entry", "point_in_time", time.Unix(int64(until), 0).UTC().Format(time.RFC3339))
	}
	s.log.Info("mongo: oplog replayed", "applied", rp.applied, "inserts", plan.ops[opInsert], "updates", plan.ops[opUpdate],
		"deletes", plan.ops[opDelete], "commands", len(plan.commands), "skipped", s.stats["oplog_skipped"])
	return nil
}

// done records that op was acknowledged.
func (rp *replayer) done(op replayOp) {
	rp.applied++
	rp.last = max(rp.last, op.off)
	rp.s.stats.Add("oplog_applied", 1)
}

// hold adds the writes of op to its collection's batch, and sends what is
// held when a bound is reached.
func (rp *replayer) hold(ctx context.Context, op replayOp) error {
	b := rp.batches[op.ns]
	if b == nil {
		b = &replayBatch{}
		rp.batches[op.ns] = b
		rp.order = append(rp.order, op.ns)
	}
	b.ops = append(b.ops, op)
	for _, m := range op.models {
		b.models = append(b.models, m)
		b.of = append(b.of, len(b.ops)-1)
	}
	rp.ops += len(op.models)
	rp.bytes += op.size
	limit := replayBatchOps
	if rp.s.ferret() {
		limit = ferretBatchOps
	}
	if len(b.models) >= limit || rp.ops >= replayPendingOps || rp.bytes >= replayBytes {
		return rp.flush(ctx)
	}
	return nil
}

// flush sends every held batch, Parallel collections at a time, each as
// one ordered bulk write, and waits for them.
func (rp *replayer) flush(ctx context.Context) error {
	if rp.ops == 0 {
		return nil
	}
	s := rp.s
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel(s.r.Parallel))
	if s.ferret() {
		// One bulk write at a time: FerretDB 1.24 holds a backend
		// connection (of 100) per matching update statement until the
		// command ends (see ferretBatchOps), so commands in parallel
		// would add up to the limit and wait forever.
		g.SetLimit(1)
	}
	var mu sync.Mutex
	var failed *replayFailure
	var sentUpTo int64
	for _, ns := range rp.order {
		b := rp.batches[ns]
		sentUpTo = max(sentUpTo, b.ops[len(b.ops)-1].off)
		coll := s.client.Database(ns.db).Collection(ns.coll)
		g.Go(func() error {
			_, err := coll.BulkWrite(gctx, b.models, options.BulkWrite().SetOrdered(true))
			if err == nil {
				return nil
			}
			f := &replayFailure{op: b.ops[0], err: err}
			var bwe mongo.BulkWriteException
			if errors.As(err, &bwe) && len(bwe.WriteErrors) > 0 {
				we := bwe.WriteErrors[0]
				if we.Index >= 0 && we.Index < len(b.of) {
					f.op = b.ops[b.of[we.Index]]
				}
				f.err = writeError(err)
				if i, perr := b.pinpoint(gctx, coll); perr != nil {
					f.op, f.err = b.ops[b.of[i]], writeError(perr)
				}
			}
			mu.Lock()
			if failed == nil || f.op.off < failed.op.off {
				failed = f
			}
			mu.Unlock()
			return f
		})
	}
	err := g.Wait()
	if failed != nil {
		return rp.failure(ctx, failed, sentUpTo)
	}
	if err != nil {
		return err
	}
	for _, ns := range rp.order {
		for _, op := range rp.batches[ns].ops {
			rp.done(op)
		}
	}
	clear(rp.batches)
	rp.order, rp.ops, rp.bytes = rp.order[:0], 0, 0
	return nil
}

// pinpoint sends the writes of b again one at a time, in order, and returns
// the index and the error of the first that fails: a server's index of a
// failed write in a bulk write is not always right (FerretDB 1.24 reports
// 0). Every write of a replay is idempotent, so sending those before it
// again does no harm, except an insert of a document without _id: with one,
// pinpoint sends nothing and returns a nil error.
func (b *replayBatch) pinpoint(ctx context.Context, coll *mongo.Collection) (int, error) {
	for _, m := range b.models {
		if _, insert := m.(*mongo.InsertOneModel); insert {
			return 0, nil
		}
	}
	for i, m := range b.models {
		if _, err := coll.BulkWrite(ctx, []mongo.WriteModel{m}); err != nil {
			return i, err
		}
	}
	return 0, nil
}

// writeError returns the server's message of a failed bulk write.
func writeError(err error) error {
	var bwe mongo.BulkWriteException
	if errors.As(err, &bwe) && len(bwe.WriteErrors) > 0 {
		we := bwe.WriteErrors[0]
		return fmt.Errorf("%s (code %d)", we.Message, we.Code)
	}
	return err
}

// A replayFailure is a write of a replay that the target refused or that
// could not be sent.
type replayFailure struct {
	op  replayOp
	err error
}

func (f *replayFailure) Error() string { return f.err.Error() }

// failure returns the error of a replay stopped by f: what failed, and
// what the target holds. sentUpTo is the byte offset of the last entry
// sent with it.
func (rp *replayer) failure(ctx context.Context, f *replayFailure, sentUpTo int64) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mongo: replay the oplog: %w", err)
	}
	msg := fmt.Sprintf("mongo: replay the oplog: the %s (entry at byte offset %d) failed: %s", f.op.describe(), f.op.off, serverMessage(f.err))
	held := fmt.Sprintf("; the target holds every collection's data and the oplog entries before byte offset %d, none later of %s", f.op.off, f.op.ns)
	if sentUpTo > f.op.off {
		held += fmt.Sprintf(" (later entries of other collections, up to byte offset %d, may be applied)", sentUpTo)
	}
	return fmt.Errorf("%s%s: it is not at one point in time, and its indexes and views are not built: %w", msg, held, errReplay)
}

// stopped returns err for an operation that cannot be sent, with what the
// target holds once the held writes before it are sent.
func (rp *replayer) stopped(ctx context.Context, err error) error {
	if ferr := rp.flush(ctx); ferr != nil {
		return ferr
	}
	return fmt.Errorf("%w; the target holds every collection's data and the oplog entries before it: it is not at one point in time", err)
}

// errReplay is wrapped by the error of a replay that a target refused.
var errReplay = errors.New("replay failed")

// command applies the command op as cp plans it (rows are its
// compatibility rows, logged here).
func (rp *replayer) command(ctx context.Context, op replayOp, cp cmdPlan, rows []CompatRow) error {
	s := rp.s
	for _, row := range rows {
		switch row.Verdict {
		case Refused:
			return rp.stopped(ctx, fmt.Errorf("mongo: replay the oplog: the entry at byte offset %d (%s): the target cannot hold it: %s: %w",
				op.off, op.describe(), row, ErrIncompatible))
		case Adapted, Skipped:
			s.log.Warn("mongo: compatibility: "+string(row.Verdict), "target", row.Namespace, "item", row.Item, "detail", row.Detail)
		}
	}
	t := op.ns
	db := s.client.Database(t.db)
	p := s.pending
	fail := func(err error) error {
		return fmt.Errorf("mongo: replay the oplog: the %s (entry at byte offset %d) failed: %s: %w", op.describe(), op.off, serverMessage(err), errReplay)
	}
	switch op.name {
	case "create":
		switch {
		case cp.skip:
		case cp.view:
			if _, ok := p.views[t]; !ok {
				p.order = append(p.order, t)
			}
			p.views[t] = cp.coll.options
		default:
			cmd := append(bson.D{{Key: "create", Value: t.coll}}, elems(cp.coll.options)...)
			if err := db.RunCommand(ctx, cmd).Err(); err != nil && !namespaceExists(err) {
				return fail(err)
			}
		}
	case "drop":
		if _, view := p.views[t]; view {
			delete(p.views, t)
			break
		}
		if err := db.Collection(t.coll).Drop(ctx); err != nil {
			return fail(err)
		}
		delete(p.indexes, t)
	case "renameCollection":
		to, err := renameTarget(op.o)
		if err != nil {
			return corrupt("oplog: byte offset %d: %v", op.off, err)
		}
		if opts, view := p.views[t]; view {
			delete(p.views, t)
			p.views[to], p.order = opts, append(p.order, to)
			break
		}
		names, err := listNames(ctx, db)
		if err != nil {
			return err
		}
		if _, ok := names[t.coll]; !ok {
			// The dump read it after the rename: its documents are
			// under the new name already.
			s.log.Debug("mongo: oplog rename of a collection the dump found renamed", "from", t.String(), "to", to.String())
			break
		}
		// A collection under the new name was read after the rename
		// (or is the one the rename replaces): the renamed collection,
		// with the entries after it, supersedes it. Dropped first, not
		// with dropTarget, which FerretDB 1.x does not implement.
		if err := s.client.Database(to.db).Collection(to.coll).Drop(ctx); err != nil {
			return fail(err)
		}
		cmd := bson.D{{Key: "renameCollection", Value: t.String()}, {Key: "to", Value: to.String()}}
		if err := s.client.Database("admin").RunCommand(ctx, cmd).Err(); err != nil {
			return fail(err)
		}
		p.indexes[to] = p.indexes[t]
		delete(p.indexes, t)
	case "createIndexes", "commitIndexBuild":
		for _, spec := range cp.indexes {
			name, _ := spec.Lookup("name").StringValueOK()
			specs := slices.DeleteFunc(p.indexes[t], func(x bson.Raw) bool { n, _ := x.Lookup("name").StringValueOK(); return n == name })
			p.indexes[t] = append(specs, spec)
		}
	case "dropIndexes", "deleteIndexes":
		sel := op.o.Lookup("index")
		sels := []bson.RawValue{sel}
		if arr, ok := sel.ArrayOK(); ok {
			sels, _ = arr.Values()
		}
		p.indexes[t] = slices.DeleteFunc(p.indexes[t], func(spec bson.Raw) bool {
			return slices.ContainsFunc(sels, func(v bson.RawValue) bool { return sameIndex(spec, v) })
		})
	case "collMod":
		if idx, ok := op.o.Lookup("index").DocumentOK(); ok {
			sel := idx.Lookup("name")
			if sel.Type == 0 {
				sel = idx.Lookup("keyPattern")
			}
			for i, spec := range p.indexes[t] {
				if sameIndex(spec, sel) {
					p.indexes[t][i] = mergeFields(spec, withoutKeys(idx, "name", "keyPattern"))
				}
			}
		}
		if opts, view := p.views[t]; view {
			p.views[t] = mergeFields(opts, withoutKeys(op.o, "collMod", "index"))
			break
		}
		if cp.skip || len(cp.options) <= len(emptyDoc) {
			break
		}
		cmd := append(bson.D{{Key: "collMod", Value: t.coll}}, elems(cp.options)...)
		if err := db.RunCommand(ctx, cmd).Err(); err != nil {
			return fail(err)
		}
	case "dropDatabase":
		if err := db.Drop(ctx); err != nil {
			return fail(err)
		}
		for ns := range p.indexes {
			if ns.db == t.db {
				delete(p.indexes, ns)
			}
		}
		for ns := range p.views {
			if ns.db == t.db {
				delete(p.views, ns)
			}
		}
	}
	return nil
}

// elems returns the elements of doc as a bson.D of raw values.
func elems(doc bson.Raw) bson.D {
	es, _ := doc.Elements()
	d := make(bson.D, 0, len(es))
	for _, e := range es {
		d = append(d, bson.E{Key: e.Key(), Value: e.Value()})
	}
	return d
}

// mergeFields returns doc with the fields of with set (replaced or added).
func mergeFields(doc, with bson.Raw) bson.Raw {
	d := elems(doc)
	for _, e := range elems(with) {
		if i := slices.IndexFunc(d, func(x bson.E) bool { return x.Key == e.Key }); i >= 0 {
			d[i].Value = e.Value
		} else {
			d = append(d, e)
		}
	}
	out, err := bson.Marshal(d)
	if err != nil {
		return doc
	}
	return out
}
