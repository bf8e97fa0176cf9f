package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/stackport/stackport/snapshot"
	"golang.org/x/sync/errgroup"
)

// A sink receives the streams of a snapshot from readSnapshot, in order:
// begin, script(pre-data), table for each table, script(post-data),
// script(sequences), end.
type sink interface {
	begin(m *meta) error
	// script handles an SQL script; it must read sc to io.EOF.
	script(name string, sc *scanner) error
	// table handles the rows of one data stream of t (r.stream: t.Stream
	// or one of t.Parts); it must read r to io.EOF. It is called once per
	// stream, so more than once for a table with parts. When readSnapshot
	// is given more than one loader, table is called for several streams
	// at once (parts of the same table too), each on a goroutine of its
	// own, with a context that is cancelled when one of them fails.
	table(ctx context.Context, t *table, r *copyReader) error
	end() error
}

// readSnapshot reads the streams of a snapshot in the order Dump writes
// them, checks that every data stream of every table listed in meta.json
// (Stream and Parts) comes exactly once, decodes every stream and passes it to s. Up to loaders tables
// (at least one) are passed to s at once; with one, each table stream is
// closed before the next is opened.
func readSnapshot(ctx context.Context, in snapshot.StreamReader, s sink, loaders int) (snapshot.Stats, error) {
	stats := snapshot.Stats{"tables": 0, "rows": 0, "bytes": 0}
	var m *meta
	if err := readNext(in, metaStream, func(r io.Reader) (err error) {
		m, err = readMeta(r)
		return err
	}); err != nil {
		return stats, err
	}
	if err := s.begin(m); err != nil {
		return stats, err
	}
	script := func(name string) func(io.Reader) error {
		return func(r io.Reader) error { return s.script(name, newScanner(ctx, r, name)) }
	}
	if err := readNext(in, preDataStream, script(preDataStream)); err != nil {
		return stats, err
	}
	name, rc, err := readTables(ctx, in, s, m, stats, loaders)
	if err != nil {
		return stats, err
	}
	if err := readStream(name, rc, postDataStream, script(postDataStream)); err != nil {
		return stats, err
	}
	if err := readNext(in, sequencesStream, script(sequencesStream)); err != nil {
		return stats, err
	}
	switch name, rc, err := in.Next(); {
	case err == nil:
		rc.Close()
		return stats, corrupt(name, "unexpected stream after %s", sequencesStream)
	case !errors.Is(err, io.EOF):
		return stats, fmt.Errorf("postgres: after %s: %w", sequencesStream, err)
	}
	return stats, s.end()
}

// readTables passes the data streams, which come in any order, to s.table,
// up to loaders at once, and adds their counts to stats. It returns the
// stream that follows them, post-data.sql, unread, once every table is
// done. The first failure, of a table or of reading the streams, stops the
// others and is the one returned; every stream handed out is closed.
func readTables(ctx context.Context, in snapshot.StreamReader, s sink, m *meta, stats snapshot.Stats, loaders int) (string, io.ReadCloser, error) {
	byStream := make(map[string]*table, len(m.Tables))
	for _, t := range m.Tables {
		for _, name := range t.streams() {
			byStream[name] = t
		}
	}
	var mu sync.Mutex
	var first error // guarded by mu
	fail := func(err error) error {
		mu.Lock()
		defer mu.Unlock()
		if first == nil {
			first = err
		}
		return err
	}
	load := func(ctx context.Context, t *table, name string, rc io.ReadCloser) error {
		cr := newCopyReader(ctx, rc, t, name)
		err := s.table(ctx, t, cr)
		if err == nil && !cr.done {
			err = fmt.Errorf("postgres: %s: not read to its end", name) // a bug of the sink
		}
		if err != nil {
			// Recorded before the stream is closed: closing a Pipe's
			// stream early fails the other loaders, whose errors are
			// consequences of this one.
			fail(err)
			rc.Close()
			return err
		}
		if err := rc.Close(); err != nil {
			return fail(fmt.Errorf("postgres: close %s: %w", name, err))
		}
		mu.Lock()
		defer mu.Unlock()
		addTable(stats, t, name, cr.rows, cr.bytes)
		return nil
	}

	// A slot is taken before a stream is asked for, so that no more than
	// loaders streams are held at once.
	slots := make(chan struct{}, max(loaders, 1))
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(lctx)
	for {
		select {
		case slots <- struct{}{}:
		case <-gctx.Done():
		}
		if err := gctx.Err(); err != nil {
			if ctx.Err() != nil {
				fail(fmt.Errorf("postgres: %w", ctx.Err()))
			}
			break
		}
		name, rc, err := next(in, postDataStream)
		if err != nil {
			fail(err)
			break
		}
		if name == postDataStream {
			g.Wait()
			if first == nil {
				first = checkAllTables(m, byStream)
			}
			if first != nil {
				rc.Close()
				return "", nil, first
			}
			return name, rc, nil
		}
		t := byStream[name]
		if t == nil {
			rc.Close()
			fail(corrupt(name, "unexpected stream (not a data stream of a table of %s, or a second one for it)", metaStream))
			break
		}
		delete(byStream, name)
		if loaders <= 1 {
			err := load(gctx, t, name, rc)
			<-slots
			if err != nil {
				break
			}
			continue
		}
		g.Go(func() error {
			defer func() { <-slots }()
			return load(gctx, t, name, rc)
		})
	}
	cancel()
	g.Wait()
	return "", nil, first
}

// checkAllTables returns an error naming the tables of m, and their data
// streams, that are still in byStream, not read.
func checkAllTables(m *meta, byStream map[string]*table) error {
	if len(byStream) == 0 {
		return nil
	}
	var missing []string
	for _, t := range m.Tables {
		for _, name := range t.streams() {
			if byStream[name] != nil {
				missing = append(missing, t.key()+" ("+name+")")
			}
		}
	}
	return fmt.Errorf("postgres: no data stream for table %s: %w", strings.Join(missing, ", "), snapshot.ErrCorrupt)
}

// readNext reads the next stream, which must be called want, with fn.
func readNext(in snapshot.StreamReader, want string, fn func(io.Reader) error) error {
	got, rc, err := next(in, want)
	if err != nil {
		return err
	}
	return readStream(got, rc, want, fn)
}

// next returns the next stream; the end of the streams is an error naming
// the stream that was expected.
func next(in snapshot.StreamReader, want string) (string, io.ReadCloser, error) {
	name, rc, err := in.Next()
	switch {
	case errors.Is(err, io.EOF):
		return "", nil, fmt.Errorf("postgres: missing stream %s: %w", want, snapshot.ErrCorrupt)
	case err != nil:
		return "", nil, fmt.Errorf("postgres: open a stream: %w", err) // err names the object
	}
	return name, rc, nil
}

// readStream checks that the stream got is the one wanted and reads it with
// fn, then closes it.
func readStream(got string, rc io.ReadCloser, want string, fn func(io.Reader) error) error {
	if got != want {
		rc.Close()
		return corrupt(got, "unexpected stream, want %s", want)
	}
	err := fn(rc)
	if cerr := rc.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("postgres: close %s: %w", want, cerr)
	}
	return err
}
