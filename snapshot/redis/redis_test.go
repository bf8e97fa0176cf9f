package redis

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/stackport/stackport/internal/streamtest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/snapshot"
)

// withPassword returns url with the target password.
func withPassword(u, password string) string {
	p, err := url.Parse(u)
	if err != nil {
		panic(err)
	}
	p.User = url.UserPassword("", password)
	return p.String()
}

// dump snapshots the server at url into a memStore.
func dump(t testing.TB, url string) (*streamtest.Store, snapshot.Stats) {
	t.Helper()
	m := streamtest.New()
	stats, err := (&Dumper{URL: url}).Dump(context.Background(), m)
	if err != nil {
		t.Fatalf("Dump: %v", err)
	}
	return m, stats
}

func TestRoundTripMemorystore(t *testing.T) {
	ctx := context.Background()
	_, srcURL := lab.Redis(t)
	counts := fixture(t, srcURL, fixtureOptions{big: true})

	enc := encodings(t, plainClient(t, srcURL, 0))
	for _, e := range []string{"int", "embstr", "raw", "listpack", "quicklist", "intset", "hashtable", "skiplist", "stream"} {
		if !enc[e] {
			t.Errorf("fixture lacks encoding %s (has %v)", e, enc)
		}
	}

	m, stats := dump(t, srcURL)
	if !slices.Equal(m.Names(), []string{"db0.frames", "db1.frames", "db5.frames"}) {
		t.Fatalf("streams %v", m.Names())
	}
	total := 0
	for db, n := range counts {
		total += n
		if got := stats[fmt.Sprintf("db%d_keys", db)]; got != int64(n) {
			t.Errorf("stats db%d_keys = %d, want %d", db, got, n)
		}
	}
	if stats["keys"] != int64(total) || stats["skipped_deleted"] != 0 || stats["rdb_version"] != 10 || stats["bytes"] < 20<<20 {
		t.Errorf("dump stats %v", stats)
	}

	vstats, err := Verifier{}.Restore(ctx, m.Reader())
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	for _, k := range []string{"keys", "bytes", "rdb_version", "db0_keys", "db1_keys", "db5_keys"} {
		if vstats[k] != stats[k] {
			t.Errorf("verify stats %s = %d, dump %d", k, vstats[k], stats[k])
		}
	}

	_, _, tlsURL, ca := lab.RedisTLS(t, memorystoreConfig()...)
	target := withPassword(tlsURL, targetPassword)
	errorsBefore := errorStats(t, quietClient(t, target, ca, 0))
	r := m.Reader()
	rstats, err := (&Restorer{URL: target, TLSCAFile: ca}).Restore(ctx, r)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if !r.AllRead() {
		t.Error("Restore did not read every stream to its end")
	}
	if rstats["restored"] != int64(total) || rstats["skipped_expired"] != 0 || rstats["keys"] != int64(total) {
		t.Errorf("restore stats %v", rstats)
	}
	checkCommands(t, quietClient(t, target, ca, 0), errorsBefore, "dbsize")

	// The Checker finds no difference, then each one made.
	errorsBefore = errorStats(t, quietClient(t, target, ca, 0))
	cstats, err := (&Checker{URL: target, TLSCAFile: ca}).Restore(ctx, m.Reader())
	if err != nil || cstats["matched"] != int64(total) || cstats["differences"] != 0 || cstats["unverified"] != 0 {
		t.Fatalf("Checker: %v %v", cstats, err)
	}
	checkCommands(t, quietClient(t, target, ca, 0), errorsBefore, "dump", "pttl", "dbsize")

	for db := range counts {
		compareDB(t, plainClient(t, srcURL, db), quietClient(t, target, ca, db))
	}

	tc := quietClient(t, target, ca, 0)
	must(t, tc.Del(ctx, "str:short").Err())
	must(t, tc.HSet(ctx, "big:hash", "field:7", "changed").Err())
	must(t, tc.SAdd(ctx, "set:big", "extra member").Err())
	must(t, tc.Persist(ctx, "ttl:minute").Err())
	must(t, quietClient(t, target, ca, 5).Set(ctx, "extra", "key", 0).Err())
	must(t, quietClient(t, target, ca, 1).RPush(ctx, "str:short", "x").Err())
	cstats, err = (&Checker{URL: target, TLSCAFile: ca}).Restore(ctx, m.Reader())
	if !errors.Is(err, ErrDiffers) || !strings.Contains(err.Error(), "7 differences") {
		t.Errorf("Checker after changes: %v", err)
	}
	// five keys, and the key counts of databases 0 and 5
	if cstats["differences"] != 7 || cstats["matched"] != int64(total-5) {
		t.Errorf("Checker after changes: %v", cstats)
	}
}

