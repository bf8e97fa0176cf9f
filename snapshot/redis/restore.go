package redis

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"slices"
	"strconv"
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
// Before writing anything it checks the target and refuses (an error,
// nothing written):
//   - payloads the target is too old for: each stream's RDB version against
//     the one the target loads (from INFO server, see TargetRDBVersion);
//   - a target that lacks a database the snapshot's go into (after DBMap):
//     SELECT of the highest on a connection of its own (CONFIG GET
//     databases is blocked on Memorystore); when it is refused, lower ones
//     are selected to name the target's databases setting in the error;
//   - a target that evicts keys (a maxmemory limit with any
//     maxmemory-policy but noeviction: allkeys-*, volatile-*; INFO memory
//     tells both even where CONFIG is blocked) unless the snapshot clearly
//     fits, see below.
//
// Evicted keys vanish without an error, so on an evicting target the
// restore goes on only while the keys clearly fit well below the limit:
// before each batch it reads the target's used_memory, and refuses the
// batch (nothing of it written) when used_memory plus twice the batch's
// payload bytes plus 128 bytes a key would pass 3/4 of maxmemory. The
// snapshot's size is not known before it is read (a Restorer reads the
// streams once, in order, and a Pipe cannot be read ahead), and DUMP
// payloads are more compact than the values they load into (by a factor
// that depends on types and encodings), hence a check per batch with the
// memory actually used, and the margins. It also fails the restore as soon
// as the target evicted a key (INFO stats evicted_keys). Refusing every
// evicting target would refuse Memorystore as it comes (volatile-lru).
// A target with noeviction whose maxmemory is too small for the snapshot
// answers RESTORE with OOM once full: the restore fails there, naming the
// limit.
//
// When the StreamReader opens streams by name (snapshot.StreamOpener: a
// snapshot in a repository) the checks of the RDB versions and databases
// cover every stream before the first key is written; a Pipe (migrate)
// hands out one stream at a time, so there each database is checked before
// its first key is written, after the earlier databases were.
//
// Every database written is checked by its key count (DBSIZE), when its
// stream ends and again when the restore ends: it must hold the keys it held
// before (after FLUSHDB with Flush) plus those written, less those a Replace
// overwrote (counted with EXISTS) and those whose expiry passed (or passes
// within a few seconds, for the servers' clocks) meanwhile, counted by the
// expiry of each key written and the target's own keys with an expiry.
// Fewer keys fail the restore with an error naming the database and the
// counts, wrapping snapshot.ErrDiffers; so do keys the target evicted (INFO
// stats evicted_keys) while the restore ran.
//
// Keys whose expiry has passed are skipped and counted as
// "skipped_expired". A key that already exists in
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
	// Flush empties each target database (FLUSHDB ASYNC) right before its
	// first key is written, after the checks of the RDB versions and the
	// databases and, on a target that evicts keys, the check that the
	// first batch fits even into the target without any data.
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
	s := &restoreSink{r: r, server: newServer(opt), log: logger(r.Log), flushed: map[int]bool{}, tally: map[int]*dbTally{}}
	opt.OnConnect = (&restartGuard{addr: opt.Addr}).check
	defer s.close()
	if err := s.connect(ctx); err != nil {
		return nil, err
	}
	if o, ok := in.(snapshot.StreamOpener); ok {
		if err := s.lookAhead(ctx, o); err != nil {
			return nil, err
		}
	}
	stats, err := readStreams(ctx, in, s)
	if err == nil {
		err = s.checkCounts(ctx)
	}
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
	toFlush    bool // the current target database is to be flushed before its first key
	skip       bool // the current stream is read, not written (Skip)
	replace    bool // the current stream's keys replace existing ones
	batch      []record
	batchBytes int

	restored, expired     int64
	skipped, skippedBytes int64 // keys of skipped streams

	maxmemory int64  // the target's (0: no limit)
	policy    string // the target's maxmemory-policy
	evicted   int64  // the target's INFO stats evicted_keys at the start, -1 if unknown
	dbs       int    // the target has databases 0 to dbs-1 (as far as checked)
	sources   []int  // source databases of the streams, as far as known
	tally     map[int]*dbTally
}

// A dbTally is what a restore did to one target database.
type dbTally struct {
	base, baseExpires int64 // keys, and keys with an expiry, before the first key was written (after FLUSHDB)
	written           int64 // keys restored
	replaced          int64 // of them, keys that existed (Replace)
	expiries          expiryCounts
}

