package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"slices"
	"sync/atomic"

	"filippo.io/age"
)

// ReadOptions control how a snapshot is read.
type ReadOptions struct {
	// Identities open encrypted snapshots (age X25519 or SSH identities,
	// or a scrypt identity for a passphrase).
	Identities []age.Identity
	// Progress, when set, is called with the number of raw (decompressed)
	// bytes each time a component reads. It must be safe for concurrent
	// use: a component may read several streams at once.
	Progress func(n int64)
}

// OpenComponent returns a StreamReader over the objects of one component of
// m, in the order they were written. Every stream checks the stored size and
// SHA-256 while it is read and decompressed.
func OpenComponent(ctx context.Context, store Store, m *Manifest, kind string, opts ReadOptions) (StreamReader, error) {
	c := m.Component(kind)
	if c == nil {
		return nil, fmt.Errorf("snapshot %s has no %s component", m.ID, kind)
	}
	sr := &streamReader{ctx: ctx, store: store, id: m.ID, c: c, opts: opts}
	if c.Encryption == EncryptionAge {
		key, err := unlock(ctx, store, m, opts.Identities)
		if err != nil {
			return nil, err
		}
		sr.key = key
	}
	return sr, nil
}

// streamReader hands out the objects of a component in manifest order.
// Several may be open at once (see StreamReader); each is independent.
type streamReader struct {
	ctx   context.Context
	store Store
	id    string
	c     *Component
	opts  ReadOptions
	key   age.Identity // the data key of an encrypted component
	next  int
	// opened are the objects handed out that were not closed when Next
	// last looked, in order, for drain.
	opened []*objectReader
}

func (sr *streamReader) Next() (string, io.ReadCloser, error) {
	sr.opened = slices.DeleteFunc(sr.opened, (*objectReader).isClosed)
	if sr.next >= len(sr.c.Objects) {
		return "", nil, io.EOF
	}
	o := sr.c.Objects[sr.next]
	sr.next++
	r, err := openObject(sr.ctx, sr.store, sr.id, o, Compression(sr.c.Compression), sr.key, sr.opts.Progress)
	if err != nil {
		return "", nil, err
	}
	sr.opened = append(sr.opened, r)
	return o.Name, r, nil
}

// Open implements StreamOpener. The stream it returns is not drained by
// Verify: the caller closes it.
func (sr *streamReader) Open(name string) (io.ReadCloser, error) {
	for _, o := range sr.c.Objects {
		if o.Name == name {
			return openObject(sr.ctx, sr.store, sr.id, o, Compression(sr.c.Compression), sr.key, nil)
		}
	}
	return nil, fmt.Errorf("snapshot %s: no stream %s: %w", sr.id, name, fs.ErrNotExist)
}

// openObject opens one stored object: blob → size and checksum check →
// decryption with key (when not nil) → decompressor. A missing object wraps
// ErrCorrupt (it is missing data).
func openObject(ctx context.Context, store Store, id string, o Object, c Compression, key age.Identity, progress func(int64)) (*objectReader, error) {
	blob, err := store.NewReader(ctx, id, o.Key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("snapshot %s: object %s is missing: %w", id, o.Key, ErrCorrupt)
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: object %s: %w", id, o.Key, err)
	}
	v := &verifier{r: blob, o: o, id: id, h: sha256.New()}
	var stored io.Reader = v
	if key != nil {
		plain, err := age.Decrypt(v, key)
		if err != nil {
			blob.Close()
			if v.err != nil {
				return nil, v.err
			}
			return nil, fmt.Errorf("snapshot %s: object %s: decrypt: %w: %w", id, o.Key, ErrCorrupt, err)
		}
		stored = plain
	}
	dec, err := c.newDecoder(stored)
	if err != nil {
		blob.Close()
		return nil, fmt.Errorf("snapshot %s: object %s: %w: %w", id, o.Key, ErrCorrupt, err)
	}
	return &objectReader{o: o, id: id, blob: blob, v: v, dec: dec, progress: progress}, nil
}

// objectReader yields an object's decompressed bytes. It reports io.EOF only
// after the stored bytes were read to their end and matched the manifest.
type objectReader struct {
	o        Object
	id       string
	blob     io.ReadCloser
	v        *verifier
	dec      io.ReadCloser
	raw      int64
	progress func(int64)
	err      error
	closed   atomic.Bool // Close may run on another goroutine than Next
}

