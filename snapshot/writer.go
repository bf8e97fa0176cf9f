package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
)

// Options control how a snapshot is written.
type Options struct {
	Compression Compression // default Zstd
	Level       int         // 0: the compression's default
	// Concurrency bounds each zstd encoder's goroutines (0: GOMAXPROCS).
	Concurrency int
	Host        string
	Version     string // stackport's version
	Tags        map[string]string
	// Progress, when set, is called with the number of raw bytes each
	// time a component writes. It must be safe for concurrent use.
	Progress func(n int64)
	// Now is the creation time (default time.Now); tests set it.
	Now func() time.Time
	// Recipients, when set, encrypt every object (see KeyName). There is
	// no fallback: a snapshot asked to be encrypted either is or fails.
	Recipients []age.Recipient
}

// Writer creates one snapshot. Add components, then Commit; on any error
// Abort. Until Commit writes the manifest, the snapshot does not exist.
type Writer struct {
	store  Store
	opts   Options
	ctx    context.Context
	cancel context.CancelFunc

	// dataKey encrypts the objects of an encrypted snapshot; wrappedKey is
	// its stored form.
	dataKey    *age.X25519Recipient
	wrappedKey []byte

	mu        sync.Mutex
	m         Manifest
	open      map[*objectWriter]struct{}
	aborted   map[string]error // by kind: the first stream a Dumper aborted
	committed bool
}

// NewWriter starts a snapshot in store. ctx bounds the whole snapshot:
// cancelling it aborts every upload in flight.
func NewWriter(ctx context.Context, store Store, opts Options) (*Writer, error) {
	if opts.Compression == "" {
		opts.Compression = Zstd
	}
	if _, err := ParseCompression(string(opts.Compression)); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if err := opts.Compression.CheckLevel(opts.Level); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	now := opts.Now().UTC()
	var dataKey *age.X25519Recipient
	var wrappedKey []byte
	if len(opts.Recipients) > 0 {
		key, wrapped, err := newDataKey(opts.Recipients)
		if err != nil {
			return nil, err
		}
		dataKey, wrappedKey = key.Recipient(), wrapped
	}
	ctx, cancel := context.WithCancel(ctx)
	return &Writer{
		dataKey: dataKey, wrappedKey: wrappedKey,
		store: store, opts: opts, ctx: ctx, cancel: cancel,
		open: map[*objectWriter]struct{}{},
		m: Manifest{
			Version:   FormatVersion,
			ID:        NewID(now),
			Created:   now,
			Host:      opts.Host,
			Stackport: opts.Version,
			Tags:      opts.Tags,
		},
	}, nil
}

// ID is the new snapshot's ID.
func (w *Writer) ID() string { return w.m.ID }

// Add dumps one component into the snapshot. Components may be added
// concurrently; each kind once. When one fails, the others are cancelled.
func (w *Writer) Add(kind string, d Dumper) error {
	if !kindPattern.MatchString(kind) {
		return fmt.Errorf("snapshot: invalid component kind %q", kind)
	}
	w.mu.Lock()
	if w.m.Component(kind) != nil {
		w.mu.Unlock()
		return fmt.Errorf("snapshot: component %s added twice", kind)
	}
	enc := "none"
	if w.dataKey != nil {
		enc = EncryptionAge
	}
	w.m.Components = append(w.m.Components, Component{
		Kind: kind, Compression: string(w.opts.Compression), Encryption: enc, Objects: []Object{},
	})
	w.mu.Unlock()

	cw := &componentWriter{w: w, kind: kind}
	stats, err := d.Dump(w.ctx, cw)
	if err == nil {
		err = w.ctx.Err()
	}
	w.mu.Lock()
	if aerr := w.aborted[kind]; err == nil && aerr != nil {
		// A Dumper that aborted a stream and still returned nil: its
		// component lacks that stream.
		err = fmt.Errorf("snapshot: component %s aborted a stream: %w", kind, aerr)
	}
	w.mu.Unlock()
	if leaked := w.openObjects(kind); len(leaked) > 0 {
		for _, o := range leaked {
			o.abort()
		}
		if err == nil {
			err = fmt.Errorf("snapshot: component %s returned with %d streams still open", kind, len(leaked))
		}
	}
	if err != nil {
		// The snapshot cannot be committed any more: stop the other
		// components' uploads too.
		w.cancel()
		return err
	}
	w.mu.Lock()
	w.m.Component(kind).Stats = stats
	w.mu.Unlock()
	return nil
}

