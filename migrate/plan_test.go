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

// injectOplog inserts entries into the oplog of the lab server at uri, as
// a server would log them (FerretDB logs no DDL, and stores what is
// inserted there). ts are seconds before now.
func injectOplog(t *testing.T, uri string, entries ...bson.D) {
	t.Helper()
	oplog := lab.MongoClient(t, uri).Database("local").Collection("oplog.rs")
	for _, e := range entries {
		if _, err := oplog.InsertOne(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
}

func oplogEntry(ago time.Duration, op, ns string, o bson.D) bson.D {
	return bson.D{{Key: "ts", Value: bson.Timestamp{T: uint32(time.Now().Add(-ago).Unix()), I: 100000}}, {Key: "t", Value: int64(1)},
		{Key: "op", Value: op}, {Key: "ns", Value: ns}, {Key: "o", Value: o}}
}

// TestMongoPlanOplog: the plan of a replica-set source reports the oplog
// window against the estimated dump time and the replay of the entries
// in it, blocks on an entry that cannot be replayed (naming it) and lists
// the compatibility rows of the oplog's commands on the target.
func TestMongoPlanOplog(t *testing.T) {
	ctx := context.Background()
	_, src := lab.Mongo(t)
	_, dst := lab.Mongo(t)
	// The oplog's first entry is 10 minutes old (a no-op, as MongoDB
	// writes every 10 s), then the application's writes.
	injectOplog(t, src, oplogEntry(10*time.Minute, "n", "", bson.D{{Key: "msg", Value: "periodic noop"}}))
	user := lab.MongoClient(t, src).Database("appsmith").Collection("user")
	for i := range 10 {
		if _, err := user.InsertOne(ctx, bson.D{{Key: "_id", Value: i}, {Key: "name", Value: "u"}}); err != nil {
			t.Fatal(err)
		}
	}
	user.UpdateOne(ctx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$set", Value: bson.D{{Key: "name", Value: "v"}}}})
	user.DeleteOne(ctx, bson.D{{Key: "_id", Value: 2}})

	f := migrate.Mongo{Source: src, Target: dst}.Plan(ctx)
	notes := strings.Join(f.Notes, "\n")
	if len(f.Blockers) != 0 {
		t.Fatalf("plan: %+v", f)
	}
	for _, want := range []string{
		"oplog window: about ",
		" hours (its entries span 10m",
		" used of 1.0 GiB, not full yet: at the rate of writes seen, an entry stays that long) against an estimated dump time of <1s (the source's dataSize, ",
		" at 5 MiB/s, the rate of the move's estimate: the dump streams into the restore, so it lasts as long as the move)",
		// The no-op and FerretDB's own entry of its insert into
		// local.oplog.rs are left out.
		"oplog replay: of the oplog's 14 newest entries (the whole oplog), 12 entries touch the databases moved: 10 inserts, 1 updates, 1 deletes, 0 commands, 0 skipped, 0 refused",
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}

	// A command no ordinary write expresses blocks, named; a TTL index
	// built by the oplog is adapted on FerretDB.
	injectOplog(t, src,
		oplogEntry(0, "c", "appsmith.$cmd", bson.D{{Key: "convertToCapped", Value: "user"}, {Key: "size", Value: 4096}}),
		oplogEntry(0, "c", "appsmith.$cmd", bson.D{{Key: "createIndexes", Value: "user"}, {Key: "v", Value: 2},
			{Key: "key", Value: bson.D{{Key: "at", Value: 1}}}, {Key: "name", Value: "at_1"}, {Key: "expireAfterSeconds", Value: 60}}))
	f = migrate.Mongo{Source: src, Target: dst}.Plan(ctx)
	blockers, notes := strings.Join(f.Blockers, "\n"), strings.Join(f.Notes, "\n")
	if len(f.Blockers) != 1 || !strings.HasPrefix(blockers, "oplog: the command convertToCapped of appsmith.user at ts ") ||
		!strings.Contains(blockers, "cannot be replayed as ordinary writes: a dump during which an entry like it is written fails") {
		t.Errorf("refused entry: %q", f.Blockers)
	}
	if !strings.Contains(notes, "1 commands (createIndexes 1), 0 skipped, 1 refused") {
		t.Errorf("notes:\n%s", notes)
	}
	if c := strings.Join(f.Compat, "\n"); !strings.Contains(c, "appsmith.user oplog createIndexes: index at_1") || !strings.Contains(c, "FerretDB 1.x has no TTL") {
		t.Errorf("compat: %q", f.Compat)
	}
}

// TestMongoPlanOplogWindow: an oplog that is full and holds about an hour
// of writes blocks a dump estimated to last longer, warns about one that
// lasts more than half of it, and is reported against a short one.
func TestMongoPlanOplogWindow(t *testing.T) {
	ctx := context.Background()
	_, src := lab.Mongo(t)
	_, dst := lab.Mongo(t)
	local := lab.MongoClient(t, src).Database("local")
	// An oplog of 8 KiB (FerretDB does not trim it: full from then on)
	// whose first entry is an hour old.
	if err := local.Collection("oplog.rs").Drop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := local.RunCommand(ctx, bson.D{{Key: "create", Value: "oplog.rs"}, {Key: "capped", Value: true}, {Key: "size", Value: int64(8192)}}).Err(); err != nil {
		t.Fatal(err)
	}
	injectOplog(t, src, oplogEntry(time.Hour, "n", "", bson.D{{Key: "msg", Value: "periodic noop"}}))
	user := lab.MongoClient(t, src).Database("appsmith").Collection("user")
	for i := range 20 {
		if _, err := user.InsertOne(ctx, bson.D{{Key: "_id", Value: i}, {Key: "name", Value: strings.Repeat("u", 500)}}); err != nil {
			t.Fatal(err)
		}
	}
	f := migrate.Mongo{Source: src, Target: dst}.Plan(ctx)
	if len(f.Blockers) != 0 || f.Bytes <= 0 || !strings.Contains(strings.Join(f.Notes, "\n"), "oplog window: about 1.00 hours (its entries span 1h0m") ||
		!strings.Contains(strings.Join(f.Notes, "\n"), " used of 8.0 KiB, full: an entry stays as long as the span) against an estimated dump time of <1s") {
		t.Fatalf("plan: %+v", f)
	}

	// The estimate is f.Bytes at Throughput["mongo"]: a rate for a dump
	// of two hours, then of 45 minutes.
	old := migrate.Throughput["mongo"]
	t.Cleanup(func() { migrate.Throughput["mongo"] = old })
	rate := func(d time.Duration) float64 { return float64(f.Bytes) / d.Seconds() / (1 << 20) }
	migrate.Throughput["mongo"] = rate(2 * time.Hour)
	long := migrate.Mongo{Source: src, Target: dst}.Plan(ctx)
	if b := strings.Join(long.Blockers, "\n"); len(long.Blockers) != 1 ||
		!strings.HasPrefix(b, "oplog window: about 1.00 hours (") || !strings.Contains(b, "is shorter than the estimated dump time, 2h0m0s (") ||
		!strings.Contains(b, "the dump's start entry would roll off and the dump fail; enlarge the oplog (replSetResizeOplog) or stop the application's writers") {
		t.Errorf("a dump of 2 h: %q", long.Blockers)
	}
	migrate.Throughput["mongo"] = rate(45 * time.Minute)
	close := migrate.Mongo{Source: src, Target: dst}.Plan(ctx)
	if n := strings.Join(close.Notes, "\n"); len(close.Blockers) != 0 || !strings.Contains(n, "warning: oplog window: about 1.00 hours (") ||
		!strings.Contains(n, "is less than twice the estimated dump time, 45m0s (") {
		t.Errorf("a dump of 45 min: %+v", close)
	}
}

// TestMongoPlanStandalone: a source without an oplog is a warning: the
// copy is not one point in time unless the writers are stopped.
func TestMongoPlanStandalone(t *testing.T) {
	ctx := context.Background()
	_, src := lab.MongoStandalone(t)
	_, dst := lab.Mongo(t)
	if _, err := lab.MongoClient(t, src).Database("appsmith").Collection("user").InsertOne(ctx, bson.D{{Key: "a", Value: 1}}); err != nil {
		t.Fatal(err)
	}
	f := migrate.Mongo{Source: src, Target: dst}.Plan(ctx)
	notes := strings.Join(f.Notes, "\n")
	if len(f.Blockers) != 0 || f.Items != 1 || strings.Contains(notes, "oplog window") ||
		!strings.Contains(notes, "warning: source: no oplog (the source is not a replica set: no oplog): the copy will not be one point in time unless the application's writers are stopped during the move") {
		t.Errorf("plan: %+v", f)
	}
}
