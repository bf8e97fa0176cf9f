// Package streamtest is an in-memory snapshot.StreamWriter and
// snapshot.StreamReader for the components' tests: what a Dumper writes can
// be read back by a Restorer without storage. It is imported only by tests.
package streamtest

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"sync"
	"testing"

	"github.com/stackport/stackport/snapshot"
)

// Store is an in-memory snapshot.StreamWriter and the source of
// snapshot.StreamReaders for tests.
type Store struct {
	mu      sync.Mutex
	order   []string
	streams map[string]*bytes.Buffer
	closed  map[string]bool
}

func New() *Store {
	return &Store{streams: map[string]*bytes.Buffer{}, closed: map[string]bool{}}
}

func (m *Store) Create(name string) (io.WriteCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.streams[name]; ok {
		return nil, fmt.Errorf("stream %q created twice", name)
	}
	m.order = append(m.order, name)
	m.streams[name] = new(bytes.Buffer)
	return &writer{m: m, name: name}, nil
}

type writer struct {
	m    *Store
	name string
}

func (w *writer) Write(p []byte) (int, error) {
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	if w.m.closed[w.name] {
		return 0, fmt.Errorf("write to closed stream %q", w.name)
	}
	return w.m.streams[w.name].Write(p)
}

func (w *writer) Close() error {
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	if w.m.closed[w.name] {
		return fmt.Errorf("stream %q closed twice", w.name)
	}
	w.m.closed[w.name] = true
	return nil
}

// Names returns the names of the streams created, in order.
func (m *Store) Names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.order...)
}

// Bytes returns the content of a committed (closed) stream.
func (m *Store) Bytes(name string) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed[name] {
		return nil, false
	}
	return m.streams[name].Bytes(), true
}

// Reader returns a StreamReader over the committed streams.
func (m *Store) Reader() *Reader {
	r := &Reader{}
	for _, name := range m.order {
		if b, ok := m.Bytes(name); ok {
			r.Streams = append(r.Streams, Stream{Name: name, Data: b})
		}
	}
	return r
}

type Stream struct {
	Name string
	Data []byte
	// EndErr, if set, is returned instead of io.EOF at the end of the
	// content, as a checksum mismatch would be.
	EndErr error
}

// Reader is an in-memory snapshot.StreamReader. As the contract allows,
// the caller may hold several streams at once and read them on several
// goroutines; AllRead and AllClosed tell whether it finished with them.
type Reader struct {
	Streams []Stream

	mu     sync.Mutex
	next   int
	opened []*content
	extra  []*content // opened by Open
}

// One returns a StreamReader with one stream.
func One(name string, data []byte, endErr error) *Reader {
	return &Reader{Streams: []Stream{{Name: name, Data: data, EndErr: endErr}}}
}

func (r *Reader) Next() (string, io.ReadCloser, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.next >= len(r.Streams) {
		return "", nil, io.EOF
	}
	s := r.Streams[r.next]
	r.next++
	c := &content{mu: &r.mu, r: bytes.NewReader(s.Data), endErr: s.EndErr}
	r.opened = append(r.opened, c)
	return s.Name, c, nil
}

// Open implements snapshot.StreamOpener.
func (r *Reader) Open(name string) (io.ReadCloser, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.Streams {
		if s.Name == name {
			c := &content{mu: &r.mu, r: bytes.NewReader(s.Data), endErr: s.EndErr}
			r.extra = append(r.extra, c)
			return c, nil
		}
	}
	return nil, fmt.Errorf("streamtest: no stream %s: %w", name, fs.ErrNotExist)
}

// Remaining returns the streams not handed out yet.
func (r *Reader) Remaining() []Stream {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.Streams[r.next:]
}

type content struct {
	mu     *sync.Mutex // the Reader's: guards eof and closed
	r      *bytes.Reader
	endErr error
	eof    bool // read to the end
	closed bool
}

func (c *content) Read(p []byte) (int, error) {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return 0, fmt.Errorf("read after close")
	}
	n, err := c.r.Read(p)
	if err == io.EOF {
		c.mu.Lock()
		c.eof = true
		c.mu.Unlock()
		if c.endErr != nil {
			return n, c.endErr
		}
	}
	return n, err
}

func (c *content) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

// Edit replaces the content of the stream called name with f of a copy of
// it, or removes the stream when f returns nil (a missing stream). It fails t
// when there is no such stream.
func (r *Reader) Edit(t testing.TB, name string, f func([]byte) []byte) *Reader {
	t.Helper()
	for i, s := range r.Streams {
		if s.Name != name {
			continue
		}
		data := f(bytes.Clone(s.Data))
		if data == nil {
			r.Streams = append(r.Streams[:i:i], r.Streams[i+1:]...)
		} else {
			r.Streams[i].Data = data
		}
		return r
	}
	t.Fatalf("streamtest: no stream %q", name)
	return r
}

// AllRead reports whether every stream was opened, read to its end and
// closed.
func (r *Reader) AllRead() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.opened) != len(r.Streams) {
		return false
	}
	for _, c := range r.opened {
		if !c.eof || !c.closed {
			return false
		}
	}
	return true
}

// AllClosed reports whether every stream handed out was closed.
func (r *Reader) AllClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range append(r.opened, r.extra...) {
		if !c.closed {
			return false
		}
	}
	return true
}

// LogBuffer collects what a logger writes; it is safe for concurrent use.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Logger returns a debug-level text logger that writes into b.
func (b *LogBuffer) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var (
	_ snapshot.StreamWriter = (*Store)(nil)
	_ snapshot.StreamReader = (*Reader)(nil)
)
