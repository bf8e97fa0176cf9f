package mongo

import (
	"context"
	"errors"
	"fmt"
	"io"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/stackport/stackport/snapshot"
)

// A collection is a collection or view of a snapshot.
type collection struct {
	ns      namespace
	meta    *metadata
	hasData bool // its .bson stream was read
}

// A sink receives the content of a snapshot from decode, in stream order.
type sink interface {
	// metadata receives each collection and view, before any data.
	metadata(c *collection) error
	// startData is called once, after the last metadata stream.
	startData(ctx context.Context) error
	// documents reads the documents of c's .bson stream to io.EOF.
	documents(ctx context.Context, c *collection, docs *docReader) error
	// oplog reads the entries of oplog.bson to io.EOF.
	oplog(ctx context.Context, docs *docReader) error
	// finish is called after the last stream.
	finish(ctx context.Context) error
}

// Phases of a snapshot: the stream order.
const (
	phaseMetadata = iota
	phaseData
	phaseOplog
)

// A decoder reads the streams of a snapshot in order, checks the order and
// every stream's content, counts and passes the content to a sink.
type decoder struct {
	s     sink
	tee   func(name string) (io.WriteCloser, error) // optional: a copy of each stream
	phase int
	colls map[namespace]*collection
	stats snapshot.Stats
}

// decode reads every stream of in and passes its content to s. If tee is
// set, each stream's bytes are also copied to the writer it returns for the
// stream's name, which decode closes.
func decode(ctx context.Context, in snapshot.StreamReader, s sink, tee func(name string) (io.WriteCloser, error)) (snapshot.Stats, error) {
	d := &decoder{s: s, tee: tee, colls: map[namespace]*collection{}, stats: newStats()}
	for {
		if err := ctx.Err(); err != nil {
			return d.stats, fmt.Errorf("mongo: %w", err)
		}
		name, rc, err := in.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return d.stats, fmt.Errorf("mongo: open stream: %w", err)
		}
		if err := d.stream(ctx, name, rc); err != nil {
			return d.stats, err
		}
	}
	if err := d.enter(ctx, phaseData); err != nil {
		return d.stats, err
	}
	return d.stats, s.finish(ctx)
}

// newStats returns the counters of a snapshot, at zero.
func newStats() snapshot.Stats {
	return snapshot.Stats{"collections": 0, "views": 0, "indexes": 0, "documents": 0, "bytes": 0, "oplog_entries": 0}
}

// countCollection adds a collection's metadata to stats.
func countCollection(stats snapshot.Stats, ns namespace, m *metadata) {
	if m.isView() {
		stats.Add("views", 1)
		return
	}
	n := int64(len(m.userIndexes()))
	stats.Add("collections", 1)
	stats.Add("indexes", n)
	stats.Add(statKey("indexes", ns), n)
}

// countData adds a collection's documents and bytes to stats.
func countData(stats snapshot.Stats, ns namespace, docs, bytes int64) {
	stats.Add("documents", docs)
	stats.Add("bytes", bytes)
	stats.Add(statKey("documents", ns), docs)
	stats.Add(statKey("bytes", ns), bytes)
}

// enter moves to phase p (later phases only), calling startData when the
// metadata phase ends.
func (d *decoder) enter(ctx context.Context, p int) error {
	if d.phase == phaseMetadata && p > phaseMetadata {
		if err := d.s.startData(ctx); err != nil {
			return err
		}
	}
	d.phase = max(d.phase, p)
	return nil
}

