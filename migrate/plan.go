package migrate

import (
	"context"
	"errors"
	"fmt"
	mongosnap "github.com/stackport/stackport/snapshot/mongo"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// A Finding is what Plan found out about one component, writing nothing.
type Finding struct {
	Kind     string   `json:"kind"`
	Items    int64    `json:"items"`    // in the source, as Component.Items counts them; -1: unknown
	Bytes    int64    `json:"bytes"`    // in the source; -1: unknown
	Notes    []string `json:"notes"`    // worth knowing: versions, free space
	Blockers []string `json:"blockers"` // what would make the move fail
}

func (f *Finding) note(format string, args ...any) {
	f.Notes = append(f.Notes, fmt.Sprintf(format, args...))
}

func (f *Finding) block(format string, args ...any) {
	f.Blockers = append(f.Blockers, fmt.Sprintf(format, args...))
}

// Plan inspects every pair concurrently with its Plan function and returns
// the findings in the order of the pairs. A pair without one is reported
// as not inspected, which blocks nothing.
func Plan(ctx context.Context, pairs []Pair) []Finding {
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
	for i, p := range pairs {
		findings[i].Kind = p.Kind
	}
	return findings
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
	switch entries, err := os.ReadDir(v.Target); {
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
		f.block("target %s is not empty: use --force to replace its content", v.Target)
	case len(entries) > 0:
		f.note("target %s is not empty: its content will be replaced (--force)", v.Target)
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
// documents and bytes of the source databases, and target collections that
// already hold documents (which block unless Drop).
func (c Mongo) Plan(ctx context.Context) Finding {
	f := Finding{Items: -1, Bytes: -1}
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
				f.block("target %s.%s already holds documents: use --drop to replace them", target, coll)
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
