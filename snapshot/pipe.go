package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// ErrPipeClosed marks the errors that one end of a Pipe returns because the
// other end stopped first; they wrap the other end's error too. It tells a
// consequence from the cause when both a Dumper and a Restorer fail.
var ErrPipeClosed = errors.New("the other end of the pipe stopped")

// closedError is what one end of a pipe sees after the other end failed.
type closedError struct {
	end string // "writing end" or "reading end": the end that stopped
	err error
}

func (e *closedError) Error() string {
	return "snapshot: pipe: the " + e.end + " stopped: " + e.err.Error()
}

func (e *closedError) Unwrap() []error { return []error{ErrPipeClosed, e.err} }

// Pipe connects a Dumper to a Restorer in memory, without storage: every
// stream created on the PipeWriter is an io.Pipe, and the PipeReader's Next
// hands the streams out in the order they were created, waiting for the
// next one to be created. Nothing is buffered: a write blocks until the
// reader has read it, so a Dumper that writes several streams concurrently
// (mongo dumps collections in parallel) waits for the Restorer to reach
// each one, and memory does not grow with the data. The one rule this adds
// for a Dumper: a stream must be finished without waiting for a later
// stream to be read (snapshot/volume, mongo, redis and postgres follow it).
// A Restorer may hold several streams at once and read them concurrently
// (postgres may load tables in parallel), as the StreamReader contract allows.
//
// Each end is closed with the result of its side: PipeWriter.Close(err)
// when Dump has returned, PipeReader.Close(err) when Restore has returned.
// A successful writer lets Next return io.EOF after the last stream; the
// first failure — of either side, or ctx being done — ends both: Next, Read,
// Create and Write then fail at once, the other side's errors wrapping
// ErrPipeClosed and the failure.
func Pipe(ctx context.Context) (*PipeWriter, *PipeReader) {
	p := &pipe{open: map[*pipeStream]bool{}, out: map[*pipeStream]bool{}, names: map[string]bool{}}
	p.cond.L = &p.mu
	p.stop = context.AfterFunc(ctx, func() {
		err := fmt.Errorf("snapshot: pipe: %w", ctx.Err())
		p.mu.Lock()
		p.fail(err, err)
		p.mu.Unlock()
	})
	return &PipeWriter{p}, &PipeReader{p}
}

type pipe struct {
	mu   sync.Mutex
	cond sync.Cond // broadcast on every change of the fields below
	stop func() bool

	queue      []*pipeStream        // created, not yet handed out by Next
	out        map[*pipeStream]bool // handed out by Next, not yet closed by the reader
	last       *pipeStream          // the stream Next handed out last
	open       map[*pipeStream]bool // created, not yet closed by the writer
	names      map[string]bool      // every name created
	writerDone bool
	readerDone bool
	// werr and rerr are what the writing and the reading end see after a
	// failure (nil until then).
	werr, rerr error
}

// fail ends the pipe, once: the writer's calls return werr, the reader's
// rerr. p.mu must be held.
func (p *pipe) fail(werr, rerr error) {
	if p.werr != nil {
		return
	}
	p.werr, p.rerr = werr, rerr
	live := append([]*pipeStream{}, p.queue...)
	for s := range p.out {
		live = append(live, s)
	}
	for s := range p.open {
		live = append(live, s)
	}
	for _, s := range live {
		// Both directions, to release a blocked Write and a blocked
		// Read; the streams' own Read and Write turn the resulting
		// io.ErrClosedPipe into werr or rerr.
		s.pr.CloseWithError(werr)
		s.pw.CloseWithError(rerr)
	}
	p.cond.Broadcast()
}

// errs returns what the writing and the reading end see after a failure
// (nil before).
func (p *pipe) errs() (werr, rerr error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.werr, p.rerr
}

// done releases the context's hook once both ends are closed. p.mu must be
// held.
func (p *pipe) done() {
	if p.writerDone && p.readerDone {
		p.stop()
	}
}

// pipeStream is one stream of a pipe.
type pipeStream struct {
	p    *pipe
	name string
	pr   *io.PipeReader
	pw   *io.PipeWriter

	eof bool // read to its end; guarded by p.mu
}

// PipeWriter is the writing end of a Pipe: the StreamWriter handed to a
// Dumper. Create may be called from several goroutines.
type PipeWriter struct{ p *pipe }

