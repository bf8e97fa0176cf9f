package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/blob/driver"
	"gocloud.dev/gcerrors"
)

// flakyBucket is a driver.Bucket holding one object, whose reads fail as
// the test says. Only what a Repo's reader calls is implemented.
type flakyBucket struct {
	driver.Bucket // nil: other methods panic

	mu      sync.Mutex
	data    []byte
	modTime time.Time
	opens   []int64 // the offset of every NewRangeReader call
	// open, when set, may fail the n-th open (0-based) at offset off.
	open func(n int, off int64) error
	// cut, when set, gives the number of bytes the n-th reader delivers
	// before it fails with err (io.EOF: the body ends early).
	cut func(n int) (int, error)
}

func (b *flakyBucket) NewRangeReader(ctx context.Context, key string, off, length int64, opts *driver.ReaderOptions) (driver.Reader, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(b.opens)
	b.opens = append(b.opens, off)
	if b.open != nil {
		if err := b.open(n, off); err != nil {
			return nil, err
		}
	}
	if off > int64(len(b.data)) {
		return nil, errors.New("range not satisfiable")
	}
	r := &flakyReader{data: b.data[off:], limit: -1,
		attrs: driver.ReaderAttributes{Size: int64(len(b.data)), ModTime: b.modTime}}
	if b.cut != nil {
		r.limit, r.err = b.cut(n)
	}
	return r, nil
}

func (b *flakyBucket) ErrorCode(err error) gcerrors.ErrorCode {
	if errors.Is(err, errGone) {
		return gcerrors.NotFound
	}
	return gcerrors.Unknown
}
func (b *flakyBucket) ErrorAs(error, any) bool { return false }
func (b *flakyBucket) As(any) bool             { return false }
func (b *flakyBucket) Close() error            { return nil }

var errGone = errors.New("gone")

type flakyReader struct {
	data  []byte
	limit int   // bytes before err; -1: none
	err   error // after limit
	attrs driver.ReaderAttributes
}

func (r *flakyReader) Read(p []byte) (int, error) {
	if r.limit == 0 {
		return 0, r.err
	}
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	if r.limit > 0 && len(p) > r.limit {
		p = p[:r.limit]
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	if r.limit > 0 {
		r.limit -= n
	}
	return n, nil
}
func (r *flakyReader) Close() error                         { return nil }
func (r *flakyReader) Attributes() *driver.ReaderAttributes { return &r.attrs }
func (r *flakyReader) As(any) bool                          { return false }
func (r *flakyReader) Download(w io.Writer) error {
	_, err := io.Copy(w, r)
	return err
}

func flakyRepo(t *testing.T, b *flakyBucket) *Repo {
	bucket := blob.NewBucket(b)
	t.Cleanup(func() { bucket.Close() })
	return &Repo{bucket: bucket, name: "flaky://bucket"}
}

func newFlaky(size int) *flakyBucket {
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 7)
	}
	return &flakyBucket{data: data, modTime: time.Unix(1700000000, 0)}
}

var reset = fmt.Errorf("read tcp: %w", syscall.ECONNRESET)

// TestReaderResumes: reads that fail with a connection reset or end early
// are resumed from the offset reached, with every byte delivered once.
func TestReaderResumes(t *testing.T) {
	for name, err := range map[string]error{"reset": reset, "short body": io.EOF, "unexpected EOF": io.ErrUnexpectedEOF} {
		t.Run(name, func(t *testing.T) {
			b := newFlaky(100_000)
			b.cut = func(n int) (int, error) { return 30_000, err }
			repo := flakyRepo(t, b)
			r, oerr := repo.NewReader(context.Background(), "id", "obj")
			if oerr != nil {
				t.Fatal(oerr)
			}
			got, rerr := io.ReadAll(r)
			r.Close()
			if rerr != nil {
				t.Fatalf("read: %v", rerr)
			}
			if !bytes.Equal(got, b.data) {
				t.Fatalf("read %d bytes, not the object's %d", len(got), len(b.data))
			}
			if want := []int64{0, 30_000, 60_000, 90_000}; fmt.Sprint(b.opens) != fmt.Sprint(want) {
				t.Fatalf("opened at %v, want %v", b.opens, want)
			}
		})
	}
}

