package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stackport/stackport/snapshot"
)

// Retries of a batch whose connection failed: retryAttempts tries in all,
// waiting retryDelay, doubling up to maxRetryDelay, in between.
var (
	retryAttempts = 8
	retryDelay    = 200 * time.Millisecond
	maxRetryDelay = 5 * time.Second
)

// Restorer writes the keys of the streams into a Redis server (such as
// Memorystore) with pipelined RESTORE … ABSTTL.
//
// Before writing anything it compares each stream's RDB version with the
// one the target loads (from INFO server, see TargetRDBVersion) and refuses
// payloads the target is too old for. Keys whose expiry has passed are
// skipped and counted as "skipped_expired". A key that already exists in
// the target is an error naming it, unless Replace; batches are checked with
// EXISTS before they are written, so the batch holding an existing key is
// not written (earlier batches are).
//
// When the connection fails the batch is retried with backoff on a new
// connection; as every key of the batch was checked to be absent (or
// Replace is set), the retry uses REPLACE, so keys the failed attempt wrote
// are neither duplicated nor refused. Every new connection reads the
// target's run_id: one that changed (a restart, which may have lost the keys
// written before) fails the restore.
//
// Stats: those of Verifier plus "restored" and "skipped_expired".
type Restorer struct {
	URL       string // redis://[user:password@]host:port or rediss://…
	TLSCAFile string // PEM CA certificates for rediss:// (default: system roots)
	// Replace overwrites keys that exist in the target (RESTORE … REPLACE).
	Replace bool
	// Flush empties each target database (FLUSHDB ASYNC) before its first
	// key is written, after the RDB version check.
	Flush bool
	// DBMap maps source to target database numbers; databases it does not
	// name keep their number. See ParseDBMap.
	DBMap map[int]int
	// TargetRDBVersion, if set, is the highest RDB version the target loads,
	// instead of the one derived from its INFO server.
	TargetRDBVersion int
	// Skip, when set, names source databases that the target holds
	// already, moved by an earlier restore that was interrupted: their
	// streams are read and discarded, nothing is written, and their keys
	// are counted as "skipped_keys", not as "keys".
	Skip func(db int) bool
	// ReplaceDB, when set, names source databases whose keys replace
	// existing ones, as with Replace: the databases an earlier restore
	// began and did not finish, whose keys it wrote.
	ReplaceDB func(db int) bool
	// Starting, when set, is called with the source database before
	// anything is written into its target database (FLUSHDB included);
	// its error stops the restore.
	Starting func(ctx context.Context, db int) error
	// Loaded, when set, is called once every key of a source database's
	// stream was written (or skipped as expired), with the number of keys
	// of the stream.
	Loaded func(db int, keys int64)
	Log    *slog.Logger // warnings and progress (nil = slog.Default())
}

// Restore implements snapshot.Restorer.
func (r *Restorer) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	opt, err := Options(r.URL, r.TLSCAFile)
	if err != nil {
		return nil, err
	}
	opt.MaxRetries = -1 // retried per batch, knowing what a retry may repeat
	s := &restoreSink{r: r, server: newServer(opt), log: logger(r.Log), flushed: map[int]bool{}}
	opt.OnConnect = (&restartGuard{addr: opt.Addr}).check
	defer s.close()
	if err := s.connect(ctx); err != nil {
		return nil, err
	}
	stats, err := readStreams(ctx, in, s)
	stats["restored"] = s.restored
	stats["skipped_expired"] = s.expired
	if s.r.Skip != nil {
		stats["keys"] -= s.skipped
		stats["bytes"] -= s.skippedBytes
		stats["skipped_keys"] = s.skipped
	}
	return stats, err
}

// A restoreSink writes decoded records into the target.
type restoreSink struct {
	*server
	r       *Restorer
	log     *slog.Logger
	flushed map[int]bool // target databases
	mu      sync.Mutex
	rdb     int    // the highest RDB version the target loads
	version string // the target's redis_version, for messages

	tdb        int  // target database of the current stream
	skip       bool // the current stream is read, not written (Skip)
	replace    bool // the current stream's keys replace existing ones
	batch      []record
	batchBytes int

	restored, expired     int64
	skipped, skippedBytes int64 // keys of skipped streams
}

