package mongo

// The oplog window of a source, as a plan sees it before a dump: how long
// an entry stays in the oplog, and what replaying entries like those in it
// would do.

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Default bounds of InspectOplog's scan.
const (
	DefaultOplogScanEntries = 100000
	DefaultOplogScanBudget  = 10 * time.Second
)

// maxOplogRefusals is how many refused entries an OplogWindow lists (it
// counts them all).
const maxOplogRefusals = 50

// OplogScan bounds and tunes InspectOplog.
type OplogScan struct {
	// MaxEntries is how many of the newest entries are read at most
	// (DefaultOplogScanEntries when 0).
	MaxEntries int64
	// Budget is how long the scan may read (DefaultOplogScanBudget when 0).
	Budget time.Duration
	// Rename, when set, renames a source database as the restore does, so
	// that the namespaces reported and checked are the target's.
	Rename func(db string) string
}

// An OplogWindow is what InspectOplog found out about a source's oplog.
type OplogWindow struct {
	// HasOplog is false when the source is not a replica set or its oplog
	// (local.oplog.rs) cannot be read: a dump of it is not one point in
	// time. NoOplog says why.
	HasOplog bool
	NoOplog  string

	// Oldest and Newest are the timestamps of the oplog's first and last
	// entries (zero for an empty oplog); Span is the time between them.
	Oldest, Newest bson.Timestamp
	Span           time.Duration
	// Count, Size and MaxSize are collStats' entries, bytes and configured
	// size of local.oplog.rs (0 when it does not tell).
	Count, Size, MaxSize int64
	// Window is how long an entry stays in the oplog at the rate of writes
	// seen over Span: Span once the oplog is full, Span × MaxSize / Size
	// while it fills (an entry rolls off once MaxSize bytes were written
	// after it). 0 when it cannot be told: an empty oplog, or entries all
	// within one second.
	Window time.Duration

	// Scanned is how many of the newest entries were read for the
	// counts below, back to ScannedFrom; Bound says what stopped the scan
	// before the oldest entry ("" when the whole oplog was read).
	Scanned     int64
	ScannedFrom bson.Timestamp
	Bound       string

	// Entries is how many scanned entries touch the dumped databases;
	// Inserts, Updates, Deletes and Commands (by name) are their
	// operations as a replay translates them, Skipped those a replay skips
	// (what and why → count).
	Entries                   int64
	Inserts, Updates, Deletes int64
	Commands                  map[string]int64
	Skipped                   map[string]int64
	// Refused are entries that a dump capturing them would refuse
	// (cannot be replayed as ordinary writes, or malformed), the first
	// maxOplogRefusals of RefusedCount.
	Refused      []OplogRefusal
	RefusedCount int64

	cmds []replayOp // the commands a replay applies, for Compat
}

// An OplogRefusal is an oplog entry that a replay cannot apply.
type OplogRefusal struct {
	TS     bson.Timestamp
	Entry  string // what it is: "command convertToCapped of appsmith.page"
	Reason string
}

func (r OplogRefusal) String() string {
	return fmt.Sprintf("the %s at %s: %s", r.Entry, tsString(r.TS), r.Reason)
}

// tsString formats an oplog timestamp with its time.
func tsString(ts bson.Timestamp) string {
	return fmt.Sprintf("ts %d:%d (%s)", ts.T, ts.I, time.Unix(int64(ts.T), 0).UTC().Format(time.RFC3339))
}

// Hours is Window in hours.
func (w *OplogWindow) Hours() float64 { return w.Window.Hours() }

// Summary describes the scanned entries as a replay would apply them.
func (w *OplogWindow) Summary() string {
	counts, skipped := replayCounts(w.Inserts, w.Updates, w.Deletes, w.Commands, w.Skipped)
	return fmt.Sprintf("%d entries touch the databases moved: %s, %d skipped, %d refused", w.Entries, counts, skipped, w.RefusedCount)
}

// Compat returns the rows of the compatibility table of replaying the
// scanned commands into a target of flavor and version, by the rules of
// the restore's own metadata (see planCommand): what it would adapt, skip
// or refuse of the collections and indexes they create. Summary sums up
// the replay; refused entries are in Refused.
func (w *OplogWindow) Compat(flavor Flavor, version string) []CompatRow {
	s := &restorer{flavor: flavor, version: version}
	var rows []CompatRow
	for _, op := range w.cmds {
		_, r := s.planCommand(op)
		rows = append(rows, r...)
	}
	return rows
}

// Scope says which entries the counts are of: the whole oplog, or the
// newest back to ScannedFrom and why the scan stopped there.
func (w *OplogWindow) Scope() string {
	if w.Bound == "" {
		return "the whole oplog"
	}
	return "back to " + tsString(w.ScannedFrom) + ": " + w.Bound
}

