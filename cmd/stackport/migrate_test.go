package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/livetest"
	"github.com/stackport/stackport/internal/treetest"
	"github.com/stackport/stackport/snapshot"
)

// seedMongo fills three Appsmith-like collections of uri's appsmith database.
func seedMongo(t *testing.T, uri string, n int) {
	t.Helper()
	var docs []any
	for i := range n {
		docs = append(docs, bson.D{{Key: "_id", Value: bson.NewObjectID()}, {Key: "n", Value: int32(i)},
			{Key: "name", Value: "page"}, {Key: "layout", Value: bson.D{{Key: "w", Value: 1.5}, {Key: "tags", Value: bson.A{"a", int64(2)}}}}})
	}
	db := lab.MongoClient(t, uri).Database("appsmith")
	for _, coll := range []string{"newPage", "newAction", "user"} {
		if _, err := db.Collection(coll).InsertMany(context.Background(), docs); err != nil {
			t.Fatal(err)
		}
	}
}

// migrateJSON runs migrate with --json and decodes its result.
func (e *testEnv) migrateJSON(ctx context.Context, opts migrateOptions) (migrateResult, error) {
	e.t.Helper()
	if opts.Source.Compression == "" {
		opts.Source.Compression = "zstd"
	}
	g := e.global()
	g.JSON = true
	err := runMigrate(ctx, g, opts)
	var res migrateResult
	if jerr := json.Unmarshal(e.stdout.Bytes(), &res); jerr != nil {
		e.t.Fatalf("migrate --json printed %q: %v (migrate: %v)", e.stdout.String(), jerr, err)
	}
	return res, err
}

// TestMigrateVolumeAndMongo moves a volume and a FerretDB into a folder and
// a second FerretDB (appsmith.* as appsmith_prod.*), with a snapshot of the
// run kept in a repository, and checks every file and document.
func TestMigrateVolumeAndMongo(t *testing.T) {
	ctx := context.Background()
	_, src := lab.Mongo(t)
	_, dst := lab.Mongo(t)
	seedMongo(t, src, 500)
	vol := treetest.Fixture(t, t.TempDir())
	target := filepath.Join(t.TempDir(), "stacks")
	e := &testEnv{t: t, repo: "file://" + t.TempDir() + "/repo"}

	res, err := e.migrateJSON(ctx, migrateOptions{
		Source: snapshotOptions{Volume: vol, Mongo: src, MongoParallel: 2, Tags: []string{"env=test"}},
		Target: restoreOptions{VolumeTo: target, MongoTo: dst, MongoNSFrom: "appsmith", MongoNSTo: "appsmith_prod"},
	})
	if err != nil {
		t.Fatalf("migrate: %v\n%s", err, e.stderr.String())
	}
	if !res.OK || len(res.Components) != 2 || !snapshot.ValidID(res.Snapshot) {
		t.Fatalf("result: %+v", res)
	}
	for _, c := range res.Components {
		if c.Result != "verified" || c.Items == 0 || c.Bytes == 0 {
			t.Errorf("%s: %+v", c.Kind, c)
		}
	}
	if mongo := res.Components[1]; mongo.Kind != "mongo" || mongo.Items != 1500 || mongo.Restored["documents"] != 1500 {
		t.Errorf("mongo: %+v", mongo)
	}

	owners := treetest.Options{Owners: os.Geteuid() == 0, Root: true}
	treetest.Compare(t, vol, target, owners)
	source, moved := lab.MongoClient(t, src), lab.MongoClient(t, dst)
	for _, coll := range []string{"newPage", "newAction", "user"} {
		want := rawByID(t, source.Database("appsmith").Collection(coll))
		got := rawByID(t, moved.Database("appsmith_prod").Collection(coll))
		if len(got) != len(want) {
			t.Fatalf("%s: %d documents, want %d", coll, len(got), len(want))
		}
		for k, w := range want {
			if !bytes.Equal(got[k], w) {
				t.Fatalf("%s: document %s differs", coll, k)
			}
		}
	}

	// The snapshot kept on the way is complete: it verifies, and restores
	// to the same tree.
	l := e.list()
	if len(l) != 1 || l[0].ID != res.Snapshot || l[0].Tags["migration"] == "" || l[0].Tags["env"] != "test" {
		t.Fatalf("list: %+v", l)
	}
	if err := e.verify(res.Snapshot); err != nil {
		t.Fatal(err)
	}
	again := filepath.Join(t.TempDir(), "again")
	if err := e.restore(res.Snapshot, again, restoreOptions{}); err != nil {
		t.Fatal(err)
	}
	treetest.Compare(t, vol, again, owners)
}

