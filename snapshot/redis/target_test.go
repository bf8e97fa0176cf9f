package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/streamtest"
	"github.com/stackport/stackport/snapshot"
)

// nextOnly hides Open: a StreamReader like a Pipe's (migrate), whose
// streams come one at a time.
type nextOnly struct{ snapshot.StreamReader }

var quietLog = slog.New(slog.DiscardHandler)

// twoDatabases returns a snapshot of a server with keys a and b in database
// 0 and c in database 3.
func twoDatabases(t *testing.T) *streamtest.Store {
	t.Helper()
	ctx := context.Background()
	_, src := lab.Redis(t)
	must(t, plainClient(t, src, 0).Set(ctx, "a", "1", 0).Err())
	must(t, plainClient(t, src, 0).Set(ctx, "b", "2", time.Hour).Err())
	must(t, plainClient(t, src, 3).Set(ctx, "c", "3", 0).Err())
	m, _ := dump(t, src)
	return m
}

// keysOf returns the keys of every database of the server at url that
// holds some, as "db:key", sorted (for a target that allows INFO and SCAN
// only).
func keysOf(t *testing.T, url, caFile string) []string {
	t.Helper()
	counts, err := Keyspace(context.Background(), url, caFile)
	must(t, err)
	var all []string
	for db := range counts {
		for _, k := range allKeys(t, quietClient(t, url, caFile, db)) {
			all = append(all, fmt.Sprintf("%d:%s", db, k))
		}
	}
	slices.Sort(all)
	return all
}

// wantExit1 fails unless err is an error the CLI exits 1 for: neither
// corrupt data nor a difference (exit 3).
func wantExit1(t *testing.T, err error) {
	t.Helper()
	if err == nil || errors.Is(err, snapshot.ErrCorrupt) || errors.Is(err, snapshot.ErrDiffers) {
		t.Errorf("want an error of exit code 1, got %v", err)
	}
}

// TestRestoreTooFewDatabases restores a snapshot with keys in databases 0
// and 3 into a target with `databases 1`: refused before anything is
// written (also FLUSHDB), the error naming the database and the target's
// databases setting. A reader without Open (migrate's Pipe) gets the same
// refusal once database 0 is written; a database map makes it fit.
func TestRestoreTooFewDatabases(t *testing.T) {
	ctx := context.Background()
	m := twoDatabases(t)
	_, dst := lab.Redis(t, "databases 1")
	tc := plainClient(t, dst, 0)
	must(t, tc.Set(ctx, "theirs", "kept", 0).Err())

	const want = "the target has 1 database (databases 1; SELECT 3: ERR DB index is out of range), but source database 3 goes into its database 3: nothing was written; map the databases with --redis-db-map, e.g. 0:0,3:0"
	for _, flush := range []bool{false, true} {
		_, err := (&Restorer{URL: dst, Flush: flush, Log: quietLog}).Restore(ctx, m.Reader())
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("flush %v: got %v\nwant …%s…", flush, err, want)
		}
		wantExit1(t, err)
		if keys := keysOf(t, dst, ""); !slices.Equal(keys, []string{"0:theirs"}) {
			t.Fatalf("flush %v: the target changed: %q", flush, keys)
		}
	}

	// One stream at a time: database 0 is written, database 3 refused
	// before its first key.
	_, err := (&Restorer{URL: dst, Log: quietLog}).Restore(ctx, nextOnly{m.Reader()})
	if err == nil || !strings.Contains(err.Error(), "the target has 1 database (databases 1; SELECT 3: ERR DB index is out of range), but source database 3 goes into its database 3: target database 0 was written already") {
		t.Fatalf("without Open: got %v", err)
	}
	wantExit1(t, err)

	must(t, tc.FlushAll(ctx).Err())
	stats, err := (&Restorer{URL: dst, DBMap: map[int]int{3: 0}, Log: quietLog}).Restore(ctx, m.Reader())
	if err != nil || stats["restored"] != 3 {
		t.Fatalf("with a database map: %v, %v", stats, err)
	}
	if keys := keysOf(t, dst, ""); !slices.Equal(keys, []string{"0:a", "0:b", "0:c"}) {
		t.Errorf("with a database map: %q", keys)
	}
}