// InspectOplog inspects the oplog of the source client before a dump of
// the databases dbs, writing nothing: whether the source has one (as the
// Dumper decides, see oplogStart), its first and last entries, its size
// and window, and how a replay would translate the newest entries that
// touch dbs (see replayOps and translate), those it would refuse included.
// The scan reads the newest entries first, at most scan.MaxEntries of them
// for at most scan.Budget, and says where it stopped (Bound). The error is
// for a source that does not answer.
func InspectOplog(ctx context.Context, client *mongo.Client, dbs []string, scan OplogScan) (*OplogWindow, error) {
	why := &lastRecord{}
	newest, has, err := oplogStart(ctx, client, slog.New(why))
	if err != nil {
		return nil, err
	}
	w := &OplogWindow{HasOplog: has, Commands: map[string]int64{}, Skipped: map[string]int64{}}
	if !has {
		w.NoOplog = why.String()
		return w, nil
	}
	if newest.IsZero() {
		return w, nil // an empty oplog
	}
	oplog := client.Database("local").Collection("oplog.rs")
	w.Newest = newest
	first, err := oplog.FindOne(ctx, bson.D{},
		options.FindOne().SetSort(bson.D{{Key: "$natural", Value: 1}}).SetProjection(bson.D{{Key: "ts", Value: 1}})).Raw()
	if err != nil {
		return nil, fmt.Errorf("mongo: read the oplog: %w", err)
	}
	if t, i, ok := first.Lookup("ts").TimestampOK(); ok {
		w.Oldest = bson.Timestamp{T: t, I: i}
	}
	var stats struct {
		Count   int64 `bson:"count"`
		Size    int64 `bson:"size"`
		MaxSize int64 `bson:"maxSize"`
	}
	if client.Database("local").RunCommand(ctx, bson.D{{Key: "collStats", Value: "oplog.rs"}}).Decode(&stats) == nil {
		w.Count, w.Size, w.MaxSize = stats.Count, stats.Size, stats.MaxSize
	}
	if err := w.scan(ctx, oplog, dbs, scan); err != nil {
		return nil, err
	}
	w.setWindow()
	return w, nil
}

// setWindow sets Span and Window from the timestamps and sizes.
func (w *OplogWindow) setWindow() {
	if w.Newest.T <= w.Oldest.T {
		return
	}
	w.Span = time.Duration(w.Newest.T-w.Oldest.T) * time.Second
	w.Window = w.Span
	if w.Size > 0 && w.MaxSize > w.Size {
		w.Window = time.Duration(float64(w.Span) * float64(w.MaxSize) / float64(w.Size)).Round(time.Second)
	}
}

// scan reads the newest entries of oplog, within the bounds of sc, and
// counts what replaying those that touch dbs does.
func (w *OplogWindow) scan(ctx context.Context, oplog *mongo.Collection, dbs []string, sc OplogScan) error {
	limit := sc.MaxEntries
	if limit <= 0 {
		limit = DefaultOplogScanEntries
	}
	budget := sc.Budget
	if budget <= 0 {
		budget = DefaultOplogScanBudget
	}
	sctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	keepDB := func(db string) bool { return slices.Contains(dbs, db) }
	plan := newReplayPlan()
	cur, err := oplog.Find(sctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "$natural", Value: -1}}).SetLimit(limit).SetBatchSize(1000))
	if err == nil {
		defer cur.Close(context.WithoutCancel(ctx))
		err = w.read(sctx, cur, plan, keepDB, sc.Rename)
	}
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("mongo: read the oplog: %w", ctx.Err())
	case sctx.Err() != nil:
		w.Bound = fmt.Sprintf("the scan's time budget (%v) ran out", budget)
	case err != nil:
		return fmt.Errorf("mongo: read the oplog: %w", err)
	case w.Scanned >= limit && w.ScannedFrom != w.Oldest:
		w.Bound = fmt.Sprintf("the scan reads the newest %d entries at most", limit)
	}
	w.Inserts, w.Updates, w.Deletes = plan.ops[opInsert], plan.ops[opUpdate], plan.ops[opDelete]
	maps.Copy(w.Commands, plan.commands)
	maps.Copy(w.Skipped, plan.skipped)
	return nil
}

// read counts the entries of cur into plan (see scan).
func (w *OplogWindow) read(ctx context.Context, cur *mongo.Cursor, plan *replayPlan, keepDB func(string) bool, rename func(string) string) error {
	for cur.Next(ctx) {
		entry := cur.Current
		w.Scanned++
		ts := bson.Timestamp{}
		if t, i, ok := entry.Lookup("ts").TimestampOK(); ok {
			ts = bson.Timestamp{T: t, I: i}
			w.ScannedFrom = ts
			if ts.After(w.Newest) {
				w.Newest = ts // written since oplogStart read it
			}
		}
		ops, err := replayOps(entry, keepDB, rename)
		if err != nil {
			// The capture fails on such an entry (captureOplog).
			ns, _ := entry.Lookup("ns").StringValueOK()
			w.refuse(OplogRefusal{TS: ts, Entry: "entry on " + ns, Reason: err.Error()})
			continue
		}
		if len(ops) > 0 {
			w.Entries++
		}
		for _, raw := range ops {
			op, err := translate(raw)
			if err != nil {
				w.refuse(OplogRefusal{TS: ts, Entry: op.describe(), Reason: err.Error()})
				continue
			}
			plan.add(op, nil)
			if op.kind == opCommand && op.skip == "" {
				op.o = slices.Clone(op.o) // cur.Current is reused
				w.cmds = append(w.cmds, op)
			}
		}
	}
	return cur.Err()
}

// refuse records an entry a replay cannot apply.
func (w *OplogWindow) refuse(r OplogRefusal) {
	w.RefusedCount++
	if len(w.Refused) < maxOplogRefusals {
		w.Refused = append(w.Refused, r)
	}
}

// lastRecord is a slog.Handler that keeps the last message logged, with
// its error, to tell why oplogStart found no oplog.
type lastRecord struct {
	msg string
	err string
}

func (h *lastRecord) Enabled(context.Context, slog.Level) bool { return true }

func (h *lastRecord) Handle(_ context.Context, r slog.Record) error {
	h.msg, h.err = strings.TrimPrefix(r.Message, "mongo: "), ""
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" {
			h.err = a.Value.String()
		}
		return true
	})
	return nil
}

func (h *lastRecord) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *lastRecord) WithGroup(string) slog.Handler      { return h }

func (h *lastRecord) String() string {
	if h.err != "" {
		return h.msg + ": " + h.err
	}
	return h.msg
}
