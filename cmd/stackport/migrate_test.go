package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/stackport/stackport/internal/lab"
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
	db := mongoClient(t, uri).Database("appsmith")
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
	source, moved := mongoClient(t, src), mongoClient(t, dst)
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
		"configuration/docker.env": "APPSMITH_DB_URL=" + src + "appsmith\nAPPSMITH_ENCRYPTION_PASSWORD=pw\nAPPSMITH_ENCRYPTION_SALT=salt\n",
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
	for _, want := range []string{"\nAPPSMITH_DB_URL=" + dst + "appsmith\n", "\nAPPSMITH_ENABLE_EMBEDDED_DB=0\n",
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
	if got := rawByID(t, mongoClient(t, dst).Database("appsmith").Collection("user")); len(got) != 50 {
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
	if _, err := mongoClient(t, dst).Database("appsmith").Collection("user").InsertOne(context.Background(), bson.D{{Key: "x", Value: 1}}); err != nil {
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
	if n := len(rawByID(t, mongoClient(t, dst).Database("appsmith").Collection("user"))); n != 1 {
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
	var conf []string
	for _, c := range memorystoreBlocked {
		conf = append(conf, fmt.Sprintf("rename-command %s \"\"", c))
	}
	_, rdst := lab.Redis(t, conf...)
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
	if len(res.Components) != 2 || res.Components[0].Result != "moved" || res.Components[1].Result != "verified" ||
		res.Components[0].Items != 501 || res.Components[1].Items != 6000 {
		t.Fatalf("result: %+v", res)
	}
	if err := runVerify(ctx, e.global(), verifyOptions{AgainstRedis: rdst, AgainstPostgres: ptarget}, res.Snapshot); err != nil {
		t.Fatalf("the targets against the migration's snapshot: %v", err)
	}
}