// filled returns a snapshot of n incompressible strings of size bytes in
// database 0, every other one with an expiry, and one key in database 1.
func filled(t *testing.T, n, size int) *streamtest.Store {
	t.Helper()
	ctx := context.Background()
	_, src := lab.Redis(t)
	c := plainClient(t, src, 0)
	rnd := rand.New(rand.NewPCG(3, 4))
	p := c.Pipeline()
	for i := range n {
		ttl := time.Duration(0)
		if i%2 == 0 {
			ttl = time.Hour
		}
		p.Set(ctx, fmt.Sprintf("big:%d", i), randomString(rnd, size), ttl)
	}
	_, err := p.Exec(ctx)
	must(t, err)
	must(t, plainClient(t, src, 1).Set(ctx, "one", "v", 0).Err())
	m, stats := dump(t, src)
	if stats["bytes"] < int64(n*size) {
		t.Fatalf("the snapshot holds %d bytes", stats["bytes"])
	}
	return m
}

// evictedKeys returns the target's INFO stats evicted_keys.
func evictedKeys(t *testing.T, c *goredis.Client) string {
	t.Helper()
	return infoField(infoSection(t, c, "stats"), "evicted_keys")
}

func infoSection(t *testing.T, c *goredis.Client, section string) string {
	t.Helper()
	text, err := c.Info(context.Background(), section).Result()
	must(t, err)
	return text
}

