package redis

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stackport/stackport/snapshot"
)

// Dumper writes every database of a Redis server that has keys as a stream
// "db<N>.frames".
//
// It reads each database with SCAN, then per batch MEMORY USAGE (to keep big
// payloads out of the same pipeline; without it batches are bounded by key
// count only) and pipelined PTTL and DUMP. A key deleted or expired between
// SCAN and DUMP is skipped and counted as "skipped_deleted". A key SCAN
// returns twice (it may, while the server resizes its tables) is written
// once: the Dumper remembers a 128-bit hash of every key name (some 20 to
// 40 bytes per key). Expiry times are made absolute with the local clock
// at the moment the batch is sent, so they may come out early by the time
// the server takes to reach the key; a target applies them with its own
// clock.
//
// Stats: "keys", "db<N>_keys", "bytes" (payload bytes), "skipped_deleted"
// and "rdb_version", the highest RDB version of the payloads (the version a
// target must load).
type Dumper struct {
	// URL is redis://[user:password@]host:port or rediss://… for TLS. A
	// database number in the path is ignored: every database is dumped.
	URL string
	// TLSCAFile is a PEM file with the CA certificates that sign the
	// server's certificate (rediss:// only; default: the system's roots).
	TLSCAFile string
	// SkipDB, when set, names databases left out (for a Restorer whose
	// Skip names the same databases).
	SkipDB func(db int) bool
	Log    *slog.Logger // progress (nil = slog.Default())
}

// Dump implements snapshot.Dumper. It writes one stream at a time; on error
// the stream being written is left unclosed, so the pipeline aborts it
// when Dump returns (no other stream waits for it).
func (d *Dumper) Dump(ctx context.Context, out snapshot.StreamWriter) (snapshot.Stats, error) {
	stats := snapshot.Stats{"keys": 0, "bytes": 0, "skipped_deleted": 0, "rdb_version": 0}
	opt, err := Options(d.URL, d.TLSCAFile)
	if err != nil {
		return stats, err
	}
	// A source that restarts mid-dump comes back without (some of) its
	// keys, and SCAN would carry on as if nothing happened.
	opt.OnConnect = (&restartGuard{addr: opt.Addr}).check
	c := client(opt, 0)
	dbs, err := keyspace(ctx, c)
	c.Close()
	if err != nil {
		return stats, err
	}
	for _, db := range dbs {
		if d.SkipDB != nil && d.SkipDB(db) {
			continue
		}
		if err := d.dumpDB(ctx, opt, db, out, stats); err != nil {
			return stats, err
		}
	}
	return stats, nil
}

// dumpDB writes database db's stream.
func (d *Dumper) dumpDB(ctx context.Context, opt *goredis.Options, db int, out snapshot.StreamWriter, stats snapshot.Stats) error {
	c := client(opt, db)
	defer c.Close()
	name := streamName(db)
	w, err := out.Create(name)
	if err != nil {
		return fmt.Errorf("redis: create %s: %w", name, err)
	}
	b := &dumpBatch{c: c, fw: newFrameWriter(w, db), stats: stats}
	seeds := [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}
	seen := map[[2]uint64]struct{}{}
	deleted := stats["skipped_deleted"]
	var cursor uint64
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("redis: dump db %d: %w", db, err)
		}
		keys, next, err := c.Scan(ctx, cursor, "", batchKeys).Result()
		if err != nil {
			return serverError(opt.Addr, fmt.Sprintf("db %d: SCAN", db), err)
		}
		fresh := keys[:0]
		for _, k := range keys {
			h := [2]uint64{maphash.String(seeds[0], k), maphash.String(seeds[1], k)}
			if _, dup := seen[h]; !dup {
				seen[h] = struct{}{}
				fresh = append(fresh, k)
			}
		}
		if err := b.dump(ctx, fresh); err != nil {
			return err
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	if err := b.fw.finish(); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("redis: close %s: %w", name, err)
	}
	stats[fmt.Sprintf("db%d_keys", db)] = b.fw.n
	logger(d.Log).Info("redis: database dumped", "db", db, "keys", b.fw.n, "skipped_deleted", stats["skipped_deleted"]-deleted)
	return nil
}