// errorStats returns the target's INFO errorstats.
func errorStats(t testing.TB, c *goredis.Client) string {
	t.Helper()
	text, err := c.Info(context.Background(), "errorstats").Result()
	must(t, err)
	return text
}

// checkCommands fails if the target saw any command besides those the
// Restorer may send, or answered any with an error (as it does to a
// renamed-away command) since its errorstats were errorsBefore.
func checkCommands(t testing.TB, c *goredis.Client, errorsBefore string, more ...string) {
	t.Helper()
	ctx := context.Background()
	allowed := map[string]bool{"hello": true, "auth": true, "info": true, "select": true, "ping": true,
		"exists": true, "restore": true, "flushdb": true}
	for _, name := range more {
		allowed[name] = true
	}
	text, err := c.Info(ctx, "commandstats").Result()
	must(t, err)
	for line := range strings.SplitSeq(text, "\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_"); ok {
			if name, _, _ := strings.Cut(rest, ":"); !allowed[name] {
				t.Errorf("the target saw %s", strings.TrimSpace(line))
			}
		}
	}
	if text := errorStats(t, c); text != errorsBefore {
		t.Errorf("the target answered with errors:\n%s\nbefore the restore:\n%s", text, errorsBefore)
	}
}

func TestDumpSkipsDeletedKeys(t *testing.T) {
	ctx := context.Background()
	_, url := lab.Redis(t)
	c := plainClient(t, url, 0)
	must(t, c.Set(ctx, "a", "1", 0).Err())
	must(t, c.Set(ctx, "b", "2", time.Minute).Err())
	var buf bytes.Buffer
	stats := snapshot.Stats{}
	b := &dumpBatch{c: c, fw: newFrameWriter(&buf, 0), stats: stats}
	// "gone" stands for a key SCAN returned that was deleted before DUMP.
	must(t, b.dump(ctx, []string{"a", "gone", "b"}))
	must(t, b.fw.finish())
	if stats["skipped_deleted"] != 1 || stats["keys"] != 2 {
		t.Errorf("stats %v", stats)
	}
	_, recs, err := decodeAll(buf.Bytes(), "db0.frames")
	must(t, err)
	if len(recs) != 2 || recs[0].key != "a" || recs[0].expiry != 0 || recs[1].key != "b" {
		t.Fatalf("records %+.30v", recs)
	}
	if d := recs[1].expiry - time.Now().Add(time.Minute).UnixMilli(); d > 0 || d < -1000 {
		t.Errorf("expiry of b is %d ms off", d)
	}
}

func TestDumpEmptyServer(t *testing.T) {
	_, url := lab.Redis(t)
	m, stats := dump(t, url)
	if len(m.Names()) != 0 || stats["keys"] != 0 {
		t.Errorf("streams %v, stats %v", m.Names(), stats)
	}
}

func TestDumpErrors(t *testing.T) {
	ctx := context.Background()
	_, url := lab.Redis(t, `requirepass "pw"`)
	for _, tc := range []struct{ url, want string }{
		{withPassword(url, "wrong"), "WRONGPASS"},
		{url, "NOAUTH"},
		{"http://127.0.0.1:1/", `invalid URL scheme "http"`},
		{"redis://127.0.0.1:1/", "connection refused"},
	} {
		_, err := (&Dumper{URL: tc.url}).Dump(ctx, streamtest.New())
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "redis: ") {
			t.Errorf("%s: got %v, want %q", tc.url, err, tc.want)
		}
	}
}
