package migrate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/snapshot/redis"
)

// Redis is the move of a Redis server's databases, for what happens
// around it: Plan inspects both servers beforehand, Check compares the
// target with the source afterwards.
//
// Check reads the source as redis.Dumper does and compares every key with
// the target through redis.Checker: it must exist in the target database
// (after DBMap), with the same type and value (DUMP payloads, sets and
// hashes as unordered collections) and an expiry within a second of the
// source's; each target database must hold as many keys as the source
// databases mapped to it, and keys only in the target are named. It sends
// the target only commands Memorystore allows (DUMP, PTTL, DBSIZE, SCAN).
type Redis struct {
	Source, Target                   string // redis:// or rediss:// URLs
	SourceTLSCAFile, TargetTLSCAFile string // optional PEM files of CAs to trust
	DBMap                            map[int]int
	Replace, Flush                   bool         // as for redis.Restorer
	Log                              *slog.Logger // the check's warnings (nil = slog.Default())
}

// Check implements Pair.Check.
func (c Redis) Check(ctx context.Context) error {
	var diffs differences
	w, r := snapshot.Pipe(ctx)
	var dumpErr, checkErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		_, dumpErr = (&redis.Dumper{URL: c.Source, TLSCAFile: c.SourceTLSCAFile, Log: quiet(c.Log)}).Dump(ctx, w)
		w.Close(dumpErr)
	})
	wg.Go(func() {
		ch := &redis.Checker{URL: c.Target, TLSCAFile: c.TargetTLSCAFile, DBMap: c.DBMap, Log: c.Log,
			Reference: "the source", NameExtra: true,
			Differ: func(db int, key, why string) {
				if key == "" {
					diffs.add("db %d %s", db, why)
				} else {
					diffs.add("db %d key %q: %s", db, key, why)
				}
			}}
		_, checkErr = ch.Restore(ctx, r)
		r.Close(checkErr)
	})
	wg.Wait()
	switch {
	case checkErr != nil && !errors.Is(checkErr, snapshot.ErrPipeClosed) && !errors.Is(checkErr, snapshot.ErrDiffers):
		return fmt.Errorf("target: %w", checkErr)
	case dumpErr != nil:
		return fmt.Errorf("source: %w", dumpErr)
	case checkErr != nil && !errors.Is(checkErr, snapshot.ErrDiffers):
		return fmt.Errorf("target: %w", checkErr)
	}
	return diffs.err("redis")
}

// quiet returns l without its Info messages (the Dumper's progress, which
// would repeat the move's).
func quiet(l *slog.Logger) *slog.Logger {
	if l == nil {
		l = slog.Default()
	}
	return slog.New(levelHandler{l.Handler(), slog.LevelWarn})
}

// levelHandler drops the records below its level.
type levelHandler struct {
	slog.Handler
	min slog.Level
}

func (h levelHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h levelHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return levelHandler{h.Handler.WithAttrs(a), h.min}
}

func (h levelHandler) WithGroup(name string) slog.Handler {
	return levelHandler{h.Handler.WithGroup(name), h.min}
}

// redisProbeKey is the prefix of the key names Plan probes the target
// with; no key of that name is ever written.
const redisProbeKey = "stackport:plan-probe:"

