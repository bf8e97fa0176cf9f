package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/treetest"
	"github.com/stackport/stackport/migrate"
	"github.com/stackport/stackport/snapshot/postgres"
)

// buildStackport builds the command into a temporary folder.
func buildStackport(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "stackport")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestMigrateKilled runs `stackport migrate` of a whole stack (a volume,
// a FerretDB, a Redis, a PostgreSQL) into a volume target that held older
// content (--force), a second FerretDB, a Memorystore-like Redis and a
// database of a role that is not a superuser; kills it with SIGKILL once
// its state shows it half way through MongoDB; and runs the same command
// again: every file, document, key and row is the source's, exactly once,
// every component is verified, and nothing of the killed run is left in
// the volume target.
func TestMigrateKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the command and moves a whole stack twice")
	}
	ctx := context.Background()
	bin := buildStackport(t)

	// The sources.
	vol := bigTree(t, 128)
	treetest.Fixture(t, filepath.Join(vol, "fixture"))
	_, msrc := lab.Mongo(t)
	source := lab.MongoClient(t, msrc)
	colls := []string{"c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"}
	for _, coll := range colls {
		var docs []any
		for i := range 3000 {
			docs = append(docs, bson.D{{Key: "_id", Value: fmt.Sprintf("%s-%d", coll, i)}, {Key: "n", Value: int32(i)},
				{Key: "body", Value: strings.Repeat(coll, 100+i%200)}})
		}
		if _, err := source.Database("appsmith").Collection(coll).InsertMany(ctx, docs); err != nil {
			t.Fatal(err)
		}
	}
	_, rsrc := lab.Redis(t)
	ropt, _ := goredis.ParseURL(rsrc)
	rc := goredis.NewClient(ropt)
	defer rc.Close()
	for i := range 5000 {
		ttl := time.Duration(0)
		if i%2 == 0 {
			ttl = time.Hour
		}
		rc.Set(ctx, fmt.Sprintf("session:%d", i), strings.Repeat("v", i%500), ttl)
	}
	rc.HSet(ctx, "hash", "a", "1", "b", "2")
	_, psrc := lab.Postgres(t)
	pgExec(t, psrc,
		`CREATE SCHEMA appsmith`,
		`CREATE TABLE appsmith.app (id serial PRIMARY KEY, name text NOT NULL, doc jsonb)`,
		`INSERT INTO appsmith.app (name, doc) SELECT 'app ' || g, jsonb_build_object('n', g) FROM generate_series(1, 50000) g`)

	// The targets.
	target := filepath.Join(t.TempDir(), "stacks")
	os.MkdirAll(filepath.Join(target, "old"), 0o755)
	os.WriteFile(filepath.Join(target, "old", "file.txt"), []byte("content of an older copy"), 0o644)
	_, mdst := lab.Mongo(t)
	_, rdst := lab.Redis(t, lab.Memorystore()...)
	_, pdst := lab.Postgres(t)
	pgExec(t, pdst, `CREATE ROLE app LOGIN PASSWORD 'pw' NOSUPERUSER`, `CREATE DATABASE appdb OWNER app`)
	ptarget := strings.Replace(strings.Replace(pdst, "postgres@", "app:pw@", 1), "/postgres?", "/appdb?", 1)

	state := filepath.Join(t.TempDir(), "state.json")
	repo := "file://" + filepath.Join(t.TempDir(), "repo")
	args := []string{"migrate", "--json", "--repo", repo, "--state", state,
		"--volume", vol, "--volume-to", target, "--force",
		"--mongo", msrc, "--mongo-to", mdst, "--mongo-parallel", "1",
		"--redis", rsrc, "--redis-to", rdst,
		"--postgres", psrc, "--postgres-to", ptarget}
	command := func() (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "STACKPORT_REPO=")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		return cmd, &stdout, &stderr
	}

	// killWhen runs the command and kills it with SIGKILL as soon as
	// halfWay, polled every 20 ms, says it is half way.
	killWhen := func(what string, halfWay func() bool) {
		t.Helper()
		cmd, _, stderr := command()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		deadline := time.After(5 * time.Minute)
		for !halfWay() {
			select {
			case err := <-exited:
				t.Fatalf("the run ended before %s (%v):\n%s", what, err, stderr)
			case <-deadline:
				cmd.Process.Kill()
				t.Fatalf("the run did not get to %s in 5 minutes:\n%s", what, stderr)
			case <-time.After(20 * time.Millisecond):
			}
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := <-exited; err == nil || !strings.Contains(err.Error(), "killed") {
			t.Fatalf("the run killed %s: %v", what, err)
		}
	}
	mongoState := func() (runs int, mongo *migrate.ComponentState) {
		var s migrate.State
		data, err := os.ReadFile(state)
		if err != nil || json.Unmarshal(data, &s) != nil {
			return 0, nil
		}
		return s.Runs, s.Components["mongo"]
	}
	moved := lab.MongoClient(t, mdst)
	describe := func() string {
		var loaded []string
		for _, coll := range colls {
			n, _ := moved.Database("appsmith").Collection(coll).CountDocuments(ctx, bson.D{})
			loaded = append(loaded, fmt.Sprintf("%s:%d", coll, n))
		}
		entries, _ := os.ReadDir(target)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return fmt.Sprintf("target collections %s; volume target %v", strings.Join(loaded, " "), names)
	}

	// The first run, killed while the volume is unpacked into its staging
	// folder (the older content still in place).
	killWhen("the volume's staging", func() bool {
		m, _ := filepath.Glob(filepath.Join(target, ".stackport-restore-*", "*"))
		return len(m) > 0
	})
	t.Logf("killed in the volume: %s", describe())
	// The second, killed once MongoDB is half way: some collections loaded
	// (recorded in the state), not all.
	_, m := mongoState()
	before := 0
	if m != nil {
		before = len(m.Units)
	}
	killWhen("MongoDB half way", func() bool {
		runs, m := mongoState()
		return runs == 2 && m != nil && len(m.Units) >= max(2, before+1) && !m.Moved
	})
	_, m = mongoState()
	t.Logf("killed in MongoDB with %d collections recorded (%d by the first run): %s", len(m.Units), before, describe())

	// The same command again.
	second, out, errOut := command()
	if err := second.Run(); err != nil {
		t.Fatalf("the second run: %v\n%s\n%s", err, out, errOut)
	}
	var res migrateResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("the second run printed %q: %v", out, err)
	}
	if !res.OK || !res.Resumed || len(res.Components) != 4 || res.Snapshot == "" {
		t.Fatalf("the second run: %+v\n%s", res, errOut)
	}
	for _, c := range res.Components {
		if c.Result != "verified" {
			t.Errorf("%s: %s (%s)", c.Kind, c.Result, c.Error)
		}
	}
	if mc := res.Components[1]; len(mc.Skipped) < 2 {
		t.Errorf("mongo: the collections loaded before the kill were not skipped: %+v", mc)
	}
	for _, c := range res.Components {
		t.Logf("%s: %s, skipped %v: %s", c.Kind, c.Result, c.Skipped, strings.Join(c.Resume, "; "))
	}

	// Files: the source's tree, nothing else (the older content replaced,
	// no staging or trash folder left).
	treetest.Compare(t, vol, target, treetest.Options{Owners: os.Geteuid() == 0, Root: true})
	if leftovers, _ := filepath.Glob(filepath.Join(target, ".stackport-*")); len(leftovers) > 0 {
		t.Errorf("left in the volume target: %v", leftovers)
	}
	// Documents: each once, byte for byte.
	for _, coll := range colls {
		want := rawByID(t, source.Database("appsmith").Collection(coll))
		got := rawByID(t, moved.Database("appsmith").Collection(coll))
		n, err := moved.Database("appsmith").Collection(coll).CountDocuments(ctx, bson.D{})
		if err != nil || n != int64(len(want)) || len(got) != len(want) {
			t.Fatalf("%s: %d documents (%d ids, %v), want %d", coll, n, len(got), err, len(want))
		}
		for k, w := range want {
			if !bytes.Equal(got[k], w) {
				t.Fatalf("%s: document %s differs", coll, k)
			}
		}
	}
	// Keys: as many, each with the source's value.
	dopt, _ := goredis.ParseURL(rdst)
	dc := goredis.NewClient(dopt)
	defer dc.Close()
	if n, m := dc.DBSize(ctx).Val(), rc.DBSize(ctx).Val(); n != m {
		t.Errorf("redis: %d keys, the source %d", n, m)
	}
	for i := 0; i < 5000; i += 7 {
		k := fmt.Sprintf("session:%d", i)
		if got, want := dc.Get(ctx, k).Val(), rc.Get(ctx, k).Val(); got != want {
			t.Fatalf("redis %s: %q, want %q", k, got, want)
		}
	}
	// Rows: as many, the same digests.
	want, err := postgres.Digest(ctx, psrc, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := postgres.Digest(ctx, ptarget, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := postgres.Compare(want, got); err != nil {
		t.Error(err)
	}
	if e := (&testEnv{t: t, repo: repo}); len(e.list()) != 1 {
		t.Errorf("snapshots after the second run: %+v", e.list())
	}
}
