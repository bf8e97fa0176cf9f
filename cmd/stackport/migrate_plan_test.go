package main

import (
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
)

// TestMigratePlanStack plans the move of a whole stack (volume, FerretDB,
// Redis, PostgreSQL) into a folder, a FerretDB, a Memorystore-like Redis
// and a database of a role that is not a superuser: nothing blocks, the
// output holds the versions, flavors, compatibility, Memorystore and
// Cloud SQL findings and the estimate with its rates. After a failed run,
// the plan reports the state it left and that the run resumes.
func TestMigratePlanStack(t *testing.T) {
	ctx := context.Background()
	_, msrc := lab.Mongo(t)
	_, mdst := lab.Mongo(t)
	seedMongo(t, msrc, 100)
	_, rsrc := lab.Redis(t)
	_, rdst := lab.Redis(t, lab.Memorystore("maxmemory 64mb", "maxmemory-policy volatile-lru")...)
	ropt, _ := goredis.ParseURL(rsrc)
	rc := goredis.NewClient(ropt)
	defer rc.Close()
	for i := range 100 {
		rc.Set(ctx, fmt.Sprintf("session:%d", i), "x", 0)
	}
	_, psrc := lab.Postgres(t)
	_, pdst := lab.Postgres(t)
	pgExec(t, psrc, `CREATE SCHEMA appsmith`, `CREATE TABLE appsmith.app (id int PRIMARY KEY)`, `INSERT INTO appsmith.app SELECT generate_series(1, 100)`)
	pgExec(t, pdst, `CREATE ROLE app LOGIN PASSWORD 'pw' NOSUPERUSER`, `CREATE DATABASE appdb OWNER app`)
	ptarget := strings.Replace(strings.Replace(pdst, "postgres@", "app:pw@", 1), "/postgres?", "/appdb?", 1)
	vol := treetest.Fixture(t, t.TempDir())
	target := filepath.Join(t.TempDir(), "stacks")
	repo := filepath.Join(t.TempDir(), "repo")

	e := &testEnv{t: t, repo: "file://" + repo}
	opts := migrateOptions{Plan: true,
		Source: snapshotOptions{Volume: vol, Mongo: msrc, Redis: rsrc, Postgres: psrc},
		Target: restoreOptions{VolumeTo: target, MongoTo: mdst, RedisTo: rdst, PostgresTo: ptarget},
	}
	if err := runMigrate(ctx, e.global(), opts); err != nil {
		t.Fatalf("plan: %v\n%s\n%s", err, e.stdout.String(), e.stderr.String())
	}
	out := e.stdout.String()
	for _, want := range []string{
		"COMPONENT  ITEMS  BYTES",
		"ESTIMATE",
		"volume: target " + target + " will be created",
		"volume: target file system:",
		" at 30 MiB/s\n",
		"mongo: target flavor: ferretdb v1.24.2 (detected)",
		"mongo: compatibility with ferretdb v1.24.2: of the collections, views, options and indexes, 3 as they are, 0 adapted",
		"mongo: oplog window: ",
		"mongo: oplog replay: of the oplog's ",
		"mongo: estimate ",
		"redis: target: loads the source's DUMP payloads (RDB version 10)",
		"redis: target: maxmemory 64.0 MiB",
		"redis: warning: target maxmemory-policy volatile-lru may evict keys",
		"postgres: target: role app is not a superuser (as on Cloud SQL): owners",
		"postgres: pg_dump: ",
		"repository: repository " + repo + " does not exist yet: the run creates it",
		"estimate: about ",
		"nothing blocks the migration",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the plan lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(repo); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the plan created the repository: %v", err)
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the plan created the volume target: %v", err)
	}

	// A run that fails half way (the PostgreSQL target refuses: a table of
	// its own), then the plan: the state is found, what finished is
	// reported, the MongoDB collections it loaded are not in the way.
	pgExec(t, ptarget, `CREATE SCHEMA appsmith`, `CREATE TABLE appsmith.app (id int)`)
	run := opts
	run.Plan, run.Source.Compression = false, "zstd"
	if err := runMigrate(ctx, e.global(), run); err == nil || !strings.Contains(err.Error(), "appsmith.app") {
		t.Fatalf("the failing run: %v", err)
	}
	g := e.global()
	g.JSON = true
	err := runMigrate(ctx, g, opts)
	var res planResult
	if jerr := json.Unmarshal(e.stdout.Bytes(), &res); jerr != nil {
		t.Fatalf("plan --json: %v\n%s", jerr, e.stdout.String())
	}
	if err == nil || res.OK || res.Resume == nil || res.Resume.Runs != 1 || res.Resume.Complete || res.Seconds < 0 {
		t.Fatalf("plan after a failed run: %v, %+v", err, res)
	}
	if len(res.Blockers) != 1 || !strings.Contains(res.Blockers[0], "postgres: target database appdb already has appsmith.app: use --postgres-clean") {
		t.Errorf("blockers: %q", res.Blockers)
	}
	// How far the others got before the refusal stopped them depends on
	// the machine; each is described.
	for _, kind := range []string{"volume", "mongo", "redis"} {
		if got := res.Resume.Components[kind]; got == "" {
			t.Errorf("resume %s: not described", kind)
		}
	}
	if got := res.Resume.Components["postgres"]; !strings.HasPrefix(got, "refused by the target") {
		t.Errorf("resume postgres: %q", got)
	}
	e.stdout.Reset()
	runMigrate(ctx, e.global(), opts)
	if out := e.stdout.String(); !strings.Contains(out, "resume: state file://"+repo+" migrations/") || !strings.Contains(out, "the run resumes:") ||
		!strings.Contains(out, "resume: postgres: refused by the target, which held data of its own in the way: moved in full") {
		t.Errorf("the plan's resume lines:\n%s", out)
	}
}

