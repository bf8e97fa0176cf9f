package snapshot

import (
	"fmt"
	"io"
	"runtime"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Compression names how a component's objects are compressed.
type Compression string

// The supported compressions.
const (
	Zstd Compression = "zstd"
	Gzip Compression = "gzip"
	None Compression = "none"
)

// ParseCompression checks a --compression value or a manifest field.
func ParseCompression(s string) (Compression, error) {
	switch c := Compression(s); c {
	case Zstd, Gzip, None:
		return c, nil
	}
	return "", fmt.Errorf("unknown compression %q (want zstd, gzip or none)", s)
}

// Ext is the suffix of stored object names.
func (c Compression) Ext() string {
	switch c {
	case Zstd:
		return ".zst"
	case Gzip:
		return ".gz"
	}
	return ""
}

// CheckLevel reports whether level is valid for c (0 means the default).
func (c Compression) CheckLevel(level int) error {
	max := map[Compression]int{Zstd: 22, Gzip: 9, None: 0}[c]
	if level < 0 || level > max {
		return fmt.Errorf("compression level %d out of range for %s (1-%d, 0 for the default)", level, c, max)
	}
	return nil
}

// newEncoder returns a compressor writing into w. Closing it flushes it but
// does not close w. concurrency bounds zstd's goroutines (0: GOMAXPROCS).
func (c Compression) newEncoder(w io.Writer, level, concurrency int) (io.WriteCloser, error) {
	if concurrency <= 0 {
		concurrency = runtime.GOMAXPROCS(0)
	}
	switch c {
	case Zstd:
		if level == 0 {
			level = 3
		}
		return newFrameEncoder(w, level, concurrency)
	case Gzip:
		if level == 0 {
			level = gzip.DefaultCompression
		}
		return gzip.NewWriterLevel(w, level)
	case None:
		return nopWriteCloser{w}, nil
	}
	return nil, fmt.Errorf("snapshot: unknown compression %q", c)
}

// newDecoder returns a decompressor reading from r. Close releases it and
// does not close r.
func (c Compression) newDecoder(r io.Reader) (io.ReadCloser, error) {
	switch c {
	case Zstd:
		d, err := zstd.NewReader(r, zstd.WithDecoderMaxWindow(maxWindow))
		if err != nil {
			return nil, err
		}
		return zstdReadCloser{d}, nil
	case Gzip:
		return gzip.NewReader(r)
	case None:
		return io.NopCloser(r), nil
	}
	return nil, fmt.Errorf("snapshot: unknown compression %q", c)
}

// maxWindow bounds the memory a hostile zstd frame can make the decoder
// allocate; stackport's own encoder never uses more than 8 MiB.
const maxWindow = 128 << 20

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

type zstdReadCloser struct{ *zstd.Decoder }

func (z zstdReadCloser) Close() error { z.Decoder.Close(); return nil }
