package migrate_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/migrate"
	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/snapshot/redis"
)

// redisClient returns a client of database db of the server at url.
func redisClient(t *testing.T, url string, db int) *goredis.Client {
	t.Helper()
	opt, err := goredis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opt.DB = db
	c := goredis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

// seedRedis writes strings with and without expiry, a hash, a set, a list
// and a sorted set into databases 0 and 3.
func seedRedis(t *testing.T, url string) {
	ctx := context.Background()
	c := redisClient(t, url, 0)
	for i := range 300 {
		ttl := time.Duration(0)
		if i%3 == 0 {
			ttl = time.Hour
		}
		if err := c.Set(ctx, fmt.Sprintf("session:%d", i), strings.Repeat("s", i), ttl).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 200 {
		c.HSet(ctx, "bighash", fmt.Sprintf("f%d", i), i) // hashtable encoding
	}
	c.SAdd(ctx, "set", "a", "b", "c")
	c.RPush(ctx, "list", "x", "y")
	c.ZAdd(ctx, "zset", goredis.Z{Score: 1, Member: "one"})
	redisClient(t, url, 3).Set(ctx, "db3key", "three", 0)
}

// TestRedisCheck moves a Redis into a Memorystore-like Redis (database 3
// into 1) and compares it live with its source: verified; then changed
// values, a missing key, a key only in the target and a changed expiry
// are each named, wrapping snapshot.ErrDiffers.
func TestRedisCheck(t *testing.T) {
	ctx := context.Background()
	_, src := lab.Redis(t)
	_, dst := lab.Redis(t, lab.Memorystore()...)
	seedRedis(t, src)
	dbMap := map[int]int{3: 1}
	check := migrate.Redis{Source: src, Target: dst, DBMap: dbMap, Log: quiet}
	pair := migrate.Pair{Kind: "redis", Dumper: &redis.Dumper{URL: src, Log: quiet},
		Restorer: &redis.Restorer{URL: dst, DBMap: dbMap, Log: quiet}, Check: check.Check}
	rep, err := migrate.Run(ctx, []migrate.Pair{pair}, migrate.Options{})
	if err != nil || rep.Components[0].Result != migrate.ResultVerified || rep.Components[0].Items != 305 {
		t.Fatalf("migrate: %v, %+v", err, rep.Components[0])
	}

	t0, t1 := redisClient(t, dst, 0), redisClient(t, dst, 1)
	t0.Set(ctx, "session:1", "changed", 0)
	t0.Del(ctx, "session:2")
	t0.HSet(ctx, "bighash", "f7", "changed")
	t0.Expire(ctx, "session:4", time.Minute)    // had none
	t0.Expire(ctx, "session:3", 10*time.Minute) // had an hour
	t1.Set(ctx, "intruder", "only in the target", 0)
	err = check.Check(ctx)
	if !errors.Is(err, snapshot.ErrDiffers) {
		t.Fatalf("check after changes: %v", err)
	}
	msg := err.Error()
	for _, want := range []string{
		`db 0 key "session:1": the value differs`,
		`db 0 key "session:2": missing in the target`,
		`db 0 key "bighash": the value differs`,
		`db 0 key "session:4": expires in`,
		`db 0 key "session:3": expires at`,
		`db 1 key "intruder": only in the target`,
		"in the source",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("the check's error lacks %q:\n%s", want, msg)
		}
	}
	if before, _, _ := strings.Cut(msg, ": the target differs from the snapshot"); strings.Contains(before, "snapshot") {
		t.Errorf("the check's differences speak of a snapshot:\n%s", msg)
	}
}

// TestRedisPlan: Plan finds a Memorystore-like target ready, and reports
// what blocks: keys in the target, a target database that does not exist
// (with the --redis-db-map to give), RESTORE refused, too little memory;
// it writes nothing.
func TestRedisPlan(t *testing.T) {
	ctx := context.Background()
	_, src := lab.Redis(t)
	seedRedis(t, src)

	_, ok := lab.Redis(t, lab.Memorystore()...)
	f := migrate.Redis{Source: src, Target: ok}.Plan(ctx)
	notes := strings.Join(f.Notes, "\n")
	if len(f.Blockers) != 0 || f.Items != 305 || f.Bytes <= 0 ||
		!strings.Contains(notes, "source: Redis 7.") || !strings.Contains(notes, "target: loads the source's DUMP payloads (RDB version 10)") {
		t.Fatalf("plan of a ready target: %+v", f)
	}
	if n := redisClient(t, ok, 0).DBSize(ctx).Val(); n != 0 {
		t.Fatalf("the plan wrote %d keys", n)
	}

	// One database, RESTORE renamed away, 1 MiB of memory, a key in
	// database 0.
	_, bad := lab.Redis(t, lab.Memorystore("databases 1", `rename-command RESTORE ""`, "maxmemory 1mb")...)
	redisClient(t, bad, 0).Set(ctx, "session:1", "theirs", 0)
	f = migrate.Redis{Source: src, Target: bad}.Plan(ctx)
	blockers := strings.Join(f.Blockers, "\n")
	for _, want := range []string{
		"target refuses RESTORE, which stackport sends",
		"target database 3 (for source database 3): SELECT",
		"--redis-db-map, e.g. 0:0,3:0",
		"target maxmemory 1.0 MiB leaves",
	} {
		if !strings.Contains(blockers, want) {
			t.Errorf("blockers lack %q:\n%s", want, blockers)
		}
	}
	// Keys in the way are kept apart: they block unless the migration
	// wrote them (see PlanOptions).
	rep := migrate.Plan(ctx, []migrate.Pair{{Kind: "redis", Plan: migrate.Redis{Source: src, Target: bad}.Plan}}, migrate.PlanOptions{})
	if !strings.Contains(strings.Join(rep.Components[0].Blockers, "\n"), "target database 0 already holds 1 keys: use --redis-flush --yes") {
		t.Errorf("blockers lack the keys in the way: %q", rep.Components[0].Blockers)
	}
	if f := (migrate.Redis{Source: src, Target: bad, Flush: true}).Plan(ctx); strings.Contains(strings.Join(f.Blockers, "\n"), "already holds") {
		t.Errorf("--redis-flush: %q", f.Blockers)
	}
	if n := redisClient(t, bad, 0).DBSize(ctx).Val(); n != 1 {
		t.Fatalf("the plan changed the target: %d keys", n)
	}

	f = migrate.Redis{Source: src, Target: "redis://127.0.0.1:1/0"}.Plan(ctx)
	if len(f.Blockers) != 1 || !strings.Contains(f.Blockers[0], "target: redis: cannot reach 127.0.0.1:1") {
		t.Errorf("unreachable target: %q", f.Blockers)
	}
}