func (r *objectReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.dec.Read(p)
	r.raw += int64(n)
	if r.progress != nil && n > 0 {
		r.progress(int64(n))
	}
	switch {
	case err == io.EOF:
		// The compressed stream ended: the stored object must end too,
		// with the recorded size and checksum.
		if _, derr := io.Copy(io.Discard, r.v); derr != nil {
			err = derr
		} else if r.raw != r.o.RawSize {
			err = fmt.Errorf("snapshot %s: object %s: %d bytes after decompression, manifest says %d: %w", r.id, r.o.Key, r.raw, r.o.RawSize, ErrCorrupt)
		}
	case err != nil:
		// The stored bytes' own verdict (I/O error, size, checksum)
		// explains a decompression failure better than the
		// decompressor does: read them to their end for it.
		if r.v.err == nil {
			_, _ = io.Copy(io.Discard, r.v)
		}
		if r.v.err != nil {
			err = r.v.err
		} else {
			err = fmt.Errorf("snapshot %s: object %s: decompress: %w: %w", r.id, r.o.Key, ErrCorrupt, err)
		}
	}
	r.err = err
	return n, err
}

func (r *objectReader) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	r.dec.Close()
	return r.blob.Close()
}

func (r *objectReader) isClosed() bool { return r.closed.Load() }

// verifier counts and hashes the stored bytes. At their end it compares both
// with the manifest and returns an error wrapping ErrCorrupt instead of
// io.EOF when they differ.
type verifier struct {
	r   io.Reader
	o   Object
	id  string
	h   hash.Hash
	n   int64
	err error
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	switch {
	case v.n > v.o.Size:
		err = fmt.Errorf("snapshot %s: object %s is longer than the %d bytes the manifest records: %w", v.id, v.o.Key, v.o.Size, ErrCorrupt)
	case err == io.EOF && v.n < v.o.Size:
		err = fmt.Errorf("snapshot %s: object %s is truncated: %d of %d bytes: %w", v.id, v.o.Key, v.n, v.o.Size, ErrCorrupt)
	case err == io.EOF:
		if sum := hex.EncodeToString(v.h.Sum(nil)); sum != v.o.SHA256 {
			err = fmt.Errorf("snapshot %s: object %s: sha256 %s does not match the manifest's %s: %w", v.id, v.o.Key, sum[:12], v.o.SHA256[:12], ErrCorrupt)
		}
	case err != nil:
		err = fmt.Errorf("snapshot %s: object %s: read: %w", v.id, v.o.Key, err)
	}
	if err != nil {
		v.err = err
	}
	return n, err
}

// Verify re-reads every object of m, checks its size and checksum, and
// decodes each component fully with the Restorer that decoder returns for its
// kind (nil: the checksums only). It checks every component even after a
// failure and returns all problems joined.
func Verify(ctx context.Context, store Store, m *Manifest, decoder func(kind string) Restorer, opts ReadOptions) error {
	var errs []error
	for _, c := range m.Components {
		sr, err := OpenComponent(ctx, store, m, c.Kind, opts)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if d := decoder(c.Kind); d != nil {
			if _, err := d.Restore(ctx, sr); err != nil {
				errs = append(errs, fmt.Errorf("component %s: %w", c.Kind, err))
				continue
			}
		}
		// Whatever the decoder left unread still has to match.
		if err := drain(sr); err != nil {
			errs = append(errs, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

// drain reads the rest of the streams handed out but not closed, and every
// later one, checking their checksums.
func drain(in StreamReader) error {
	sr := in.(*streamReader)
	var errs []error
	for _, r := range sr.opened {
		if r.isClosed() {
			continue
		}
		_, err := io.Copy(io.Discard, r)
		r.Close()
		if err != nil {
			errs = append(errs, err)
		}
	}
	sr.opened = nil
	for {
		_, r, err := sr.Next()
		if err == io.EOF {
			return errors.Join(errs...)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		_, err = io.Copy(io.Discard, r)
		r.Close()
		if err != nil {
			errs = append(errs, err)
		}
	}
}
