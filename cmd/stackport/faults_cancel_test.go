package main

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/treetest"
)

// cancelSeed returns the seed of the random cancellation points:
// STACKPORT_CANCEL_SEED, or a new one. It is logged so that a failure can
// be reproduced.
func cancelSeed(t *testing.T) uint64 {
	t.Helper()
	if s := os.Getenv("STACKPORT_CANCEL_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("STACKPORT_CANCEL_SEED=%q: %v", s, err)
		}
		return seed
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("random cancellation points: STACKPORT_CANCEL_SEED=%d reproduces them", seed)
	return seed
}

// cancelPoint is where a command is cancelled (as SIGINT or SIGTERM do):
// once its progress reaches a byte offset, or after a delay.
type cancelPoint struct {
	offset int64         // > 0: at this many bytes of progress
	after  time.Duration // else after this long
}

func (c cancelPoint) String() string {
	if c.offset > 0 {
		return "at byte " + strconv.FormatInt(c.offset, 10)
	}
	return "after " + c.after.String()
}

// randomPoint draws a byte offset in [1, size) or, every other time, a
// moment in [0, 1.2×took) (so some fall after the command finished).
func randomPoint(rng *rand.Rand, size int64, took time.Duration) cancelPoint {
	if rng.IntN(2) == 0 {
		return cancelPoint{offset: 1 + rng.Int64N(max(size-1, 1))}
	}
	return cancelPoint{after: time.Duration(rng.Int64N(int64(took)*6/5 + 1))}
}

// arm returns a context that point cancels, setting e.onProgress for a
// byte offset; stop ends it and clears the hook.
func (c cancelPoint) arm(e *testEnv) (ctx context.Context, fired func() bool, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	hit := false
	fire := func() {
		mu.Lock()
		hit = true
		mu.Unlock()
		cancel()
	}
	var timer *time.Timer
	if c.offset > 0 {
		e.onProgress = interruptAt(c.offset, fire)
	} else {
		timer = time.AfterFunc(c.after, fire)
	}
	return ctx, func() bool { mu.Lock(); defer mu.Unlock(); return hit }, func() {
		if timer != nil {
			timer.Stop()
		}
		e.onProgress = nil
		cancel()
	}
}

// TestCancelAtRandomPoints cancels snapshots and restores of a volume and a
// Redis, in a file:// and an S3 repository, at random byte offsets and
// moments (seeded; see cancelSeed): a cancelled snapshot leaves no manifest
// and no folder or object, the earlier snapshots verify, and the next run
// completes; a cancelled restore leaves the volume target either as it was
// or fully restored (never a staging folder or part of the tree), and the
// same command completes it.
func TestCancelAtRandomPoints(t *testing.T) {
	seed := cancelSeed(t)
	_, redisSrc := lab.Redis(t)
	_, redisDst := lab.Redis(t)
	seedRedisFaults(t, redisSrc)
	vol := bigTree(t, 16)
	treetest.Fixture(t, filepath.Join(vol, "app"))
	t.Run("file", func(t *testing.T) {
		cancelAtRandomPoints(t, seed, "file://"+t.TempDir(), "", vol, redisSrc, redisDst)
	})
	t.Run("s3", func(t *testing.T) {
		_, url := lab.S3(t)
		cancelAtRandomPoints(t, seed, url, url, vol, redisSrc, redisDst)
	})
}