// A dumpBatch writes the keys of one database.
type dumpBatch struct {
	c     *goredis.Client
	fw    *frameWriter
	stats snapshot.Stats
}

// dump writes keys in pipelined batches of at most batchKeys keys whose
// estimated payloads total at most batchBytes (or one bigger key).
func (b *dumpBatch) dump(ctx context.Context, keys []string) error {
	sizes, err := b.sizes(ctx, keys)
	if err != nil {
		return err
	}
	for len(keys) > 0 {
		n, total := 0, int64(0)
		for n < len(keys) && n < batchKeys && (n == 0 || total+sizes[n] <= batchBytes) {
			total += sizes[n]
			n++
		}
		if err := b.dumpKeys(ctx, keys[:n]); err != nil {
			return err
		}
		keys, sizes = keys[n:], sizes[n:]
	}
	return nil
}

// sizes estimates each key's size with MEMORY USAGE; where the server does
// not answer it, the estimates are 0.
func (b *dumpBatch) sizes(ctx context.Context, keys []string) ([]int64, error) {
	sizes := make([]int64, len(keys))
	pipe := b.c.Pipeline()
	cmds := make([]*goredis.IntCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.MemoryUsage(ctx, k)
	}
	if err := execPipeline(ctx, pipe); err != nil { // else the commands' own errors tell
		return nil, serverError(b.c.Options().Addr, fmt.Sprintf("db %d: MEMORY USAGE", b.fw.db), err)
	}
	for i, cmd := range cmds {
		n, err := cmd.Result()
		switch {
		case err == nil:
			sizes[i] = n
		case errors.Is(err, goredis.Nil) || isReplyError(err):
			// deleted, or MEMORY is not available: no estimate
		default:
			return nil, serverError(b.c.Options().Addr, fmt.Sprintf("db %d: MEMORY USAGE", b.fw.db), err)
		}
	}
	return sizes, nil
}

// dumpKeys writes keys with one pipeline of DUMP and PTTL.
func (b *dumpBatch) dumpKeys(ctx context.Context, keys []string) error {
	pipe := b.c.Pipeline()
	dumps := make([]*goredis.Cmd, len(keys))
	ttls := make([]*goredis.Cmd, len(keys))
	for i, k := range keys {
		ttls[i] = pipe.Do(ctx, "PTTL", k)
		dumps[i] = pipe.Do(ctx, "DUMP", k)
	}
	// The time before sending, as the replies may take long to arrive:
	// expiries err early by at most the time the server takes to reach the
	// PTTL.
	now := time.Now().UnixMilli()
	if err := execPipeline(ctx, pipe); err != nil { // else the commands' own errors tell
		return serverError(b.c.Options().Addr, fmt.Sprintf("db %d: DUMP", b.fw.db), err)
	}
	for i, k := range keys {
		payload, err := dumps[i].Text()
		if errors.Is(err, goredis.Nil) {
			b.stats.Add("skipped_deleted", 1)
			continue
		}
		if err != nil {
			return serverError(b.c.Options().Addr, fmt.Sprintf("db %d: DUMP %q", b.fw.db, k), err)
		}
		ttl, err := ttls[i].Int64()
		if err != nil {
			return serverError(b.c.Options().Addr, fmt.Sprintf("db %d: PTTL %q", b.fw.db, k), err)
		}
		var expiry int64
		switch {
		case ttl == -2: // deleted right before DUMP
			b.stats.Add("skipped_deleted", 1)
			continue
		case ttl >= 0:
			expiry = now + ttl
		}
		if err := b.fw.write(k, expiry, payload); err != nil {
			return err
		}
		b.stats.Add("keys", 1)
		b.stats.Add("bytes", int64(len(payload)))
		b.stats["rdb_version"] = max(b.stats["rdb_version"], int64(payloadRDB(payload)))
	}
	return nil
}
