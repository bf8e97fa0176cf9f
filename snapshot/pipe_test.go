package snapshot_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/stackport/stackport/snapshot"
)

// parallelDumper writes n streams, par of them at once, each with size
// bytes derived from its name, the way snapshot/mongo dumps collections.
type parallelDumper struct {
	n, par, size int
	fail         error // returned after half the streams, leaving one open
	// abort makes the first stream fail half way: its writer aborts it
	// (snapshot.Abort) and returns abort, while the others go on.
	abort error
}

func content(name string, size int) []byte {
	return bytes.Repeat([]byte(name+";"), size/(len(name)+1)+1)[:size]
}

func (d parallelDumper) Dump(ctx context.Context, out snapshot.StreamWriter) (snapshot.Stats, error) {
	var g errgroup.Group
	g.SetLimit(d.par)
	for i := range d.n {
		name := fmt.Sprintf("db/coll%03d.bson", i)
		if d.fail != nil && i == d.n/2 {
			if _, err := out.Create(name); err != nil {
				return nil, err
			}
			g.Wait()
			return nil, d.fail
		}
		w, err := out.Create(name)
		if err != nil {
			return nil, err
		}
		g.Go(func() error {
			data := content(name, d.size)
			if d.abort != nil && i == 0 {
				w.Write(data[:len(data)/2])
				snapshot.Abort(w, d.abort)
				return d.abort
			}
			for len(data) > 0 { // small writes, as a cursor would do
				k := min(len(data), 1000)
				if _, err := w.Write(data[:k]); err != nil {
					return err
				}
				data = data[k:]
			}
			return w.Close()
		})
	}
	return snapshot.Stats{"streams": int64(d.n)}, g.Wait()
}

// checkingRestorer reads every stream sequentially and checks its content;
// failAt > 0 makes it fail in the middle of that stream.
type checkingRestorer struct {
	size   int
	failAt int
	fail   error
}

func (r checkingRestorer) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	var names []string
	for i := 1; ; i++ {
		name, rc, err := in.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if i == r.failAt {
			rc.Read(make([]byte, 10))
			rc.Close()
			return nil, r.fail
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(got, content(name, r.size)) {
			return nil, fmt.Errorf("%s: %d bytes differ", name, len(got))
		}
		names = append(names, name)
	}
	for i, n := range names {
		if want := fmt.Sprintf("db/coll%03d.bson", i); n != want {
			return nil, fmt.Errorf("stream %d is %s, want %s (creation order)", i, n, want)
		}
	}
	return snapshot.Stats{"streams": int64(len(names))}, nil
}

// move runs d into r through a pipe, as migrate does, and returns both
// results. It fails t if it takes more than 20 s (a deadlock).
func move(t *testing.T, ctx context.Context, d snapshot.Dumper, r snapshot.Restorer) (dumpErr, restoreErr error, restored snapshot.Stats) {
	t.Helper()
	w, rd := snapshot.Pipe(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, dumpErr = d.Dump(ctx, w)
		w.Close(dumpErr)
	}()
	go func() {
		defer wg.Done()
		restored, restoreErr = r.Restore(ctx, rd)
		rd.Close(restoreErr)
	}()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("deadlock: the pipe did not finish in 20 s")
	}
	return dumpErr, restoreErr, restored
}

func TestPipeParallelWriters(t *testing.T) {
	for _, tc := range []struct{ n, par, size int }{{0, 1, 0}, {1, 1, 0}, {40, 8, 100 << 10}, {200, 16, 3000}} {
		t.Run(fmt.Sprintf("%d-streams-%d-at-once", tc.n, tc.par), func(t *testing.T) {
			dumpErr, restoreErr, stats := move(t, context.Background(),
				parallelDumper{n: tc.n, par: tc.par, size: tc.size}, checkingRestorer{size: tc.size})
			if dumpErr != nil || restoreErr != nil {
				t.Fatalf("dump: %v; restore: %v", dumpErr, restoreErr)
			}
			if stats["streams"] != int64(tc.n) {
				t.Fatalf("restored %d streams, want %d", stats["streams"], tc.n)
			}
		})
	}
}

func TestPipeDumperFails(t *testing.T) {
	boom := errors.New("source exploded")
	dumpErr, restoreErr, _ := move(t, context.Background(),
		parallelDumper{n: 20, par: 4, size: 50 << 10, fail: boom}, checkingRestorer{size: 50 << 10})
	if !errors.Is(dumpErr, boom) || errors.Is(dumpErr, snapshot.ErrPipeClosed) {
		t.Fatalf("dump: %v", dumpErr)
	}
	if !errors.Is(restoreErr, boom) || !errors.Is(restoreErr, snapshot.ErrPipeClosed) {
		t.Fatalf("restore: %v; want the dumper's error as a consequence", restoreErr)
	}
}

