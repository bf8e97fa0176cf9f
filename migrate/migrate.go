// Package migrate moves the components of a modular monolith from their
// sources to their targets in one run, without an intermediate archive:
// each component's snapshot.Dumper writes its named streams into a
// snapshot.Pipe, and the snapshot.Restorer of the same kind reads them on
// the other end. Every component moves concurrently; the first failure
// stops them all. Optionally every stream is also teed into a
// snapshot.Writer, so that the run leaves a snapshot of what was moved.
// After the move each component's target is compared with its source
// (Volume, Mongo, Redis, Postgres), and Plan inspects sources and targets
// beforehand without writing.
//
// The package holds no dump or restore logic: the same Dumpers and
// Restorers serve snapshot, restore and migrate.
package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/stackport/stackport/snapshot"
)

// A Pair moves one component: what Dumper writes, Restorer applies.
type Pair struct {
	Kind     string // "volume", "mongo", …
	Dumper   snapshot.Dumper
	Restorer snapshot.Restorer
	// Check, when set, compares the target with the source after every
	// component has moved. It returns an error wrapping
	// snapshot.ErrDiffers (or ErrCorrupt) that names the differences.
	Check func(ctx context.Context) error
	// Plan, when set, inspects the source and the target without writing
	// (see Plan).
	Plan func(ctx context.Context) Finding
}

// Options tune Run.
type Options struct {
	// Tee, when set, also receives every stream: Run adds each component
	// to it, commits it when every component has moved and aborts it
	// otherwise. Run owns it from the call on.
	Tee *snapshot.Writer
	// Progress, when set, is called with the number of bytes each time a
	// component writes a stream. It must be safe for concurrent use.
	Progress func(n int64)
	// Journal, when set, records the progress of the run, so that a run
	// interrupted and started again with the same pairs resumes: what an
	// earlier run finished is checked quickly and skipped, what it left
	// half done is removed from the target and moved again, and nothing
	// is duplicated. See Journal and Component.Resume.
	//
	// Run knows how to resume the components of this module: the volume
	// (moved whole or not at all: skipped when the target matches the
	// source by names, types and sizes; a target that was missing or empty
	// at the first run, or replaced with Force, is the migration's, so the
	// staging and trash folders a killed run left in it are removed and a
	// partial tree replaced), PostgreSQL (one transaction:
	// skipped when every table holds as many rows as the source's) and
	// MongoDB collection by collection (each collection loaded completely
	// is skipped when the source and the target hold as many documents as
	// were loaded; the others are dropped from the target and loaded
	// again) and Redis database by database (each database written
	// completely is skipped when the target holds as many keys as the
	// source; the keys of one written in part replace those in the
	// target). Other pairs move again in full. With a Tee, skipped
	// components, collections and databases are still read from the
	// source into the snapshot, but not written to the target.
	Journal *Journal
}

// Results of a component.
const (
	ResultVerified  = "verified"  // moved, and the target matches the source
	ResultMoved     = "moved"     // moved; no check for this kind
	ResultDiffers   = "differs"   // moved, but the target differs from the source
	ResultFailed    = "failed"    // the move failed: this component's error stopped the run
	ResultCancelled = "cancelled" // stopped because another component failed
	ResultSkipped   = "skipped"   // moved by an earlier run (see Options.Journal); no check for this kind
)

// Report says what a run did.
type Report struct {
	Components []Component // in the order of the pairs
	// Snapshot is the ID of the committed Tee snapshot ("" without one,
	// or when the run failed).
	Snapshot string
	Duration time.Duration
	// Resumed is true when an earlier run of the migration left a state
	// (see Options.Journal).
	Resumed bool
}

// Component is the report of one component.
type Component struct {
	Kind string
	// Items are the entries moved: files, directories and links of a
	// volume, documents, keys or rows of a database.
	Items int64
	// Bytes are the bytes of the streams moved.
	Bytes    int64
	Duration time.Duration // of the move, without the check
	Dumped   snapshot.Stats
	Restored snapshot.Stats
	Result   string // one of the Result constants
	Err      error  // why it failed or differs
	// Skipped are the parts that an earlier run moved, left out of this
	// run after a check: "volume", "database" (PostgreSQL), "db.coll"
	// (MongoDB collections), "db0" (Redis databases).
	Skipped []string
	// Resume explains, one line each, what was skipped and why, and what
	// an earlier run left half done and is moved again.
	Resume []string
}

// itemKeys are the counters that make up Component.Items.
var itemKeys = []string{"files", "dirs", "symlinks", "hardlinks", "documents", "keys", "rows"}