// TestMigrateFailingTarget: an unreachable MongoDB target fails the whole
// migration with an error naming it; the volume target is not created and
// no snapshot is committed.
func TestMigrateFailingTarget(t *testing.T) {
	_, src := lab.Mongo(t)
	seedMongo(t, src, 10)
	repoDir := filepath.Join(t.TempDir(), "repo")
	e := &testEnv{t: t, repo: "file://" + repoDir}
	target := filepath.Join(t.TempDir(), "stacks")
	// Hold the volume back until the target MongoDB was given up (after
	// 500 ms), so that it is stopped half way.
	e.onProgress = interruptAt(1, func() { time.Sleep(2 * time.Second) })
	res, err := e.migrateJSON(context.Background(), migrateOptions{
		Source: snapshotOptions{Volume: bigTree(t, 32), Mongo: src},
		Target: restoreOptions{VolumeTo: target, MongoTo: "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500&connectTimeoutMS=500"},
	})
	if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), "migrate: mongo: restore: mongo: cannot reach") {
		t.Fatalf("migrate: exit %d, %v", exitCode(err), err)
	}
	t.Logf("error seen by the operator: %v", err)
	if res.OK || res.Error == "" || res.Snapshot != "" || res.Components[0].Result != "cancelled" || res.Components[1].Result != "failed" {
		t.Errorf("result: %+v", res)
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the volume target was left behind: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(repoDir, "snapshots")); len(entries) != 0 {
		t.Errorf("the repository holds %v after a failed migration", entries)
	}
}

// TestMigrateSourceChanged: a file added to the volume during the move is
// missing in the target: exit 3, naming it.
func TestMigrateSourceChanged(t *testing.T) {
	vol := treetest.Fixture(t, t.TempDir())
	e := &testEnv{t: t}
	e.onProgress = interruptAt(1, func() { os.WriteFile(filepath.Join(vol, "late.txt"), []byte("written during the move"), 0o644) })
	res, err := e.migrateJSON(context.Background(), migrateOptions{
		Source: snapshotOptions{Volume: vol},
		Target: restoreOptions{VolumeTo: filepath.Join(t.TempDir(), "stacks")},
	})
	if exitCode(err) != 3 || !errors.Is(err, snapshot.ErrDiffers) || !strings.Contains(err.Error(), "late.txt: missing in the target") {
		t.Fatalf("migrate: exit %d, %v", exitCode(err), err)
	}
	if len(res.Components) != 1 || res.Components[0].Result != "differs" {
		t.Fatalf("result: %+v", res)
	}
}

// TestMigrateReportTable checks the human report on stderr.
func TestMigrateReportTable(t *testing.T) {
	vol := treetest.Fixture(t, t.TempDir())
	e := &testEnv{t: t}
	err := runMigrate(context.Background(), e.global(), migrateOptions{
		Source: snapshotOptions{Volume: vol},
		Target: restoreOptions{VolumeTo: filepath.Join(t.TempDir(), "stacks")},
	})
	if err != nil {
		t.Fatal(err)
	}
	out := e.stderr.String()
	if !strings.Contains(out, "COMPONENT  ITEMS  BYTES") || !strings.Contains(out, "verified") || e.stdout.Len() != 0 {
		t.Fatalf("stderr:\n%s\nstdout: %q", out, e.stdout.String())
	}
}

func TestMigrateUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"migrate"}, "nothing to snapshot"},
		{[]string{"migrate", "extra"}, "unknown command"},
		{[]string{"migrate", "--volume", dir}, "nothing to restore to"},
		{[]string{"migrate", "--volume", dir, "--mongo-to", "mongodb://127.0.0.1:1/"}, "the volume source has no target: give --volume-to"},
		{[]string{"migrate", "--volume", dir, "--volume-to", t.TempDir(), "--mongo-to", "mongodb://127.0.0.1:1/"}, "the mongo target has no source: give --mongo"},
		{[]string{"migrate", "--volume", dir, "--volume-to", filepath.Join(dir, "sub")}, "inside the source volume"},
		{[]string{"migrate", "--mongo", "mongodb://127.0.0.1:1/", "--mongo-to", "mongodb://127.0.0.1:1/"}, "--mongo-to is the source itself"},
		{[]string{"migrate", "--volume", dir, "--volume-to", t.TempDir(), "--mongo-ns-from", "a"}, "--mongo-ns-to"},
		{[]string{"migrate", "--volume", dir, "--volume-to", t.TempDir(), "--chown", "root"}, "--chown"},
		{[]string{"migrate", "--repo", "mem://", "--volume", dir, "--volume-to", t.TempDir(), "--compression", "lz4"}, "lz4"},
		{[]string{"migrate", "--profile", "appsmith", "--volume-to", t.TempDir()}, "--stack"},
		{[]string{"migrate", "--stack", dir, "--volume-to", t.TempDir()}, "--profile appsmith"},
		{[]string{"migrate", "--profile", "odoo", "--stack", dir}, "unknown profile"},
		{[]string{"migrate", "--profile", "appsmith", "--stack", dir, "--volume-to", t.TempDir()}, "configuration/docker.env"},
	} {
		cmd := newRootCommand()
		cmd.SetArgs(tc.args)
		cmd.SetOut(&bytes.Buffer{})
		cmd.SetErr(&bytes.Buffer{})
		t.Setenv("STACKPORT_REPO", "")
		err := cmd.Execute()
		if exitCode(err) != 2 || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("stackport %s: exit %d (%v), want 2 and %q", strings.Join(tc.args, " "), exitCode(err), err, tc.want)
		}
	}
}

