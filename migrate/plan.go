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
		f.Throughput = Throughput[p.Kind]
		if f.Throughput == 0 {
			f.Throughput = DefaultThroughput
		}
		if f.Bytes > 0 {
			f.Estimate = time.Duration(float64(f.Bytes) / (f.Throughput * (1 << 20)) * float64(time.Second)).Round(time.Second)
			longest = max(longest, f.Estimate)
		}
	}
	rep.Estimate = 2 * longest
	return rep
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
// already hold documents (which block unless Drop), and the target's
// flavor with the compatibility table of the source's collections, views
// and indexes (see planCompat).
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
	defer func() {
		if dst != nil && len(f.Blockers) == 0 {
			c.planCompat(ctx, &f, src, dst)
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
	return f
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
// mongo.Compatibility). Refused items block the move; adapted and skipped
// ones block it with Strict.
func (c Mongo) planCompat(ctx context.Context, f *Finding, src, dst *mongo.Client) {
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
		switch row.Verdict {
		case mongosnap.AsIs:
			continue
		case mongosnap.Refused:
			f.block("compatibility: %s", row)
		case mongosnap.Adapted, mongosnap.Skipped:
			if c.Strict {
				f.block("compatibility (--strict): %s", row)
			}
		}
		f.Compat = append(f.Compat, row.String())
	}
	f.note("compatibility with %s %s: of the collections, views, options and indexes, %d as they are, %d adapted, %d skipped, %d refused",
		flavor, version, verdicts[mongosnap.AsIs], verdicts[mongosnap.Adapted], verdicts[mongosnap.Skipped], verdicts[mongosnap.Refused])
}