// expirySlack is how much earlier than by the local clock the target may
// let a key expire, when keys are counted.
const expirySlack = 5 * time.Second

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
	return s.checkMemory(ctx)
}

// checkMemory reads the target's memory limit and policy, and how many
// keys it evicted so far.
func (s *restoreSink) checkMemory(ctx context.Context) error {
	text, err := s.info(ctx, "memory")
	if err != nil {
		return err
	}
	s.maxmemory, _ = infoInt(text, "maxmemory")
	s.policy = infoField(text, "maxmemory_policy")
	used, _ := infoInt(text, "used_memory")
	text, err = s.info(ctx, "stats")
	if err != nil {
		return err
	}
	var ok bool
	if s.evicted, ok = infoInt(text, "evicted_keys"); !ok {
		s.evicted = -1
	}
	if s.evicting() {
		s.log.Warn("redis: the target evicts keys when its memory is full: the restore goes on only while they clearly fit",
			"target", s.opt.Addr, "maxmemory", snapshot.HumanBytes(s.maxmemory), "maxmemory_policy", s.policy, "used_memory", snapshot.HumanBytes(used))
	}
	return nil
}

// evicting reports whether the target evicts keys when its memory is full.
func (s *restoreSink) evicting() bool {
	return s.maxmemory > 0 && s.policy != "" && s.policy != "noeviction"
}

// Margins of the memory check of an evicting target: a batch is written
// when used_memory + roomFactor × its payload bytes + roomPerKey × its keys
// stays under roomShare of maxmemory.
const (
	roomFactor = 2
	roomPerKey = 128
	roomShare  = 0.75
)

