package migrate_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	goredis "github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/treetest"
	"github.com/stackport/stackport/migrate"
	mongosnap "github.com/stackport/stackport/snapshot/mongo"
	"github.com/stackport/stackport/snapshot/postgres"
	"github.com/stackport/stackport/snapshot/redis"
	"github.com/stackport/stackport/snapshot/volume"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func journal(t *testing.T, path string) *migrate.Journal {
	t.Helper()
	j, err := migrate.OpenJournal(context.Background(), migrate.FileStore(path), migrate.Key("test"), "test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func mongoPair(src, dst string) migrate.Pair {
	return migrate.Pair{
		Kind:     "mongo",
		Dumper:   &mongosnap.Dumper{URI: src, Parallel: 1, Log: quiet},
		Restorer: &mongosnap.Restorer{URI: dst, Parallel: 1, Log: quiet},
		Check:    migrate.Mongo{Source: src, Target: dst}.Check,
	}
}

func count(t *testing.T, c *mongo.Collection) int64 {
	t.Helper()
	n, err := c.CountDocuments(context.Background(), bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMigrateResumeAfterCancel interrupts a migration of a volume and a
// FerretDB (as SIGINT would) once three of six collections are loaded and
// while the volume is half way, leaves a staging folder in the volume
// target as a killed run would, and runs it again: the three collections
// are skipped after a check, the others loaded (the half-loaded one
// dropped first), the volume moved in full; every document is there once.
// A third run only verifies.
func TestMigrateResumeAfterCancel(t *testing.T) {
	ctx := context.Background()
	_, srcURI := lab.Mongo(t)
	_, dstURI := lab.Mongo(t)
	src, dst := lab.MongoClient(t, srcURI), lab.MongoClient(t, dstURI)
	colls := []string{"c1", "c2", "c3", "c4", "c5", "c6"}
	for _, coll := range colls {
		var docs []any
		for i := range 1500 {
			docs = append(docs, bson.D{{Key: "_id", Value: fmt.Sprintf("%s-%d", coll, i)}, {Key: "v", Value: bson.A{int32(i), "x"}}})
		}
		if _, err := src.Database("app").Collection(coll).InsertMany(ctx, docs); err != nil {
			t.Fatal(err)
		}
	}
	vol := bigTree(t, 8)
	target := filepath.Join(t.TempDir(), "stacks")
	state := filepath.Join(t.TempDir(), "state.json")

	// The first run: the volume's source waits for the cancel; the cancel
	// comes once c3 is loaded.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	vp := volumePair(vol, target)
	vp.Dumper = &volume.Dumper{Dir: vol, Progress: func(int64) { <-cctx.Done() }}
	mp := mongoPair(srcURI, dstURI)
	mp.Restorer.(*mongosnap.Restorer).Loaded = func(db, coll string, docs int64) {
		if coll == "c3" {
			cancel()
		}
	}
	rep, err := migrate.Run(cctx, []migrate.Pair{vp, mp}, migrate.Options{Journal: journal(t, state)})
	if !errors.Is(err, context.Canceled) || rep.Resumed {
		t.Fatalf("first run: %v, %+v", err, rep)
	}
	for _, coll := range colls[:3] {
		if n := count(t, dst.Database("app").Collection(coll)); n != 1500 {
			t.Fatalf("first run: %s holds %d documents", coll, n)
		}
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the interrupted volume move left its target: %v", err)
	}
	// A killed run leaves its staging folder in the target.
	os.MkdirAll(filepath.Join(target, ".stackport-restore-123", "big.bin"), 0o755)
	// Half of c4 in the target, as if the cancel had come later.
	var half []any
	for i := range 1000 {
		half = append(half, bson.D{{Key: "_id", Value: fmt.Sprintf("c4-%d", i)}, {Key: "v", Value: bson.A{int32(i), "x"}}})
	}
	if _, err := dst.Database("app").Collection("c4").InsertMany(ctx, half); err != nil {
		t.Fatal(err)
	}

	rep, err = migrate.Run(ctx, []migrate.Pair{volumePair(vol, target), mongoPair(srcURI, dstURI)}, migrate.Options{Journal: journal(t, state)})
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	v, m := rep.Components[0], rep.Components[1]
	if !rep.Resumed || v.Result != migrate.ResultVerified || m.Result != migrate.ResultVerified || len(v.Skipped) != 0 {
		t.Fatalf("second run: %+v", rep)
	}
	if want := []string{"app.c1", "app.c2", "app.c3"}; !slices.Equal(m.Skipped, want) {
		t.Errorf("skipped %v, want %v", m.Skipped, want)
	}
	notes := strings.Join(append(v.Resume, m.Resume...), "\n")
	for _, want := range []string{
		"removed .stackport-restore-123, the staging folder of the interrupted run",
		"app.c4: partly loaded by the interrupted run: dropped (1000 documents), loaded again",
		"3 of 6 collections (4500 documents) loaded by an earlier run",
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	if m.Dumped["documents"] != 4500 || m.Restored["documents"] != 4500 {
		t.Errorf("second run: dumped %d documents, restored %d; want the 4500 of c4, c5 and c6", m.Dumped["documents"], m.Restored["documents"])
	}
	for _, coll := range colls {
		if n := count(t, dst.Database("app").Collection(coll)); n != 1500 {
			t.Errorf("%s holds %d documents", coll, n)
		}
	}
	treetest.Compare(t, vol, target, treetest.Options{Owners: os.Geteuid() == 0, Root: true})

	rep, err = migrate.Run(ctx, []migrate.Pair{volumePair(vol, target), mongoPair(srcURI, dstURI)}, migrate.Options{Journal: journal(t, state)})
	if err != nil {
		t.Fatalf("third run: %v", err)
	}
	for _, c := range rep.Components {
		if c.Result != migrate.ResultVerified || c.Items != 0 || c.Bytes != 0 || len(c.Skipped) == 0 {
			t.Errorf("third run: %s: %+v", c.Kind, c)
		}
	}
	if s := journal(t, state).State(); !s.Complete || s.Runs != 3 || len(s.Components["mongo"].Units) != 6 {
		t.Errorf("state: %+v", s)
	}

	// A change in the target shows in the quick check: the collection is
	// loaded again.
	if _, err := dst.Database("app").Collection("c2").DeleteOne(ctx, bson.D{{Key: "_id", Value: "c2-7"}}); err != nil {
		t.Fatal(err)
	}
	rep, err = migrate.Run(ctx, []migrate.Pair{volumePair(vol, target), mongoPair(srcURI, dstURI)}, migrate.Options{Journal: journal(t, state)})
	if err != nil {
		t.Fatalf("fourth run: %v", err)
	}
	if m := rep.Components[1]; m.Restored["documents"] != 1500 || !strings.Contains(strings.Join(m.Resume, "\n"), "app.c2: loaded by an earlier run, but the target holds 1499 documents, it loaded 1500: dropped (1499 documents), loaded again") {
		t.Errorf("fourth run: %+v", m)
	}
}

// TestMigrateResumePostgres: a PostgreSQL moved by an earlier run is
// skipped when its tables hold as many rows as the source's, and moved
// again, replacing the target's schemas, when they do not.
func TestMigrateResumePostgres(t *testing.T) {
	ctx := context.Background()
	_, src := lab.Postgres(t)
	_, dst := lab.Postgres(t)
	exec := func(url string, sql ...string) {
		t.Helper()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		for _, s := range sql {
			if _, err := conn.Exec(ctx, s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
	}
	exec(src, `CREATE TABLE app (id int PRIMARY KEY, name text)`, `INSERT INTO app SELECT g, 'app ' || g FROM generate_series(1, 500) g`)
	pair := func() migrate.Pair {
		return migrate.Pair{Kind: "postgres",
			Dumper:   &postgres.Dumper{URL: src, Log: quiet},
			Restorer: &postgres.Restorer{URL: dst, Log: quiet},
			Check: func(ctx context.Context) error {
				want, err := postgres.Digest(ctx, src, nil)
				if err != nil {
					return err
				}
				got, err := postgres.Digest(ctx, dst, nil)
				if err != nil {
					return err
				}
				return postgres.Compare(want, got)
			}}
	}
	state := filepath.Join(t.TempDir(), "state.json")
	for i, want := range []struct {
		skipped bool
		note    string
	}{
		{false, ""},
		{true, "moved by an earlier run: the target's 1 tables hold as many rows as the source's (500): skipped"},
		{false, `the target moved by an earlier run no longer matches the source ("public"."app" has 499 rows, the source 500): moving it again, replacing its schemas`},
	} {
		if i == 2 {
			exec(dst, `DELETE FROM app WHERE id = 7`)
		}
		rep, err := migrate.Run(ctx, []migrate.Pair{pair()}, migrate.Options{Journal: journal(t, state)})
		c := rep.Components[0]
		if err != nil || c.Result != migrate.ResultVerified || (len(c.Skipped) > 0) != want.skipped || !strings.Contains(strings.Join(c.Resume, "\n"), want.note) {
			t.Fatalf("run %d: %v, %+v", i+1, err, c)
		}
	}
}

// TestMigrateResumeRedis interrupts a Redis migration when it begins its
// second database, with part of that database's keys in the target, and
// runs it again: the first database is skipped, the keys of the second
// replace those written before (they are not refused), the third is
// written; a third run skips everything.
func TestMigrateResumeRedis(t *testing.T) {
	ctx := context.Background()
	_, srcURL := lab.Redis(t)
	_, dstURL := lab.Redis(t)
	client := func(url string, db int) *goredis.Client {
		opt, err := goredis.ParseURL(url)
		if err != nil {
			t.Fatal(err)
		}
		opt.DB = db
		c := goredis.NewClient(opt)
		t.Cleanup(func() { c.Close() })
		return c
	}
	sizes := []int{500, 300, 200}
	for db, n := range sizes {
		c := client(srcURL, db)
		for i := range n {
			if err := c.Set(ctx, fmt.Sprintf("k%d", i), fmt.Sprintf("db%d value %d", db, i), 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	pair := func() migrate.Pair {
		return migrate.Pair{Kind: "redis", Dumper: &redis.Dumper{URL: srcURL, Log: quiet}, Restorer: &redis.Restorer{URL: dstURL, Log: quiet}}
	}
	state := filepath.Join(t.TempDir(), "state.json")

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p := pair()
	p.Restorer.(*redis.Restorer).Starting = func(_ context.Context, db int) error {
		if db == 1 {
			cancel()
		}
		return nil
	}
	if _, err := migrate.Run(cctx, []migrate.Pair{p}, migrate.Options{Journal: journal(t, state)}); !errors.Is(err, context.Canceled) {
		t.Fatalf("first run: %v", err)
	}
	// Part of database 1, as if the cancel had come later.
	for i := range 100 {
		client(dstURL, 1).Set(ctx, fmt.Sprintf("k%d", i), fmt.Sprintf("db1 value %d", i), 0)
	}

	rep, err := migrate.Run(ctx, []migrate.Pair{pair()}, migrate.Options{Journal: journal(t, state)})
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	c := rep.Components[0]
	notes := strings.Join(c.Resume, "\n")
	if !slices.Equal(c.Skipped, []string{"db0"}) || c.Restored["keys"] != 500 || c.Dumped["keys"] != 500 ||
		!strings.Contains(notes, "database 1: partly written by the interrupted run (the target's database 1 holds 100 keys): written again") ||
		!strings.Contains(notes, "1 of 3 databases (500 keys) written by an earlier run") {
		t.Fatalf("second run: %+v", c)
	}
	for db, n := range sizes {
		c := client(dstURL, db)
		if got := c.DBSize(ctx).Val(); got != int64(n) {
			t.Errorf("db %d: %d keys, want %d", db, got, n)
		}
		for i := range n {
			if v := c.Get(ctx, fmt.Sprintf("k%d", i)).Val(); v != fmt.Sprintf("db%d value %d", db, i) {
				t.Fatalf("db %d: k%d = %q", db, i, v)
			}
		}
	}

	rep, err = migrate.Run(ctx, []migrate.Pair{pair()}, migrate.Options{Journal: journal(t, state)})
	if c := rep.Components[0]; err != nil || c.Result != migrate.ResultSkipped || len(c.Skipped) != 3 || c.Items != 0 {
		t.Fatalf("third run: %v, %+v", err, c)
	}
}
