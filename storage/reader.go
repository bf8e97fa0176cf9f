package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	gcs "cloud.google.com/go/storage"
	azblobblob "github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
	"google.golang.org/api/googleapi"
)

// Resuming reads. A download cut off by the network (a connection reset, a
// body that ends early, a 5xx answer) is resumed with a ranged read from
// the offset reached, after a backoff, as long as each attempt brings
// progress: readAttempts attempts in a row without a single byte read fail
// the read. A resumed read must see the same object as the first one (size,
// modification time and, where the service reports one, ETag or
// generation); an object replaced meanwhile fails the read.
const (
	readAttempts = 5
	// readBackoff is the wait before the first retry, doubled for every
	// further one in a row, up to readBackoffMax (so 5 attempts wait 1.5 s
	// in all, plus the time the SDK's own retries of each request take:
	// S3 gives up after about 10 s of an outage).
	readBackoff    = 100 * time.Millisecond
	readBackoffMax = 2 * time.Second
)

// NewReader opens object key of snapshot id for reading. A missing object
// gives an error wrapping fs.ErrNotExist.
//
// The reader resumes a download that the network cut off (see readAttempts)
// and fails, naming the object, when the object changed between the first
// read and a resumed one. ctx bounds the whole read, retries and their
// waits included.
func (r *Repo) NewReader(ctx context.Context, id, key string) (io.ReadCloser, error) {
	rd := &reader{ctx: ctx, r: r, key: objectKey(id, key)}
	if err := rd.open(); err != nil {
		return nil, err
	}
	return rd, nil
}

// reader reads one object, resuming it after transient failures.
type reader struct {
	ctx context.Context
	r   *Repo
	key string

	rd     *blob.Reader // the current range reader; nil after a failure
	first  objectVersion
	opened bool  // first is set
	off    int64 // bytes delivered so far
	fails  int   // attempts in a row that delivered no byte
	err    error // sticky final error
}

// objectVersion identifies the content of an object as a reader saw it.
type objectVersion struct {
	size    int64
	modTime time.Time
	tag     string // ETag (S3, Azure) or generation (GCS); "" when unknown
}

func (v objectVersion) String() string {
	s := fmt.Sprintf("%d bytes, modified %s", v.size, v.modTime.UTC().Format(time.RFC3339Nano))
	if v.tag != "" {
		s += ", version " + v.tag
	}
	return s
}

// versionOf reads the version of the object a reader reads.
func versionOf(rd *blob.Reader) objectVersion {
	v := objectVersion{size: rd.Size(), modTime: rd.ModTime()}
	var s3out s3.GetObjectOutput
	var gr *gcs.Reader
	var az azblobblob.DownloadStreamResponse
	switch {
	case rd.As(&s3out):
		if s3out.ETag != nil {
			v.tag = *s3out.ETag
		}
	case rd.As(&gr):
		if gr != nil && gr.Attrs.Generation != 0 {
			v.tag = strconv.FormatInt(gr.Attrs.Generation, 10)
		}
	case rd.As(&az):
		if az.ETag != nil {
			v.tag = string(*az.ETag)
		}
	}
	return v
}

// same reports whether v and w are the same content of an object.
func (v objectVersion) same(w objectVersion) bool {
	if v.size != w.size || !v.modTime.Equal(w.modTime) {
		return false
	}
	return v.tag == "" || w.tag == "" || v.tag == w.tag
}

// open opens the object, the first time from its start, later from the
// offset reached, retrying transient failures like Read.
func (rd *reader) open() error {
	for {
		var b *blob.Reader
		var err error
		if !rd.opened {
			b, err = rd.r.bucket.NewReader(rd.ctx, rd.key, nil)
		} else {
			b, err = rd.r.bucket.NewRangeReader(rd.ctx, rd.key, rd.off, -1, nil)
		}
		if err == nil {
			v := versionOf(b)
			if !rd.opened {
				rd.first, rd.opened = v, true
			} else if !rd.first.same(v) {
				b.Close()
				return fmt.Errorf("storage: repository %s: %s: the object changed while it was read (at byte %d: was %s, now %s)",
					rd.r.name, rd.key, rd.off, rd.first, v)
			}
			rd.rd = b
			return nil
		}
		if rd.opened && gcerrors.Code(err) == gcerrors.NotFound {
			return rd.gone(err)
		}
		if werr := rd.failed(err); werr != nil {
			return werr
		}
	}
}

