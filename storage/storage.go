// Package storage is a thin layer over gocloud's *blob.Bucket: it opens a
// repository by URL (file://, mem://, s3://, gs://, azblob://, each with an
// optional prefix=), knows the repository layout (snapshots/<ID>/<key>, the
// manifest's place) and lists snapshots. It knows nothing of components.
//
// Credentials come from each cloud's standard environment and configuration
// chain; they are never part of an error message: errors name the repository
// by Redact(url).
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"gocloud.dev/blob"
	_ "gocloud.dev/blob/azureblob" // azblob://
	_ "gocloud.dev/blob/fileblob"  // file://
	_ "gocloud.dev/blob/gcsblob"   // gs://
	_ "gocloud.dev/blob/memblob"   // mem://
	_ "gocloud.dev/blob/s3blob"    // s3://
	"gocloud.dev/gcerrors"
	"golang.org/x/sync/errgroup"
)

// Layout of a repository.
const (
	snapshotsDir = "snapshots/"
	manifestName = "manifest.json"
)

// Repo is a snapshot repository in a bucket.
type Repo struct {
	bucket *blob.Bucket
	name   string // the redacted URL, for messages
	// dir is the folder of a file:// repository (with its prefix), whose
	// emptied snapshot folders Delete removes; "" for other schemes.
	dir string
	// abortByReader: an upload is aborted by failing its reader, with its
	// context still alive (s3://; see NewWriter).
	abortByReader bool
	// s3Bucket and prefix are the bucket and the prefix= of an s3://
	// repository (for its multipart uploads, see StaleUploads).
	s3Bucket, prefix string
}

// Options control Open.
type Options struct {
	// Create makes a missing file:// directory instead of failing.
	Create bool
	// CheckTimeout bounds the first request that proves the repository is
	// reachable (default 30s).
	CheckTimeout time.Duration
}

// Open opens the repository at rawURL and checks that it can be reached, so a
// missing bucket, bad credentials or an unreachable endpoint fail here with
// one line naming the repository and the cause.
func Open(ctx context.Context, rawURL string, opts Options) (*Repo, error) {
	name := Redact(rawURL)
	if rawURL == "" {
		return nil, errors.New("storage: no repository given (use --repo or STACKPORT_REPO)")
	}
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" {
		return nil, fmt.Errorf("storage: repository %s: not a URL (want file:///path, s3://bucket, gs://bucket, azblob://container or mem://)", name)
	}
	if u.Scheme == "file" {
		if err := prepareDir(u, opts.Create); err != nil {
			return nil, fmt.Errorf("storage: repository %s: %w", name, err)
		}
	}
	if u.Scheme == "file" {
		q := u.Query()
		// Sidecar .attrs files cost an MD5 of every byte and hold nothing
		// stackport reads: the manifest has the checksums.
		if !q.Has("metadata") {
			q.Set("metadata", "skip")
		}
		// Temporary files beside the final ones, not in $TMPDIR: a rename
		// across file systems fails, and $TMPDIR may be too small.
		if !q.Has("no_tmp_dir") {
			q.Set("no_tmp_dir", "true")
		}
		u.RawQuery = q.Encode()
	}
	b, err := openBucket(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("storage: repository %s: %s", name, oneLine(err))
	}
	r := &Repo{bucket: b, name: name, abortByReader: u.Scheme == "s3", prefix: u.Query().Get("prefix")}
	if u.Scheme == "s3" {
		r.s3Bucket = u.Host
	}
	if u.Scheme == "file" {
		r.dir = filepath.Join(u.Path, filepath.FromSlash(u.Query().Get("prefix")))
	}
	if opts.CheckTimeout == 0 {
		opts.CheckTimeout = 30 * time.Second
	}
	cctx, cancel := context.WithTimeout(ctx, opts.CheckTimeout)
	defer cancel()
	// A List call needs read access and distinguishes a missing bucket
	// from missing objects, unlike a read of one object.
	if _, _, err := b.ListPage(cctx, blob.FirstPageToken, 1, &blob.ListOptions{Prefix: snapshotsDir, Delimiter: "/"}); err != nil {
		b.Close()
		return nil, r.wrap("", err)
	}
	return r, nil
}

// prepareDir checks (or makes) the directory of a file:// repository.
func prepareDir(u *url.URL, create bool) error {
	dir := u.Path
	if dir == "" {
		return errors.New("file:// URL without a path")
	}
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if !create {
		return fmt.Errorf("directory %s does not exist", dir)
	}
	return os.MkdirAll(dir, 0o700)
}

// Name is the repository's URL without secrets.
func (r *Repo) Name() string { return r.name }

// Bucket gives access to the underlying bucket (tests, maintenance).
func (r *Repo) Bucket() *blob.Bucket { return r.bucket }

