package main

// The fault tests put a fault-injecting TCP proxy (internal/faultproxy)
// between stackport and a real server and check what the user gets: a
// command either succeeds with a result that verifies (against the source
// for a snapshot, against the target for a restore) or fails with a clear
// error; a failed snapshot leaves no manifest and earlier snapshots verify;
// a failed restore is completed by a re-run with the same flags (plus the
// cleanup flag the component documents). A database server killed and
// restarted mid-dump must fail the snapshot. Each database runs the same
// suite (runFaultSuite); the S3 backend has its own (faults_s3_test.go).

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackport/stackport/internal/faultproxy"
	"github.com/stackport/stackport/internal/lab"
)

// faultDB describes one database component for runFaultSuite.
type faultDB struct {
	kind     string // component kind: redis, mongo, postgres
	src, dst *lab.Server
	srcURL   string // direct URLs
	dstURL   string
	// rawSize is about how many bytes a dump of the source moves.
	rawSize int64

	snapshotOpts func(url string) snapshotOptions
	restoreOpts  func(url string) restoreOptions
	// cleanup adds the flag a re-run after a failed restore needs, per
	// the README (nil: none is needed, the re-run uses the same flags).
	cleanup     func(*restoreOptions)
	verifyOpts  func(url string) verifyOptions
	emptyTarget func(t *testing.T)
	// settle, when set, waits until the target has finished the work a
	// failed restore left in flight on the server, before a re-run.
	settle func(t *testing.T)
	// failFast, when set, adds to a URL the documented option that makes
	// an unreachable server fail at once (for the refused subtest).
	failFast func(url string) string
	// restoreRetries says that the restorer retries a dropped connection
	// for many seconds (the README promises it for Redis): instead of a
	// link that keeps failing (which would take that long to give up) the
	// restore gets an outage of a second that ends, and must succeed.
	restoreRetries bool
}

// via returns url with the server's address replaced by the proxy's.
func via(url string, srv *lab.Server, p *faultproxy.Proxy) string {
	if !strings.Contains(url, srv.Addr) {
		panic(fmt.Sprintf("URL %s does not name %s", url, srv.Addr))
	}
	return strings.Replace(url, srv.Addr, p.Addr(), 1)
}

// ids returns the IDs that list shows.
func (e *testEnv) ids() []string {
	var out []string
	for _, l := range e.list() {
		out = append(out, l.ID)
	}
	return out
}

// faultTimeout bounds every command under a fault: a command that hangs
// instead of failing fails the test.
const faultTimeout = 60 * time.Second

func faultCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
	t.Cleanup(cancel)
	return ctx
}

// checkClearFailure checks the error a command ended with after a fault:
// exit code 1 (a failure, not corrupt data, not a usage error), naming the
// component, without a panic or a bare "EOF"; a failed snapshot says that
// nothing was committed. It also checks that the command did not run into
// the test's timeout (a hang).
func checkClearFailure(t *testing.T, ctx context.Context, err error, kind string, snapshot bool) {
	t.Helper()
	if err == nil {
		t.Fatal("want an error")
	}
	msg := err.Error()
	t.Logf("error seen by the operator: %s", msg)
	if code := exitCode(err); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if ctx.Err() != nil {
		t.Errorf("the command hung until the test's %v timeout", faultTimeout)
	}
	if !strings.Contains(msg, kind) {
		t.Errorf("the error does not name the component %s", kind)
	}
	if snapshot && !strings.Contains(msg, "nothing was committed") {
		t.Errorf("a failed snapshot's error does not say that nothing was committed")
	}
	if strings.Contains(msg, "panic") || msg == "EOF" || msg == "unexpected EOF" {
		t.Errorf("unclear error")
	}
}

