package volume

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	"github.com/stackport/stackport/snapshot"
)

// memStore is an in-memory snapshot.StreamWriter and the source of
// snapshot.StreamReaders for tests.
type memStore struct {
	mu      sync.Mutex
	order   []string
	streams map[string]*bytes.Buffer
	closed  map[string]bool
}

func newMemStore() *memStore {
	return &memStore{streams: map[string]*bytes.Buffer{}, closed: map[string]bool{}}
}

func (m *memStore) Create(name string) (io.WriteCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.streams[name]; ok {
		return nil, fmt.Errorf("stream %q created twice", name)
	}
	m.order = append(m.order, name)
	m.streams[name] = new(bytes.Buffer)
	return &memWriter{m: m, name: name}, nil
}

type memWriter struct {
	m    *memStore
	name string
}

func (w *memWriter) Write(p []byte) (int, error) {
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	if w.m.closed[w.name] {
		return 0, fmt.Errorf("write to closed stream %q", w.name)
	}
	return w.m.streams[w.name].Write(p)
}

func (w *memWriter) Close() error {
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	if w.m.closed[w.name] {
		return fmt.Errorf("stream %q closed twice", w.name)
	}
	w.m.closed[w.name] = true
	return nil
}

// bytes returns the content of a committed (closed) stream.
func (m *memStore) bytes(name string) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed[name] {
		return nil, false
	}
	return m.streams[name].Bytes(), true
}

// reader returns a StreamReader over the committed streams.
func (m *memStore) reader() *memReader {
	r := &memReader{}
	for _, name := range m.order {
		if b, ok := m.bytes(name); ok {
			r.streams = append(r.streams, memStream{name: name, data: b})
		}
	}
	return r
}

type memStream struct {
	name string
	data []byte
	// endErr, if set, is returned instead of io.EOF at the end of the
	// content, as a checksum mismatch would be.
	endErr error
}

// memReader is an in-memory snapshot.StreamReader. It checks that the
// caller closes each stream before asking for the next one.
type memReader struct {
	streams []memStream
	next    int
	opened  []*memContent
}

// streamReader returns a StreamReader with one stream.
func streamReader(name string, data []byte, endErr error) *memReader {
	return &memReader{streams: []memStream{{name: name, data: data, endErr: endErr}}}
}

func (r *memReader) Next() (string, io.ReadCloser, error) {
	if n := len(r.opened); n > 0 && !r.opened[n-1].closed {
		return "", nil, fmt.Errorf("Next called before the previous stream was closed")
	}
	if r.next >= len(r.streams) {
		return "", nil, io.EOF
	}
	s := r.streams[r.next]
	r.next++
	c := &memContent{r: bytes.NewReader(s.data), endErr: s.endErr}
	r.opened = append(r.opened, c)
	return s.name, c, nil
}

type memContent struct {
	r      *bytes.Reader
	endErr error
	eof    bool // read to the end
	closed bool
}

func (c *memContent) Read(p []byte) (int, error) {
	if c.closed {
		return 0, fmt.Errorf("read after close")
	}
	n, err := c.r.Read(p)
	if err == io.EOF {
		c.eof = true
		if c.endErr != nil {
			return n, c.endErr
		}
	}
	return n, err
}

func (c *memContent) Close() error {
	c.closed = true
	return nil
}

// allRead reports whether every stream was opened, read to its end and
// closed.
func (r *memReader) allRead() bool {
	if len(r.opened) != len(r.streams) {
		return false
	}
	for _, c := range r.opened {
		if !c.eof || !c.closed {
			return false
		}
	}
	return true
}

var (
	_ snapshot.StreamWriter = (*memStore)(nil)
	_ snapshot.StreamReader = (*memReader)(nil)
)