// gone is the error for an object that disappeared after the first read:
// deleted, or replaced (GCS reads a generation, which a new upload
// replaces).
func (rd *reader) gone(err error) error {
	return fmt.Errorf("storage: repository %s: %s: the object changed while it was read (at byte %d it is gone or was replaced): %s",
		rd.r.name, rd.key, rd.off, oneLine(err))
}

// failed counts a failed attempt and waits before the next one. It returns
// the error to give up with: err wrapped when err is not transient, when
// too many attempts in a row failed, or when ctx ended.
func (rd *reader) failed(err error) error {
	if !retryable(rd.ctx, err) {
		return rd.r.wrap(rd.key, err)
	}
	rd.fails++
	if rd.fails >= readAttempts {
		return fmt.Errorf("%w (gave up after %d attempts in a row at byte %d)", rd.r.wrap(rd.key, err), rd.fails, rd.off)
	}
	wait := min(readBackoff<<(rd.fails-1), readBackoffMax)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-rd.ctx.Done():
		return rd.r.wrap(rd.key, rd.ctx.Err())
	case <-t.C:
		return nil
	}
}

// Read reads the object's bytes, resuming after transient failures. It
// returns io.EOF only after as many bytes as the object holds (when the
// service reported its size).
func (rd *reader) Read(p []byte) (int, error) {
	if rd.err != nil {
		return 0, rd.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if rd.first.size > 0 && rd.off >= rd.first.size {
			// Everything was read (a failure after the last byte
			// loses nothing); a range read from the end would be
			// refused.
			rd.err = io.EOF
			return 0, io.EOF
		}
		if rd.rd == nil {
			if err := rd.open(); err != nil {
				rd.err = err
				return 0, err
			}
		}
		n, err := rd.rd.Read(p)
		rd.off += int64(n)
		if n > 0 {
			rd.fails = 0
		}
		if err == io.EOF && rd.first.size > 0 && rd.off < rd.first.size {
			// The body ended before the object did.
			err = io.ErrUnexpectedEOF
		}
		if err == nil || err == io.EOF {
			if err == io.EOF {
				rd.err = io.EOF
				if n > 0 {
					// The bytes now, io.EOF on the next call, as
					// file:// does: a caller that stops at the
					// data it needs (age's header parser) then
					// never sees an io.EOF it could take for a
					// failure.
					return n, nil
				}
			}
			return n, err
		}
		// A failure: resume on the next call, or now when nothing
		// was read.
		rd.rd.Close()
		rd.rd = nil
		werr := rd.failed(err)
		if gcerrors.Code(err) == gcerrors.NotFound {
			werr = rd.gone(err)
		}
		if werr != nil {
			rd.err = werr
			if n > 0 {
				return n, nil // the error comes with the next call
			}
			return 0, werr
		}
		if n > 0 {
			return n, nil
		}
	}
}

// Close releases the current range reader.
func (rd *reader) Close() error {
	if rd.rd == nil {
		return nil
	}
	err := rd.rd.Close()
	rd.rd = nil
	if err != nil {
		return rd.r.wrap(rd.key, err)
	}
	return nil
}

// retryable reports whether a failed read may succeed when tried again: the
// connection was reset or aborted, the body ended early, a network
// operation timed out, or the service answered 5xx or "too many requests".
// Nothing is retryable once ctx ended.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	// A stalled connection: the SDK already tried the request again on
	// new connections where it could, each attempt waiting idleTimeout;
	// more attempts would multiply that wait.
	var stall *StalledError
	if errors.As(err, &stall) {
		return false
	}
	switch gcerrors.Code(err) {
	case gcerrors.Internal, gcerrors.ResourceExhausted:
		return true
	case gcerrors.NotFound, gcerrors.PermissionDenied, gcerrors.FailedPrecondition,
		gcerrors.InvalidArgument, gcerrors.Unimplemented, gcerrors.AlreadyExists:
		return false
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, net.ErrClosed) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return transientStatus(httpStatus(err))
}

// httpStatus returns the HTTP status of a service's error answer, or 0.
func httpStatus(err error) int {
	var aws interface{ HTTPStatusCode() int } // S3 (smithy's ResponseError)
	if errors.As(err, &aws) {
		return aws.HTTPStatusCode()
	}
	var g *googleapi.Error // GCS
	if errors.As(err, &g) {
		return g.Code
	}
	// Azure's SDK retries 5xx answers by itself before the error gets
	// here.
	return 0
}

func transientStatus(code int) bool {
	return code >= 500 || code == http.StatusTooManyRequests || code == http.StatusRequestTimeout
}
