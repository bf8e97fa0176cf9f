package volume

import (
	"archive/tar"
	"context"
	"fmt"
	"io"

	"github.com/stackport/stackport/snapshot"
)

// A sink receives the validated entries of an archive from decode.
type sink interface {
	// dir creates a directory; the root is not passed.
	dir(name string, hdr *tar.Header) error
	// file creates a regular file from r, which it must read to io.EOF.
	file(name string, hdr *tar.Header, r io.Reader) error
	symlink(name string, hdr *tar.Header) error
	link(name, target string, hdr *tar.Header) error
	// dirDone is called once a directory can have no more entries, deepest
	// first and the root ("") last.
	dirDone(name string, hdr *tar.Header) error
}

// decode reads a volume.tar stream to its end, validates every entry and
// passes it to s.
func decode(ctx context.Context, r io.Reader, s sink, progress func(int64)) (snapshot.Stats, error) {
	stats := snapshot.Stats{"files": 0, "dirs": 0, "symlinks": 0, "hardlinks": 0, "bytes": 0}
	src := &sourceReader{r: r}
	tr := tar.NewReader(src)
	content := &countingReader{ctx: ctx, progress: progress}
	var v validator
	for {
		if err := ctx.Err(); err != nil {
			return stats, fmt.Errorf("volume: %w", err)
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return stats, src.wrap(err)
		}
		e, err := v.next(hdr, s.dirDone)
		if err != nil {
			return stats, err
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if e.name != "" {
				err = s.dir(e.name, hdr)
			}
			stats.Add("dirs", 1)
		case tar.TypeReg:
			*content = countingReader{ctx: ctx, r: tr, progress: progress}
			err = s.file(e.name, hdr, content)
			if content.err != nil {
				return stats, src.wrap(content.err)
			}
			stats.Add("files", 1)
			stats.Add("bytes", content.n)
		case tar.TypeSymlink:
			err = s.symlink(e.name, hdr)
			stats.Add("symlinks", 1)
		case tar.TypeLink:
			err = s.link(e.name, e.link, hdr)
			stats.Add("hardlinks", 1)
		}
		if err != nil {
			return stats, err
		}
	}
	if err := v.finish(s.dirDone); err != nil {
		return stats, err
	}
	// Read the rest of the stream (the end-of-archive padding) so that the
	// stream reader verifies its size and checksum.
	if _, err := io.Copy(io.Discard, src); err != nil {
		return stats, src.wrap(err)
	}
	return stats, nil
}

// A sourceReader remembers the error of the stream under the tar reader, to
// tell stream errors (passed on) from undecodable data (ErrCorrupt).
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// wrap returns the error to report for err, returned by the tar reader.
func (s *sourceReader) wrap(err error) error {
	if s.err != nil {
		return fmt.Errorf("volume: %s: %w", streamName, s.err)
	}
	return corrupt("%v", err)
}

// A countingReader counts the bytes read from r, reports them to progress,
// stops when ctx is done and remembers r's error.
type countingReader struct {
	ctx      context.Context
	r        io.Reader
	progress func(int64)
	n        int64
	err      error
}

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	if n > 0 {
		c.n += int64(n)
		if c.progress != nil {
			c.progress(int64(n))
		}
	}
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

// Verifier decodes the stream fully (tar headers, entry names checked as in
// Restore, content read and discarded) without writing anything.
//
// It cannot tell whether a hard link's target is a regular file (that would
// take memory growing with the number of files); Restore checks it.
type Verifier struct{}

// Restore implements snapshot.Restorer.
func (Verifier) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	return readStream(in, func(r io.Reader) (snapshot.Stats, error) {
		return decode(ctx, r, discard{}, nil)
	})
}

// Export copies the plain tar stream to w (GNU tar extracts it). The stream
// is checked as by Verifier while it is copied: an error may come after part
// of it was written.
func Export(ctx context.Context, in snapshot.StreamReader, w io.Writer) (snapshot.Stats, error) {
	return readStream(in, func(r io.Reader) (snapshot.Stats, error) {
		return decode(ctx, io.TeeReader(r, w), discard{}, nil)
	})
}

// discard is the sink of Verifier and Export.
type discard struct{}

func (discard) dir(string, *tar.Header) error { return nil }

func (discard) file(_ string, _ *tar.Header, r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

func (discard) symlink(string, *tar.Header) error      { return nil }
func (discard) link(string, string, *tar.Header) error { return nil }
func (discard) dirDone(string, *tar.Header) error      { return nil }