// stream reads one stream and closes it.
func (d *decoder) stream(ctx context.Context, name string, rc io.ReadCloser) (err error) {
	defer func() {
		if cerr := rc.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("mongo: close %s: %w", name, cerr)
		}
	}()
	kind, ns, err := parseStreamName(name)
	if err != nil {
		return corrupt("unexpected stream %q: %v", name, err)
	}
	var r io.Reader = rc
	if d.tee != nil {
		w, err := d.tee(name)
		if err != nil {
			return err
		}
		defer func() {
			if cerr := w.Close(); err == nil && cerr != nil {
				err = fmt.Errorf("mongo: %s: %w", name, cerr)
			}
		}()
		r = io.TeeReader(rc, w)
	}
	switch kind {
	case kindMetadata:
		err = d.metadata(ns, r)
	case kindData:
		err = d.data(ctx, ns, r)
	case kindOplog:
		err = d.oplog(ctx, r)
	}
	if err != nil {
		return err
	}
	// Read what the sink left (nothing, for valid streams) so that the
	// stream's size and checksum are checked.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return fmt.Errorf("mongo: %s: %w", name, err)
	}
	return nil
}

func (d *decoder) metadata(ns namespace, r io.Reader) error {
	if d.phase != phaseMetadata {
		return corrupt("%s: metadata after the data streams", ns)
	}
	if d.colls[ns] != nil {
		return corrupt("%s: metadata stream twice", ns)
	}
	data, err := io.ReadAll(io.LimitReader(r, maxMetadataSize+1))
	if err != nil {
		return fmt.Errorf("mongo: %s: read metadata: %w", ns, err)
	}
	if len(data) > maxMetadataSize {
		return corrupt("%s: metadata larger than %d bytes", ns, maxMetadataSize)
	}
	m, err := decodeMetadata(data, ns)
	if err != nil {
		return err
	}
	c := &collection{ns: ns, meta: m}
	d.colls[ns] = c
	countCollection(d.stats, ns, m)
	return d.s.metadata(c)
}

func (d *decoder) data(ctx context.Context, ns namespace, r io.Reader) error {
	if d.phase > phaseData {
		return corrupt("%s: data after oplog.bson", ns)
	}
	c := d.colls[ns]
	switch {
	case c == nil:
		return corrupt("%s: data stream without metadata", ns)
	case c.meta.isView():
		return corrupt("%s: data stream for a view", ns)
	case c.hasData:
		return corrupt("%s: data stream twice", ns)
	}
	c.hasData = true
	if err := d.enter(ctx, phaseData); err != nil {
		return err
	}
	docs := newDocReader(r, "collection "+ns.String())
	err := d.s.documents(ctx, c, docs)
	countData(d.stats, ns, docs.docs, docs.off)
	return err
}

func (d *decoder) oplog(ctx context.Context, r io.Reader) error {
	if d.phase == phaseOplog {
		return corrupt("oplog.bson twice")
	}
	if err := d.enter(ctx, phaseOplog); err != nil {
		return err
	}
	docs := newDocReader(r, "oplog")
	err := d.s.oplog(ctx, docs)
	d.stats.Add("oplog_entries", docs.docs)
	return err
}

// readAll reads docs to io.EOF, reusing one buffer, and passes each
// document to fn (if set).
func readAll(ctx context.Context, docs *docReader, fn func(doc []byte) error) error {
	var buf []byte
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("mongo: %w", err)
		}
		doc, err := docs.next(buf)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if fn != nil {
			if err := fn(doc); err != nil {
				return err
			}
		}
		buf = doc
	}
}

// Verifier decodes the streams of a mongo snapshot fully without writing
// anything: the stream order, every metadata file and every document (each
// length-prefixed document validated, nested documents included). Its
// Stats are those of the Dumper, without consistency_none.
type Verifier struct{}

// Restore implements snapshot.Restorer.
func (Verifier) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	return decode(ctx, in, discard{}, nil)
}

// discard is the sink of Verifier and Export.
type discard struct{}

func (discard) metadata(*collection) error      { return nil }
func (discard) startData(context.Context) error { return nil }
func (discard) finish(context.Context) error    { return nil }
func (discard) oplog(ctx context.Context, docs *docReader) error {
	all := func(string) bool { return true }
	return replayEntries(ctx, docs, all, nil, func(int64, bson.Raw) error { return nil })
}

func (discard) documents(ctx context.Context, _ *collection, docs *docReader) error {
	return readAll(ctx, docs, nil)
}
