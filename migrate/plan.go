package migrate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/stackport/stackport/snapshot"
	mongosnap "github.com/stackport/stackport/snapshot/mongo"
)

// A Finding is what Plan found out about one component, writing nothing.
type Finding struct {
	Kind     string   `json:"kind"`
	Items    int64    `json:"items"`    // in the source, as Component.Items counts them; -1: unknown
	Bytes    int64    `json:"bytes"`    // in the source; -1: unknown
	Notes    []string `json:"notes"`    // worth knowing: versions, free space
	Blockers []string `json:"blockers"` // what would make the move fail
	// Compat is the compatibility table of the target, one line per item
	// that is not moved as is (MongoDB: see mongo.Compatibility).
	Compat []string `json:"compat,omitempty"`
	// Estimate is how long the move of the component may take: Bytes at
	// the component's Throughput (0 when Bytes is unknown).
	Estimate time.Duration `json:"estimate_ns"`
	// Throughput is the rate of the estimate, in MiB/s.
	Throughput float64 `json:"throughput_mib_s"`

	// occupied are target data in the way of the move: blockers, unless
	// an earlier run of the migration wrote them (see PlanOptions).
	occupied []string
}

func (f *Finding) note(format string, args ...any) {
	f.Notes = append(f.Notes, fmt.Sprintf(format, args...))
}

func (f *Finding) block(format string, args ...any) {
	f.Blockers = append(f.Blockers, fmt.Sprintf(format, args...))
}

// occupy records target data in the way of the move.
func (f *Finding) occupy(format string, args ...any) {
	f.occupied = append(f.occupied, fmt.Sprintf(format, args...))
}

// Throughput is the rate, in MiB/s, at which Plan estimates the move of
// each kind: deliberately low, for a source and a target on different
// machines (a Filestore share, a managed database across a network), on
// small machines. A kind not listed moves at DefaultThroughput.
var Throughput = map[string]float64{
	"volume":   30, // tar over NFS: many small files
	"mongo":    5,  // bulk inserts and index builds; FerretDB loads ~10 MiB/s on loopback
	"redis":    10, // RESTORE pipelines; Bytes is the source's memory, more than the dump
	"postgres": 10, // COPY in one transaction, then the indexes
}

// DefaultThroughput is the rate of kinds Throughput does not list.
const DefaultThroughput = 10

// PlanOptions tune Plan.
type PlanOptions struct {
	// Journal, when set, is the state of the migration: what an earlier
	// run left in the targets is not in the way (the run resumes), and
	// the report says what it finished.
	Journal *Journal
}

// A PlanReport is what Plan found out.
type PlanReport struct {
	Components []Finding `json:"components"`
	// Estimate is how long the run may take: the components move
	// concurrently, then every target is read again for the check, so
	// twice the longest component's estimate.
	Estimate time.Duration `json:"estimate_ns"`
	// Resume describes the state an earlier run left (nil without one).
	Resume *ResumePlan `json:"resume,omitempty"`
}

// Blocked returns what blocks the move, each prefixed with its kind.
func (r *PlanReport) Blocked() []string {
	var b []string
	for _, f := range r.Components {
		for _, x := range f.Blockers {
			b = append(b, f.Kind+": "+x)
		}
	}
	return b
}

// ResumePlan is what an earlier run of the migration left.
type ResumePlan struct {
	State    string    `json:"state"` // where
	Runs     int       `json:"runs"`
	Started  time.Time `json:"started"`
	Updated  time.Time `json:"updated"`
	Complete bool      `json:"complete"`
	// Components say, per kind, what the earlier runs finished.
	Components map[string]string `json:"components"`
}