// openObjects returns the streams still open, of one kind or of all ("").
func (w *Writer) openObjects(kind string) []*objectWriter {
	w.mu.Lock()
	defer w.mu.Unlock()
	var open []*objectWriter
	for o := range w.open {
		if kind == "" || o.kind == kind {
			open = append(open, o)
		}
	}
	return open
}

// Commit writes the manifest, which makes the snapshot visible, and returns
// it. It fails if a component is still writing.
func (w *Writer) Commit() (*Manifest, error) {
	open := len(w.openObjects(""))
	w.mu.Lock()
	m := w.m
	w.mu.Unlock()
	if open > 0 {
		return nil, fmt.Errorf("snapshot: commit with %d streams still open", open)
	}
	if len(m.Components) == 0 {
		return nil, errors.New("snapshot: nothing to snapshot")
	}
	if err := w.ctx.Err(); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if w.wrappedKey != nil {
		if err := writeObject(w.ctx, w.store, m.ID, KeyName, w.wrappedKey); err != nil {
			return nil, fmt.Errorf("snapshot %s: write key: %w", m.ID, err)
		}
		sum := sha256.Sum256(w.wrappedKey)
		n := int64(len(w.wrappedKey))
		m.Key = &Object{Key: KeyName, Name: KeyName, Size: n, RawSize: n, SHA256: hex.EncodeToString(sum[:])}
	}
	data, err := m.Encode()
	if err != nil {
		return nil, err
	}
	if err := writeObject(w.ctx, w.store, m.ID, ManifestName, data); err != nil {
		return nil, fmt.Errorf("snapshot %s: write manifest: %w", m.ID, err)
	}
	w.mu.Lock()
	w.committed = true
	w.mu.Unlock()
	w.cancel()
	return &m, nil
}

// Abort cancels every upload in flight and removes the objects already
// written for this snapshot (best effort: objects left behind have no
// manifest, so they are not a snapshot). Call it after every Add has
// returned. It is a no-op after Commit.
func (w *Writer) Abort() error {
	w.cancel()
	w.mu.Lock()
	committed := w.committed
	w.mu.Unlock()
	if committed {
		return nil
	}
	for _, o := range w.openObjects("") {
		o.abort()
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(w.ctx), 2*time.Minute)
	defer cancel()
	if err := w.store.Delete(ctx, w.m.ID); err != nil {
		return fmt.Errorf("snapshot %s: remove partial objects: %w", w.m.ID, err)
	}
	return nil
}

// writeObject stores data as one object, aborting the upload on error.
func writeObject(ctx context.Context, store Store, id, key string, data []byte) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	bw, err := store.NewWriter(ctx, id, key)
	if err != nil {
		return err
	}
	if _, err := bw.Write(data); err != nil {
		cancel()
		_ = bw.Close()
		return err
	}
	return bw.Close()
}

// componentWriter is the StreamWriter handed to one component's Dumper.
type componentWriter struct {
	w    *Writer
	kind string
}