// TestMigratePlanUnreachable: --plan finds every unreachable or missing
// target before anything is written: nothing is created, no state is
// kept, exit 1 naming each.
func TestMigratePlanUnreachable(t *testing.T) {
	ctx := context.Background()
	_, msrc := lab.Mongo(t)
	seedMongo(t, msrc, 10)
	_, rsrc := lab.Redis(t)
	_, psrc := lab.Postgres(t)
	pgExec(t, psrc, `CREATE TABLE app (id int)`)
	vol := treetest.Fixture(t, t.TempDir())
	parent := filepath.Join(t.TempDir(), "not-mounted")
	state := filepath.Join(t.TempDir(), "state.json")
	e := &testEnv{t: t}
	err := runMigrate(ctx, e.global(), migrateOptions{Plan: true, State: state,
		Source: snapshotOptions{Volume: vol, Mongo: msrc, Redis: rsrc, Postgres: psrc},
		Target: restoreOptions{VolumeTo: filepath.Join(parent, "stacks"),
			MongoTo:    "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300",
			RedisTo:    "redis://127.0.0.1:1/0",
			PostgresTo: "postgres://app@127.0.0.1:1/appdb?sslmode=disable&connect_timeout=2"},
	})
	out := e.stdout.String()
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "4 problem(s) block the migration") {
		t.Fatalf("plan: exit %d, %v\n%s", exitCode(err), err, out)
	}
	for _, want := range []string{
		"volume: BLOCKS: target: the parent folder " + parent + " does not exist",
		"mongo: BLOCKS: target: mongo: cannot reach mongodb://127.0.0.1:1/",
		"redis: BLOCKS: target: redis: cannot reach 127.0.0.1:1",
		"postgres: BLOCKS: target: postgres: connect:",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the plan lacks %q:\n%s", want, out)
		}
	}
	for _, p := range []string{parent, state} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the plan created %s: %v", p, err)
		}
	}
	if n, _ := lab.MongoClient(t, msrc).Database("appsmith").Collection("user").CountDocuments(ctx, bson.D{}); n != 10 {
		t.Errorf("the source changed: %d documents", n)
	}
}

// TestMigratePlanOplog: --plan of a MongoDB source without an oplog warns
// that the copy is not one point in time; of a replica set whose oplog
// holds an entry that cannot be replayed, it reports the window and the
// replay and blocks, naming the entry.
func TestMigratePlanOplog(t *testing.T) {
	ctx := context.Background()
	_, standalone := lab.MongoStandalone(t)
	_, rs := lab.Mongo(t)
	_, dst := lab.Mongo(t)
	seedMongo(t, standalone, 10)
	seedMongo(t, rs, 10)
	e := &testEnv{t: t, repo: "file://" + filepath.Join(t.TempDir(), "repo")}

	err := runMigrate(ctx, e.global(), migrateOptions{Plan: true, Source: snapshotOptions{Mongo: standalone}, Target: restoreOptions{MongoTo: dst}})
	out := e.stdout.String()
	if err != nil || !strings.Contains(out, "mongo: warning: source: no oplog (the source is not a replica set: no oplog): the copy will not be one point in time unless the application's writers are stopped during the move\n") ||
		!strings.Contains(out, "nothing blocks the migration") {
		t.Errorf("standalone: %v\n%s", err, out)
	}

	oplog := lab.MongoClient(t, rs).Database("local").Collection("oplog.rs")
	if _, err := oplog.InsertOne(ctx, bson.D{{Key: "ts", Value: bson.Timestamp{T: uint32(time.Now().Unix()), I: 100000}}, {Key: "op", Value: "c"},
		{Key: "ns", Value: "appsmith.$cmd"}, {Key: "o", Value: bson.D{{Key: "convertToCapped", Value: "user"}, {Key: "size", Value: 4096}}}}); err != nil {
		t.Fatal(err)
	}
	err = runMigrate(ctx, e.global(), migrateOptions{Plan: true, Source: snapshotOptions{Mongo: rs}, Target: restoreOptions{MongoTo: dst}})
	out = e.stdout.String()
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "1 problem(s) block the migration") {
		t.Fatalf("refused entry: exit %d, %v\n%s", exitCode(err), err, out)
	}
	for _, want := range []string{
		"mongo: oplog window: ",
		// seedMongo's 30 inserts, the entry and FerretDB's own entry of its
		// insert into local.oplog.rs (left out).
		"mongo: oplog replay: of the oplog's 32 newest entries (the whole oplog), 31 entries touch the databases moved: 30 inserts, 0 updates, 0 deletes, 0 commands, 0 skipped, 1 refused\n",
		"mongo: BLOCKS: oplog: the command convertToCapped of appsmith.user at ts ",
		"command convertToCapped on appsmith.user: cannot be replayed as ordinary writes: a dump during which an entry like it is written fails",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the plan lacks %q:\n%s", want, out)
		}
	}
}