// TestPipeStreamAborted: a stream that fails while the Dumper's other
// streams wait for the reader ends the pipe at once. Left open until Dump
// returned, it deadlocked: the reader waited for the failed stream's end,
// the other streams for the reader, and Dump for them.
func TestPipeStreamAborted(t *testing.T) {
	boom := errors.New("collection cursor reset")
	dumpErr, restoreErr, _ := move(t, context.Background(),
		parallelDumper{n: 20, par: 4, size: 200 << 10, abort: boom}, checkingRestorer{size: 200 << 10})
	if !errors.Is(dumpErr, boom) {
		t.Fatalf("dump: %v", dumpErr)
	}
	if !errors.Is(restoreErr, boom) || !errors.Is(restoreErr, snapshot.ErrPipeClosed) {
		t.Fatalf("restore: %v; want the dumper's error as a consequence", restoreErr)
	}
}

func TestPipeRestorerFails(t *testing.T) {
	boom := errors.New("target refused")
	dumpErr, restoreErr, _ := move(t, context.Background(),
		parallelDumper{n: 20, par: 4, size: 50 << 10}, checkingRestorer{size: 50 << 10, failAt: 3, fail: boom})
	if !errors.Is(restoreErr, boom) {
		t.Fatalf("restore: %v", restoreErr)
	}
	// The dumper's writers were blocked on streams the restorer never
	// reads: they must have been released with an error.
	if !errors.Is(dumpErr, snapshot.ErrPipeClosed) {
		t.Fatalf("dump: %v; want an error wrapping ErrPipeClosed", dumpErr)
	}
}

// stopEarly reads the first stream only and returns success.
type stopEarly struct{}

func (stopEarly) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	_, rc, err := in.Next()
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, rc)
	return nil, rc.Close()
}

func TestPipeRestorerStopsEarly(t *testing.T) {
	dumpErr, restoreErr, _ := move(t, context.Background(), parallelDumper{n: 10, par: 2, size: 10 << 10}, stopEarly{})
	if restoreErr != nil {
		t.Fatal(restoreErr)
	}
	if !errors.Is(dumpErr, snapshot.ErrPipeClosed) || !strings.Contains(dumpErr.Error(), "before the last stream") {
		t.Fatalf("dump: %v; want the unread streams reported", dumpErr)
	}
}

// leaky creates a stream, writes to it and returns without closing it.
type leaky struct{}

func (leaky) Dump(ctx context.Context, out snapshot.StreamWriter) (snapshot.Stats, error) {
	w, err := out.Create("a.bin")
	if err != nil {
		return nil, err
	}
	go w.Write([]byte("half"))
	return nil, nil
}

func TestPipeUnclosedStream(t *testing.T) {
	_, restoreErr, _ := move(t, context.Background(), leaky{}, checkingRestorer{})
	if !errors.Is(restoreErr, snapshot.ErrPipeClosed) || !strings.Contains(restoreErr.Error(), "still open") {
		t.Fatalf("restore: %v", restoreErr)
	}
}

// blockingDumper writes to one stream until its writes fail, ignoring ctx.
type blockingDumper struct{ started chan struct{} }

func (d blockingDumper) Dump(ctx context.Context, out snapshot.StreamWriter) (snapshot.Stats, error) {
	w, err := out.Create("forever.bin")
	if err != nil {
		return nil, err
	}
	close(d.started)
	for {
		if _, err := w.Write(make([]byte, 4096)); err != nil {
			return nil, err
		}
	}
}

// slowRestorer reads one byte per call until its reads fail, ignoring ctx.
type slowRestorer struct{}

func (slowRestorer) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	_, rc, err := in.Next()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	for {
		if _, err := rc.Read(make([]byte, 1)); err != nil {
			return nil, err
		}
	}
}

func TestPipeContextCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	d := blockingDumper{started: make(chan struct{})}
	go func() {
		<-d.started
		time.Sleep(50 * time.Millisecond)
		cancel()
	}()
	dumpErr, restoreErr, _ := move(t, ctx, d, slowRestorer{})
	if !errors.Is(dumpErr, context.Canceled) || !errors.Is(restoreErr, context.Canceled) {
		t.Fatalf("dump: %v; restore: %v; want both cancelled", dumpErr, restoreErr)
	}
}

func TestPipeMisuse(t *testing.T) {
	w, r := snapshot.Pipe(context.Background())
	if _, err := w.Create("../escape"); err == nil {
		t.Error("Create accepted ../escape")
	}
	a, err := w.Create("a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Create("a"); err == nil {
		t.Error("Create accepted a name twice")
	}
	go func() { a.Write([]byte("x")); a.Close() }()
	if _, _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	w.Close(nil)
	if _, err := w.Create("b"); err == nil {
		t.Error("Create after Close succeeded")
	}
	r.Close(errors.New("stop"))
}

// concurrentRestorer holds up to par streams at once, each read on its own
// goroutine, the way snapshot/postgres loads tables: Next is called before
// the streams handed out earlier are closed.
type concurrentRestorer struct {
	size, par int
	failAt    int // > 0: fail after reading 10 bytes of that stream
	fail      error
}

