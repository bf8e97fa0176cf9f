package redis

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/stackport/stackport/snapshot"
)

// A consumer receives the decoded streams from readStreams.
type consumer interface {
	// begin starts a stream whose header fr has read.
	begin(ctx context.Context, fr *frameReader) error
	// record handles one key frame of the current stream.
	record(ctx context.Context, fr *frameReader, rec record) error
	// end finishes the current stream after its end frame was verified.
	end(ctx context.Context, fr *frameReader) error
}

// readStreams decodes every stream of the component, in order, and passes
// its records to c. The streams must be named "db<N>.frames" with N
// ascending and matching their headers. Stats: "keys", "db<N>_keys",
// "bytes" and "rdb_version" (the highest of the stream headers).
func readStreams(ctx context.Context, in snapshot.StreamReader, c consumer) (snapshot.Stats, error) {
	stats := snapshot.Stats{"keys": 0, "bytes": 0, "rdb_version": 0}
	last := -1
	for {
		if err := ctx.Err(); err != nil {
			return stats, fmt.Errorf("redis: %w", err)
		}
		name, rc, err := in.Next()
		if errors.Is(err, io.EOF) {
			return stats, nil
		}
		if err != nil {
			return stats, fmt.Errorf("redis: open stream: %w", err)
		}
		db, ok := parseStreamName(name)
		switch {
		case !ok:
			err = fmt.Errorf("redis: unexpected stream %q, want db<N>.frames: %w", name, snapshot.ErrCorrupt)
		case db <= last:
			err = fmt.Errorf("redis: stream %s out of order or repeated: %w", name, snapshot.ErrCorrupt)
		default:
			err = readStream(ctx, name, db, rc, c, stats)
		}
		if cerr := rc.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("redis: close %s: %w", name, cerr)
		}
		if err != nil {
			return stats, err
		}
		last = db
	}
}

// readStream decodes stream name, which holds database db.
func readStream(ctx context.Context, name string, db int, r io.Reader, c consumer, stats snapshot.Stats) error {
	fr, err := newFrameReader(r, name)
	if err != nil {
		return err
	}
	if fr.db != db {
		return corrupt(name, "header names database %d", fr.db)
	}
	stats["rdb_version"] = max(stats["rdb_version"], int64(fr.rdb))
	if err := c.begin(ctx, fr); err != nil {
		return err
	}
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("redis: %s: %w", name, err)
		}
		rec, err := fr.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		stats.Add("keys", 1)
		stats.Add("bytes", int64(len(rec.payload)))
		if err := c.record(ctx, fr, rec); err != nil {
			return err
		}
	}
	stats[fmt.Sprintf("db%d_keys", db)] = fr.n
	return c.end(ctx, fr)
}

// Verifier decodes every stream fully (headers, frame checksums, lengths,
// the payloads' RDB versions and CRC-64, end frames) and discards the keys.
// It does not parse the serialized values; the target does on RESTORE.
type Verifier struct{}

// Restore implements snapshot.Restorer.
func (Verifier) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	return readStreams(ctx, in, discard{})
}

type discard struct{}

func (discard) begin(context.Context, *frameReader) error          { return nil }
func (discard) record(context.Context, *frameReader, record) error { return nil }
func (discard) end(context.Context, *frameReader) error            { return nil }
