package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stackport/stackport/internal/lab"
)

// seedRedisFaults writes about 3 MiB to two databases of url: 3,000
// strings of 1 KiB (every tenth with a TTL of an hour), a hash, a list and
// a set. It returns the number of bytes written.
func seedRedisFaults(t *testing.T, url string) int64 {
	t.Helper()
	ctx := context.Background()
	opt, err := goredis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	val := make([]byte, 1024)
	var total int64
	for db := range 2 {
		o := *opt
		o.DB = db
		c := goredis.NewClient(&o)
		pipe := c.Pipeline()
		n := 2500
		if db == 1 {
			n = 500
		}
		for i := range n {
			for j := range val {
				val[j] = 'a' + byte(rng.IntN(26))
			}
			ttl := time.Duration(0)
			if i%10 == 0 {
				ttl = time.Hour
			}
			pipe.Set(ctx, fmt.Sprintf("session:%d", i), string(val), ttl)
			total += int64(len(val))
		}
		pipe.HSet(ctx, "hash", "a", "1", "b", "2")
		pipe.RPush(ctx, "list", "1", "2", "3")
		pipe.SAdd(ctx, "set", "x", "y")
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	return total
}

// TestFaultRedis runs the fault suite with Redis as source and target.
func TestFaultRedis(t *testing.T) {
	src, srcURL := lab.Redis(t)
	dst, dstURL := lab.Redis(t)
	size := seedRedisFaults(t, srcURL)
	h := &faultDB{
		kind: "redis", src: src, dst: dst, srcURL: srcURL, dstURL: dstURL, rawSize: size,
		snapshotOpts: func(url string) snapshotOptions { return snapshotOptions{Redis: url} },
		restoreOpts:  func(url string) restoreOptions { return restoreOptions{RedisTo: url} },
		cleanup:      func(o *restoreOptions) { o.RedisReplace = true },
		verifyOpts:   func(url string) verifyOptions { return verifyOptions{AgainstRedis: url} },
		// "A dropped connection is retried with backoff" (README): 8
		// attempts, about 16 s before it gives up.
		restoreRetries: true,
		emptyTarget: func(t *testing.T) {
			opt, _ := goredis.ParseURL(dstURL)
			c := goredis.NewClient(opt)
			defer c.Close()
			if err := c.FlushAll(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
		},
	}
	runFaultSuite(t, h)
}