// checkNothingCommitted checks that the repository lists exactly the
// snapshots it listed before a failed run and that they all verify; in a
// file:// repository also that the failed run left no folder behind.
func checkNothingCommitted(t *testing.T, e *testEnv, before []string) {
	t.Helper()
	if after := e.ids(); !slices.Equal(after, before) {
		t.Fatalf("after the failed snapshot the repository lists %v, want %v", after, before)
	}
	if dir, ok := strings.CutPrefix(e.repo, "file://"); ok {
		ents, err := os.ReadDir(filepath.Join(dir, "snapshots"))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, ent := range ents {
			names = append(names, ent.Name())
		}
		// Folders sort by name; list sorts snapshots of one second by
		// their creation time.
		if !slices.Equal(names, slices.Sorted(slices.Values(before))) {
			t.Fatalf("the failed snapshot left folders behind: %v, want %v", names, before)
		}
	}
	for _, id := range before {
		if err := e.verify(id); err != nil {
			t.Fatalf("earlier snapshot %s: %v", id, err)
		}
	}
}

// checkSnapshotMatchesSource verifies snapshot id and compares it with the
// (unchanged) source: a snapshot that survived a fault must be complete.
func checkSnapshotMatchesSource(t *testing.T, e *testEnv, h *faultDB, id string) {
	t.Helper()
	if err := e.verify(id); err != nil {
		t.Fatalf("verify %s: %v", id, err)
	}
	if err := runVerify(context.Background(), e.global(), h.verifyOpts(h.srcURL), id); err != nil {
		t.Fatalf("snapshot %s differs from its source: %v\n%s", id, err, e.stderr.String())
	}
}

