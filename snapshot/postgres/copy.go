package postgres

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"io"
)

// endOfData is the line that ends a data stream, as in a COPY … FROM stdin
// block of a psql script.
const endOfData = "\\.\n"

// A copyReader decodes a data stream: rows of COPY text format, one per
// line, then the line `\.` and nothing after it. Read returns the rows
// without the end-of-data line. It fails with an error naming the table and
// wrapping snapshot.ErrCorrupt when a row does not have the table's number
// of fields, holds a raw carriage return or NUL byte, or a line starts
// with `\.` anywhere but at the end, and when the stream ends without the
// end-of-data line.
//
// Row content is not parsed any further: the server checks it when the rows
// are loaded. Memory is bounded by its buffer, whatever the length of rows.
type copyReader struct {
	ctx    context.Context
	src    *bufio.Reader
	t      *table
	stream string // the data stream read: t.Stream or one of t.Parts
	rows   int64
	bytes  int64 // row bytes returned

	cur       []byte // rest of the current slice of the stream
	lineStart bool   // the next byte starts a line
	lineLen   int    // bytes of the current line so far
	fields    int    // fields of the current line so far
	done      bool   // the end-of-data line was read, and then the end of the stream
	err       error  // sticky
}

// newCopyReader returns a copyReader of r, the data stream called stream
// of t.
func newCopyReader(ctx context.Context, r io.Reader, t *table, stream string) *copyReader {
	return &copyReader{ctx: ctx, src: bufio.NewReaderSize(sourceReader{r}, copyBufSize), t: t, stream: stream, lineStart: true}
}

// Read fills p with as many checked rows as fit, so that COPY FROM sends
// large messages rather than one per row.
func (c *copyReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(c.cur) == 0 {
			if c.err != nil || c.done {
				break
			}
			c.err = c.fill()
			continue
		}
		m := copy(p[n:], c.cur)
		c.cur = c.cur[m:]
		n += m
	}
	c.bytes += int64(n)
	switch {
	case n > 0:
		return n, nil
	case c.err != nil:
		return 0, c.err
	}
	return 0, io.EOF
}

// corrupt returns the error for a malformed data stream.
func (c *copyReader) corrupt(format string, args ...any) error {
	return corrupt(c.stream, "table %s: row %d: "+format, append([]any{c.t.key(), c.rows + 1}, args...)...)
}

// fill reads the next slice of the stream into cur and checks it.
func (c *copyReader) fill() error {
	if err := c.ctx.Err(); err != nil {
		return streamErr(c.stream, err)
	}
	line, err := c.src.ReadSlice('\n')
	switch {
	case err == bufio.ErrBufferFull:
	case err == io.EOF:
		if len(line) > 0 || c.lineLen > 0 {
			return c.corrupt("stream ends inside a row")
		}
		return c.corrupt("stream ends without the end-of-data line (truncated)")
	case err != nil:
		return streamErr(c.stream, err)
	}
	if c.lineStart && bytes.HasPrefix(line, []byte(`\.`)) {
		return c.end(line)
	}
	if bytes.IndexByte(line, '\r') >= 0 {
		return c.corrupt("raw carriage return")
	}
	if bytes.IndexByte(line, 0) >= 0 {
		return c.corrupt("NUL byte")
	}
	c.fields += bytes.Count(line, []byte{'\t'})
	c.lineLen += len(line)
	c.lineStart = err == nil
	if c.lineStart {
		// A row without columns is an empty line; a row with n columns
		// has n-1 tabs.
		if c.t.Columns == 0 && c.lineLen != 1 || c.t.Columns > 0 && c.fields+1 != c.t.Columns {
			return c.corrupt("%d fields, want %d", c.fieldCount(), c.t.Columns)
		}
		c.rows++
		c.lineLen, c.fields = 0, 0
	}
	c.cur = line
	return nil
}

func (c *copyReader) fieldCount() int {
	if c.lineLen == 1 {
		return 0
	}
	return c.fields + 1
}

// end checks line, which starts with `\.` at the start of a line: it must
// be the end-of-data line, followed by the end of the stream.
func (c *copyReader) end(line []byte) error {
	if string(line) != endOfData {
		return c.corrupt("line starting with `\\.` that is not the end-of-data line")
	}
	switch _, err := c.src.ReadByte(); {
	case err == io.EOF:
		c.done = true
		return nil
	case err != nil:
		return streamErr(c.stream, err)
	}
	return corrupt(c.stream, "table %s: data after the end-of-data line", c.t.key())
}

// A TableDigest is a table's row count and an order-independent digest of
// its rows: the sum of the SHA-256 of each row in COPY text format (with
// the session settings of this package), as hex.
type TableDigest struct {
	Rows   int64
	Digest string
}

// A rowDigest computes a TableDigest from COPY text rows written to it.
type rowDigest struct {
	h    hash.Hash
	sum  [4]uint64
	rows int64
}

func newRowDigest() *rowDigest { return &rowDigest{h: sha256.New()} }

func (d *rowDigest) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			d.h.Write(p)
			break
		}
		d.h.Write(p[:i])
		var s [sha256.Size]byte
		d.h.Sum(s[:0])
		for j := range d.sum {
			d.sum[j] += binary.BigEndian.Uint64(s[8*j:])
		}
		d.rows++
		d.h.Reset()
		p = p[i+1:]
	}
	return n, nil
}

func (d *rowDigest) result() TableDigest {
	var b [32]byte
	for j, v := range d.sum {
		binary.BigEndian.PutUint64(b[8*j:], v)
	}
	return TableDigest{Rows: d.rows, Digest: hex.EncodeToString(b[:])}
}