func (cw *componentWriter) Create(name string) (io.WriteCloser, error) {
	w := cw.w
	if !validKey(name) {
		return nil, fmt.Errorf("snapshot: component %s: invalid stream name %q", cw.kind, name)
	}
	if err := w.ctx.Err(); err != nil {
		return nil, fmt.Errorf("snapshot: %s/%s: %w", cw.kind, name, err)
	}
	w.mu.Lock()
	c := w.m.Component(cw.kind)
	slot := len(c.Objects)
	key := objectKey(cw.kind, slot, name, w.opts.Compression)
	for _, o := range c.Objects {
		if o.Name == name {
			w.mu.Unlock()
			return nil, fmt.Errorf("snapshot: stream %s/%s created twice", cw.kind, name)
		}
		if o.Key == key { // cannot happen: see objectKey
			w.mu.Unlock()
			return nil, fmt.Errorf("snapshot: streams %s/%s and %s/%s have the same object key %s", cw.kind, o.Name, cw.kind, name, key)
		}
	}
	c.Objects = append(c.Objects, Object{Key: key, Name: name})
	w.mu.Unlock()

	ctx, cancel := context.WithCancel(w.ctx)
	bw, err := w.store.NewWriter(ctx, w.m.ID, key)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("snapshot: %s: %w", key, err)
	}
	o := &objectWriter{w: w, kind: cw.kind, slot: slot, key: key, name: name, cancel: cancel, blob: bw}
	o.sink = &hashCounter{w: bw, h: sha256.New()}
	o.crypt = nopWriteCloser{o.sink}
	if w.dataKey != nil {
		if o.crypt, err = age.Encrypt(o.sink, w.dataKey); err != nil {
			o.abort()
			return nil, fmt.Errorf("snapshot: %s: encrypt: %w", key, err)
		}
	}
	o.enc, err = w.opts.Compression.newEncoder(o.crypt, w.opts.Level, w.opts.Concurrency)
	if err != nil {
		o.abort()
		return nil, fmt.Errorf("snapshot: %s: %w", key, err)
	}
	w.mu.Lock()
	w.open[o] = struct{}{}
	w.mu.Unlock()
	return o, nil
}

// Object keys. A stream's object key is kept readable, "<kind>/<name><ext>"
// as in "volume/volume.tar.zst", when the name is short and plain; any other
// name gets a key of bounded length that does not depend on how long the
// name is, "<kind>/<n>-<prefix>-<hash><stream ext><ext>", for example
// "mongo/3-appsmith-7e879c38.bson.zst": n is the object's index in its
// component, prefix the name's first bytes with anything but ASCII letters,
// digits, '.', '_' and '-' folded into '_', hash the first 8 hex digits of
// the name's SHA-256. Either way the manifest records the key beside the
// name, and readers use the recorded key, so older snapshots, whose keys
// followed the name whatever its length, still read.
//
// The index makes derived keys unique within a component; a readable key
// cannot take a derived one, because names that begin with digits and '-'
// are never kept readable.
const (
	// maxReadableElem bounds each slash-separated element of a readable
	// key, with the compression's extension; a file system's NAME_MAX is
	// 255 bytes, and fileblob adds up to 21 for its temporary file.
	maxReadableElem = 100
	// maxReadableName bounds a readable stream name (S3, GCS and Azure
	// allow keys of 1024 bytes, with the repository's prefix).
	maxReadableName = 200
	// maxKeyPrefix and maxStreamExt bound the parts of a derived key
	// taken from the name.
	maxKeyPrefix = 40
	maxStreamExt = 12
)

// objectKey returns the key of object number n (from 0) of component kind,
// the stream called name, compressed with c.
func objectKey(kind string, n int, name string, c Compression) string {
	if readableName(name, c) {
		return kind + "/" + name + c.Ext()
	}
	sum := sha256.Sum256([]byte(name))
	base := name
	ext := path.Ext(name)
	if len(ext) > 1 && len(ext) <= maxStreamExt && plain(ext) {
		base = strings.TrimSuffix(name, ext)
	} else {
		ext = ""
	}
	var b strings.Builder
	b.WriteString(kind)
	b.WriteByte('/')
	b.WriteString(strconv.Itoa(n))
	b.WriteByte('-')
	if p := keyPrefix(base); p != "" {
		b.WriteString(p)
		b.WriteByte('-')
	}
	b.WriteString(hex.EncodeToString(sum[:4]))
	b.WriteString(ext)
	b.WriteString(c.Ext())
	return b.String()
}

// readableName reports whether the stream called name keeps its name in its
// object key: plain bytes only, every element short, and not the form of a
// derived key's element ("<digits>-…").
func readableName(name string, c Compression) bool {
	if len(name) > maxReadableName || !plain(strings.ReplaceAll(name, "/", "")) {
		return false
	}
	if i := strings.IndexFunc(name, func(r rune) bool { return r < '0' || r > '9' }); i > 0 && name[i] == '-' {
		return false
	}
	for _, e := range strings.Split(name+c.Ext(), "/") {
		if len(e) > maxReadableElem {
			return false
		}
	}
	return true
}

