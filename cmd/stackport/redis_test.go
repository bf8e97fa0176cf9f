package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stackport/stackport/internal/lab"
)

func TestRedisThroughTheCLI(t *testing.T) {
	ctx := context.Background()
	_, src := lab.Redis(t)
	_, dst := lab.Redis(t, lab.Memorystore("requirepass s3cret")...)
	dst = strings.Replace(dst, "redis://", "redis://:s3cret@", 1)

	opt, _ := goredis.ParseURL(src)
	c := goredis.NewClient(opt)
	defer c.Close()
	for i := range 1000 {
		c.Set(ctx, fmt.Sprintf("session:%d", i), strings.Repeat("x", i), time.Hour)
	}
	c.HSet(ctx, "hash", "a", "1", "b", "2")
	c.RPush(ctx, "list", "1", "2", "3")
	c.ZAdd(ctx, "zset", goredis.Z{Score: 1, Member: "m"})

	e := &testEnv{t: t, repo: "file://" + t.TempDir()}
	id, err := e.snapshot(ctx, snapshotOptions{Redis: src})
	if err != nil {
		t.Fatalf("snapshot: %v\n%s", err, e.stderr.String())
	}
	if err := runRestore(ctx, e.global(), restoreOptions{RedisTo: dst}, id); err != nil {
		t.Fatalf("restore: %v\n%s", err, e.stderr.String())
	}
	if err := runVerify(ctx, e.global(), verifyOptions{AgainstRedis: dst}, id); err != nil {
		t.Fatalf("verify against the target: %v", err)
	}
	// A second restore finds existing keys.
	if err := runRestore(ctx, e.global(), restoreOptions{RedisTo: dst}, id); err == nil || !strings.Contains(err.Error(), "exist") {
		t.Fatalf("restore over existing keys: %v", err)
	}
	if err := runRestore(ctx, e.global(), restoreOptions{RedisTo: dst, RedisFlush: true}, id); exitCode(err) != 2 {
		t.Fatalf("--redis-flush without --yes: exit %d, %v", exitCode(err), err)
	}
	dopt, _ := goredis.ParseURL(dst)
	d := goredis.NewClient(dopt)
	defer d.Close()
	d.Set(ctx, "session:7", "tampered", 0)
	if err := runVerify(ctx, e.global(), verifyOptions{AgainstRedis: dst}, id); exitCode(err) != 3 {
		t.Fatalf("verify of a changed target: exit %d, %v", exitCode(err), err)
	}

	out := filepath.Join(t.TempDir(), "dump.rdb")
	if err := runExport(ctx, e.global(), exportOptions{Component: "redis", Out: out}, id); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil || !bytes.HasPrefix(b, []byte("REDIS00")) {
		t.Fatalf("export is not an RDB file: %v", err)
	}
}