// Plan inspects every pair concurrently with its Plan function and returns
// the findings in the order of the pairs. A pair without one is reported
// as not inspected, which blocks nothing.
func Plan(ctx context.Context, pairs []Pair, opts PlanOptions) *PlanReport {
	findings := make([]Finding, len(pairs))
	var wg sync.WaitGroup
	for i, p := range pairs {
		if p.Plan == nil {
			findings[i] = Finding{Items: -1, Bytes: -1, Notes: []string{"not inspected: --plan does not know this component yet"}}
		} else {
			wg.Go(func() { findings[i] = p.Plan(ctx) })
		}
	}
	wg.Wait()
	rep := &PlanReport{Components: findings}
	var state *State
	if j := opts.Journal; j != nil && j.Resumed() {
		st := j.State()
		state = &st
		rep.Resume = &ResumePlan{State: j.Where(), Runs: st.Runs, Started: st.Started, Updated: st.Updated,
			Complete: st.Complete, Components: map[string]string{}}
	}
	var longest time.Duration
	for i, p := range pairs {
		f := &findings[i]
		f.Kind = p.Kind
		own := false
		if state != nil {
			cs := state.Components[p.Kind]
			rep.Resume.Components[p.Kind] = describeState(cs, state.Complete)
			own = cs != nil && cs.Writing
		}
		for _, o := range f.occupied {
			if own {
				f.note("%s: an earlier run of this migration wrote it: the run resumes", o)
			} else {
				f.Blockers = append(f.Blockers, o)
			}
		}
		f.Throughput = throughput(p.Kind)
		if f.Bytes > 0 {
			f.Estimate = estimate(f.Bytes, f.Throughput)
			longest = max(longest, f.Estimate)
		}
	}
	rep.Estimate = 2 * longest
	return rep
}

// throughput returns the rate of kind's estimate, in MiB/s.
func throughput(kind string) float64 {
	if t := Throughput[kind]; t > 0 {
		return t
	}
	return DefaultThroughput
}

// estimate returns how long moving bytes takes at mibps MiB/s.
func estimate(bytes int64, mibps float64) time.Duration {
	return time.Duration(float64(bytes) / (mibps * (1 << 20)) * float64(time.Second)).Round(time.Second)
}

// describeState says what the earlier runs finished of one component.
func describeState(cs *ComponentState, complete bool) string {
	switch {
	case cs == nil:
		return "not begun: moved in full"
	case complete && cs.Moved:
		return "moved and verified: checked quickly and skipped"
	case cs.Differs:
		return "moved, but the check found differences: moved again"
	case cs.Moved:
		return "moved: checked quickly and skipped"
	case len(cs.Units) > 0:
		units := slices.Sorted(maps.Keys(cs.Units))
		var n int64
		for _, u := range units {
			n += cs.Units[u]
		}
		return fmt.Sprintf("%d parts finished (%s; %d items): checked quickly and skipped, the rest is moved (a part begun is removed and moved again)",
			len(units), listNames(units, 5), n)
	case cs.Writing:
		return "begun, nothing finished: what the run wrote is replaced"
	case cs.Refused:
		return "refused by the target, which held data of its own in the way: moved in full"
	}
	return "not begun: moved in full"
}