func (r concurrentRestorer) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.par)
	var mu sync.Mutex
	var names []string
	for i := 1; gctx.Err() == nil; i++ {
		name, rc, err := in.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			g.Wait()
			return nil, err
		}
		g.Go(func() error {
			defer rc.Close()
			if i == r.failAt {
				rc.Read(make([]byte, 10))
				return r.fail
			}
			got, err := io.ReadAll(rc)
			if err != nil {
				return err
			}
			if !bytes.Equal(got, content(name, r.size)) {
				return fmt.Errorf("%s: %d bytes differ", name, len(got))
			}
			mu.Lock()
			names = append(names, name)
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return snapshot.Stats{"streams": int64(len(names))}, ctx.Err()
}

func TestPipeConcurrentReaders(t *testing.T) {
	for _, tc := range []struct{ n, writers, readers, size int }{{1, 1, 4, 10}, {40, 8, 4, 100 << 10}, {200, 4, 16, 3000}, {30, 1, 30, 50 << 10}} {
		t.Run(fmt.Sprintf("%d-streams-%d-writers-%d-readers", tc.n, tc.writers, tc.readers), func(t *testing.T) {
			dumpErr, restoreErr, stats := move(t, context.Background(),
				parallelDumper{n: tc.n, par: tc.writers, size: tc.size}, concurrentRestorer{size: tc.size, par: tc.readers})
			if dumpErr != nil || restoreErr != nil {
				t.Fatalf("dump: %v; restore: %v", dumpErr, restoreErr)
			}
			if stats["streams"] != int64(tc.n) {
				t.Fatalf("restored %d streams, want %d", stats["streams"], tc.n)
			}
		})
	}
}

func TestPipeConcurrentReaderFails(t *testing.T) {
	boom := errors.New("target refused")
	dumpErr, restoreErr, _ := move(t, context.Background(),
		parallelDumper{n: 20, par: 4, size: 50 << 10}, concurrentRestorer{size: 50 << 10, par: 4, failAt: 3, fail: boom})
	if !errors.Is(restoreErr, boom) {
		t.Fatalf("restore: %v", restoreErr)
	}
	if !errors.Is(dumpErr, snapshot.ErrPipeClosed) {
		t.Fatalf("dump: %v; want an error wrapping ErrPipeClosed", dumpErr)
	}
}

// TestPipeFailReleasesHeldStreams holds several streams at once, each with
// a reader blocked in Read, when the dumper fails: every one of them must
// be released with the dumper's error.
func TestPipeFailReleasesHeldStreams(t *testing.T) {
	w, r := snapshot.Pipe(context.Background())
	const n = 3
	var writers []io.WriteCloser
	for i := range n {
		sw, err := w.Create(fmt.Sprintf("s%d", i))
		if err != nil {
			t.Fatal(err)
		}
		writers = append(writers, sw)
	}
	errs := make(chan error, n)
	for range n {
		_, rc, err := r.Next() // none of them closed: allowed
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			defer rc.Close()
			_, err := io.ReadAll(rc)
			errs <- err
		}()
	}
	// One byte each, read by the blocked readers, then the failure.
	for _, sw := range writers {
		if _, err := sw.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	boom := errors.New("source exploded")
	w.Close(boom)
	for range n {
		select {
		case err := <-errs:
			if !errors.Is(err, boom) || !errors.Is(err, snapshot.ErrPipeClosed) {
				t.Errorf("read: %v; want the dumper's error as a consequence", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("a reader of a held stream was not released")
		}
	}
	if _, _, err := r.Next(); !errors.Is(err, boom) {
		t.Errorf("next: %v", err)
	}
	r.Close(nil)
}

// TestPipeHeldStreamUnread checks that a Restorer returning success while
// it holds a stream it did not read to its end fails the writer.
func TestPipeHeldStreamUnread(t *testing.T) {
	w, r := snapshot.Pipe(context.Background())
	a, _ := w.Create("a")
	b, _ := w.Create("b")
	w.Close(nil) // streams still open: the dumper's error, see below
	_, ra, err := r.Next()
	if err == nil {
		t.Fatalf("Next after a Close with open streams: %v", ra)
	}
	a.Close()
	b.Close()

	w, r = snapshot.Pipe(context.Background())
	a, _ = w.Create("a")
	b, _ = w.Create("b")
	_, ra, _ = r.Next()
	_, rb, _ := r.Next()
	go func() { a.Write([]byte("aa")); a.Close() }()
	if got, err := io.ReadAll(ra); err != nil || string(got) != "aa" {
		t.Fatalf("read a: %q, %v", got, err)
	}
	ra.Close()
	done := make(chan error, 1)
	go func() { _, err := b.Write([]byte("bb")); done <- err }()
	r.Close(nil) // b was handed out but never read
	if err := <-done; !errors.Is(err, snapshot.ErrPipeClosed) {
		t.Errorf("write to the unread stream: %v", err)
	}
	rb.Close()
	w.Close(nil)
}
