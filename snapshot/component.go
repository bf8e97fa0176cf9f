// Package snapshot defines stackport's snapshot format and the one data flow
// that snapshot, restore, verify and export share: a component dumper
// produces named streams, the pipeline compresses and checksums each one on
// its way into an object store, and the manifest, written last, makes the
// snapshot visible.
//
// Components (snapshot/volume, snapshot/mongo, …) implement Dumper and
// Restorer against the small StreamWriter and StreamReader interfaces here;
// they never see storage, compression or checksums.
package snapshot

import (
	"context"
	"fmt"
	"io"
)

// Stats are a component's counters, recorded in the manifest (files, bytes,
// documents, …). Keys are lower-case words joined by underscores.
type Stats map[string]int64

// Add adds v to the counter named key.
func (s Stats) Add(key string, v int64) { s[key] += v }

// HumanBytes formats a number of bytes with binary units: "512 B",
// "1.5 MiB".
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// A StreamWriter creates the named streams of one component.
//
// Create returns a writer for the stream called name (a slash-separated
// relative path such as "volume.tar" or "appsmith/user.bson"). The caller
// must Close it: Close commits the stream and returns any error of the
// pipeline behind it. A stream that is not closed when the component's
// Dump returns is aborted. Create may be called from several goroutines.
type StreamWriter interface {
	Create(name string) (io.WriteCloser, error)
}

// Abort ends a stream that a StreamWriter created, with err as the cause,
// without committing it: a Writer stores no object for it, a Pipe's reader
// gets err at once. A Dumper calls it when it gives up on a stream, so that
// the other end learns of the failure then rather than when Dump returns
// (a Restorer reading that stream from a Pipe would wait for it meanwhile,
// and a Dumper's other streams for the Restorer). A stream created by a
// StreamWriter without this ability (it has no CloseWithError method) is
// left to be aborted when Dump returns, as the StreamWriter contract says.
func Abort(w io.WriteCloser, err error) {
	if a, ok := w.(interface{ CloseWithError(error) error }); ok {
		_ = a.CloseWithError(err)
	}
}

// A StreamReader hands out the streams of one component in the order they
// were written.
//
// Next returns the name and content of the next stream, or io.EOF when there
// are no more. Next is not safe for concurrent use, but the caller may hold
// several streams at once: Next may be called before the streams it handed
// out are closed, and each stream may be read on a goroutine of its own
// (one goroutine at a time per stream). Every stream must be closed, read
// to its end or not, before the Restorer returns. How many streams are held
// at once is the caller's to bound: each one may hold a connection or a
// decoder.
//
// Reading the content to its end checks the stored size and checksum: a
// mismatch is returned by Read as an error wrapping ErrCorrupt, never as
// io.EOF.
type StreamReader interface {
	Next() (name string, r io.ReadCloser, err error)
}

// A StreamOpener is a StreamReader that can also open one of its streams
// out of order, by name, independently of Next and of the streams handed
// out: a Restorer that must read a later stream first (the mongo Restorer
// reads a captured oplog before it writes anything, to refuse what it
// cannot replay) asserts it. The stream checks its size and checksum as
// Next's do and must be closed. Open returns an error wrapping
// fs.ErrNotExist when there is no stream of that name. A Pipe is not a
// StreamOpener: its streams exist once.
type StreamOpener interface {
	StreamReader
	Open(name string) (io.ReadCloser, error)
}

// A Dumper writes one component of a snapshot as named streams. It must not
// close out; it must close every stream it creates, or Abort it.
type Dumper interface {
	Dump(ctx context.Context, out StreamWriter) (Stats, error)
}

// A Restorer reads the streams a Dumper wrote, in the same order, and applies
// them to a target. A Restorer used to verify a snapshot decodes the streams
// fully and discards the result.
type Restorer interface {
	Restore(ctx context.Context, in StreamReader) (Stats, error)
}