// Plan implements Pair.Plan: the size of the source as the Dumper sees it,
// whether the target may be written (missing or empty, or Force) and the
// free space of its file system.
func (v Volume) Plan(ctx context.Context) Finding {
	f := Finding{Items: -1, Bytes: -1}
	src, err := filepath.EvalSymlinks(v.Source)
	if err != nil {
		f.block("source: %v", err)
		return f
	}
	var items, bytes int64
	err = filepath.WalkDir(src, func(p string, de fs.DirEntry, err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		rel, _ := filepath.Rel(src, p)
		switch {
		case rel == "." && err == nil:
			items++ // the root, as the archive holds it
			return nil
		case rel == ".":
			return err
		case v.excluded(filepath.ToSlash(rel)):
			return skip(de)
		case err != nil && v.SkipUnreadable:
			f.note("source: %v (skipped)", err)
			return skip(de)
		case err != nil:
			return err
		}
		items++
		if de.Type().IsRegular() {
			if fi, err := de.Info(); err == nil {
				bytes += fi.Size()
			}
		}
		return nil
	})
	if err != nil {
		f.block("source: %v", err)
		return f
	}
	f.Items, f.Bytes = items, bytes

	existing := v.Target
	entries, err := os.ReadDir(v.Target)
	var leftovers []string
	entries = slices.DeleteFunc(entries, func(e fs.DirEntry) bool {
		if isLeftover(e.Name()) {
			leftovers = append(leftovers, e.Name())
			return true
		}
		return false
	})
	switch {
	case errors.Is(err, fs.ErrNotExist):
		existing = filepath.Dir(v.Target)
		if fi, err := os.Stat(existing); err != nil || !fi.IsDir() {
			f.block("target: the parent folder %s does not exist", existing)
			return f
		}
		f.note("target %s will be created", v.Target)
	case err != nil:
		f.block("target: %v", err)
		return f
	case len(entries) > 0 && !v.Force:
		f.occupy("target %s is not empty: use --force to replace its content", v.Target)
	case len(entries) > 0:
		f.note("target %s is not empty: its content will be replaced (--force)", v.Target)
	}
	if len(leftovers) > 0 {
		f.note("target: %s left by an interrupted restore: removed by the run when the migration wrote the target, or with --force", listNames(leftovers, 5))
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(existing, &st); err != nil {
		f.note("target: free space unknown: %v", err)
		return f
	}
	free := int64(st.Bavail) * st.Bsize
	if gib := float64(1 << 30); free < bytes {
		f.block("target file system: %.2f GiB free, the volume needs %.2f GiB", float64(free)/gib, float64(bytes)/gib)
	} else {
		f.note("target file system: %.2f GiB free", float64(free)/gib)
	}
	return f
}

// Plan implements Pair.Plan: both servers answer, their versions, the
// documents and bytes of the source databases, target collections that
// already hold documents (which block unless Drop), the source's oplog
// window against the estimated dump time and what a replay of entries
// like those in it does (see planOplog), and the target's flavor with the
// compatibility table of the source's collections, views and indexes and
// of the oplog's commands (see planCompat).
func (c Mongo) Plan(ctx context.Context) (f Finding) {
	f = Finding{Items: -1, Bytes: -1}
	src, err := mongosnap.Connect(ctx, c.Source, c.SourceTLSCAFile)
	if err != nil {
		f.block("source: %v", err)
	} else {
		defer mongosnap.Disconnect(ctx, src)
		f.note("source: %s", serverVersion(ctx, src))
	}
	dst, err := mongosnap.Connect(ctx, c.Target, c.TargetTLSCAFile)
	if err != nil {
		f.block("target: %v", err)
	} else {
		defer mongosnap.Disconnect(ctx, dst)
		f.note("target: %s", serverVersion(ctx, dst))
	}
	if src == nil {
		return f
	}
	// The compatibility table is made when both servers could be
	// inspected (what the oplog blocks does not hide it).
	var compat bool
	var oplog *mongosnap.OplogWindow
	defer func() {
		if dst != nil && compat {
			c.planCompat(ctx, &f, src, dst, oplog)
		}
	}()
	dbs, err := c.databases(ctx, src)
	if err != nil {
		f.block("%v", err)
		return f
	}
	f.Items, f.Bytes = 0, 0
	for _, db := range dbs {
		var stats struct {
			DataSize float64 `bson:"dataSize"`
		}
		if err := src.Database(db).RunCommand(ctx, bson.D{{Key: "dbStats", Value: 1}}).Decode(&stats); err != nil {
			f.Bytes = -1
		} else if f.Bytes >= 0 {
			f.Bytes += int64(stats.DataSize)
		}
		colls, err := collections(ctx, src.Database(db))
		if err != nil {
			f.block("%v", err)
			return f
		}
		target := c.targetDB(db)
		for _, coll := range colls {
			n, err := src.Database(db).Collection(coll).CountDocuments(ctx, bson.D{})
			if err != nil {
				f.block("source %s.%s: count: %v", db, coll, err)
				continue
			}
			f.Items += n
			if dst == nil || c.Drop {
				continue
			}
			has, err := dst.Database(target).Collection(coll).CountDocuments(ctx, bson.D{}, options.Count().SetLimit(1))
			switch {
			case err != nil:
				f.block("target %s.%s: count: %v", target, coll, err)
			case has > 0:
				f.occupy("target %s.%s already holds documents: use --drop to replace them", target, coll)
			}
		}
	}
	compat = len(f.Blockers) == 0
	oplog = c.planOplog(ctx, &f, src, dbs)
	return f
}

// planOplog inspects the source's oplog (see mongo.InspectOplog) and
// reports: without one, a warning that the copy is not one point in time
// unless the writers are stopped; with one, its window (how long an entry
// stays in it) against the estimated dump time, which blocks when shorter
// (the dump's start entry would roll off and the dump fail) and warns
// when less than twice as long; what a replay of entries like those in it
// does; and each entry in it that cannot be replayed, which blocks (a
// dump during which one like it is written fails). The dump streams into
// the restore, so it lasts as long as the move: its estimate is the
// source's dataSize (f.Bytes) at the mongo Throughput.
func (c Mongo) planOplog(ctx context.Context, f *Finding, src *mongo.Client, dbs []string) *mongosnap.OplogWindow {
	w, err := mongosnap.InspectOplog(ctx, src, dbs, mongosnap.OplogScan{Rename: c.targetDB})
	if err != nil {
		f.block("source: %v", err)
		return nil
	}
	if !w.HasOplog {
		f.note("warning: source: no oplog (%s): the copy will not be one point in time unless the application's writers are stopped during the move", w.NoOplog)
		return w
	}
	rate := throughput("mongo")
	dump := "unknown (the source's dataSize is unknown)"
	var est time.Duration
	if f.Bytes >= 0 {
		est = estimate(f.Bytes, rate)
		dump = fmt.Sprintf("%s (the source's dataSize, %s, at %g MiB/s, the rate of the move's estimate: the dump streams into the restore, so it lasts as long as the move)",
			seconds(est), snapshot.HumanBytes(f.Bytes), rate)
	}
	size, stays := "its size unknown", "taken as full: an entry stays as long as the span"
	if w.MaxSize > 0 {
		size, stays = fmt.Sprintf("%s used of %s", snapshot.HumanBytes(w.Size), snapshot.HumanBytes(w.MaxSize)), "full: an entry stays as long as the span"
		if w.Size < w.MaxSize {
			stays = "not full yet: at the rate of writes seen, an entry stays that long"
		}
	}
	window := fmt.Sprintf("about %s hours (its entries span %v, %s; %s, %s)",
		hours(w.Hours()), w.Span, timeRange(w.Oldest, w.Newest), size, stays)
	fix := "enlarge the oplog (replSetResizeOplog) or stop the application's writers during the move"
	switch {
	case w.Newest.IsZero():
		f.note("oplog window: the oplog is empty: it keeps every entry written during the dump until it is full (%s); estimated dump time %s", size, dump)
	case w.Window == 0:
		f.note("oplog window: cannot be told yet: its entries span less than a second (%s, %s); estimated dump time %s", timeRange(w.Oldest, w.Newest), size, dump)
	case f.Bytes < 0:
		f.note("oplog window: %s; estimated dump time %s", window, dump)
	case w.Window < est:
		f.block("oplog window: %s is shorter than the estimated dump time, %s: the dump's start entry would roll off and the dump fail; %s", window, dump, fix)
	case w.Window < 2*est:
		f.note("warning: oplog window: %s is less than twice the estimated dump time, %s: more writes than seen would roll the dump's start entry off and fail the dump; %s", window, dump, fix)
	default:
		f.note("oplog window: %s against an estimated dump time of %s", window, dump)
	}
	if w.Scanned == 0 && w.Bound == "" {
		return w
	}
	f.note("oplog replay: of the oplog's %d newest entries (%s), %s", w.Scanned, w.Scope(), w.Summary())
	for _, r := range w.Refused {
		f.block("oplog: %s: a dump during which an entry like it is written fails; stop what writes it during the move", r)
	}
	if more := w.RefusedCount - int64(len(w.Refused)); more > 0 {
		f.block("oplog: %d more entries cannot be replayed", more)
	}
	return w
}

// hours formats a number of hours: two decimals below 10.
func hours(h float64) string {
	if h < 10 {
		return fmt.Sprintf("%.2f", h)
	}
	return fmt.Sprintf("%.0f", h)
}

// seconds formats a duration rounded to the second: "<1s" below.
func seconds(d time.Duration) string {
	if d < time.Second {
		return "<1s"
	}
	return d.Round(time.Second).String()
}

// timeRange formats the times of two oplog timestamps.
func timeRange(from, to bson.Timestamp) string {
	t := func(ts bson.Timestamp) string { return time.Unix(int64(ts.T), 0).UTC().Format(time.RFC3339) }
	return "from " + t(from) + " to " + t(to)
}

// serverVersion describes the server of client: MongoDB's version, and
// FerretDB's when it is one.
func serverVersion(ctx context.Context, client *mongo.Client) string {
	var info struct {
		Version         string `bson:"version"`
		FerretDBVersion string `bson:"ferretdbVersion"`
	}
	if err := client.Database("admin").RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Decode(&info); err != nil {
		return "version unknown: " + err.Error()
	}
	if info.FerretDBVersion != "" {
		return fmt.Sprintf("FerretDB %s (MongoDB %s)", info.FerretDBVersion, info.Version)
	}
	return "MongoDB " + info.Version
}

// planCompat adds the compatibility table of the target's flavor (the
// one set, else the detected one) for the source's collections, views and
// indexes: what the restore keeps as is, adapts, skips or refuses (see
// mongo.Compatibility), then the rows of replaying the commands of oplog
// (when set; see OplogWindow.Compat). Refused items block the move;
// adapted and skipped ones block it with Strict.
func (c Mongo) planCompat(ctx context.Context, f *Finding, src, dst *mongo.Client, oplog *mongosnap.OplogWindow) {
	flavor, version, how := c.Flavor, "", "set"
	detected, dversion, err := mongosnap.DetectFlavor(ctx, dst, c.Target)
	switch {
	case err != nil && flavor == "":
		f.block("target: cannot tell its flavor: %v (set it with --mongo-flavor)", err)
		return
	case err == nil && flavor == "":
		flavor, version, how = detected, dversion, "detected"
	case err == nil:
		version = dversion
		if detected != flavor {
			f.note("warning: the target looks like %s, not the flavor set (%s)", detected, flavor)
		}
	}
	f.note("target flavor: %s %s (%s)", flavor, version, how)
	if flavor == mongosnap.FlavorDocumentDB {
		f.note("target: retryWrites=false is added to the URI (DocumentDB refuses retryable writes)")
	}
	dbs, err := c.databases(ctx, src)
	if err != nil {
		f.block("%v", err)
		return
	}
	var specs []mongosnap.CollectionSpec
	for _, db := range dbs {
		cur, err := src.Database(db).ListCollections(ctx, bson.D{})
		if err != nil {
			f.block("source: list collections of %s: %v", db, err)
			return
		}
		var raws []bson.Raw
		err = cur.All(ctx, &raws)
		if err != nil {
			f.block("source: list collections of %s: %v", db, err)
			return
		}
		for _, raw := range raws {
			name, _ := raw.Lookup("name").StringValueOK()
			if name == "" || strings.HasPrefix(name, "system.") {
				continue
			}
			spec := mongosnap.CollectionSpec{DB: c.targetDB(db), Name: name, Type: "collection"}
			if t, ok := raw.Lookup("type").StringValueOK(); ok {
				spec.Type = t
			}
			if o, ok := raw.Lookup("options").DocumentOK(); ok {
				spec.Options = o
			}
			if spec.Type != "view" {
				icur, err := src.Database(db).Collection(name).Indexes().List(ctx)
				if err != nil {
					f.block("source: list the indexes of %s.%s: %v", db, name, err)
					return
				}
				if err := icur.All(ctx, &spec.Indexes); err != nil {
					f.block("source: list the indexes of %s.%s: %v", db, name, err)
					return
				}
			}
			specs = append(specs, spec)
		}
	}
	verdicts := map[mongosnap.Verdict]int{}
	for _, row := range mongosnap.Compatibility(flavor, version, specs) {
		verdicts[row.Verdict]++
		c.compatRow(f, row)
	}
	f.note("compatibility with %s %s: of the collections, views, options and indexes, %d as they are, %d adapted, %d skipped, %d refused",
		flavor, version, verdicts[mongosnap.AsIs], verdicts[mongosnap.Adapted], verdicts[mongosnap.Skipped], verdicts[mongosnap.Refused])
	if oplog != nil {
		for _, row := range oplog.Compat(flavor, version) {
			c.compatRow(f, row)
		}
	}
}

// compatRow adds a row of the compatibility table to f: rows not as is
// are listed, refused ones block, adapted and skipped ones block with
// Strict.
func (c Mongo) compatRow(f *Finding, row mongosnap.CompatRow) {
	switch row.Verdict {
	case mongosnap.AsIs:
		return
	case mongosnap.Refused:
		f.block("compatibility: %s", row)
	case mongosnap.Adapted, mongosnap.Skipped:
		if c.Strict {
			f.block("compatibility (--strict): %s", row)
		}
	}
	f.Compat = append(f.Compat, row.String())
}