// Close releases the bucket.
func (r *Repo) Close() error { return r.bucket.Close() }

func objectKey(id, key string) string { return snapshotsDir + id + "/" + key }

// NewWriter returns a writer for object key of snapshot id. The object is
// committed by Close; cancelling ctx before Close aborts it, and its error
// then wraps ctx's.
//
// The bytes go through an io.Pipe into one Bucket.Upload call, the single
// write that every driver supports best. (It also avoids gocloud v0.47's
// azureblob writer, which dereferences a nil pipe when an upload written
// with Write fails.)
//
// An S3 upload is not handed ctx itself: the SDK aborts a multipart
// upload with the context of the upload, so a cancelled one would stay
// behind, its parts stored (and billed) out of sight. Instead, when ctx
// ends, the upload's reader fails, the SDK aborts the multipart upload
// with a live context, and only after abortGrace is the upload's context
// cancelled too. (A failing reader would not do for the other drivers:
// gocloud commits what a non-S3 driver read before the reader failed, and
// only a cancelled context aborts those.)
func (r *Repo) NewWriter(ctx context.Context, id, key string) (io.WriteCloser, error) {
	k := objectKey(id, key)
	pr, pw := io.Pipe()
	w := &writer{ctx: ctx, pw: pw, r: r, key: k, done: make(chan struct{})}
	uctx, release := ctx, func() {}
	if r.abortByReader {
		var cancel context.CancelFunc
		uctx, cancel = context.WithCancel(context.WithoutCancel(ctx))
		stop := context.AfterFunc(ctx, func() {
			pw.CloseWithError(ctx.Err())
			time.AfterFunc(abortGrace, cancel)
		})
		release = func() { stop(); cancel() }
	}
	go func() {
		defer close(w.done)
		w.err = r.bucket.Upload(uctx, k, pr, &blob.WriterOptions{ContentType: "application/octet-stream"})
		release()
		if err := ctx.Err(); err != nil {
			// Cancelled: that is the cause, whatever the driver
			// made of it (also when the upload got through).
			w.err = err
		}
		if w.err != nil {
			pr.CloseWithError(r.wrap(k, w.err))
		} else {
			pr.Close()
		}
	}()
	return w, nil
}

// abortGrace bounds how long an S3 upload may take to abort after its
// context ended.
const abortGrace = 30 * time.Second

type writer struct {
	ctx  context.Context
	pw   *io.PipeWriter
	r    *Repo
	key  string
	done chan struct{}
	err  error // of the upload; read after done is closed
}

// Write passes p on to the upload. After ctx ended its error wraps ctx's;
// after the upload failed, it is the upload's.
func (w *writer) Write(p []byte) (int, error) {
	n, err := w.pw.Write(p)
	if err != nil && w.ctx.Err() != nil {
		err = w.r.wrap(w.key, w.ctx.Err())
	}
	return n, err
}

// Close ends the stream and waits for the upload. After ctx was cancelled the
// reader sees an error instead of the end of the data, so no driver can
// mistake an aborted upload for a complete one.
func (w *writer) Close() error {
	if err := w.ctx.Err(); err != nil {
		w.pw.CloseWithError(err)
	} else {
		w.pw.Close()
	}
	<-w.done
	if w.err != nil {
		return w.r.wrap(w.key, w.err)
	}
	return nil
}

// List returns the IDs of the snapshots that have a manifest, sorted oldest
// first. Folders without a manifest (runs in progress or failed) are left
// out.
func (r *Repo) List(ctx context.Context) ([]string, error) {
	folders, err := r.Folders(ctx)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, f := range folders {
		if f.Complete {
			ids = append(ids, f.ID)
		}
	}
	return ids, nil
}

// Folder is one snapshot folder of the repository.
type Folder struct {
	ID string
	// Complete is true when the folder holds a manifest; otherwise it is a
	// run in progress or the leftovers of a failed one.
	Complete bool
}