// errRestarted marks a server that restarted while stackport used it: a
// restarted target may have lost the keys written before, a restarted source
// the keys not yet read.
var errRestarted = errors.New("the server restarted meanwhile, so keys may be missing; run the command again")

// restartGuard fails every new connection to a server whose run_id differs
// from the first connection's, so that a restart in the middle of a dump or a
// restore is an error instead of a silently partial result. Use check as
// goredis.Options.OnConnect.
type restartGuard struct {
	addr  string
	mu    sync.Mutex
	runID string
}

func (g *restartGuard) check(ctx context.Context, cn *goredis.Conn) error {
	text, err := cn.Info(ctx, "server").Result()
	if err != nil {
		return err
	}
	id := infoField(text, "run_id")
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.runID == "" {
		g.runID = id
	} else if id != g.runID {
		return fmt.Errorf("redis: %s: run_id %s, was %s: %w", g.addr, id, g.runID, errRestarted)
	}
	return nil
}

// isTransient reports whether a failed command may succeed on a new
// connection.
func isTransient(err error) bool {
	return !isReplyError(err) && !errors.Is(err, errRestarted)
}

// connect reads the target's version.
func (s *restoreSink) connect(ctx context.Context) error {
	text, err := info(ctx, s.db(0), "server")
	if err != nil {
		return err
	}
	s.version = infoField(text, "redis_version")
	if v := infoField(text, "valkey_version"); v != "" {
		s.version = "Valkey " + v
	}
	s.rdb = s.r.TargetRDBVersion
	if s.rdb == 0 {
		s.rdb = serverRDBVersion(text)
	}
	if s.rdb == 0 {
		return fmt.Errorf("redis: %s: cannot tell which RDB version the target (version %q) loads; set the target RDB version", s.opt.Addr, s.version)
	}
	return nil
}

func (s *restoreSink) begin(ctx context.Context, fr *frameReader) error {
	if fr.rdb > s.rdb {
		return fmt.Errorf("redis: %s: the snapshot's payloads have RDB version %d, but the target %s (Redis %s) loads RDB version %d at most; restore into a newer server",
			fr.stream, fr.rdb, s.opt.Addr, s.version, s.rdb)
	}
	s.tdb = mapDB(s.r.DBMap, fr.db)
	s.skip = s.r.Skip != nil && s.r.Skip(fr.db)
	s.replace = s.r.Replace || (s.r.ReplaceDB != nil && s.r.ReplaceDB(fr.db))
	if s.skip {
		return nil
	}
	if s.r.Starting != nil {
		if err := s.r.Starting(ctx, fr.db); err != nil {
			return err
		}
	}
	if !s.r.Flush || s.flushed[s.tdb] {
		return nil
	}
	c := s.db(s.tdb)
	err := s.retry(ctx, fmt.Sprintf("FLUSHDB of db %d", s.tdb), func(context.Context, int) (bool, error) {
		err := c.FlushDBAsync(ctx).Err()
		return isTransient(err), err
	})
	if err != nil {
		return serverError(s.opt.Addr, fmt.Sprintf("db %d: FLUSHDB", s.tdb), err)
	}
	s.flushed[s.tdb] = true
	s.log.Info("redis: target database flushed", "db", s.tdb)
	return nil
}

func (s *restoreSink) record(ctx context.Context, fr *frameReader, rec record) error {
	if s.skip {
		s.skipped++
		s.skippedBytes += int64(len(rec.payload))
		return nil
	}
	if rec.expiry != 0 && rec.expiry <= time.Now().UnixMilli() {
		s.expired++
		return nil
	}
	s.batch = append(s.batch, rec)
	s.batchBytes += len(rec.payload)
	if len(s.batch) >= batchKeys || s.batchBytes >= batchBytes {
		return s.flush(ctx, fr)
	}
	return nil
}

func (s *restoreSink) end(ctx context.Context, fr *frameReader) error {
	if s.skip {
		s.log.Info("redis: database skipped: the target holds it", "db", fr.db, "target_db", s.tdb, "keys", fr.n)
		return nil
	}
	if err := s.flush(ctx, fr); err != nil {
		return err
	}
	s.log.Info("redis: database restored", "db", fr.db, "target_db", s.tdb, "keys", fr.n)
	if s.r.Loaded != nil {
		s.r.Loaded(fr.db, fr.n)
	}
	return nil
}