// TestRestoreEvictingTarget: a target with maxmemory 2mb and an evicting
// policy is refused before anything is written when the snapshot (3 MB)
// does not clearly fit (the restore used to report every key restored
// while the target evicted them); with 8mb the restore stops before the
// batch that would come close to the limit, no key evicted; with 64mb it
// fits. A limit lowered during the restore, so that the target evicts,
// fails it. The same 2mb with noeviction fails at the first RESTORE the
// target refuses (OOM), naming the limit.
func TestRestoreEvictingTarget(t *testing.T) {
	ctx := context.Background()
	big := filled(t, 300, 10_000)
	for _, policy := range []string{"allkeys-lru", "volatile-lru", "allkeys-random"} {
		_, dst := lab.Redis(t, "maxmemory 2mb", "maxmemory-policy "+policy)
		want := regexp.MustCompile(`frames 1 to 300: the target 127\.0\.0\.1:\d+ evicts keys when its memory is full \(maxmemory 2.0 MiB, maxmemory-policy ` + policy +
			`\), and the snapshot does not clearly fit: .* used, the next 300 keys take 2.9 MiB as DUMP payloads \(more in memory\); nothing was written, no key was evicted: set maxmemory-policy noeviction`)
		for _, in := range []snapshot.StreamReader{big.Reader(), nextOnly{big.Reader()}} {
			_, err := (&Restorer{URL: dst, Log: quietLog}).Restore(ctx, in)
			if err == nil || !want.MatchString(err.Error()) {
				t.Errorf("%s: got %v", policy, err)
			}
			wantExit1(t, err)
		}
		if n := plainClient(t, dst, 0).DBSize(ctx).Val(); n != 0 {
			t.Errorf("%s: the target holds %d keys", policy, n)
		}
	}
	// With Flush: refused before the FLUSHDB too.
	_, dst := lab.Redis(t, "maxmemory 2mb", "maxmemory-policy allkeys-lru")
	tc := plainClient(t, dst, 0)
	must(t, tc.Set(ctx, "theirs", "kept", 0).Err())
	_, err := (&Restorer{URL: dst, Flush: true, Log: quietLog}).Restore(ctx, big.Reader())
	if err == nil || !strings.Contains(err.Error(), " used without its data, the next 300 keys take 2.9 MiB as DUMP payloads (more in memory); nothing was written (nor flushed), no key was evicted") {
		t.Errorf("flush: got %v", err)
	}
	if keys := keysOf(t, dst, ""); !slices.Equal(keys, []string{"0:theirs"}) {
		t.Errorf("flush: the target changed: %q", keys)
	}

	// 5,000 keys of 1 KB, in batches of 1,000: some batches fit, then
	// one would not.
	many := filled(t, 5000, 1000)
	_, dst = lab.Redis(t, "maxmemory 8mb", "maxmemory-policy allkeys-lru")
	tc = plainClient(t, dst, 0)
	_, err = (&Restorer{URL: dst, Log: quietLog}).Restore(ctx, many.Reader())
	if err == nil || !regexp.MustCompile(`; stopped after \d+ keys were written, no key was evicted`).MatchString(err.Error()) {
		t.Errorf("8mb: got %v", err)
	}
	if n := tc.DBSize(ctx).Val(); n < 1000 || n >= 5000 || evictedKeys(t, tc) != "0" {
		t.Errorf("8mb: the target holds %d keys, evicted %s", n, evictedKeys(t, tc))
	}

	_, dst = lab.Redis(t, "maxmemory 64mb", "maxmemory-policy allkeys-lru")
	tc = plainClient(t, dst, 0)
	if stats, err := (&Restorer{URL: dst, Log: quietLog}).Restore(ctx, big.Reader()); err != nil || stats["restored"] != 301 {
		t.Errorf("64mb: %v, %v", stats, err)
	}
	// Again, flushed first: the memory the FLUSHDB ASYNC frees counts.
	if stats, err := (&Restorer{URL: dst, Flush: true, Log: quietLog}).Restore(ctx, big.Reader()); err != nil || stats["restored"] != 301 {
		t.Errorf("64mb, flushed: %v, %v", stats, err)
	}
	// The limit lowered behind the restore's back: the target evicts.
	must(t, tc.FlushAll(ctx).Err())
	r := &Restorer{URL: dst, Log: quietLog, Starting: func(_ context.Context, db int) error {
		if db == 1 {
			return tc.ConfigSet(ctx, "maxmemory", "2mb").Err()
		}
		return nil
	}}
	_, err = r.Restore(ctx, big.Reader())
	if !errors.Is(err, snapshot.ErrDiffers) || !regexp.MustCompile(`the target evicted \d+ keys while the restore wrote \(INFO stats evicted_keys; maxmemory 2.00M, maxmemory-policy allkeys-lru now\)`).MatchString(err.Error()) {
		t.Errorf("evicting meanwhile: %v", err)
	}

	_, dst = lab.Redis(t, "maxmemory 2mb", "maxmemory-policy noeviction")
	_, err = (&Restorer{URL: dst, Log: quietLog}).Restore(ctx, big.Reader())
	if err == nil || !strings.Contains(err.Error(), "OOM command not allowed") || !strings.Contains(err.Error(), "the snapshot does not fit into the target's memory (maxmemory 2.0 MiB)") {
		t.Errorf("noeviction: got %v", err)
	}
	wantExit1(t, err)

	// No limit: an evicting policy evicts nothing.
	_, dst = lab.Redis(t, "maxmemory-policy allkeys-lru")
	if stats, err := (&Restorer{URL: dst, Log: quietLog}).Restore(ctx, big.Reader()); err != nil || stats["restored"] != 301 {
		t.Errorf("allkeys-lru without maxmemory: %v, %v", stats, err)
	}
}