// Create starts the stream called name. Its writes block until the reader
// has read them; Close ends it (the reader sees io.EOF).
func (w *PipeWriter) Create(name string) (io.WriteCloser, error) {
	if !validKey(name) {
		return nil, fmt.Errorf("snapshot: pipe: invalid stream name %q", name)
	}
	p := w.p
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.werr != nil:
		return nil, p.werr
	case p.writerDone:
		return nil, fmt.Errorf("snapshot: pipe: stream %s created after Close", name)
	case p.names[name]:
		return nil, fmt.Errorf("snapshot: pipe: stream %s created twice", name)
	}
	pr, pw := io.Pipe()
	s := &pipeStream{p: p, name: name, pr: pr, pw: pw}
	p.names[name] = true
	p.open[s] = true
	p.queue = append(p.queue, s)
	p.cond.Broadcast()
	return pipeStreamWriter{s}, nil
}

// Close ends the writing side with the result of Dump. With a nil err the
// reader gets io.EOF after the streams created so far, unless one of them
// is still open (a Dumper must close every stream); with an error, every
// stream still open is closed with it and Next returns it.
func (w *PipeWriter) Close(err error) {
	p := w.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.writerDone {
		return
	}
	p.writerDone = true
	if err == nil && len(p.open) > 0 {
		err = fmt.Errorf("snapshot: pipe: the dumper returned with %d streams still open", len(p.open))
	}
	if err != nil {
		p.fail(err, &closedError{"writing end", err})
	}
	p.cond.Broadcast()
	p.done()
}

type pipeStreamWriter struct{ s *pipeStream }

func (w pipeStreamWriter) Write(b []byte) (int, error) {
	n, err := w.s.pw.Write(b)
	if werr, _ := w.s.p.errs(); err == io.ErrClosedPipe && werr != nil {
		err = werr
	}
	return n, err
}

// Close ends the stream. It returns the pipe's failure, if any, so that a
// Dumper does not take a stream for delivered when the reader stopped.
func (w pipeStreamWriter) Close() error {
	p := w.s.p
	p.mu.Lock()
	delete(p.open, w.s)
	err := p.werr
	p.mu.Unlock()
	w.s.pw.Close()
	return err
}

// CloseWithError aborts the stream (see Abort): it fails the whole pipe
// with err, as PipeWriter.Close(err) does, at once.
func (w pipeStreamWriter) CloseWithError(err error) error {
	p := w.s.p
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.open, w.s)
	p.fail(err, &closedError{"writing end", err})
	return nil
}

// PipeReader is the reading end of a Pipe: the StreamReader handed to a
// Restorer.
type PipeReader struct{ p *pipe }

// Next returns the next stream in creation order, waiting until it is
// created, or io.EOF after the writer closed successfully and every stream
// was handed out. The streams handed out before need not be closed first:
// they may be read concurrently, each on its own goroutine.
func (r *PipeReader) Next() (string, io.ReadCloser, error) {
	p := r.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.rerr == nil && len(p.queue) == 0 && !p.writerDone {
		p.cond.Wait()
	}
	switch {
	case p.rerr != nil:
		return "", nil, p.rerr
	case len(p.queue) == 0:
		return "", nil, io.EOF
	}
	s := p.queue[0]
	p.queue = p.queue[1:]
	p.out[s] = true
	p.last = s
	return s.name, pipeStreamReader{s}, nil
}

// Close ends the reading side with the result of Restore. An error is
// passed to the writer's Create and Write calls; a nil err while streams
// are left (the Restorer stopped before io.EOF, left a stream it holds
// unread, or closed the last one before its end) fails the writer too.
func (r *PipeReader) Close(err error) {
	p := r.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.readerDone {
		return
	}
	p.readerDone = true
	unread := p.last != nil && !p.last.eof
	for s := range p.out {
		unread = unread || !s.eof
	}
	if err == nil && (!p.writerDone || len(p.queue) > 0 || unread) {
		err = errors.New("snapshot: pipe: the restorer returned before the last stream")
	}
	if err != nil {
		p.fail(&closedError{"reading end", err}, err)
	}
	p.done()
}

type pipeStreamReader struct{ s *pipeStream }

func (r pipeStreamReader) Read(b []byte) (int, error) {
	n, err := r.s.pr.Read(b)
	switch err {
	case io.EOF:
		r.s.p.mu.Lock()
		r.s.eof = true
		r.s.p.mu.Unlock()
	case io.ErrClosedPipe:
		if _, rerr := r.s.p.errs(); rerr != nil {
			err = rerr
		}
	}
	return n, err
}

// Close releases the stream. Closed before its end, the stream's writer
// fails: what it still writes would be lost.
func (r pipeStreamReader) Close() error {
	s := r.s
	s.p.mu.Lock()
	delete(s.p.out, s)
	eof := s.eof
	s.p.mu.Unlock()
	if !eof {
		s.pr.CloseWithError(&closedError{"reading end", fmt.Errorf("stream %s closed before its end", s.name)})
	}
	return nil
}