// room checks, on a target that evicts keys, that the batch clearly fits
// and that the target evicted no key so far. With emptied, the memory the
// target's data takes is left out (before a FLUSHDB, which may free it). A
// FLUSHDB ASYNC frees memory in the background: while the target reports
// objects pending to be freed (lazyfree_pending_objects), a batch that does
// not fit waits for them (up to a minute).
func (s *restoreSink) room(ctx context.Context, fr *frameReader, batch []record, bytes int, emptied bool) error {
	if !s.evicting() {
		return nil
	}
	if err := s.checkEvicted(ctx); err != nil {
		return err
	}
	for wait := time.Duration(0); ; wait += 100 * time.Millisecond {
		text, err := s.info(ctx, "memory")
		if err != nil {
			return err
		}
		used, _ := infoInt(text, "used_memory")
		if emptied {
			data, _ := infoInt(text, "used_memory_dataset")
			used -= data
		}
		need := used + roomFactor*int64(bytes) + roomPerKey*int64(len(batch))
		if float64(need) <= roomShare*float64(s.maxmemory) {
			return nil
		}
		if pending, _ := infoInt(text, "lazyfree_pending_objects"); pending > 0 && !emptied && wait < time.Minute {
			select {
			case <-ctx.Done():
				return fmt.Errorf("redis: %w", ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		done := "nothing was written"
		if s.restored > 0 {
			done = fmt.Sprintf("stopped after %s were written", plural(int(s.restored), "key"))
		}
		usedWhat := "used"
		if emptied {
			usedWhat, done = "used without its data", done+" (nor flushed)"
		}
		return fmt.Errorf("redis: %s: frames %d to %d: the target %s evicts keys when its memory is full (maxmemory %s, maxmemory-policy %s), and the snapshot does not clearly fit: %s "+usedWhat+", the next %s take %s as DUMP payloads (more in memory); %s, no key was evicted: "+
			"set maxmemory-policy noeviction for the restore (Memorystore: gcloud redis instances update INSTANCE --update-redis-config maxmemory-policy=noeviction) or give the target more memory",
			fr.stream, batch[0].frame, batch[len(batch)-1].frame, s.opt.Addr, snapshot.HumanBytes(s.maxmemory), s.policy, snapshot.HumanBytes(used),
			plural(len(batch), "key"), snapshot.HumanBytes(int64(bytes)), done)
	}
}

// checkEvicted fails when the target evicted keys since the restore began.
func (s *restoreSink) checkEvicted(ctx context.Context) error {
	if s.evicted < 0 {
		return nil
	}
	text, err := s.info(ctx, "stats")
	if err != nil {
		return err
	}
	if n, ok := infoInt(text, "evicted_keys"); ok && n > s.evicted {
		mem, _ := s.info(ctx, "memory")
		return fmt.Errorf("redis: %s: the target evicted %d keys while the restore wrote (INFO stats evicted_keys; maxmemory %s, maxmemory-policy %s now): keys of the restore may be missing: %w",
			s.opt.Addr, n-s.evicted, infoField(mem, "maxmemory_human"), infoField(mem, "maxmemory_policy"), snapshot.ErrDiffers)
	}
	return nil
}

// checkRDB refuses a stream whose payloads the target cannot load.
func (s *restoreSink) checkRDB(fr *frameReader) error {
	if fr.rdb > s.rdb {
		return fmt.Errorf("redis: %s: the snapshot's payloads have RDB version %d, but the target %s (Redis %s) loads RDB version %d at most; restore into a newer server",
			fr.stream, fr.rdb, s.opt.Addr, s.version, s.rdb)
	}
	return nil
}

// lookAhead makes the checks of begin for every stream before anything is
// written: the RDB version of each stream's header, and that the target
// has the highest database they go into. The reader has no listing of its
// streams, so every name a stream may have is tried (db0.frames to
// db65535.frames: a name that does not exist costs no I/O); the streams
// that exist are opened, their headers read, and closed. Databases Skip
// names are left out.
func (s *restoreSink) lookAhead(ctx context.Context, o snapshot.StreamOpener) error {
	need := map[int][]int{} // target database: source databases
	for db := 0; db <= maxDB; db++ {
		if db%1024 == 0 && ctx.Err() != nil {
			return fmt.Errorf("redis: %w", ctx.Err())
		}
		if s.r.Skip != nil && s.r.Skip(db) {
			continue
		}
		name := streamName(db)
		rc, err := o.Open(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("redis: open %s: %w", name, err)
		}
		fr, err := newFrameReader(rc, name)
		rc.Close()
		if err == nil {
			err = s.checkRDB(fr)
		}
		if err != nil {
			return err
		}
		s.sources = append(s.sources, db)
		tdb := mapDB(s.r.DBMap, db)
		need[tdb] = append(need[tdb], db)
	}
	if len(need) == 0 {
		return nil
	}
	return s.needDB(ctx, slices.Max(slices.Collect(maps.Keys(need))), need)
}

// needDB checks that the target has database tdb; need names the target
// databases to be written and their source databases, for the error.
func (s *restoreSink) needDB(ctx context.Context, tdb int, need map[int][]int) error {
	if tdb < s.dbs {
		return nil
	}
	var m *missingDB
	err := s.try(ctx, fmt.Sprintf("SELECT %d", tdb), func() (err error) {
		m, err = checkDB(ctx, s.opt, tdb)
		return err
	})
	if err != nil {
		return err
	}
	if m == nil {
		s.dbs = tdb + 1
		return nil
	}
	var src, dst []int
	for t, dbs := range need {
		if t >= m.have {
			dst = append(dst, t)
			src = append(src, dbs...)
		}
	}
	slices.Sort(src)
	slices.Sort(dst)
	what := fmt.Sprintf("source database %s goes into its database %s", joinInts(src), joinInts(dst))
	if len(src) > 1 {
		what = fmt.Sprintf("source databases %s go into its database%s %s", joinInts(src), map[bool]string{true: "s"}[len(dst) > 1], joinInts(dst))
	}
	done := "nothing was written"
	if len(s.tally) > 0 {
		done = fmt.Sprintf("target database %s was written already", joinInts(slices.Sorted(maps.Keys(s.tally))))
	}
	var hint []string
	for _, db := range s.sources {
		hint = append(hint, fmt.Sprintf("%d:0", db))
	}
	return fmt.Errorf("redis: %s: the target has %s, but %s: %s; map the databases with --redis-db-map, e.g. %s, or raise the target's databases setting",
		s.opt.Addr, m.describe(), what, done, strings.Join(hint, ","))
}

// joinInts returns "0, 3".
func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

func (s *restoreSink) begin(ctx context.Context, fr *frameReader) error {
	if err := s.checkRDB(fr); err != nil {
		return err
	}
	s.tdb = mapDB(s.r.DBMap, fr.db)
	s.skip = s.r.Skip != nil && s.r.Skip(fr.db)
	s.replace = s.r.Replace || (s.r.ReplaceDB != nil && s.r.ReplaceDB(fr.db))
	if s.skip {
		return nil
	}
	if !slices.Contains(s.sources, fr.db) {
		s.sources = append(s.sources, fr.db)
	}
	if err := s.needDB(ctx, s.tdb, map[int][]int{s.tdb: {fr.db}}); err != nil {
		return err
	}
	if s.r.Starting != nil {
		if err := s.r.Starting(ctx, fr.db); err != nil {
			return err
		}
	}
	// The FLUSHDB waits for the first batch, which may not fit.
	if s.toFlush = s.r.Flush && !s.flushed[s.tdb]; s.toFlush {
		return nil
	}
	return s.startTally(ctx)
}

// flushDB empties the current target database (FLUSHDB ASYNC).
func (s *restoreSink) flushDB(ctx context.Context) error {
	c := s.db(s.tdb)
	err := s.retry(ctx, fmt.Sprintf("FLUSHDB of db %d", s.tdb), func(context.Context, int) (bool, error) {
		err := c.FlushDBAsync(ctx).Err()
		return isTransient(err), err
	})
	if err != nil {
		return serverError(s.opt.Addr, fmt.Sprintf("db %d: FLUSHDB", s.tdb), err)
	}
	s.flushed[s.tdb], s.toFlush = true, false
	s.log.Info("redis: target database flushed", "db", s.tdb)
	return s.startTally(ctx)
}

// startTally notes the keys of the current target database before the
// restore writes into it.
func (s *restoreSink) startTally(ctx context.Context) error {
	if s.tally[s.tdb] != nil {
		return nil
	}
	var counts map[int]KeyCount
	err := s.try(ctx, "INFO keyspace", func() (err error) {
		counts, err = keyCounts(ctx, s.db(0))
		return err
	})
	if err != nil {
		return err
	}
	kc := counts[s.tdb]
	s.tally[s.tdb] = &dbTally{base: kc.Keys, baseExpires: kc.Expires}
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
	if s.toFlush { // a stream without keys
		if err := s.flushDB(ctx); err != nil {
			return err
		}
	}
	if err := s.checkCount(ctx, s.tdb); err != nil {
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
	batch, bytes := s.batch, s.batchBytes
	s.batch, s.batchBytes = s.batch[:0], 0
	if len(batch) == 0 {
		return nil
	}
	defer clear(batch) // drop the payloads
	if s.toFlush {
		// Refuse before the FLUSHDB a batch that would not fit even
		// into the target without any data.
		if err := s.room(ctx, fr, batch, bytes, true); err != nil {
			return err
		}
		if err := s.flushDB(ctx); err != nil {
			return err
		}
	}
	if err := s.room(ctx, fr, batch, bytes, false); err != nil {
		return err
	}
	c := s.db(s.tdb)
	checked := s.replace // no need to check for existing keys
	replace := s.replace
	var replaced int64
	err := s.retry(ctx, fmt.Sprintf("%s: batch of frames %d to %d", fr.stream, batch[0].frame, batch[len(batch)-1].frame), func(ctx context.Context, attempt int) (transient bool, err error) {
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
		// Keys that exist are counted only with Replace: otherwise they
		// were checked to be absent, and any a retry finds were written
		// by the attempt that failed.
		replaced, transient, err = s.restore(ctx, c, fr, batch, replace, s.replace)
		return transient, err
	})
	if err != nil {
		return err
	}
	t := s.tally[s.tdb]
	t.written += int64(len(batch))
	t.replaced += replaced
	for _, rec := range batch {
		t.expiries.add(rec.expiry, 1)
	}
	s.restored += int64(len(batch))
	return nil
}

// checkCount compares the key count of target database tdb with what the
// restore wrote into it.
func (s *restoreSink) checkCount(ctx context.Context, tdb int) error {
	t := s.tally[tdb]
	var n int64
	err := s.try(ctx, fmt.Sprintf("DBSIZE of db %d", tdb), func() (err error) {
		n, err = s.db(tdb).DBSize(ctx).Result()
		return err
	})
	if err != nil {
		return serverError(s.opt.Addr, fmt.Sprintf("db %d: DBSIZE", tdb), err)
	}
	want := t.base + t.written - t.replaced
	if n >= want {
		return nil
	}
	expiring := t.expiries.by(time.Now().Add(expirySlack).UnixMilli()) + t.baseExpires
	if n >= want-expiring {
		s.log.Info("redis: keys expired during the restore", "target_db", tdb, "keys", n, "written", t.written, "expired", want-n)
		return nil
	}
	before := fmt.Sprintf("it held %d before", t.base)
	if t.replaced > 0 {
		before += fmt.Sprintf(", %d of them replaced", t.replaced)
	}
	return fmt.Errorf("redis: %s: database %d of the target holds %s after the restore, but %d were written into it (%s): %d missing, of which at most %d could have expired meanwhile: %w",
		s.opt.Addr, tdb, plural(int(n), "key"), t.written, before, want-n, expiring, snapshot.ErrDiffers)
}

// checkCounts checks every target database written once more, when every
// stream was, and that the target evicted no key meanwhile.
func (s *restoreSink) checkCounts(ctx context.Context) error {
	var errs []error
	for _, tdb := range slices.Sorted(maps.Keys(s.tally)) {
		if err := s.checkCount(ctx, tdb); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.checkEvicted(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
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

// try runs fn as retry does, its transient errors retried.
func (s *restoreSink) try(ctx context.Context, what string, fn func() error) error {
	return s.retry(ctx, what, func(context.Context, int) (bool, error) {
		err := fn()
		return isTransient(err), err
	})
}

// info runs INFO section on the target, retried as try does.
func (s *restoreSink) info(ctx context.Context, section string) (text string, err error) {
	err = s.try(ctx, "INFO "+section, func() (err error) {
		text, err = info(ctx, s.db(0), section)
		return err
	})
	return text, err
}

// checkAbsent fails naming the first key of batch that exists in the target.
func (s *restoreSink) checkAbsent(ctx context.Context, c *goredis.Client, fr *frameReader, batch []record) (transient bool, err error) {
	pipe := c.Pipeline()
	cmds := make([]*goredis.IntCmd, len(batch))
	for i, rec := range batch {
		cmds[i] = pipe.Exists(ctx, rec.key)
	}
	if err := execPipeline(ctx, pipe); err != nil { // else the commands' own errors tell
		return isTransient(err), s.batchError(fr, batch, "EXISTS", err)
	}
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

// restore writes batch with one pipeline of RESTORE. With count, an EXISTS
// before each RESTORE counts the keys that exist (and are replaced).
func (s *restoreSink) restore(ctx context.Context, c *goredis.Client, fr *frameReader, batch []record, replace, count bool) (existed int64, transient bool, err error) {
	pipe := c.Pipeline()
	cmds := make([]*goredis.Cmd, len(batch))
	exists := make([]*goredis.IntCmd, len(batch))
	for i, rec := range batch {
		if count {
			exists[i] = pipe.Exists(ctx, rec.key)
		}
		args := []any{"RESTORE", rec.key, rec.expiry, rec.payload, "ABSTTL"}
		if replace {
			args = append(args, "REPLACE")
		}
		cmds[i] = pipe.Do(ctx, args...)
	}
	if err := execPipeline(ctx, pipe); err != nil { // else the commands' own errors tell
		return 0, isTransient(err), s.batchError(fr, batch, "RESTORE", err)
	}
	for i, cmd := range cmds {
		if count {
			n, err := exists[i].Result()
			if err != nil {
				return 0, isTransient(err), s.keyError(fr, batch[i], "EXISTS", err)
			}
			existed += n
		}
		err := cmd.Err()
		switch {
		case err == nil:
		case isReplyError(err) && strings.HasPrefix(err.Error(), "BUSYKEY"):
			return 0, false, s.exists(fr, batch[i])
		case isReplyError(err) && strings.HasPrefix(err.Error(), "OOM"):
			return 0, false, fmt.Errorf("%w: the snapshot does not fit into the target's memory (maxmemory %s): give it more memory or restore into a bigger instance (%d keys were written)",
				s.keyError(fr, batch[i], "RESTORE", err), snapshot.HumanBytes(s.maxmemory), s.restored+int64(i))
		default:
			return 0, isTransient(err), s.keyError(fr, batch[i], "RESTORE", err)
		}
	}
	return existed, false, nil
}

// batchError is the error of a batch's pipeline as a whole.
func (s *restoreSink) batchError(fr *frameReader, batch []record, cmd string, err error) error {
	return fmt.Errorf("redis: %s: frames %d to %d: %s into %s db %d: %w", fr.stream, batch[0].frame, batch[len(batch)-1].frame, cmd, s.opt.Addr, s.tdb, err)
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