// cancelAtRandomPoints runs TestCancelAtRandomPoints against one
// repository; direct is its bucket's URL for gocloud, or "" for file://.
func cancelAtRandomPoints(t *testing.T, seed uint64, repo, direct, vol, redisSrc, redisDst string) {
	const iterations = 5
	rng := rand.New(rand.NewPCG(seed, 1))
	owners := treetest.Options{Owners: os.Geteuid() == 0, Root: true}
	e := &testEnv{t: t, repo: repo}
	snapOpts := snapshotOptions{Volume: vol, Redis: redisSrc, Compression: "zstd"}

	// A complete snapshot and restore, for their size and duration.
	snapshotJSON := func(ctx context.Context) (snapshotResult, error) {
		g := e.global()
		g.JSON = true
		err := runSnapshot(ctx, g, snapOpts)
		var res snapshotResult
		if err == nil {
			if jerr := json.Unmarshal(e.stdout.Bytes(), &res); jerr != nil {
				t.Fatalf("snapshot --json: %v", jerr)
			}
		}
		return res, err
	}
	start := time.Now()
	base, err := snapshotJSON(context.Background())
	if err != nil {
		t.Fatalf("snapshot: %v\n%s", err, e.stderr.String())
	}
	snapTook := time.Since(start)
	restoreOpts := func(target string) restoreOptions {
		return restoreOptions{VolumeTo: target, Force: true, RedisTo: redisDst, RedisFlush: true, Yes: true}
	}
	start = time.Now()
	if err := runRestore(context.Background(), e.global(), restoreOpts(t.TempDir()), base.ID); err != nil {
		t.Fatalf("restore: %v\n%s", err, e.stderr.String())
	}
	restoreTook := time.Since(start)
	t.Logf("snapshot of %d bytes: %v, restore: %v", base.RawBytes, snapTook, restoreTook)

	t.Run("snapshot", func(t *testing.T) {
		for i := range iterations {
			point := randomPoint(rng, base.RawBytes, snapTook)
			before := e.ids()
			ctx, fired, stop := point.arm(e)
			res, err := snapshotJSON(ctx)
			stop()
			if err == nil {
				if fired() {
					t.Logf("%d: cancelled %s, after the snapshot was committed", i, point)
				} else {
					t.Logf("%d: snapshot finished before %s", i, point)
				}
				if err := e.verify(res.ID); err != nil {
					t.Fatalf("%d: %v", i, err)
				}
				continue
			}
			t.Logf("%d: cancelled %s: %v", i, point, err)
			if !errors.Is(err, context.Canceled) || exitCode(err) != 1 {
				t.Fatalf("%d: cancelled %s: exit %d, %v", i, point, exitCode(err), err)
			}
			checkNothingCommitted(t, e, before)
			if direct != "" {
				m := failedID.FindStringSubmatch(err.Error())
				if m == nil {
					t.Fatalf("%d: the error does not name the snapshot: %v", i, err)
				}
				checkNoObjects(t, direct, m[1])
				checkNoUploads(t, direct)
			}
		}
		res, err := snapshotJSON(context.Background())
		if err != nil {
			t.Fatalf("the snapshot after the cancelled ones: %v\n%s", err, e.stderr.String())
		}
		if err := e.verify(res.ID); err != nil {
			t.Fatal(err)
		}
		if err := runVerify(context.Background(), e.global(), verifyOptions{AgainstRedis: redisSrc}, res.ID); err != nil {
			t.Fatalf("the snapshot after the cancelled ones differs from the source: %v", err)
		}
	})

	t.Run("restore", func(t *testing.T) {
		var volNames []string
		ents, _ := os.ReadDir(vol)
		for _, ent := range ents {
			volNames = append(volNames, ent.Name())
		}
		for i := range iterations {
			point := randomPoint(rng, base.RawBytes, restoreTook)
			target := t.TempDir()
			if err := os.WriteFile(filepath.Join(target, "keep.txt"), []byte("precious"), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, _, stop := point.arm(e)
			err := runRestore(ctx, e.global(), restoreOpts(target), base.ID)
			stop()
			if err == nil {
				t.Logf("%d: restore finished before %s", i, point)
			} else {
				t.Logf("%d: cancelled %s: %v", i, point, err)
				if !errors.Is(err, context.Canceled) || exitCode(err) != 1 {
					t.Fatalf("%d: cancelled %s: exit %d, %v", i, point, exitCode(err), err)
				}
				// The volume is replaced whole or not at all.
				var names []string
				ents, _ := os.ReadDir(target)
				for _, ent := range ents {
					names = append(names, ent.Name())
				}
				if !slices.Equal(names, []string{"keep.txt"}) && !slices.Equal(names, volNames) {
					t.Fatalf("%d: after the restore cancelled %s the target holds %v", i, point, names)
				}
				for _, n := range names {
					if strings.HasPrefix(n, ".stackport-") {
						t.Fatalf("%d: the cancelled restore left %s", i, n)
					}
				}
				// The same command completes it.
				if err := runRestore(context.Background(), e.global(), restoreOpts(target), base.ID); err != nil {
					t.Fatalf("%d: re-run of the restore cancelled %s: %v\n%s", i, point, err, e.stderr.String())
				}
			}
			treetest.Compare(t, vol, target, owners)
			if err := runVerify(context.Background(), e.global(), verifyOptions{AgainstRedis: redisDst}, base.ID); err != nil {
				t.Fatalf("%d: the Redis target after the restore: %v", i, err)
			}
		}
	})
}