// plain reports whether s holds only ASCII letters, digits, '.', '_', '-'.
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		if !plainByte(s[i]) {
			return false
		}
	}
	return true
}

func plainByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-'
}

// keyPrefix returns the first maxKeyPrefix bytes of s for a derived key:
// each run of other bytes than plainByte's (slashes, spaces, '%', UTF-8)
// becomes one '_', and the result neither begins nor ends with '.', '_'
// or '-'.
func keyPrefix(s string) string {
	var b []byte
	for i := 0; i < len(s) && len(b) < maxKeyPrefix; i++ {
		switch c := s[i]; {
		case plainByte(c):
			b = append(b, c)
		case len(b) > 0 && b[len(b)-1] != '_':
			b = append(b, '_')
		}
	}
	return strings.Trim(string(b), "._-")
}

// objectWriter is one stream: compressor → checksum → blob writer.
type objectWriter struct {
	w          *Writer
	kind, key  string
	name       string
	slot       int
	cancel     context.CancelFunc
	blob       io.WriteCloser
	sink       *hashCounter
	crypt      io.WriteCloser // age, or a no-op
	enc        io.WriteCloser
	raw        int64
	closeOnce  sync.Once
	closeError error
}

func (o *objectWriter) Write(p []byte) (int, error) {
	if err := o.w.ctx.Err(); err != nil {
		return 0, fmt.Errorf("snapshot: %s: %w", o.key, err)
	}
	n, err := o.enc.Write(p)
	o.raw += int64(n)
	if o.w.opts.Progress != nil && n > 0 {
		o.w.opts.Progress(int64(n))
	}
	if err != nil {
		return n, fmt.Errorf("snapshot: %s: %w", o.key, err)
	}
	return n, nil
}

// Close flushes the compressor and commits the object.
func (o *objectWriter) Close() error {
	o.closeOnce.Do(func() {
		err := o.enc.Close()
		if err == nil {
			err = o.crypt.Close()
		}
		if err == nil {
			err = o.w.ctx.Err()
		}
		if err != nil {
			o.cancel()
		}
		if cerr := o.blob.Close(); err == nil {
			err = cerr
		}
		o.cancel()
		o.w.mu.Lock()
		delete(o.w.open, o)
		if err == nil {
			c := o.w.m.Component(o.kind)
			c.Objects[o.slot] = Object{
				Key: o.key, Name: o.name, Size: o.sink.n, RawSize: o.raw,
				SHA256: hex.EncodeToString(o.sink.h.Sum(nil)),
			}
		}
		o.w.mu.Unlock()
		if err != nil {
			o.closeError = fmt.Errorf("snapshot: %s: %w", o.key, err)
		}
	})
	return o.closeError
}

// CloseWithError aborts the stream (see Abort); the component's Add fails
// with err even if its Dumper returns nil.
func (o *objectWriter) CloseWithError(err error) error {
	o.abort()
	o.w.mu.Lock()
	defer o.w.mu.Unlock()
	if o.w.aborted == nil {
		o.w.aborted = map[string]error{}
	}
	if o.w.aborted[o.kind] == nil {
		o.w.aborted[o.kind] = fmt.Errorf("%s: %w", o.key, err)
	}
	return nil
}

// abort cancels the upload so that nothing is committed, then releases it.
func (o *objectWriter) abort() {
	o.closeOnce.Do(func() {
		o.cancel()
		if o.enc != nil {
			_ = o.enc.Close()
		}
		_ = o.blob.Close()
		o.w.mu.Lock()
		delete(o.w.open, o)
		o.w.mu.Unlock()
		o.closeError = fmt.Errorf("snapshot: %s: aborted", o.key)
	})
}

// hashCounter passes writes through, hashing and counting them.
type hashCounter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (hc *hashCounter) Write(p []byte) (int, error) {
	n, err := hc.w.Write(p)
	hc.h.Write(p[:n])
	hc.n += int64(n)
	return n, err
}