// TestMigrateAppsmithProfile moves an Appsmith stack found by the profile
// (the volume without its raw database files and logs, the MongoDB of its
// docker.env) and writes the new container's environment.
func TestMigrateAppsmithProfile(t *testing.T) {
	_, src := lab.Mongo(t)
	_, dst := lab.Mongo(t)
	seedMongo(t, src, 50)
	stack := treetest.Fixture(t, t.TempDir())
	for name, data := range map[string]string{
		"configuration/docker.env": "APPSMITH_DB_URL=" + lab.MongoURI(src, "appsmith") + "\nAPPSMITH_ENCRYPTION_PASSWORD=pw\nAPPSMITH_ENCRYPTION_SALT=salt\n",
		"data/mongodb/WiredTiger":  "raw database file",
		"logs/backend/backend.log": "a log line",
	} {
		os.MkdirAll(filepath.Join(stack, filepath.Dir(name)), 0o755)
		if err := os.WriteFile(filepath.Join(stack, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	target := filepath.Join(t.TempDir(), "stacks")
	envOut := filepath.Join(t.TempDir(), "appsmith.env")
	e := &testEnv{t: t}
	res, err := e.migrateJSON(context.Background(), migrateOptions{
		Profile: "appsmith", Stack: stack, EnvOut: envOut,
		Target: restoreOptions{VolumeTo: target, MongoTo: dst},
	})
	if err != nil {
		t.Fatalf("migrate: %v\n%s", err, e.stderr.String())
	}
	if len(res.Components) != 2 || res.Components[0].Result != "verified" || res.Components[1].Result != "verified" || res.EnvFile != envOut {
		t.Fatalf("result: %+v", res)
	}
	for _, gone := range []string{"data/mongodb", "logs"} {
		if _, err := os.Lstat(filepath.Join(target, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s was moved: %v", gone, err)
		}
	}
	b, err := os.ReadFile(envOut)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\nAPPSMITH_DB_URL=" + lab.MongoURI(dst, "appsmith") + "\n", "\nAPPSMITH_ENABLE_EMBEDDED_DB=0\n",
		"\nAPPSMITH_ENCRYPTION_PASSWORD=pw\n", "\nAPPSMITH_ENCRYPTION_SALT=salt\n"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("env file lacks %q:\n%s", strings.TrimSpace(want), b)
		}
	}
	if fi, _ := os.Stat(envOut); fi.Mode().Perm() != 0o600 {
		t.Errorf("env file mode %v", fi.Mode())
	}
	if !strings.Contains(e.stderr.String(), "holds secrets") {
		t.Errorf("no warning about secrets:\n%s", e.stderr.String())
	}
	if got := rawByID(t, lab.MongoClient(t, dst).Database("appsmith").Collection("user")); len(got) != 50 {
		t.Errorf("target appsmith.user: %d documents", len(got))
	}
}

// TestMigrateAppsmithWithoutSecrets warns loudly when docker.env lacks the
// encryption values.
func TestMigrateAppsmithWithoutSecrets(t *testing.T) {
	stack := t.TempDir()
	os.MkdirAll(filepath.Join(stack, "configuration"), 0o755)
	os.WriteFile(filepath.Join(stack, "configuration", "docker.env"), []byte("APPSMITH_INSTANCE_NAME=x\n"), 0o600)
	e := &testEnv{t: t}
	err := runMigrate(context.Background(), e.global(), migrateOptions{Profile: "appsmith", Stack: stack,
		Target: restoreOptions{VolumeTo: filepath.Join(t.TempDir(), "stacks")}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.stderr.String(), "APPSMITH_ENCRYPTION_PASSWORD and APPSMITH_ENCRYPTION_SALT: the migrated instance could not decrypt") {
		t.Fatalf("no warning:\n%s", e.stderr.String())
	}
}

// TestMigratePlan: --plan finds what blocks the move (a non-empty volume
// target, target collections with documents, an unreachable target) without
// writing anything, and passes once --force and --drop are given.
func TestMigratePlan(t *testing.T) {
	_, src := lab.Mongo(t)
	_, dst := lab.Mongo(t)
	seedMongo(t, src, 20)
	if _, err := lab.MongoClient(t, dst).Database("appsmith").Collection("user").InsertOne(context.Background(), bson.D{{Key: "x", Value: 1}}); err != nil {
		t.Fatal(err)
	}
	vol := treetest.Fixture(t, t.TempDir())
	target := t.TempDir()
	os.WriteFile(filepath.Join(target, "keep.txt"), []byte("precious"), 0o644)
	e := &testEnv{t: t}
	opts := migrateOptions{Plan: true,
		Source: snapshotOptions{Volume: vol, Mongo: src},
		Target: restoreOptions{VolumeTo: target, MongoTo: dst},
	}
	err := runMigrate(context.Background(), e.global(), opts)
	out := e.stdout.String()
	if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), "2 problem(s) block") ||
		!strings.Contains(out, "volume: BLOCKS: target "+target+" is not empty: use --force") ||
		!strings.Contains(out, "mongo: BLOCKS: target appsmith.user already holds documents: use --drop") ||
		!strings.Contains(out, "mongo: source: FerretDB") {
		t.Fatalf("plan: %v\n%s", err, out)
	}
	if entries, _ := os.ReadDir(target); len(entries) != 1 {
		t.Errorf("the plan wrote into the target: %v", entries)
	}
	if n := len(rawByID(t, lab.MongoClient(t, dst).Database("appsmith").Collection("user"))); n != 1 {
		t.Errorf("the plan wrote into the target MongoDB: %d documents", n)
	}

	opts.Target.Force, opts.Target.Drop = true, true
	g := e.global()
	g.JSON = true
	if err := runMigrate(context.Background(), g, opts); err != nil {
		t.Fatalf("plan with --force --drop: %v\n%s", err, e.stdout.String())
	}
	var res planResult
	if err := json.Unmarshal(e.stdout.Bytes(), &res); err != nil || !res.OK || len(res.Components) != 2 ||
		res.Components[0].Items < 20 || res.Components[0].Bytes < 1<<20 || res.Components[1].Items != 60 {
		t.Fatalf("plan --json: %v %+v", err, res)
	}

	opts.Target.MongoTo = "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300"
	err = runMigrate(context.Background(), e.global(), opts)
	if err == nil || !strings.Contains(err.Error(), "mongo: target: mongo: cannot reach mongodb://127.0.0.1:1/") {
		t.Fatalf("plan with an unreachable target: %v", err)
	}
}

// TestMigrateRedisAndPostgres moves a Redis into a Memorystore-like Redis
// and a PostgreSQL into a database owned by a non-superuser, with a
// snapshot of the run against which the Redis target verifies.
func TestMigrateRedisAndPostgres(t *testing.T) {
	ctx := context.Background()
	_, rsrc := lab.Redis(t)
	_, rdst := lab.Redis(t, lab.Memorystore()...)
	opt, _ := goredis.ParseURL(rsrc)
	c := goredis.NewClient(opt)
	defer c.Close()
	for i := range 500 {
		c.Set(ctx, fmt.Sprintf("session:%d", i), strings.Repeat("x", i), time.Hour)
	}
	c.HSet(ctx, "hash", "a", "1", "b", "2")

	_, psrc := lab.Postgres(t)
	_, pdst := lab.Postgres(t)
	pgExec(t, psrc,
		`CREATE SCHEMA appsmith`,
		`CREATE TABLE appsmith.app (id serial PRIMARY KEY, name text NOT NULL, doc jsonb)`,
		`INSERT INTO appsmith.app (name, doc) SELECT 'app ' || g, jsonb_build_object('n', g) FROM generate_series(1, 3000) g`,
		`CREATE TABLE appsmith.page (id int PRIMARY KEY, app int REFERENCES appsmith.app)`,
		`INSERT INTO appsmith.page SELECT g, g FROM generate_series(1, 3000) g`)
	pgExec(t, pdst, `CREATE ROLE app LOGIN PASSWORD 'pw' NOSUPERUSER CREATEDB`, `CREATE DATABASE appdb OWNER app`)
	ptarget := strings.Replace(strings.Replace(pdst, "postgres@", "app:pw@", 1), "/postgres?", "/appdb?", 1)

	e := &testEnv{t: t, repo: "file://" + t.TempDir()}
	res, err := e.migrateJSON(ctx, migrateOptions{
		Source: snapshotOptions{Redis: rsrc, Postgres: psrc, PostgresParallel: 2},
		Target: restoreOptions{RedisTo: rdst, PostgresTo: ptarget},
	})
	if err != nil {
		t.Fatalf("migrate: %v\n%s", err, e.stderr.String())
	}
	if len(res.Components) != 2 || res.Components[0].Result != "verified" || res.Components[1].Result != "verified" ||
		res.Components[0].Items != 501 || res.Components[1].Items != 6000 {
		t.Fatalf("result: %+v", res)
	}
	if err := runVerify(ctx, e.global(), verifyOptions{AgainstRedis: rdst, AgainstPostgres: ptarget}, res.Snapshot); err != nil {
		t.Fatalf("the targets against the migration's snapshot: %v", err)
	}
}

// TestMigrateResume: a migration of a volume and a FerretDB whose last
// collection fails half way (a unique index in the target refuses a
// document) is run again: the collections loaded before are skipped after
// a check, the half-loaded one is dropped and loaded again, every document
// is there exactly once; the state is kept in the repository and the
// resumed run still keeps a complete snapshot. A third run moves nothing
// and only verifies.
func TestMigrateResume(t *testing.T) {
	ctx := context.Background()
	_, src := lab.Mongo(t)
	_, dst := lab.Mongo(t)
	source, moved := lab.MongoClient(t, src), lab.MongoClient(t, dst)
	counts := map[string]int{"a": 1200, "b": 1200, "c": 1200, "zz": 2500}
	for coll, n := range counts {
		var docs []any
		for i := range n {
			u := i
			if coll == "zz" && i == 2100 {
				u = 5 // a duplicate for the target's unique index
			}
			docs = append(docs, bson.D{{Key: "_id", Value: int32(i)}, {Key: "u", Value: int32(u)}, {Key: "s", Value: strings.Repeat(coll, i%50)}})
		}
		if _, err := source.Database("appsmith").Collection(coll).InsertMany(ctx, docs); err != nil {
			t.Fatal(err)
		}
	}
	// The fault: an empty zz in the target, with a unique index the
	// source's zz breaks in its third insert batch.
	unique := mongo.IndexModel{Keys: bson.D{{Key: "u", Value: 1}}, Options: options.Index().SetUnique(true)}
	if _, err := moved.Database("appsmith").Collection("zz").Indexes().CreateOne(ctx, unique); err != nil {
		t.Fatal(err)
	}
	vol := treetest.Fixture(t, t.TempDir())
	target := filepath.Join(t.TempDir(), "stacks")
	repoDir := filepath.Join(t.TempDir(), "repo")
	e := &testEnv{t: t, repo: "file://" + repoDir}
	opts := migrateOptions{
		Source: snapshotOptions{Volume: vol, Mongo: src, MongoParallel: 1}, // one insert batch at a time: a, b and c are loaded before zz fails
		Target: restoreOptions{VolumeTo: target, MongoTo: dst},
	}

	res, err := e.migrateJSON(ctx, opts)
	if err == nil || !strings.Contains(err.Error(), "appsmith.zz") {
		t.Fatalf("first run: %v\n%s", err, e.stderr.String())
	}
	if res.Components[1].Result != "failed" || res.Resumed || res.Snapshot != "" {
		t.Fatalf("first run: %+v", res)
	}
	volumeMoved := res.Components[0].Result == "moved"
	partial, err := moved.Database("appsmith").Collection("zz").CountDocuments(ctx, bson.D{})
	if err != nil || partial == 0 || partial >= 2500 {
		t.Fatalf("after the first run the target's zz holds %d documents (%v); want part of them", partial, err)
	}
	states, _ := filepath.Glob(filepath.Join(repoDir, "migrations", "*.json"))
	if len(states) != 1 {
		t.Fatalf("state objects in the repository: %v", states)
	}

	res, err = e.migrateJSON(ctx, opts)
	if err != nil {
		t.Fatalf("second run: %v\n%s", err, e.stderr.String())
	}
	mc := res.Components[1]
	if !res.OK || !res.Resumed || mc.Result != "verified" || res.Components[0].Result != "verified" || !strings.Contains(res.State, " migrations/") {
		t.Fatalf("second run: %+v", res)
	}
	if want := []string{"appsmith.a", "appsmith.b", "appsmith.c"}; !slices.Equal(mc.Skipped, want) {
		t.Errorf("second run skipped %v, want %v (notes %q)", mc.Skipped, want, mc.Resume)
	}
	notes := strings.Join(mc.Resume, "\n")
	for _, want := range []string{
		fmt.Sprintf("appsmith.zz: partly loaded by the interrupted run: dropped (%d documents), loaded again", partial),
		"3 of 4 collections (3600 documents) loaded by an earlier run, with as many documents in the source and the target: skipped",
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	// Only zz was written; the snapshot of the resumed run holds all.
	if mc.Restored["documents"] != 2500 || mc.Dumped["documents"] != 6100 {
		t.Errorf("second run: restored %d documents, dumped %d", mc.Restored["documents"], mc.Dumped["documents"])
	}
	if vc := res.Components[0]; volumeMoved && (!slices.Equal(vc.Skipped, []string{"volume"}) || !strings.Contains(strings.Join(vc.Resume, ""), "moved by an earlier run")) {
		t.Errorf("volume moved by the first run, not skipped by the second: %+v", vc)
	}
	for coll, n := range counts {
		want := rawByID(t, source.Database("appsmith").Collection(coll))
		got := rawByID(t, moved.Database("appsmith").Collection(coll))
		count, err := moved.Database("appsmith").Collection(coll).CountDocuments(ctx, bson.D{})
		if err != nil || int(count) != n || len(got) != n {
			t.Fatalf("%s: %d documents (%d ids, %v), want %d", coll, count, len(got), err, n)
		}
		for k, w := range want {
			if !bytes.Equal(got[k], w) {
				t.Fatalf("%s: document %s differs", coll, k)
			}
		}
	}
	treetest.Compare(t, vol, target, treetest.Options{Owners: os.Geteuid() == 0, Root: true})
	if err := e.verify(res.Snapshot); err != nil {
		t.Fatal(err)
	}
	again := filepath.Join(t.TempDir(), "again")
	if err := e.restore(res.Snapshot, again, restoreOptions{}); err != nil {
		t.Fatal(err)
	}
	treetest.Compare(t, vol, again, treetest.Options{Owners: os.Geteuid() == 0, Root: true})

	// Complete: a third run writes nothing and verifies everything.
	res, err = e.migrateJSON(ctx, opts)
	if err != nil {
		t.Fatalf("third run: %v\n%s", err, e.stderr.String())
	}
	for _, c := range res.Components {
		if c.Result != "verified" || c.Restored["documents"] != 0 || c.Items != 0 || len(c.Skipped) == 0 {
			t.Errorf("third run: %s: %+v", c.Kind, c)
		}
	}
	if got := res.Components[1].Skipped; len(got) != 4 {
		t.Errorf("third run skipped %v", got)
	}
}

// TestMigrateStateKey: the key of a migration ignores passwords (a new
// password resumes the same migration) and the state's description holds
// none.
func TestMigrateStateKey(t *testing.T) {
	for in, want := range map[string]string{
		"mongodb://u:p%40ss@h1:27017,h2:27017/?authSource=admin&tlsCertificateKeyFilePassword=x": "mongodb://u:REDACTED@h1:27017,h2:27017/?authSource=admin&tlsCertificateKeyFilePassword=REDACTED",
		"host=db user=app password='s e' dbname=x":                                               "host=db user=app password=REDACTED dbname=x",
		"rediss://:AUTH@10.0.0.3:6378":                                                           "rediss://:REDACTED@10.0.0.3:6378",
		"postgres://app@db/appdb?sslmode=require":                                                "postgres://app@db/appdb?sslmode=require",
	} {
		if got := withoutSecrets(in); got != want {
			t.Errorf("withoutSecrets(%q) = %q, want %q", in, got, want)
		}
	}
	opts := func(mongoTo string) migrateOptions {
		return migrateOptions{Source: snapshotOptions{Volume: "/a", Mongo: "mongodb://u:one@src/"}, Target: restoreOptions{VolumeTo: "/b", MongoTo: mongoTo}}
	}
	k1, about := opts("mongodb://u:one@dst/").key()
	k2, _ := opts("mongodb://u:two@dst/").key()
	k3, _ := opts("mongodb://u:one@other/").key()
	if k1 != k2 || k1 == k3 || strings.Contains(about, "one") || !strings.Contains(about, "mongo mongodb://u:REDACTED@src/ to mongodb://u:REDACTED@dst/") {
		t.Errorf("keys %s %s %s, about %q", k1, k2, k3, about)
	}
}

// TestMigrateRerunVolume: without a repository the state is kept next to
// the volume target; a second run skips the volume after a check and says
// so in the report.
func TestMigrateRerunVolume(t *testing.T) {
	vol := treetest.Fixture(t, t.TempDir())
	parent := t.TempDir()
	opts := migrateOptions{Source: snapshotOptions{Volume: vol}, Target: restoreOptions{VolumeTo: filepath.Join(parent, "stacks")}}
	e := &testEnv{t: t}
	if err := runMigrate(context.Background(), e.global(), opts); err != nil {
		t.Fatal(err)
	}
	key, _ := opts.key()
	state := filepath.Join(parent, ".stacks.stackport-migrate-"+key+".json")
	if _, err := os.Stat(state); err != nil {
		t.Fatalf("no state next to the target: %v", err)
	}
	if err := runMigrate(context.Background(), e.global(), opts); err != nil {
		t.Fatalf("second run: %v\n%s", err, e.stderr.String())
	}
	out := e.stderr.String()
	for _, want := range []string{"resumed: an earlier run left the state " + state, "volume: moved by an earlier run: the target's", "match the source by name, type and size: skipped", "verified"} {
		if !strings.Contains(out, want) {
			t.Errorf("the report lacks %q:\n%s", want, out)
		}
	}
}

// TestMigrateMongoWithWriters moves a replica set while a writer keeps
// writing (during the copy and the check): the oplog captured during the
// copy is replayed into FerretDB (no applyOps), the target is at one
// instant of the writer (checked by plain queries), and the check leaves
// out what the source changed after that instant. Then the same renamed,
// with --drop over a non-empty target and the DocumentDB flavor forced.
func TestMigrateMongoWithWriters(t *testing.T) {
	ctx := context.Background()
	_, src := lab.Mongo(t)
	livetest.SeedMongo(t, ctx, lab.MongoClient(t, src).Database(livetest.MongoDB))
	w := livetest.StartMongoWriter(t, src)
	w.WaitRounds(t, 20)

	run := func(t *testing.T, target restoreOptions, db string) {
		e := &testEnv{t: t}
		res, err := e.migrateJSON(ctx, migrateOptions{Source: snapshotOptions{Mongo: src, MongoParallel: 2}, Target: target})
		if err != nil {
			t.Fatalf("migrate: %v\n%s", err, e.stderr.String())
		}
		if len(res.Components) != 1 || res.Components[0].Result != "verified" {
			t.Fatalf("result: %+v", res)
		}
		if !strings.Contains(e.stderr.String(), "left out of the check") {
			t.Errorf("the check does not say that it left out what the writer changed after the copy:\n%s", e.stderr.String())
		}
		last := livetest.CheckMongo(t, ctx, lab.MongoClient(t, target.MongoTo).Database(db))
		if now := w.Rounds.Load(); last >= now {
			t.Errorf("the target is at round %d, the writer at %d: the check ran without writes after the copy", last, now)
		}
		t.Logf("target at round %d of the writer, %d rounds by now", last, w.Rounds.Load())
	}
	t.Run("plain", func(t *testing.T) {
		_, dst := lab.Mongo(t)
		run(t, restoreOptions{MongoTo: dst}, livetest.MongoDB)
	})
	t.Run("renamed, drop, documentdb", func(t *testing.T) {
		_, dst := lab.Mongo(t)
		if _, err := lab.MongoClient(t, dst).Database("pit_prod").Collection("ins").InsertOne(ctx, bson.D{{Key: "_id", Value: int64(-1)}}); err != nil {
			t.Fatal(err)
		}
		run(t, restoreOptions{MongoTo: dst, MongoNSFrom: livetest.MongoDB, MongoNSTo: "pit_prod", Drop: true, MongoFlavor: "documentdb"}, "pit_prod")
	})
	w.Halt(t)
}
