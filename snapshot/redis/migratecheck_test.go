package redis_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/migrate"
	"github.com/stackport/stackport/snapshot/redis"
)

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

// TestMigrateCheckShortTTLs moves a Redis whose database 0 holds keys that
// expire 0.1 to 1.6 s later, with 150,000 keys in database 1 after them, and
// checks the move as migrate does (a Dumper of the source through a Pipe
// into a Checker of the target with NameExtra): the keys that expire while
// the check runs (before their DUMP in the target, between DUMP and PTTL,
// before DBSIZE, or expired but still counted by DBSIZE) are no
// difference. Then a key truly missing still is.
func TestMigrateCheckShortTTLs(t *testing.T) {
	ctx := context.Background()
	_, src := lab.Redis(t, "enable-debug-command yes")
	_, dst := lab.Redis(t, lab.Memorystore()...)
	quiet := slog.New(slog.DiscardHandler)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(redisClient(t, src, 1).Do(ctx, "DEBUG", "POPULATE", 150_000, "bulk", 10).Err())
	pair := migrate.Pair{Kind: "redis", Dumper: &redis.Dumper{URL: src, Log: quiet}, Restorer: &redis.Restorer{URL: dst, Log: quiet}}
	if rep, err := migrate.Run(ctx, []migrate.Pair{pair}, migrate.Options{}); err != nil {
		t.Fatalf("migrate: %v, %+v", err, rep.Components[0])
	}

	// The same keys with the same expiry on both sides, as RESTORE …
	// ABSTTL leaves them: 3,000 keys expiring every half millisecond
	// from 100 ms to 1.6 s from now, and some that do not expire.
	s0, d0 := redisClient(t, src, 0), redisClient(t, dst, 0)
	start := time.Now()
	for _, c := range []*goredis.Client{s0, d0} {
		p := c.Pipeline()
		for i := range 3000 {
			k := fmt.Sprintf("short:%d", i)
			p.Set(ctx, k, "v", 0)
			p.PExpireAt(ctx, k, start.Add(100*time.Millisecond+time.Duration(i)*time.Millisecond/2))
		}
		for i := range 10 {
			p.Set(ctx, fmt.Sprintf("long:%d", i), "v", 0)
		}
		_, err := p.Exec(ctx)
		must(err)
	}
	check := migrate.Redis{Source: src, Target: dst, Log: quiet}
	if err := check.Check(ctx); err != nil {
		t.Fatalf("check with keys expiring: %v", err)
	}
	if d := time.Since(start); d < 1700*time.Millisecond {
		// Not a failure of stackport: the machine was too fast for
		// every short key to expire during the check.
		t.Logf("the check ended %v after the keys were written, before the last expired", d)
	}

	// Short TTLs again, and a key missing in the target: it is named.
	start = time.Now()
	for _, c := range []*goredis.Client{s0, d0} {
		p := c.Pipeline()
		for i := range 1000 {
			k := fmt.Sprintf("short:%d", i)
			p.Set(ctx, k, "v", 0)
			p.PExpireAt(ctx, k, start.Add(time.Duration(200+i)*time.Millisecond))
		}
		_, err := p.Exec(ctx)
		must(err)
	}
	must(d0.Del(ctx, "long:3").Err())
	err := check.Check(ctx)
	if err == nil || !strings.Contains(err.Error(), `db 0 key "long:3": missing in the target`) {
		t.Fatalf("check of a missing key: %v", err)
	}
}