// Run moves every pair concurrently, dumper → pipe → restorer, then runs
// their checks. It returns the report (also on error) and the first error
// of the move, or the checks' errors joined.
func Run(ctx context.Context, pairs []Pair, opts Options) (*Report, error) {
	start := time.Now()
	rep := &Report{Components: make([]Component, len(pairs))}
	fail := func(err error) (*Report, error) {
		if opts.Tee != nil {
			opts.Tee.Abort()
		}
		return rep, err
	}
	if err := validate(pairs); err != nil {
		return fail(err)
	}
	pairs = slices.Clone(pairs)
	skip, own := make([]bool, len(pairs)), make([]bool, len(pairs))
	if j := opts.Journal; j != nil {
		rep.Resumed = j.Resumed()
		if err := j.begin(ctx); err != nil {
			return fail(err)
		}
		for i, p := range pairs {
			c := &rep.Components[i]
			c.Kind = p.Kind
			np, res, err := prepare(ctx, p, j, opts.Tee != nil)
			if err != nil {
				return fail(fmt.Errorf("migrate: %s: resume: %w", p.Kind, err))
			}
			pairs[i], skip[i], own[i], c.Skipped, c.Resume = np, res.skip, res.own, res.units, res.notes
			for _, n := range res.notes {
				j.log.Info("migrate: "+p.Kind+": "+n, "component", p.Kind)
			}
			if res.skip && opts.Tee != nil {
				pairs[i].Restorer = drain{} // into the snapshot only
			}
		}
		err := j.update(ctx, func(s *State) {
			for i, p := range pairs {
				cs := s.Components[p.Kind]
				if cs == nil {
					cs = &ComponentState{}
					s.Components[p.Kind] = cs
				}
				// A skipped target matches the source: the migration's
				// own from now on.
				cs.Moved = skip[i]
				cs.Writing = cs.Writing || skip[i] || own[i]
			}
		})
		if err != nil {
			return fail(err)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	var first sync.Once
	for i, p := range pairs {
		c := &rep.Components[i]
		c.Kind = p.Kind
		if skip[i] && opts.Tee == nil {
			c.Result = ResultSkipped
			continue
		}
		g.Go(func() error {
			err := move(gctx, p, c, opts)
			if err == nil && skip[i] {
				c.Result, c.Items = ResultSkipped, 0
				return nil
			}
			if opts.Journal != nil {
				refused := errors.Is(err, snapshot.ErrTargetNotEmpty)
				jerr := opts.Journal.updateComponent(ctx, p.Kind, func(cs *ComponentState) {
					cs.Refused = refused
					if err == nil {
						cs.Moved, cs.Writing = true, true
					}
				})
				if err == nil {
					err = jerr
				}
			}
			if err == nil {
				c.Result = ResultMoved
				return nil
			}
			c.Err, c.Result = err, ResultCancelled
			first.Do(func() { c.Result = ResultFailed })
			return fmt.Errorf("migrate: %s: %w", p.Kind, err)
		})
	}
	err := g.Wait()
	if opts.Tee != nil {
		err = finishTee(opts.Tee, rep, err)
	}
	if err == nil {
		err = check(ctx, pairs, rep)
		if j := opts.Journal; j != nil {
			if jerr := j.update(ctx, func(s *State) {
				for i, p := range pairs {
					if cs := s.Components[p.Kind]; cs != nil && p.Check != nil {
						cs.Differs = rep.Components[i].Result == ResultDiffers
					}
				}
				s.Complete = err == nil
			}); jerr != nil {
				err = errors.Join(err, jerr)
			}
		}
	}
	rep.Duration = time.Since(start)
	return rep, err
}

// validate checks that pairs is a set of complete pairs of distinct kinds.
func validate(pairs []Pair) error {
	if len(pairs) == 0 {
		return errors.New("migrate: nothing to migrate")
	}
	seen := map[string]bool{}
	for _, p := range pairs {
		switch {
		case p.Kind == "":
			return errors.New("migrate: a component without a kind")
		case p.Dumper == nil || p.Restorer == nil:
			return fmt.Errorf("migrate: %s: a source and a target are both needed", p.Kind)
		case seen[p.Kind]:
			return fmt.Errorf("migrate: %s given twice", p.Kind)
		}
		seen[p.Kind] = true
	}
	return nil
}

// move runs one pair and fills c. Its error is the cause of a failure: the
// side whose error is not a consequence of the other side stopping.
func move(ctx context.Context, p Pair, c *Component, opts Options) error {
	start := time.Now()
	w, r := snapshot.Pipe(ctx)
	var n atomic.Int64
	out := &countingWriter{out: w, n: &n, progress: opts.Progress}
	var dumpErr, restoreErr error
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		c.Dumped, dumpErr = dump(ctx, p, out, opts.Tee)
		w.Close(dumpErr)
	}()
	go func() {
		defer wg.Done()
		c.Restored, restoreErr = p.Restorer.Restore(ctx, r)
		r.Close(restoreErr)
	}()
	wg.Wait()
	c.Duration = time.Since(start)
	c.Bytes = n.Load()
	stats := c.Restored
	if stats == nil {
		stats = c.Dumped
	}
	for _, k := range itemKeys {
		c.Items += stats[k]
	}
	switch {
	case restoreErr != nil && !errors.Is(restoreErr, snapshot.ErrPipeClosed):
		return fmt.Errorf("restore: %w", restoreErr)
	case dumpErr != nil:
		return fmt.Errorf("dump: %w", dumpErr)
	case restoreErr != nil:
		return fmt.Errorf("restore: %w", restoreErr)
	}
	return nil
}

// dump runs p's Dumper into out, and also into tee when set.
func dump(ctx context.Context, p Pair, out snapshot.StreamWriter, tee *snapshot.Writer) (snapshot.Stats, error) {
	if tee == nil {
		return p.Dumper.Dump(ctx, out)
	}
	td := &teeDumper{d: p.Dumper, out: out}
	err := tee.Add(p.Kind, td)
	return td.stats, err
}

// finishTee commits the tee snapshot after a successful move and aborts it
// after a failed one.
func finishTee(w *snapshot.Writer, rep *Report, err error) error {
	if err == nil {
		var m *snapshot.Manifest
		if m, err = w.Commit(); err == nil {
			rep.Snapshot = m.ID
			return nil
		}
		err = fmt.Errorf("migrate: %w", err)
	}
	if aerr := w.Abort(); aerr != nil {
		err = errors.Join(err, fmt.Errorf("migrate: %w", aerr))
	}
	return err
}

// check runs the pairs' checks concurrently, every one even when another
// fails, and records their results.
func check(ctx context.Context, pairs []Pair, rep *Report) error {
	errs := make([]error, len(pairs))
	var g errgroup.Group
	for i, p := range pairs {
		if p.Check == nil {
			continue
		}
		c := &rep.Components[i]
		g.Go(func() error {
			c.Result = ResultVerified
			if err := p.Check(ctx); err != nil {
				c.Result, c.Err = ResultDiffers, err
				errs[i] = fmt.Errorf("migrate: %s: check: %w", p.Kind, err)
			}
			return nil
		})
	}
	g.Wait()
	return errors.Join(errs...)
}

// countingWriter counts the bytes written to its streams.
type countingWriter struct {
	out      snapshot.StreamWriter
	n        *atomic.Int64
	progress func(int64)
}

func (cw *countingWriter) Create(name string) (io.WriteCloser, error) {
	w, err := cw.out.Create(name)
	if err != nil {
		return nil, err
	}
	return &countingStream{WriteCloser: w, cw: cw}, nil
}

type countingStream struct {
	io.WriteCloser
	cw *countingWriter
}

// CloseWithError aborts the stream: see snapshot.Abort.
func (s *countingStream) CloseWithError(err error) error {
	snapshot.Abort(s.WriteCloser, err)
	return nil
}

func (s *countingStream) Write(p []byte) (int, error) {
	n, err := s.WriteCloser.Write(p)
	s.cw.n.Add(int64(n))
	if s.cw.progress != nil && n > 0 {
		s.cw.progress(int64(n))
	}
	return n, err
}

// teeDumper is the Dumper a snapshot.Writer runs for a component: it runs
// the component's Dumper with a StreamWriter that writes every stream both
// to the writer's stream and to out (the pipe).
type teeDumper struct {
	d     snapshot.Dumper
	out   snapshot.StreamWriter
	stats snapshot.Stats
}

func (td *teeDumper) Dump(ctx context.Context, repo snapshot.StreamWriter) (snapshot.Stats, error) {
	stats, err := td.d.Dump(ctx, teeWriter{td.out, repo})
	td.stats = stats
	return stats, err
}

// teeWriter creates each stream in both of its StreamWriters.
type teeWriter struct{ a, b snapshot.StreamWriter }

func (t teeWriter) Create(name string) (io.WriteCloser, error) {
	a, err := t.a.Create(name)
	if err != nil {
		return nil, err
	}
	b, err := t.b.Create(name)
	if err != nil {
		snapshot.Abort(a, err)
		return nil, err
	}
	return &teeStream{Writer: io.MultiWriter(a, b), a: a, b: b}, nil
}

type teeStream struct {
	io.Writer
	a, b io.WriteCloser
}

// Close closes the repository's stream first: the restorer sees the end
// of a stream only once its copy is committed.
func (s *teeStream) Close() error {
	err := s.b.Close()
	if err != nil {
		snapshot.Abort(s.a, err)
		return err
	}
	return s.a.Close()
}

// CloseWithError aborts both streams: see snapshot.Abort.
func (s *teeStream) CloseWithError(err error) error {
	snapshot.Abort(s.b, err)
	snapshot.Abort(s.a, err)
	return nil
}
