package redis

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stackport/stackport/internal/faultproxy"
	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/streamtest"
	"github.com/stackport/stackport/snapshot"
)

// realPayload returns the DUMP payload of a string value, made on the server
// at url.
func realPayload(t testing.TB, c *goredis.Client, value string) string {
	t.Helper()
	ctx := context.Background()
	must(t, c.Set(ctx, "payload:tmp", value, 0).Err())
	p, err := c.Dump(ctx, "payload:tmp").Result()
	must(t, err)
	must(t, c.Del(ctx, "payload:tmp").Err())
	return p
}

func TestRestoreErrors(t *testing.T) {
	ctx := context.Background()
	_, srcURL := lab.Redis(t)
	src := plainClient(t, srcURL, 0)
	must(t, src.Set(ctx, "a", "1", 0).Err())
	must(t, src.Set(ctx, "b", "2", 0).Err())
	must(t, plainClient(t, srcURL, 1).Set(ctx, "c", "3", 0).Err())
	m, _ := dump(t, srcURL)

	_, plainURL, tlsURL, ca := lab.RedisTLS(t, memorystoreConfig()...)
	target := withPassword(tlsURL, targetPassword)
	tc := quietClient(t, target, ca, 0)

	t.Run("wrong password", func(t *testing.T) {
		_, err := (&Restorer{URL: withPassword(tlsURL, "not-the-password"), TLSCAFile: ca}).Restore(ctx, m.Reader())
		if err == nil || !strings.Contains(err.Error(), "WRONGPASS") || strings.Contains(err.Error(), "not-the-password") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("no password", func(t *testing.T) {
		_, err := (&Restorer{URL: tlsURL, TLSCAFile: ca}).Restore(ctx, m.Reader())
		if err == nil || !strings.Contains(err.Error(), "NOAUTH") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("TLS without the CA", func(t *testing.T) {
		_, err := (&Restorer{URL: target}).Restore(ctx, m.Reader())
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("CA file with a plain URL", func(t *testing.T) {
		_, err := (&Restorer{URL: withPassword(plainURL, targetPassword), TLSCAFile: ca}).Restore(ctx, m.Reader())
		if err == nil || !strings.Contains(err.Error(), "needs a rediss:// URL") {
			t.Fatalf("got %v", err)
		}
	})

	t.Run("existing key", func(t *testing.T) {
		must(t, tc.Set(ctx, "b", "old", 0).Err())
		must(t, tc.Set(ctx, "other", "kept", 0).Err())
		_, err := (&Restorer{URL: target, TLSCAFile: ca}).Restore(ctx, m.Reader())
		if err == nil || !strings.Contains(err.Error(), `key "b" already exists in database 0`) {
			t.Fatalf("got %v", err)
		}
		if n := tc.Exists(ctx, "a").Val(); n != 0 {
			t.Error("the batch holding the existing key was written")
		}

		stats, err := (&Restorer{URL: target, TLSCAFile: ca, Replace: true}).Restore(ctx, m.Reader())
		if err != nil || stats["restored"] != 3 {
			t.Fatalf("Replace: %v %v", stats, err)
		}
		if v := tc.Get(ctx, "b").Val(); v != "2" {
			t.Errorf("Replace: b = %q", v)
		}
		if tc.Exists(ctx, "other").Val() != 1 {
			t.Error("Replace removed another key")
		}

		if _, err := (&Restorer{URL: target, TLSCAFile: ca, Flush: true}).Restore(ctx, m.Reader()); err != nil {
			t.Fatalf("Flush: %v", err)
		}
		if keys := allKeys(t, tc); strings.Join(keys, ",") != "a,b" {
			t.Errorf("Flush: db 0 holds %q", keys)
		}
	})

	t.Run("resume", func(t *testing.T) {
		must(t, tc.FlushAll(ctx).Err())
		var mu sync.Mutex
		var started []int
		loaded := map[int]int64{}
		r := &Restorer{URL: target, TLSCAFile: ca, Log: slog.New(slog.DiscardHandler),
			Starting: func(_ context.Context, db int) error { started = append(started, db); return nil },
			Loaded:   func(db int, keys int64) { mu.Lock(); loaded[db] = keys; mu.Unlock() }}
		if _, err := r.Restore(ctx, m.Reader()); err != nil {
			t.Fatal(err)
		}
		if len(started) != 2 || loaded[0] != 2 || loaded[1] != 1 {
			t.Fatalf("started %v, loaded %v", started, loaded)
		}
		must(t, tc.Expire(ctx, "a", time.Hour).Err())
		if ks, err := Keyspace(ctx, target, ca); err != nil || len(ks) != 2 || ks[0] != (KeyCount{2, 1}) || ks[1] != (KeyCount{1, 0}) {
			t.Fatalf("Keyspace: %v, %v", ks, err)
		}
		if _, err := (&Restorer{URL: target, TLSCAFile: ca}).Restore(ctx, m.Reader()); !errors.Is(err, snapshot.ErrTargetNotEmpty) {
			t.Fatalf("existing keys: %v", err)
		}
		// db 0 finished (and changed since: skipped, it stays so), db 1
		// half done: its keys are replaced.
		must(t, tc.Set(ctx, "a", "changed", 0).Err())
		tc1 := quietClient(t, target, ca, 1)
		must(t, tc1.Set(ctx, "c", "half", 0).Err())
		started, loaded = nil, map[int]int64{}
		r.Skip = func(db int) bool { return db == 0 }
		r.ReplaceDB = func(db int) bool { return db == 1 }
		stats, err := r.Restore(ctx, m.Reader())
		if err != nil {
			t.Fatal(err)
		}
		if stats["keys"] != 1 || stats["skipped_keys"] != 2 || stats["restored"] != 1 || len(started) != 1 || len(loaded) != 1 || loaded[1] != 1 {
			t.Errorf("stats %v, started %v, loaded %v", stats, started, loaded)
		}
		if a, c := tc.Get(ctx, "a").Val(), tc1.Get(ctx, "c").Val(); a != "changed" || c != "3" {
			t.Errorf("a = %q, c = %q", a, c)
		}
		// The dumper leaves the skipped databases out.
		part := streamtest.New()
		if _, err := (&Dumper{URL: srcURL, SkipDB: r.Skip, Log: slog.New(slog.DiscardHandler)}).Dump(ctx, part); err != nil {
			t.Fatal(err)
		}
		if names := part.Names(); len(names) != 1 || names[0] != "db1.frames" {
			t.Errorf("streams %v", names)
		}
	})

	t.Run("newer RDB version", func(t *testing.T) {
		must(t, tc.FlushDB(ctx).Err())
		must(t, tc.Set(ctx, "keep", "me", 0).Err())
		p := withRDBVersion(realPayload(t, src, "v"), 11) // a payload of Redis 7.2
		data := encode(t, 0, rec{"new", 0, p})
		_, err := (&Restorer{URL: target, TLSCAFile: ca, Flush: true}).Restore(ctx, streamtest.One("db0.frames", data, nil))
		if err == nil || !strings.Contains(err.Error(), "RDB version 11") || !strings.Contains(err.Error(), "RDB version 10 at most") {
			t.Fatalf("got %v", err)
		}
		if keys := allKeys(t, tc); strings.Join(keys, ",") != "keep" {
			t.Errorf("the target changed: %q", keys)
		}
		// The target's own version check agrees.
		err = tc.RestoreReplace(ctx, "new", 0, p).Err()
		if err == nil {
			t.Errorf("the target accepts RDB version 11")
		}
		if _, err := (&Restorer{URL: target, TLSCAFile: ca, TargetRDBVersion: 11}).Restore(ctx, streamtest.One("db0.frames", data, nil)); err == nil || !strings.Contains(err.Error(), `frame 1 (key "new"): RESTORE`) {
			t.Errorf("TargetRDBVersion 11: %v", err)
		}
	})

	t.Run("expired keys and database map", func(t *testing.T) {
		must(t, tc.FlushAll(ctx).Err())
		now := time.Now().UnixMilli()
		p := realPayload(t, src, "v")
		in := &streamtest.Reader{Streams: []streamtest.Stream{
			{Name: "db0.frames", Data: encode(t, 0, rec{"gone", now - 1000, p}, rec{"later", now + 60_000, p}, rec{"forever", 0, p})},
			{Name: "db3.frames", Data: encode(t, 3, rec{"from3", 0, p})},
		}}
		stats, err := (&Restorer{URL: target, TLSCAFile: ca, DBMap: map[int]int{3: 0}}).Restore(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		if stats["restored"] != 3 || stats["skipped_expired"] != 1 || stats["keys"] != 4 {
			t.Errorf("stats %v", stats)
		}
		if keys := allKeys(t, tc); strings.Join(keys, ",") != "forever,from3,later" {
			t.Errorf("db 0 holds %q", keys)
		}
		if ttl := tc.PTTL(ctx, "later").Val(); ttl < 58*time.Second || ttl > time.Minute {
			t.Errorf("TTL of later: %v", ttl)
		}
	})

	t.Run("corrupt frame", func(t *testing.T) {
		must(t, tc.FlushAll(ctx).Err())
		p := realPayload(t, src, "v")
		data := encode(t, 0, rec{"first", 0, p}, rec{"second", 0, p})
		data[len(data)-endFrameSize-5] ^= 0x10
		_, err := (&Restorer{URL: target, TLSCAFile: ca}).Restore(ctx, streamtest.One("db0.frames", data, nil))
		if !errors.Is(err, snapshot.ErrCorrupt) || !strings.Contains(err.Error(), `frame 2 (key "second")`) {
			t.Fatalf("got %v", err)
		}
	})

	t.Run("bad payload", func(t *testing.T) {
		must(t, tc.FlushAll(ctx).Err())
		p := []byte(realPayload(t, src, "value"))
		p[len(p)-1] ^= 1 // the payload's CRC-64
		_, err := (&Restorer{URL: target, TLSCAFile: ca}).Restore(ctx, streamtest.One("db0.frames", encode(t, 0, rec{"k", 0, string(p)}), nil))
		if !errors.Is(err, snapshot.ErrCorrupt) || !strings.Contains(err.Error(), `frame 1 (key "k"): DUMP payload checksum`) {
			t.Fatalf("got %v", err)
		}
		if n := tc.DBSize(ctx).Val(); n != 0 {
			t.Errorf("the target holds %d keys", n)
		}
	})
}

// lockedBuffer is a bytes.Buffer for a log handler.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// killingReader hands out the streams of r; each time the bytes the
// restorer has read pass one of the offsets, it arms the proxy between the
// restorer and the target to reset every connection 64 KiB later: in the
// middle of the next batch of RESTOREs, whatever the machine's speed.
type killingReader struct {
	r       *streamtest.Reader
	proxy   *faultproxy.Proxy
	offsets []int64
	read    int64
}

func (k *killingReader) Next() (string, io.ReadCloser, error) {
	name, rc, err := k.r.Next()
	if err != nil {
		return name, rc, err
	}
	return name, struct {
		io.Reader
		io.Closer
	}{readerFunc(func(p []byte) (int, error) {
		n, err := rc.Read(p)
		k.read += int64(n)
		for len(k.offsets) > 0 && k.read >= k.offsets[0] {
			k.offsets = k.offsets[1:]
			k.proxy.ResetAfter(64 << 10)
		}
		return n, err
	}), rc}, nil
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func TestConnectionKilledMidRestore(t *testing.T) {
	ctx := context.Background()
	_, srcURL := lab.Redis(t, "enable-debug-command yes")
	const n = 60_000
	must(t, plainClient(t, srcURL, 0).Do(ctx, "DEBUG", "POPULATE", n, "key", 20).Err())
	m, _ := dump(t, srcURL)

	target, targetURL := lab.Redis(t)
	admin := plainClient(t, targetURL, 0)
	proxy := faultproxy.New(t, target.Addr)
	var logs lockedBuffer
	in := m.Reader()
	var size int64
	for _, st := range in.Streams {
		size += int64(len(st.Data))
	}
	kr := &killingReader{r: in, proxy: proxy, offsets: []int64{size / 10, size / 3, size * 2 / 3}}
	viaProxy := strings.Replace(targetURL, target.Addr, proxy.Addr(), 1)
	stats, err := (&Restorer{URL: viaProxy, Log: slog.New(slog.NewTextHandler(&logs, nil))}).Restore(ctx, kr)
	if resets := proxy.Stats().Resets; resets == 0 {
		t.Fatalf("no connection was reset (%+v)", proxy.Stats())
	}
	if err != nil {
		t.Fatalf("Restore: %v\n%s", err, logs.String())
	}
	if stats["restored"] != n {
		t.Errorf("stats %v", stats)
	}
	if got := admin.DBSize(ctx).Val(); got != n {
		t.Errorf("target has %d keys, want %d", got, n)
	}
	if !strings.Contains(logs.String(), "retrying") {
		t.Errorf("no retry logged:\n%s", logs.String())
	}
	for _, k := range []string{"key:0", "key:29999", "key:59999"} {
		if v := admin.Get(ctx, k).Val(); v == "" {
			t.Errorf("%s missing", k)
		}
	}
}

func TestTargetRestartedMidRestore(t *testing.T) {
	ctx := context.Background()
	_, srcURL := lab.Redis(t, "enable-debug-command yes")
	must(t, plainClient(t, srcURL, 0).Do(ctx, "DEBUG", "POPULATE", 60_000, "key", 20).Err())
	m, _ := dump(t, srcURL)

	target, targetURL := lab.Redis(t)
	admin := plainClient(t, targetURL, 0)
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		for admin.DBSize(ctx).Val() < 10_000 {
			time.Sleep(time.Millisecond)
		}
		target.Kill()
		target.Start(t)
	}()
	_, err := (&Restorer{URL: targetURL}).Restore(ctx, m.Reader())
	<-restarted
	if !errors.Is(err, errRestarted) {
		t.Fatalf("got %v", err)
	}
}
