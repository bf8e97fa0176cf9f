package migrate_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/treetest"
	"github.com/stackport/stackport/migrate"
	mongosnap "github.com/stackport/stackport/snapshot/mongo"
	"github.com/stackport/stackport/snapshot/volume"
)

func pgExec(t *testing.T, url string, sql ...string) {
	t.Helper()
	ctx := context.Background()
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

// asRole returns url (the lab's, as postgres on database postgres) as
// user:password on database db.
func asRole(url, user, db string) string {
	return strings.Replace(strings.Replace(url, "postgres@", user+"@", 1), "/postgres?", "/"+db+"?", 1)
}

// TestPostgresPlan: Plan counts the source, finds pg_dump, and reports the
// rules of a Cloud SQL-like target: a role that is not a superuser (owners
// dropped), the roles --postgres-keep-owners needs, tables already there
// (which block unless --postgres-clean), an unreachable target.
func TestPostgresPlan(t *testing.T) {
	ctx := context.Background()
	_, src := lab.Postgres(t)
	_, dst := lab.Postgres(t)
	pgExec(t, src,
		`CREATE ROLE appowner NOLOGIN`,
		`CREATE SCHEMA appsmith AUTHORIZATION appowner`,
		`CREATE TABLE appsmith.app (id int PRIMARY KEY, name text)`,
		`ALTER TABLE appsmith.app OWNER TO appowner`,
		`INSERT INTO appsmith.app SELECT g, 'app ' || g FROM generate_series(1, 1200) g`)
	pgExec(t, dst, `CREATE ROLE app LOGIN PASSWORD 'pw' NOSUPERUSER`, `CREATE DATABASE appdb OWNER app`)
	target := asRole(dst, "app:pw", "appdb")

	f := migrate.Postgres{Source: src, Target: target}.Plan(ctx)
	notes := strings.Join(f.Notes, "\n")
	if len(f.Blockers) != 0 || f.Items != 1200 || f.Bytes <= 0 {
		t.Fatalf("plan: %+v", f)
	}
	for _, want := range []string{"source: PostgreSQL 15.", "pg_dump: ", "target: role app is not a superuser (as on Cloud SQL): owners (appowner, pg_database_owner) and privileges are left out"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}

	f = migrate.Postgres{Source: src, Target: target, KeepOwners: true}.Plan(ctx)
	if b := strings.Join(f.Blockers, "\n"); !strings.Contains(b, "--postgres-keep-owners needs the roles appowner, which the target lacks") {
		t.Errorf("keep owners: %q", f.Blockers)
	}

	pgExec(t, target, `CREATE SCHEMA appsmith`, `CREATE TABLE appsmith.app (id int)`)
	rep := migrate.Plan(ctx, []migrate.Pair{{Kind: "postgres", Plan: migrate.Postgres{Source: src, Target: target}.Plan}}, migrate.PlanOptions{})
	if b := strings.Join(rep.Components[0].Blockers, "\n"); !strings.Contains(b, "target database appdb already has appsmith.app: use --postgres-clean") {
		t.Errorf("occupied target: %q", rep.Components[0].Blockers)
	}
	if f := (migrate.Postgres{Source: src, Target: target, Clean: true}).Plan(ctx); len(f.Blockers) != 0 {
		t.Errorf("--postgres-clean: %q", f.Blockers)
	}

	f = migrate.Postgres{Source: src, Target: "postgres://app@127.0.0.1:1/appdb?sslmode=disable&connect_timeout=2"}.Plan(ctx)
	if len(f.Blockers) != 1 || !strings.Contains(f.Blockers[0], "target: postgres: connect:") || f.Items != 1200 {
		t.Errorf("unreachable target: %+v", f)
	}
}

// TestMongoPlanCompat: Plan detects a FerretDB target, and with the
// DocumentDB flavor set reports the compatibility table: a collection
// name too long for DocumentDB blocks; --strict makes an adapted or
// skipped item block.
func TestMongoPlanCompat(t *testing.T) {
	ctx := context.Background()
	_, src := lab.Mongo(t)
	_, dst := lab.Mongo(t)
	db := lab.MongoClient(t, src).Database("appsmith")
	long := "c" + strings.Repeat("x", 59)
	for _, coll := range []string{"user", long} {
		if _, err := db.Collection(coll).InsertOne(ctx, bson.D{{Key: "a", Value: 1}}); err != nil {
			t.Fatal(err)
		}
	}

	f := migrate.Mongo{Source: src, Target: dst}.Plan(ctx)
	if notes := strings.Join(f.Notes, "\n"); len(f.Blockers) != 0 || !strings.Contains(notes, "target flavor: ferretdb v1.24.2 (detected)") ||
		!strings.Contains(notes, "compatibility with ferretdb v1.24.2: of the collections, views, options and indexes, 2 as they are, 0 adapted, 0 skipped, 0 refused") {
		t.Fatalf("plan: %+v", f)
	}

	f = migrate.Mongo{Source: src, Target: dst, Flavor: mongosnap.FlavorDocumentDB}.Plan(ctx)
	notes, blockers := strings.Join(f.Notes, "\n"), strings.Join(f.Blockers, "\n")
	if !strings.Contains(notes, "target flavor: documentdb v1.24.2 (set)") || !strings.Contains(notes, "the target looks like ferretdb") ||
		!strings.Contains(blockers, "compatibility: appsmith."+long+" collection: refused: DocumentDB collection names have at most 57 characters") ||
		len(f.Compat) != 1 {
		t.Errorf("documentdb: %+v", f)
	}
}

// TestPlanResumeAndEstimate: a plan with a state of an earlier run says
// what it finished, takes the target it wrote as its own (no blocker) and
// estimates the time.
func TestPlanResumeAndEstimate(t *testing.T) {
	ctx := context.Background()
	src := treetest.Fixture(t, t.TempDir())
	dst := filepath.Join(t.TempDir(), "stacks")
	state := filepath.Join(t.TempDir(), "state.json")
	if _, err := migrate.Run(ctx, []migrate.Pair{volumePair(src, dst)}, migrate.Options{Journal: journal(t, state)}); err != nil {
		t.Fatal(err)
	}
	pair := volumePair(src, dst)
	pair.Plan = migrate.Volume{Source: src, Target: dst}.Plan

	rep := migrate.Plan(ctx, []migrate.Pair{pair}, migrate.PlanOptions{})
	if b := rep.Blocked(); len(b) != 1 || !strings.Contains(b[0], "volume: target "+dst+" is not empty") {
		t.Errorf("without the state: %q", b)
	}
	rep = migrate.Plan(ctx, []migrate.Pair{pair}, migrate.PlanOptions{Journal: journal(t, state)})
	f := rep.Components[0]
	if len(rep.Blocked()) != 0 || rep.Resume == nil || !rep.Resume.Complete || rep.Resume.Runs != 1 ||
		rep.Resume.Components["volume"] != "moved and verified: checked quickly and skipped" ||
		!strings.Contains(strings.Join(f.Notes, "\n"), "an earlier run of this migration wrote it: the run resumes") {
		t.Errorf("with the state: %+v %+v", rep.Resume, f)
	}
	if f.Throughput != migrate.Throughput["volume"] || f.Estimate <= 0 || rep.Estimate != 2*f.Estimate {
		// The fixture holds a few MiB: at 30 MiB/s, a fraction of a second
		// rounded to the second.
		if !(f.Estimate == 0 && f.Bytes < 15<<20) {
			t.Errorf("estimate %v at %v MiB/s for %d bytes, run %v", f.Estimate, f.Throughput, f.Bytes, rep.Estimate)
		}
	}
	est := migrate.Plan(ctx, []migrate.Pair{{Kind: "mongo", Plan: func(context.Context) migrate.Finding {
		return migrate.Finding{Items: 10, Bytes: 50 << 20}
	}}}, migrate.PlanOptions{})
	if c := est.Components[0]; c.Estimate != 10*time.Second || est.Estimate != 20*time.Second || c.Throughput != 5 {
		t.Errorf("50 MiB of MongoDB: %v at %v MiB/s, run %v", c.Estimate, c.Throughput, est.Estimate)
	}
}

// TestVolumeLeftovers: a run interrupted while a replace moved the old
// content aside (a killed run leaves its staging and trash folders and
// part of the new tree in the target) is run again: the leftovers are
// removed, the target replaced, verified, and nothing else is left.
func TestVolumeLeftovers(t *testing.T) {
	ctx := context.Background()
	src := treetest.Fixture(t, t.TempDir())
	dst := filepath.Join(t.TempDir(), "stacks")
	state := filepath.Join(t.TempDir(), "state.json")

	// The first run is cancelled before its volume moved: the target was
	// missing, so it is the migration's from then on.
	cctx, cancel := context.WithCancel(ctx)
	p := volumePair(src, dst)
	p.Dumper = &volume.Dumper{Dir: src, Progress: func(int64) { cancel() }}
	if _, err := migrate.Run(cctx, []migrate.Pair{p}, migrate.Options{Journal: journal(t, state)}); err == nil {
		t.Fatal("the cancelled run succeeded")
	}
	if s := journal(t, state).State(); !s.Components["volume"].Writing {
		t.Fatalf("state after the first run: %+v", s.Components["volume"])
	}
	// What a kill in the middle of a replace leaves.
	for _, d := range []string{".stackport-restore-1/a", ".stackport-trash-2/old/deep"} {
		if err := os.MkdirAll(filepath.Join(dst, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(dst, ".stackport-trash-2", "old"), 0o555) // read-only, as restored
	os.WriteFile(filepath.Join(dst, "partial.txt"), []byte("a file of the new tree"), 0o644)

	rep, err := migrate.Run(ctx, []migrate.Pair{volumePair(src, dst)}, migrate.Options{Journal: journal(t, state)})
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	c := rep.Components[0]
	notes := strings.Join(c.Resume, "\n")
	for _, want := range []string{"removed .stackport-restore-1, the staging folder", "removed .stackport-trash-2, the replaced content", "moving it again, replacing the target's content"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	if c.Result != migrate.ResultVerified {
		t.Fatalf("second run: %+v", c)
	}
	treetest.Compare(t, src, dst, treetest.Options{Owners: os.Geteuid() == 0, Root: true})
	entries, _ := os.ReadDir(dst)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".stackport-") {
			t.Errorf("left in the target: %s", e.Name())
		}
	}
}