// Plan implements Pair.Plan: both servers answer and their versions; the
// keys of the source and the memory they take; on the target, every
// command the move and the check send (commands a managed service such as
// Memorystore blocks or renames are reported), each target database
// (SELECT: the number of databases, cluster mode), whether it accepts the
// source's DUMP payloads (RESTORE of a payload already expired, which
// stores nothing, on Redis 7 and later), its maxmemory and eviction
// policy, and target databases that already hold keys (which block unless
// Replace or Flush).
func (c Redis) Plan(ctx context.Context) Finding {
	f := Finding{Items: -1, Bytes: -1}
	src, srcErr := dialRedis(ctx, c.Source, c.SourceTLSCAFile)
	if srcErr == nil {
		defer src.Close()
	}
	dst, dstErr := dialRedis(ctx, c.Target, c.TargetTLSCAFile)
	if dstErr == nil {
		defer dst.Close()
	}
	if srcErr != nil {
		f.block("source: %v", srcErr)
	}
	if dstErr != nil {
		f.block("target: %v", dstErr)
	}
	if srcErr != nil || dstErr != nil {
		return f
	}
	srcInfo, err := src.Info(ctx, "server", "memory").Result()
	if err != nil {
		f.block("source %s: INFO: %v", src.Options().Addr, err)
		return f
	}
	dstInfo, err := dst.Info(ctx, "server", "memory", "cluster").Result()
	if err != nil {
		f.block("target %s: INFO: %v", dst.Options().Addr, err)
		return f
	}
	srcVer, dstVer := redisVersion(srcInfo), redisVersion(dstInfo)
	f.note("source: %s", srcVer)
	f.note("target: %s", dstVer)
	keyspace, err := redis.Keyspace(ctx, c.Source, c.SourceTLSCAFile)
	if err != nil {
		f.block("source: %v", err)
		return f
	}
	f.Items = 0
	for _, kc := range keyspace {
		f.Items += kc.Keys
	}
	if n, ok := infoInt(srcInfo, "used_memory_dataset"); ok {
		f.Bytes = n
	} else if n, ok := infoInt(srcInfo, "used_memory"); ok {
		f.Bytes = n
	}
	if f.Bytes >= 0 {
		f.note("source: %d keys in %d databases, %s of memory for data (the dump is smaller)", f.Items, len(keyspace), snapshot.HumanBytes(f.Bytes))
	}

	// Every command the target receives, each probed without writing.
	probe := redisProbeKey + randomHex()
	for _, cmd := range [][]any{{"DBSIZE"}, {"EXISTS", probe}, {"PTTL", probe}, {"DUMP", probe}, {"SCAN", "0", "COUNT", "1"}} {
		if err := dst.Do(ctx, cmd...).Err(); err != nil && !errors.Is(err, goredis.Nil) {
			c.blockCommand(&f, cmd[0].(string), err)
		}
	}
	// A payload that is not one: every server checks it before anything
	// else, so this only tells whether RESTORE may be sent.
	if err := dst.Do(ctx, "RESTORE", probe, "0", "stackport plan probe").Err(); err != nil && !strings.Contains(err.Error(), "payload") && !strings.Contains(err.Error(), "BUSYKEY") {
		c.blockCommand(&f, "RESTORE", err)
	}
	if c.Flush {
		f.note("target: FLUSHDB (--redis-flush) is not probed: it cannot be sent without emptying a database")
	}
	c.planPayload(ctx, &f, src, dst, keyspace, probe, srcVer, dstVer)

	targets := map[int][]int{} // target database: source databases
	for db := range keyspace {
		tdb := db
		if m, ok := c.DBMap[db]; ok {
			tdb = m
		}
		targets[tdb] = append(targets[tdb], db)
	}
	if infoField(dstInfo, "cluster_enabled") == "1" {
		f.note("target: cluster mode: database 0 only")
	}
	dstKeys, err := redis.Keyspace(ctx, c.Target, c.TargetTLSCAFile)
	if err != nil {
		f.block("target: %v", err)
		return f
	}
	for _, tdb := range slices.Sorted(maps.Keys(targets)) {
		if err := selectDB(ctx, dst, tdb); err != nil {
			f.block("target database %d (for source database %s): SELECT: %v: map the databases with --redis-db-map, e.g. %s",
				tdb, joinInts(targets[tdb]), err, dbMapHint(keyspace))
			continue
		}
		if n := dstKeys[tdb].Keys; n > 0 {
			if c.Replace || c.Flush {
				f.note("target database %d holds %d keys: %s", tdb, n, map[bool]string{true: "emptied first (--redis-flush)", false: "keys of the same name are replaced (--redis-replace); the others stay, and the check reports them"}[c.Flush])
			} else {
				f.occupy("target database %d already holds %d keys: use --redis-flush --yes to empty it first (or --redis-replace to overwrite keys of the same name)", tdb, n)
			}
		}
	}
	c.planMemory(&f, srcInfo, dstInfo)
	return f
}