// TestReaderGivesUp: attempts in a row without progress are bounded; the
// error names the object, the cause and the offset.
func TestReaderGivesUp(t *testing.T) {
	b := newFlaky(100_000)
	b.cut = func(n int) (int, error) {
		if n == 0 {
			return 40_000, reset
		}
		return 0, reset
	}
	repo := flakyRepo(t, b)
	r, err := repo.NewReader(context.Background(), "id", "obj")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	start := time.Now()
	n, err := io.Copy(io.Discard, r)
	t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if n != 40_000 || err == nil {
		t.Fatalf("read %d bytes, %v", n, err)
	}
	for _, want := range []string{"repository flaky://bucket: snapshots/id/obj", "connection reset", "gave up after 5 attempts in a row at byte 40000"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error lacks %q", want)
		}
	}
	if len(b.opens) != readAttempts {
		t.Errorf("%d opens, want %d", len(b.opens), readAttempts)
	}
	// The error sticks.
	if _, err2 := r.Read(make([]byte, 10)); err2 == nil || err2.Error() != err.Error() {
		t.Errorf("next read: %v", err2)
	}

	// Reopening fails the same way.
	b = newFlaky(100_000)
	b.cut = func(n int) (int, error) { return 10, reset }
	b.open = func(n int, off int64) error {
		if n > 0 {
			return reset
		}
		return nil
	}
	r, _ = flakyRepo(t, b).NewReader(context.Background(), "id", "obj")
	if _, err := io.Copy(io.Discard, r); err == nil || !strings.Contains(err.Error(), "gave up after 5 attempts in a row at byte 10") {
		t.Fatalf("failing reopens: %v", err)
	}
}

// TestReaderNotRetried: an error that is not transient (the object
// deleted) ends the read at once.
func TestReaderNotRetried(t *testing.T) {
	b := newFlaky(100_000)
	b.cut = func(n int) (int, error) { return 10, reset }
	b.open = func(n int, off int64) error {
		if n > 0 {
			return errGone
		}
		return nil
	}
	r, _ := flakyRepo(t, b).NewReader(context.Background(), "id", "obj")
	_, err := io.Copy(io.Discard, r)
	if err == nil || len(b.opens) != 2 || !strings.Contains(err.Error(), "the object changed while it was read (at byte 10 it is gone or was replaced): ") {
		t.Fatalf("%d opens, %v", len(b.opens), err)
	}
}

// TestReaderObjectChanged: a resumed read of an object replaced meanwhile
// fails.
func TestReaderObjectChanged(t *testing.T) {
	b := newFlaky(100_000)
	b.cut = func(n int) (int, error) {
		if n == 0 {
			b.modTime = b.modTime.Add(time.Second) // under b.mu
			return 50_000, reset
		}
		return -1, nil
	}
	r, _ := flakyRepo(t, b).NewReader(context.Background(), "id", "obj")
	n, err := io.Copy(io.Discard, r)
	if n != 50_000 || err == nil || !strings.Contains(err.Error(), "the object changed while it was read (at byte 50000") {
		t.Fatalf("read %d bytes, %v", n, err)
	}
}

// TestReaderCancelled: cancelling the context ends the backoff at once.
func TestReaderCancelled(t *testing.T) {
	b := newFlaky(100_000)
	b.cut = func(n int) (int, error) { return 0, reset }
	ctx, cancel := context.WithCancel(context.Background())
	r, _ := flakyRepo(t, b).NewReader(ctx, "id", "obj")
	time.AfterFunc(150*time.Millisecond, cancel)
	start := time.Now()
	_, err := io.Copy(io.Discard, r)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("took %v after the cancel", took)
	}
}