// runFaultSuite runs the fault checks against one database. It ends by
// killing the source server, so it must come last on that server.
func runFaultSuite(t *testing.T, h *faultDB) {
	e := &testEnv{t: t, repo: "file://" + t.TempDir()}
	base, err := e.snapshot(context.Background(), h.snapshotOpts(h.srcURL))
	if err != nil {
		t.Fatalf("snapshot without faults: %v\n%s", err, e.stderr.String())
	}
	checkSnapshotMatchesSource(t, e, h, base)
	verifyTarget := func(t *testing.T) {
		t.Helper()
		if err := runVerify(context.Background(), e.global(), h.verifyOpts(h.dstURL), base); err != nil {
			t.Fatalf("verify --against the target: %v", err)
		}
	}
	// rerun runs a failed restore again through p, healed, with the
	// cleanup flag the component documents, after the target settled.
	rerun := func(t *testing.T, p *faultproxy.Proxy, opts restoreOptions) {
		t.Helper()
		p.Heal()
		if h.settle != nil {
			h.settle(t)
		}
		if h.cleanup != nil {
			h.cleanup(&opts)
		}
		if err := runRestore(faultCtx(t), e.global(), opts, base); err != nil {
			t.Fatalf("re-run of the failed restore: %v\n%s", err, e.stderr.String())
		}
		verifyTarget(t)
	}

	// A slow link: latency and a bandwidth limit of about twice the dump's
	// size per second. The commands succeed, only slower.
	bandwidth := max(h.rawSize*2, 1<<20)
	minTime := time.Duration(float64(h.rawSize) / float64(bandwidth) * 0.8 * float64(time.Second))
	t.Run("snapshot over a slow link", func(t *testing.T) {
		p := faultproxy.New(t, h.src.Addr)
		p.SetLatency(2 * time.Millisecond)
		p.SetBandwidth(bandwidth)
		start := time.Now()
		id, err := e.snapshot(faultCtx(t), h.snapshotOpts(via(h.srcURL, h.src, p)))
		if err != nil {
			t.Fatalf("snapshot: %v\n%s", err, e.stderr.String())
		}
		took := time.Since(start)
		t.Logf("%s snapshot over %v latency and %d KiB/s took %v (%d bytes through the proxy)", h.kind, 2*time.Millisecond, bandwidth>>10, took, p.Stats().Forwarded)
		if s := p.Stats(); s.Forwarded < h.rawSize/2 || took < minTime {
			t.Fatalf("the dump did not go through the slow link: %+v in %v", s, took)
		}
		checkSnapshotMatchesSource(t, e, h, id)
	})
	t.Run("restore over a slow link", func(t *testing.T) {
		h.emptyTarget(t)
		p := faultproxy.New(t, h.dst.Addr)
		p.SetLatency(2 * time.Millisecond)
		p.SetBandwidth(bandwidth)
		start := time.Now()
		if err := runRestore(faultCtx(t), e.global(), h.restoreOpts(via(h.dstURL, h.dst, p)), base); err != nil {
			t.Fatalf("restore: %v\n%s", err, e.stderr.String())
		}
		took := time.Since(start)
		t.Logf("%s restore over a slow link took %v (%d bytes through the proxy)", h.kind, took, p.Stats().Forwarded)
		if s := p.Stats(); s.Forwarded < h.rawSize/2 || took < minTime {
			t.Fatalf("the restore did not go through the slow link: %+v in %v", s, took)
		}
		verifyTarget(t)
	})

	// Every connection reset once, a third into the dump: the dump
	// either retries to a complete snapshot or fails cleanly.
	t.Run("snapshot with connections reset mid-stream", func(t *testing.T) {
		before := e.ids()
		p := faultproxy.New(t, h.src.Addr)
		p.ResetAfter(h.rawSize / 3)
		ctx := faultCtx(t)
		id, err := e.snapshot(ctx, h.snapshotOpts(via(h.srcURL, h.src, p)))
		if p.Stats().Resets == 0 {
			t.Fatalf("the fault did not fire (%+v); the dump is smaller than assumed", p.Stats())
		}
		if err != nil {
			checkClearFailure(t, ctx, err, h.kind, true)
			if id != "" {
				t.Errorf("a failed snapshot printed %q", id)
			}
			checkNothingCommitted(t, e, before)
			return
		}
		t.Logf("the snapshot survived %d reset connections", p.Stats().Resets)
		checkSnapshotMatchesSource(t, e, h, id)
	})
	// Every connection, the retries' too, reset after 64 KiB: the dump
	// must fail, promptly and cleanly.
	t.Run("snapshot with every connection reset", func(t *testing.T) {
		before := e.ids()
		p := faultproxy.New(t, h.src.Addr)
		p.ResetConnsAfter(64 << 10)
		start := time.Now()
		ctx := faultCtx(t)
		id, err := e.snapshot(ctx, h.snapshotOpts(via(h.srcURL, h.src, p)))
		t.Logf("failed after %v and %d resets", time.Since(start).Round(time.Millisecond), p.Stats().Resets)
		if err == nil {
			t.Fatalf("snapshot %s succeeded through a link that resets every connection after 64 KiB", id)
		}
		checkClearFailure(t, ctx, err, h.kind, true)
		checkNothingCommitted(t, e, before)
	})
	t.Run("snapshot with connections refused", func(t *testing.T) {
		before := e.ids()
		p := faultproxy.New(t, h.src.Addr)
		p.Refuse(true)
		url := via(h.srcURL, h.src, p)
		if h.failFast != nil {
			url = h.failFast(url)
		}
		start := time.Now()
		ctx := faultCtx(t)
		_, err := e.snapshot(ctx, h.snapshotOpts(url))
		t.Logf("failed after %v", time.Since(start).Round(time.Millisecond))
		checkClearFailure(t, ctx, err, h.kind, true)
		checkNothingCommitted(t, e, before)
	})

	t.Run("restore with connections reset mid-stream", func(t *testing.T) {
		h.emptyTarget(t)
		p := faultproxy.New(t, h.dst.Addr)
		p.ResetAfter(h.rawSize / 3)
		opts := h.restoreOpts(via(h.dstURL, h.dst, p))
		ctx := faultCtx(t)
		err := runRestore(ctx, e.global(), opts, base)
		if p.Stats().Resets == 0 {
			t.Fatalf("the fault did not fire (%+v)", p.Stats())
		}
		if err == nil {
			t.Logf("the restore survived %d reset connections", p.Stats().Resets)
			verifyTarget(t)
			return
		}
		checkClearFailure(t, ctx, err, h.kind, false)
		rerun(t, p, opts)
	})
	t.Run("restore with every connection reset", func(t *testing.T) {
		if h.restoreRetries {
			t.Skip("the restorer retries for longer than this suite runs; see the outage subtest")
		}
		h.emptyTarget(t)
		p := faultproxy.New(t, h.dst.Addr)
		p.ResetConnsAfter(64 << 10)
		opts := h.restoreOpts(via(h.dstURL, h.dst, p))
		start := time.Now()
		ctx := faultCtx(t)
		err := runRestore(ctx, e.global(), opts, base)
		t.Logf("failed after %v and %d resets", time.Since(start).Round(time.Millisecond), p.Stats().Resets)
		checkClearFailure(t, ctx, err, h.kind, false)
		rerun(t, p, opts)
	})
	// An outage in the middle of a restore that ends after a second: a
	// restorer that retries must ride it out.
	t.Run("restore through a one-second outage", func(t *testing.T) {
		if !h.restoreRetries {
			t.Skip("the restorer does not promise retries")
		}
		h.emptyTarget(t)
		p := faultproxy.New(t, h.dst.Addr)
		outage := make(chan struct{})
		e.onProgress = interruptAt(h.rawSize/3, func() {
			p.Refuse(true)
			p.ResetAll()
			time.AfterFunc(time.Second, func() { p.Refuse(false); close(outage) })
		})
		err := runRestore(faultCtx(t), e.global(), h.restoreOpts(via(h.dstURL, h.dst, p)), base)
		e.onProgress = nil
		select {
		case <-outage:
		case <-time.After(5 * time.Second):
			t.Fatal("the outage did not start (the restore ended before the fault point)")
		}
		t.Logf("%d connections reset, %d refused", p.Stats().Resets, p.Stats().Refused)
		if err != nil {
			t.Fatalf("restore through a one-second outage: %v\n%s", err, e.stderr.String())
		}
		if p.Stats().Resets == 0 || p.Stats().Refused == 0 {
			t.Fatalf("the outage did not hit the restore: %+v", p.Stats())
		}
		verifyTarget(t)
	})

	// Last: the source server is killed (SIGKILL) a third into the dump
	// and started again (same port, same data directory) before the dump
	// goes on. The snapshot must fail: what it read before and after the
	// restart are not one state of the database.
	t.Run("server killed and restarted mid-dump", func(t *testing.T) {
		before := e.ids()
		bt := &bgTB{TB: t}
		e.onProgress = interruptAt(h.rawSize/3, func() {
			h.src.Kill()
			h.src.Start(bt)
		})
		ctx := faultCtx(t)
		id, err := e.snapshot(ctx, h.snapshotOpts(h.srcURL))
		e.onProgress = nil
		bt.check(t)
		if !bt.fired() {
			t.Fatal("the dump ended before the kill point")
		}
		if err == nil {
			t.Fatalf("BUG: snapshot %s committed although the %s server was killed and restarted during the dump\n%s", id, h.kind, e.stderr.String())
		}
		checkClearFailure(t, ctx, err, h.kind, true)
		checkNothingCommitted(t, e, before)
	})
}

// bgTB lets a lab server be started from a goroutine other than the test's
// (a progress hook): failures are recorded and reported by check.
type bgTB struct {
	testing.TB
	mu      sync.Mutex
	errs    []string
	started bool
}

func (b *bgTB) Helper() {}

func (b *bgTB) Fatalf(format string, args ...any) {
	b.mu.Lock()
	b.errs = append(b.errs, fmt.Sprintf(format, args...))
	b.mu.Unlock()
}

func (b *bgTB) Fatal(args ...any) {
	b.mu.Lock()
	b.errs = append(b.errs, fmt.Sprint(args...))
	b.mu.Unlock()
}

func (b *bgTB) Logf(format string, args ...any) {
	b.mu.Lock()
	b.started = true
	b.mu.Unlock()
	b.TB.Logf(format, args...)
}

// fired reports whether the server was started again.
func (b *bgTB) fired() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.started
}

func (b *bgTB) check(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.errs) > 0 {
		t.Fatalf("restarting the server: %s", strings.Join(b.errs, "; "))
	}
}