// Folders returns every snapshot folder, complete or not, sorted by ID.
func (r *Repo) Folders(ctx context.Context) ([]Folder, error) {
	var folders []Folder
	it := r.bucket.List(&blob.ListOptions{Prefix: snapshotsDir, Delimiter: "/"})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, r.wrap(snapshotsDir, err)
		}
		if obj.IsDir {
			folders = append(folders, Folder{ID: strings.TrimSuffix(strings.TrimPrefix(obj.Key, snapshotsDir), "/")})
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := range folders {
		g.Go(func() error {
			key := objectKey(folders[i].ID, manifestName)
			ok, err := r.bucket.Exists(gctx, key)
			if err != nil {
				return r.wrap(key, err)
			}
			folders[i].Complete = ok
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	slices.SortFunc(folders, func(a, b Folder) int { return strings.Compare(a.ID, b.ID) })
	return folders, nil
}

// Delete removes every object of snapshot id, the manifest first so that the
// snapshot disappears before its data does.
func (r *Repo) Delete(ctx context.Context, id string) error {
	if id == "" || strings.Contains(id, "/") {
		return fmt.Errorf("storage: repository %s: invalid snapshot id %q", r.name, id)
	}
	if err := r.bucket.Delete(ctx, objectKey(id, manifestName)); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return r.wrap(objectKey(id, manifestName), err)
	}
	it := r.bucket.List(&blob.ListOptions{Prefix: snapshotsDir + id + "/"})
	var errs []error
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			return r.wrap(snapshotsDir+id+"/", err)
		}
		if err := r.bucket.Delete(ctx, obj.Key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			errs = append(errs, r.wrap(obj.Key, err))
		}
	}
	if r.dir != "" && len(errs) == 0 {
		removeEmptyDirs(filepath.Join(r.dir, "snapshots", id))
	}
	return errors.Join(errs...)
}

// removeEmptyDirs removes dir and the folders under it that hold no files,
// deepest first; fileblob leaves them behind when it deletes objects.
func removeEmptyDirs(dir string) {
	var dirs []string
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Remove(dirs[i]) // fails, as it should, when not empty
	}
}

// wrap turns a gocloud error into one line naming the repository, the object
// (if any) and the cause, classified by gcerrors.Code. Not-found errors wrap
// fs.ErrNotExist.
func (r *Repo) wrap(key string, err error) error {
	where := "repository " + r.name
	if key != "" {
		where += ": " + key
	}
	var stall *StalledError
	if errors.As(err, &stall) {
		return fmt.Errorf("storage: %s: %w", where, stall)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("storage: %s: no answer in time (is the endpoint reachable?): %s", where, oneLine(err))
	}
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("storage: %s: %w", where, context.Canceled)
	}
	code := gcerrors.Code(err)
	// Some drivers leave HTTP failures as Unknown (s3blob does for a 403
	// SignatureDoesNotMatch); the status code still tells what happened.
	var status interface{ HTTPStatusCode() int }
	if code == gcerrors.Unknown && errors.As(err, &status) {
		switch status.HTTPStatusCode() {
		case 401, 403:
			code = gcerrors.PermissionDenied
		case 404:
			code = gcerrors.NotFound
		}
	}
	var netErr *net.OpError
	switch {
	case code == gcerrors.NotFound && (key == "" || key == snapshotsDir):
		return fmt.Errorf("storage: %s: %w", where, notExist("bucket or container does not exist"))
	case code == gcerrors.NotFound:
		return fmt.Errorf("storage: %s: %w", where, notExist("not found"))
	case code == gcerrors.PermissionDenied:
		return fmt.Errorf("storage: %s: access denied (check the credentials): %s", where, oneLine(err))
	case errors.As(err, &netErr):
		return fmt.Errorf("storage: %s: cannot reach the endpoint: %s", where, oneLine(netErr))
	}
	return fmt.Errorf("storage: %s: %s", where, oneLine(err))
}

// notExist is a not-found error with its own words that matches
// fs.ErrNotExist.
type notExist string

func (e notExist) Error() string        { return string(e) }
func (e notExist) Is(target error) bool { return target == fs.ErrNotExist }

// oneLine shortens a driver error to one line: the service's own error code
// and message when there is one (without request IDs and response dumps),
// else the first line of the error.
func oneLine(err error) string {
	var api interface {
		ErrorCode() string
		ErrorMessage() string
	}
	s := err.Error()
	if errors.As(err, &api) && api.ErrorCode() != "" {
		s = api.ErrorCode() + ": " + api.ErrorMessage()
	}
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	return shorten(s, 150)
}

// shorten keeps the first and the last n bytes of s, cut on character
// boundaries, with "…" between them when s is longer: a driver's error
// names the key and the path before its cause ("file name too long", "no
// space left on device"), which must not be cut off.
func shorten(s string, n int) string {
	if len(s) <= 2*n {
		return s
	}
	head, tail := n, len(s)-n
	for head > 0 && !utf8.RuneStart(s[head]) {
		head--
	}
	for tail < len(s) && !utf8.RuneStart(s[tail]) {
		tail++
	}
	return s[:head] + "…" + s[tail:]
}

// secretParams are query parameters whose values are never shown.
var secretParams = []string{"key", "secret", "token", "password", "sig", "credential", "signature"}

// Redact returns rawURL without user info and with secret-looking query
// values replaced, for messages and logs.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "<unparsable URL>"
	}
	if u.User != nil {
		u.User = url.User("REDACTED")
	}
	q := u.Query()
	for name := range q {
		lower := strings.ToLower(name)
		for _, s := range secretParams {
			if strings.Contains(lower, s) {
				q.Set(name, "REDACTED")
			}
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}