// blockCommand reports a command the target refuses.
func (c Redis) blockCommand(f *Finding, cmd string, err error) {
	msg := err.Error()
	switch {
	case strings.Contains(strings.ToLower(msg), "unknown command"):
		f.block("target refuses %s, which stackport sends (blocked or renamed, as a managed service may): %s", cmd, msg)
	case strings.HasPrefix(msg, "NOPERM"):
		f.block("target: the user may not send %s, which stackport sends: %s", cmd, msg)
	default:
		f.block("target: %s: %s", cmd, msg)
	}
}

// planPayload checks that the target loads the source's payloads: on
// Redis 7 or later by RESTORE … ABSTTL of one source key's DUMP payload
// with an expiry in the past, which the target verifies (RDB version,
// checksum, format) and then drops without storing anything; on older
// targets by comparing the versions.
func (c Redis) planPayload(ctx context.Context, f *Finding, src, dst *goredis.Client, keyspace map[int]redis.KeyCount, probe, srcVer, dstVer string) {
	if len(keyspace) == 0 {
		return
	}
	if major, _ := versionNumbers(dstVer); major < 7 {
		if compareVersions(dstVer, srcVer) < 0 {
			f.note("warning: the target (%s) is older than the source: the move stops before writing anything if it cannot load the source's payloads (RDB version)", dstVer)
		}
		return
	}
	db := slices.Min(slices.Collect(maps.Keys(keyspace)))
	sc := src.Conn()
	defer sc.Close()
	if err := sc.Select(ctx, db).Err(); err != nil {
		f.note("source database %d: SELECT: %v", db, err)
		return
	}
	var payload string
	for cursor, tries := uint64(0), 0; payload == "" && tries < 10; tries++ {
		keys, next, err := sc.Scan(ctx, cursor, "", 100).Result()
		if err != nil {
			f.note("source: SCAN: %v", err)
			return
		}
		for _, k := range keys {
			if p, err := sc.Dump(ctx, k).Result(); err == nil {
				payload = p
				break
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	if payload == "" {
		return
	}
	err := dst.Do(ctx, "RESTORE", probe, "1", payload, "ABSTTL").Err()
	switch {
	case err == nil, err != nil && strings.Contains(err.Error(), "BUSYKEY"):
		f.note("target: loads the source's DUMP payloads (RDB version %d)", payloadRDB(payload))
	case strings.Contains(err.Error(), "payload version"):
		f.block("target (%s) cannot load the source's DUMP payloads (RDB version %d): use a target at least as new as the source (%s)", dstVer, payloadRDB(payload), srcVer)
	default:
		c.blockCommand(f, "RESTORE", err)
	}
}

// planMemory compares the source's data with the target's free memory.
func (c Redis) planMemory(f *Finding, srcInfo, dstInfo string) {
	limit, _ := infoInt(dstInfo, "maxmemory")
	used, _ := infoInt(dstInfo, "used_memory")
	need, ok := infoInt(srcInfo, "used_memory_dataset")
	if !ok {
		need, _ = infoInt(srcInfo, "used_memory")
	}
	policy := infoField(dstInfo, "maxmemory_policy")
	if limit <= 0 {
		f.note("target: no maxmemory limit")
		return
	}
	free := limit - used
	if c.Flush {
		free = limit // roughly: the target's data goes first
	}
	switch {
	case need > free && policy == "noeviction":
		f.block("target maxmemory %s leaves %s free, the source's data takes %s: the target would refuse writes (OOM)", snapshot.HumanBytes(limit), snapshot.HumanBytes(max(free, 0)), snapshot.HumanBytes(need))
	case need > free:
		f.block("target maxmemory %s leaves %s free, the source's data takes %s: with maxmemory-policy %s the target would evict keys", snapshot.HumanBytes(limit), snapshot.HumanBytes(max(free, 0)), snapshot.HumanBytes(need), policy)
	default:
		f.note("target: maxmemory %s, %s free, the source's data takes %s", snapshot.HumanBytes(limit), snapshot.HumanBytes(free), snapshot.HumanBytes(need))
	}
	if policy != "" && policy != "noeviction" {
		f.note("warning: target maxmemory-policy %s may evict keys under memory pressure (Memorystore's default is volatile-lru)", policy)
	}
}

// dialRedis returns a client of database 0 of the server at url, which
// sends nothing on connect but HELLO (or AUTH), as snapshot/redis's.
func dialRedis(ctx context.Context, url, caFile string) (*goredis.Client, error) {
	opt, err := redis.Options(url, caFile)
	if err != nil {
		return nil, err
	}
	opt.MaxRetries = 1
	opt.DialerRetries = 1
	c := goredis.NewClient(opt)
	if err := c.Ping(ctx).Err(); err != nil && !strings.Contains(strings.ToLower(err.Error()), "unknown command") {
		c.Close()
		return nil, fmt.Errorf("redis: cannot reach %s: %w", opt.Addr, err)
	}
	return c, nil
}

// selectDB selects database db on a connection of its own.
func selectDB(ctx context.Context, c *goredis.Client, db int) error {
	conn := c.Conn()
	defer conn.Close()
	return conn.Select(ctx, db).Err()
}

// redisVersion describes a server by its INFO server.
func redisVersion(info string) string {
	if v := infoField(info, "valkey_version"); v != "" {
		return "Valkey " + v
	}
	return "Redis " + infoField(info, "redis_version")
}

// versionNumbers returns the major and minor numbers of "Redis 7.0.15".
func versionNumbers(desc string) (major, minor int) {
	v := desc[strings.LastIndexByte(desc, ' ')+1:]
	parts := strings.SplitN(v, ".", 3)
	major, _ = strconv.Atoi(parts[0])
	if len(parts) > 1 {
		minor, _ = strconv.Atoi(parts[1])
	}
	return major, minor
}

// compareVersions compares two descriptions of redisVersion by their
// major and minor numbers.
func compareVersions(a, b string) int {
	am, an := versionNumbers(a)
	bm, bn := versionNumbers(b)
	if am != bm {
		return am - bm
	}
	return an - bn
}

// payloadRDB returns the RDB version of a DUMP payload: its footer is the
// version (2 bytes, little endian) and a CRC-64 (8 bytes).
func payloadRDB(p string) int {
	if len(p) < 10 {
		return 0
	}
	return int(p[len(p)-10]) | int(p[len(p)-9])<<8
}

// infoField returns the value of field in the text of an INFO reply.
func infoField(info, field string) string {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimRight(line, "\r"), field+":"); ok {
			return v
		}
	}
	return ""
}

// infoInt returns the number of field in the text of an INFO reply.
func infoInt(info, field string) (int64, bool) {
	n, err := strconv.ParseInt(infoField(info, field), 10, 64)
	return n, err == nil
}

func joinInts(v []int) string {
	slices.Sort(v)
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

// dbMapHint proposes a --redis-db-map that puts every source database
// into database 0.
func dbMapHint(keyspace map[int]redis.KeyCount) string {
	var pairs []string
	for _, db := range slices.Sorted(maps.Keys(keyspace)) {
		pairs = append(pairs, fmt.Sprintf("%d:0", db))
	}
	return strings.Join(pairs, ",")
}

func randomHex() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