// flush writes the batch.
func (s *restoreSink) flush(ctx context.Context, fr *frameReader) error {
	batch := s.batch
	s.batch, s.batchBytes = s.batch[:0], 0
	if len(batch) == 0 {
		return nil
	}
	c := s.db(s.tdb)
	checked := s.replace // no need to check for existing keys
	replace := s.replace
	err := s.retry(ctx, fmt.Sprintf("%s: batch of frames %d to %d", fr.stream, batch[0].frame, batch[len(batch)-1].frame), func(ctx context.Context, attempt int) (bool, error) {
		if attempt > 1 {
			// Every key was absent before the first attempt (or
			// Replace is set): what exists now, that attempt wrote.
			replace = replace || checked
		}
		if !checked {
			if transient, err := s.checkAbsent(ctx, c, fr, batch); err != nil {
				return transient, err
			}
			checked = true
		}
		return s.restore(ctx, c, fr, batch, replace)
	})
	clear(batch) // drop the payloads
	if err != nil {
		return err
	}
	s.restored += int64(len(batch))
	return nil
}

// retry runs fn until it succeeds, fails with an error that is not
// transient, or retryAttempts attempts failed, waiting with backoff between
// attempts. fn is passed the attempt number, from 1.
func (s *restoreSink) retry(ctx context.Context, what string, fn func(ctx context.Context, attempt int) (transient bool, err error)) error {
	delay := retryDelay
	for attempt := 1; ; attempt++ {
		transient, err := fn(ctx, attempt)
		if err == nil || !transient || attempt == retryAttempts || ctx.Err() != nil {
			return err
		}
		s.log.Warn("redis: connection to the target failed; retrying", "target", s.opt.Addr, "what", what, "attempt", attempt, "error", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("redis: %w (after %v)", ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, maxRetryDelay)
	}
}

// checkAbsent fails naming the first key of batch that exists in the target.
func (s *restoreSink) checkAbsent(ctx context.Context, c *goredis.Client, fr *frameReader, batch []record) (transient bool, err error) {
	pipe := c.Pipeline()
	cmds := make([]*goredis.IntCmd, len(batch))
	for i, rec := range batch {
		cmds[i] = pipe.Exists(ctx, rec.key)
	}
	_, _ = pipe.Exec(ctx) // errors are checked per command
	for i, cmd := range cmds {
		n, err := cmd.Result()
		if err != nil {
			return isTransient(err), s.keyError(fr, batch[i], "EXISTS", err)
		}
		if n > 0 {
			return false, s.exists(fr, batch[i])
		}
	}
	return false, nil
}

// restore writes batch with one pipeline of RESTORE.
func (s *restoreSink) restore(ctx context.Context, c *goredis.Client, fr *frameReader, batch []record, replace bool) (transient bool, err error) {
	pipe := c.Pipeline()
	cmds := make([]*goredis.Cmd, len(batch))
	for i, rec := range batch {
		args := []any{"RESTORE", rec.key, rec.expiry, rec.payload, "ABSTTL"}
		if replace {
			args = append(args, "REPLACE")
		}
		cmds[i] = pipe.Do(ctx, args...)
	}
	_, _ = pipe.Exec(ctx) // errors are checked per command
	for i, cmd := range cmds {
		err := cmd.Err()
		switch {
		case err == nil:
		case isReplyError(err) && strings.HasPrefix(err.Error(), "BUSYKEY"):
			return false, s.exists(fr, batch[i])
		default:
			return isTransient(err), s.keyError(fr, batch[i], "RESTORE", err)
		}
	}
	return false, nil
}

func (s *restoreSink) exists(fr *frameReader, rec record) error {
	return existsError(fmt.Sprintf("redis: %s: frame %d: key %q already exists in database %d of the target %s (restore with replace or flush to overwrite it)",
		fr.stream, rec.frame, rec.key, s.tdb, s.opt.Addr))
}

// existsError is the error of a key that exists in the target; it wraps
// snapshot.ErrTargetNotEmpty.
type existsError string

func (e existsError) Error() string { return string(e) }
func (e existsError) Unwrap() error { return snapshot.ErrTargetNotEmpty }

func (s *restoreSink) keyError(fr *frameReader, rec record, cmd string, err error) error {
	return fmt.Errorf("redis: %s: frame %d (key %q): %s into %s db %d: %w", fr.stream, rec.frame, rec.key, cmd, s.opt.Addr, s.tdb, err)
}