// TestRestoreChecksWithoutConfig makes the checks against Memorystore-like
// targets (CONFIG and the other blocked commands renamed away, a password):
// too few databases and Memorystore's default policy volatile-lru are
// refused before writing; a target that fits takes the snapshot, and its
// key counts are checked with DBSIZE.
func TestRestoreChecksWithoutConfig(t *testing.T) {
	ctx := context.Background()
	m := twoDatabases(t)

	_, one := lab.Redis(t, lab.Memorystore(`requirepass "`+targetPassword+`"`, "databases 1")...)
	one = withPassword(one, targetPassword)
	if err := quietClient(t, one, "", 0).Do(ctx, "CONFIG", "GET", "databases").Err(); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Fatalf("CONFIG is not blocked: %v", err)
	}
	_, err := (&Restorer{URL: one, Flush: true, Log: quietLog}).Restore(ctx, m.Reader())
	if err == nil || !strings.Contains(err.Error(), "the target has 1 database (databases 1; SELECT 3: ERR DB index is out of range), but source database 3 goes into its database 3: nothing was written") {
		t.Fatalf("databases 1: got %v", err)
	}
	if keys := keysOf(t, one, ""); len(keys) != 0 {
		t.Errorf("databases 1: the target holds %q", keys)
	}
	// The Checker names the missing database too.
	if _, err := (&Checker{URL: one, Log: quietLog}).Restore(ctx, m.Reader()); err == nil || !strings.Contains(err.Error(), "the target has 1 database (databases 1; SELECT 3") {
		t.Errorf("Checker into databases 1: %v", err)
	}

	// Memorystore's default policy, volatile-lru: refused when the
	// snapshot does not clearly fit (INFO memory tells, CONFIG blocked),
	// taken when it does.
	_, lru := lab.Redis(t, lab.Memorystore(`requirepass "`+targetPassword+`"`, "maxmemory 2mb", "maxmemory-policy volatile-lru")...)
	lru = withPassword(lru, targetPassword)
	_, err = (&Restorer{URL: lru, Log: quietLog}).Restore(ctx, filled(t, 300, 10_000).Reader())
	if err == nil || !strings.Contains(err.Error(), " evicts keys when its memory is full (maxmemory 2.0 MiB, maxmemory-policy volatile-lru), and the snapshot does not clearly fit") ||
		!strings.Contains(err.Error(), "gcloud redis instances update INSTANCE --update-redis-config maxmemory-policy=noeviction") {
		t.Fatalf("volatile-lru: got %v", err)
	}
	if keys := keysOf(t, lru, ""); len(keys) != 0 {
		t.Errorf("volatile-lru: the target holds %q", keys)
	}
	_, lru = lab.Redis(t, lab.Memorystore(`requirepass "`+targetPassword+`"`, "maxmemory 64mb", "maxmemory-policy volatile-lru")...)
	lru = withPassword(lru, targetPassword)
	if stats, err := (&Restorer{URL: lru, Log: quietLog}).Restore(ctx, m.Reader()); err != nil || stats["restored"] != 3 {
		t.Fatalf("volatile-lru, 64mb: %v, %v", stats, err)
	}

	_, ok := lab.Redis(t, lab.Memorystore(`requirepass "`+targetPassword+`"`, "maxmemory 64mb", "maxmemory-policy noeviction")...)
	ok = withPassword(ok, targetPassword)
	errorsBefore := errorStats(t, quietClient(t, ok, "", 0))
	stats, err := (&Restorer{URL: ok, Log: quietLog}).Restore(ctx, m.Reader())
	if err != nil || stats["restored"] != 3 {
		t.Fatalf("noeviction: %v, %v", stats, err)
	}
	checkCommands(t, quietClient(t, ok, "", 0), errorsBefore, "dbsize")
	if keys := keysOf(t, ok, ""); !slices.Equal(keys, []string{"0:a", "0:b", "3:c"}) {
		t.Errorf("noeviction: %q", keys)
	}
}

