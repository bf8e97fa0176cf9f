package migrate_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/treetest"
	"github.com/stackport/stackport/migrate"
	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/snapshot/volume"
	"github.com/stackport/stackport/storage"
)

func volumePair(src, dst string) migrate.Pair {
	return migrate.Pair{
		Kind:     "volume",
		Dumper:   &volume.Dumper{Dir: src},
		Restorer: &volume.Restorer{Dir: dst},
		Check:    migrate.Volume{Source: src, Target: dst}.Check,
	}
}

func openRepo(t *testing.T) *storage.Repo {
	t.Helper()
	repo, err := storage.Open(context.Background(), "file://"+t.TempDir()+"/repo", storage.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { repo.Close() })
	return repo
}

func newTee(t *testing.T, repo *storage.Repo) *snapshot.Writer {
	t.Helper()
	w, err := snapshot.NewWriter(context.Background(), repo, snapshot.Options{Tags: map[string]string{"migration": "test"}})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestRunVolumeWithTee moves a volume into a new folder, keeps a snapshot
// of it on the way, and restores that snapshot to the same tree.
func TestRunVolumeWithTee(t *testing.T) {
	ctx := context.Background()
	src := treetest.Fixture(t, t.TempDir())
	dst := filepath.Join(t.TempDir(), "target")
	repo := openRepo(t)
	var progress int64
	rep, err := migrate.Run(ctx, []migrate.Pair{volumePair(src, dst)}, migrate.Options{
		Tee: newTee(t, repo), Progress: func(n int64) { progress += n },
	})
	if err != nil {
		t.Fatal(err)
	}
	treetest.Compare(t, src, dst, treetest.Options{Owners: os.Geteuid() == 0, Root: true})
	c := rep.Components[0]
	if c.Result != migrate.ResultVerified || c.Items < 20 || c.Bytes < 1<<20 || c.Bytes != progress || c.Duration <= 0 {
		t.Errorf("report: %+v (progress %d)", c, progress)
	}
	if c.Dumped["files"] != c.Restored["files"] || c.Restored["files"] == 0 {
		t.Errorf("dumped %v, restored %v", c.Dumped, c.Restored)
	}

	m, err := snapshot.Load(ctx, repo, snapshot.Latest)
	if err != nil || m.ID != rep.Snapshot || m.Tags["migration"] != "test" {
		t.Fatalf("tee snapshot: %v, %+v; report says %q", err, m, rep.Snapshot)
	}
	if err := snapshot.Verify(ctx, repo, m, func(string) snapshot.Restorer { return volume.Verifier{} }, snapshot.ReadOptions{}); err != nil {
		t.Fatal(err)
	}
	in, err := snapshot.OpenComponent(ctx, repo, m, "volume", snapshot.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	again := filepath.Join(t.TempDir(), "again")
	if _, err := (&volume.Restorer{Dir: again}).Restore(ctx, in); err != nil {
		t.Fatal(err)
	}
	treetest.Compare(t, src, again, treetest.Options{Owners: os.Geteuid() == 0, Root: true})
}

// failingRestorer refuses at once, as an unreachable target would.
type failingRestorer struct{}

func (failingRestorer) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	return nil, errors.New("target unreachable")
}

// TestRunFailureStopsEverything: one failing target stops the others, the
// volume target is left as it was and the tee snapshot is not committed.
func TestRunFailureStopsEverything(t *testing.T) {
	src := bigTree(t, 64)
	dst := t.TempDir()
	os.WriteFile(filepath.Join(dst, "keep.txt"), []byte("precious"), 0o644)
	vol := volumePair(src, dst)
	vol.Restorer = &volume.Restorer{Dir: dst, Force: true}
	repo := openRepo(t)
	rep, err := migrate.Run(context.Background(), []migrate.Pair{
		vol,
		{Kind: "other", Dumper: &volume.Dumper{Dir: src}, Restorer: failingRestorer{}},
	}, migrate.Options{Tee: newTee(t, repo)})
	if err == nil || !strings.Contains(err.Error(), "migrate: other: restore: target unreachable") {
		t.Fatalf("Run: %v; want the failing target named", err)
	}
	if errors.Is(err, snapshot.ErrPipeClosed) {
		t.Errorf("the error is a consequence, not the cause: %v", err)
	}
	if r := rep.Components[1].Result; r != migrate.ResultFailed {
		t.Errorf("failing component: %s", r)
	}
	if r := rep.Components[0].Result; r != migrate.ResultCancelled {
		t.Errorf("volume: %s, want cancelled (%v)", r, rep.Components[0].Err)
	}
	if entries, _ := os.ReadDir(dst); len(entries) != 1 || entries[0].Name() != "keep.txt" {
		t.Errorf("target after a failed migration: %v", entries)
	}
	if _, err := snapshot.Load(context.Background(), repo, snapshot.Latest); !errors.Is(err, snapshot.ErrNotFound) {
		t.Errorf("a snapshot was committed: %v", err)
	}
	if rep.Snapshot != "" {
		t.Errorf("report names snapshot %s", rep.Snapshot)
	}
}

func TestRunRejectsBadPairs(t *testing.T) {
	d, r := &volume.Dumper{Dir: "."}, &volume.Restorer{Dir: "x"}
	for name, pairs := range map[string][]migrate.Pair{
		"none":      nil,
		"no target": {{Kind: "volume", Dumper: d}},
		"twice":     {{Kind: "volume", Dumper: d, Restorer: r}, {Kind: "volume", Dumper: d, Restorer: r}},
	} {
		if _, err := migrate.Run(context.Background(), pairs, migrate.Options{}); err == nil || !strings.HasPrefix(err.Error(), "migrate: ") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// bigTree writes mib MiB of poorly compressible data, so that a move takes
// a moment.
func bigTree(t *testing.T, mib int) string {
	dir := t.TempDir()
	buf := make([]byte, mib<<20)
	x := uint64(0x9E3779B97F4A7C15)
	for i := range buf {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		buf[i] = byte(x)
	}
	if err := os.WriteFile(filepath.Join(dir, "big.bin"), buf, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestVolumeCheckFindsDifferences(t *testing.T) {
	src := treetest.Fixture(t, t.TempDir())
	os.MkdirAll(filepath.Join(src, "logs"), 0o755)
	os.WriteFile(filepath.Join(src, "logs", "x.log"), []byte("left out"), 0o644)
	dst := filepath.Join(t.TempDir(), "target")
	pair := volumePair(src, dst)
	pair.Dumper = &volume.Dumper{Dir: src, Exclude: []string{"logs"}}
	check := migrate.Volume{Source: src, Target: dst, Exclude: []string{"logs"}}
	pair.Check = check.Check
	if _, err := migrate.Run(context.Background(), []migrate.Pair{pair}, migrate.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := check.Check(context.Background()); err != nil {
		t.Fatalf("the excluded folder counts as a difference: %v", err)
	}
	// Each change must be found, named.
	for _, tc := range []struct {
		change func()
		want   string
	}{
		{func() { os.WriteFile(filepath.Join(dst, "empty.txt"), []byte("x"), 0o644) }, "empty.txt: content differs"},
		{func() { os.Chmod(filepath.Join(dst, "readonly.txt"), 0o644) }, "readonly.txt: mode -rw-r--r--, source -r--r--r--"},
		{func() { os.Chtimes(filepath.Join(dst, "random.bin"), time.Now(), time.Now()) }, "random.bin: mtime differs"},
		{func() { os.Remove(filepath.Join(dst, "dangling")) }, "dangling: missing in the target"},
		{func() { os.WriteFile(filepath.Join(dst, "new.txt"), nil, 0o644) }, "new.txt: only in the target"},
		{func() {
			os.Remove(filepath.Join(dst, "abs-link"))
			os.Symlink("/elsewhere", filepath.Join(dst, "abs-link"))
		},
			`abs-link: symlink to "/elsewhere", source "/etc/hostname"`},
	} {
		tc.change()
		err := check.Check(context.Background())
		if !errors.Is(err, snapshot.ErrDiffers) || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("want %q in %v", tc.want, err)
		}
	}
}

// TestMongoCheck compares two FerretDBs: equal after the same inserts in
// another order and under a renamed database, different after one change.
func TestMongoCheck(t *testing.T) {
	ctx := context.Background()
	_, srcURI := lab.Mongo(t)
	_, dstURI := lab.Mongo(t)
	src, dst := lab.MongoClient(t, srcURI), lab.MongoClient(t, dstURI)
	var docs []any
	for i := range 300 {
		docs = append(docs, bson.D{{Key: "_id", Value: int32(i)}, {Key: "v", Value: bson.A{"x", float64(i) / 3}}})
	}
	reversed := make([]any, len(docs))
	for i, d := range docs {
		reversed[len(docs)-1-i] = d
	}
	if _, err := src.Database("app").Collection("pages").InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.Database("app_prod").Collection("pages").InsertMany(ctx, reversed); err != nil {
		t.Fatal(err)
	}
	check := migrate.Mongo{Source: srcURI, Target: dstURI, NSFrom: "app", NSTo: "app_prod"}
	if err := check.Check(ctx); err != nil {
		t.Fatal(err)
	}
	pages := dst.Database("app_prod").Collection("pages")
	if _, err := pages.UpdateOne(ctx, bson.D{{Key: "_id", Value: int32(7)}}, bson.D{{Key: "$set", Value: bson.D{{Key: "v", Value: "changed"}}}}); err != nil {
		t.Fatal(err)
	}
	if err := check.Check(ctx); !errors.Is(err, snapshot.ErrDiffers) || !strings.Contains(err.Error(), "app_prod.pages: the documents differ") {
		t.Fatalf("after a change: %v", err)
	}
	if _, err := pages.DeleteOne(ctx, bson.D{{Key: "_id", Value: int32(8)}}); err != nil {
		t.Fatal(err)
	}
	if err := check.Check(ctx); !errors.Is(err, snapshot.ErrDiffers) || !strings.Contains(err.Error(), "299 documents, source 300") {
		t.Fatalf("after a delete: %v", err)
	}
}