// TestRestoreCountsKeys: keys that vanish from a database the restore
// wrote fail it, naming the database and the counts; keys that expire
// during the restore do not.
func TestRestoreCountsKeys(t *testing.T) {
	ctx := context.Background()
	_, src := lab.Redis(t)
	s0, s1 := plainClient(t, src, 0), plainClient(t, src, 1)
	for i := range 100 {
		must(t, s0.Set(ctx, fmt.Sprintf("k%d", i), "v", 0).Err())
	}
	must(t, s1.Set(ctx, "one", "v", 0).Err())
	// snap returns a snapshot with 50 more keys in database 0 that
	// expire 0.3 to 2.5 s after it is taken: some before they are
	// written, the others while the restore waits in Starting.
	snap := func() *streamtest.Store {
		for i := range 50 {
			must(t, s0.Set(ctx, fmt.Sprintf("short%d", i), "v", time.Duration(300+44*i)*time.Millisecond).Err())
		}
		m, _ := dump(t, src)
		return m
	}

	// Keys deleted behind the restore's back, more than could have
	// expired (as the silently dropped writes and the evictions of
	// issue 13 lost them).
	_, dst := lab.Redis(t)
	t0 := plainClient(t, dst, 0)
	must(t, t0.Set(ctx, "theirs", "v", 0).Err())
	r := &Restorer{URL: dst, Log: quietLog, Starting: func(_ context.Context, db int) error {
		if db == 1 {
			for i := range 60 {
				if err := t0.Del(ctx, fmt.Sprintf("k%d", i)).Err(); err != nil {
					return err
				}
			}
		}
		return nil
	}}
	_, err := r.Restore(ctx, snap().Reader())
	if !errors.Is(err, snapshot.ErrDiffers) || !regexp.MustCompile(`database 0 of the target holds \d+ keys after the restore, but \d+ were written into it \(it held 1 before\): \d+ missing, of which at most \d+ could have expired meanwhile`).MatchString(err.Error()) {
		t.Fatalf("keys deleted: %v", err)
	}

	// Keys that expire meanwhile are no loss, with Replace (EXISTS
	// counts the keys replaced) or not, and the target's own keys that
	// expire neither.
	for _, replace := range []bool{false, true} {
		must(t, t0.FlushAll(ctx).Err())
		must(t, t0.Set(ctx, "temp", "theirs", 500*time.Millisecond).Err())
		if replace {
			must(t, t0.Set(ctx, "k3", "theirs", 0).Err())
		}
		r := &Restorer{URL: dst, Replace: replace, Log: quietLog, Starting: func(_ context.Context, db int) error {
			if db == 1 {
				time.Sleep(3 * time.Second)
			}
			return nil
		}}
		stats, err := r.Restore(ctx, snap().Reader())
		if err != nil {
			t.Fatalf("replace %v: keys expired meanwhile: %v", replace, err)
		}
		// Keys with an expiry were written, and expired.
		if keys := allKeys(t, t0); stats["restored"] < 111 || len(keys) != 100 {
			t.Errorf("replace %v: stats %v, %d keys left in database 0", replace, stats, len(keys))
		}
	}
}

func TestExpiryCounts(t *testing.T) {
	var e expiryCounts
	if e.by(1<<62) != 0 {
		t.Fatal("empty")
	}
	e.add(0, 1) // no expiry: not counted
	const base = 1_800_000_000_000
	for i := range int64(100_000) {
		e.add(base+i*100, 1) // 10 a second, over 10,000 seconds
	}
	e.add(base, -1)
	if len(e.buckets) > maxExpiryBuckets {
		t.Errorf("%d buckets", len(e.buckets))
	}
	for _, tc := range []struct{ at, min, max int64 }{
		{base - 1, 0, 0},
		{base + 50_000, 500, 500 + 10*e.width/1000},
		{base + 10_000_000, 99_999, 99_999},
	} {
		if n := e.by(tc.at); n < tc.min || n > tc.max {
			t.Errorf("by(base%+d) = %d, want %d to %d (width %d ms)", tc.at-base, n, tc.min, tc.max, e.width)
		}
	}
}

// TestPipelineSetupError: a pipeline on a connection whose SELECT fails
// reports the failure, although go-redis leaves each command's error nil.
func TestPipelineSetupError(t *testing.T) {
	ctx := context.Background()
	_, url := lab.Redis(t, "databases 1")
	opt, err := Options(url, "")
	must(t, err)
	c := client(opt, 3)
	defer c.Close()
	pipe := c.Pipeline()
	cmd := pipe.Do(ctx, "SET", "k", "v")
	err = execPipeline(ctx, pipe)
	if err == nil || !strings.Contains(err.Error(), "DB index is out of range") || cmd.Err() != nil {
		t.Fatalf("execPipeline: %v (the command's error: %v)", err, cmd.Err())
	}
	// Commands that fail on their own are left to the caller.
	c0 := client(opt, 0)
	defer c0.Close()
	pipe = c0.Pipeline()
	get := pipe.Get(ctx, "missing")
	bad := pipe.Do(ctx, "NOSUCHCOMMAND")
	if err := execPipeline(ctx, pipe); err != nil || !errors.Is(get.Err(), goredis.Nil) || bad.Err() == nil {
		t.Fatalf("execPipeline: %v, %v, %v", err, get.Err(), bad.Err())
	}
}
