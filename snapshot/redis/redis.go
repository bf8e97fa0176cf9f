// Package redis snapshots the logical databases of a Redis server as streams
// of DUMP payloads and restores them with RESTORE, into another Redis server
// or a managed one such as GCP Memorystore.
//
// The Dumper writes one stream per database that has keys (as listed by
// INFO keyspace), named "db<N>.frames" and written in ascending database
// order. Keys are read with SCAN and pipelined DUMP and PTTL; the format of
// the streams is described in frame.go. Memory use is bounded by one batch
// (up to 1,000 keys whose payloads total about 8 MiB, or a single larger
// payload), plus the Dumper's set of key hashes.
//
// The Restorer, Verifier, Checker and Export read those streams. On the
// target the Restorer sends only HELLO (or AUTH), SELECT, INFO, EXISTS,
// RESTORE, DBSIZE and, when asked to, FLUSHDB; the Checker HELLO, SELECT,
// DUMP, PTTL, DBSIZE and SCAN: none of the commands Memorystore blocks
// (CONFIG, SAVE, CLIENT, …). The client sends no CLIENT SETINFO on connect
// and speaks RESP2.
package redis

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/stackport/stackport/snapshot"
)

const (
	// batchKeys and batchBytes bound a pipelined batch of DUMP or RESTORE
	// commands. A payload larger than batchBytes is sent alone.
	batchKeys  = 1000
	batchBytes = 8 << 20

	// ioTimeout bounds one socket read or write (a pipelined batch or one
	// big payload).
	ioTimeout = 2 * time.Minute
)

// streamName returns the name of database db's stream.
func streamName(db int) string { return "db" + strconv.Itoa(db) + ".frames" }

// parseStreamName returns the database number of a stream name.
func parseStreamName(name string) (int, bool) {
	s, ok := strings.CutPrefix(name, "db")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, ".frames")
	if !ok {
		return 0, false
	}
	db, err := strconv.Atoi(s)
	if err != nil || db < 0 || db > maxDB || strconv.Itoa(db) != s {
		return 0, false
	}
	return db, true
}

// maxDB is the highest database number accepted in a stream.
const maxDB = 1<<16 - 1

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}

// corrupt returns the error for undecodable stream data.
func corrupt(stream, format string, args ...any) error {
	return fmt.Errorf("redis: %s: %s: %w", stream, fmt.Sprintf(format, args...), snapshot.ErrCorrupt)
}

// Options parses a redis:// or rediss:// URL (user and password in it, a
// database path is ignored) into client options that send nothing on
// connect but HELLO (or AUTH on servers without HELLO) and SELECT.
// Errors never show the URL, which may hold a password.
func Options(rawURL, caFile string) (*goredis.Options, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("redis: invalid URL: %w", err)
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, fmt.Errorf("redis: invalid URL scheme %q: want redis:// or rediss://", u.Scheme)
	}
	opt, err := goredis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("redis: invalid URL for %s: %w", u.Host, err)
	}
	if caFile != "" {
		if opt.TLSConfig == nil {
			return nil, fmt.Errorf("redis: a TLS CA file needs a rediss:// URL (got %s://%s)", u.Scheme, u.Host)
		}
		pool, err := snapshot.LoadCAFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("redis: %w", err)
		}
		opt.TLSConfig.RootCAs = pool
		opt.TLSConfig.MinVersion = tls.VersionTLS12
	}
	opt.DB = 0
	opt.Protocol = 2
	opt.DisableIdentity = true
	opt.ClientName = ""
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	opt.ReadTimeout = ioTimeout
	opt.WriteTimeout = ioTimeout
	opt.ContextTimeoutEnabled = true
	opt.PoolSize = 2
	return opt, nil
}

// client returns a client for database db.
func client(opt *goredis.Options, db int) *goredis.Client {
	o := *opt
	o.DB = db
	if opt.TLSConfig != nil {
		o.TLSConfig = opt.TLSConfig.Clone()
	}
	return goredis.NewClient(&o)
}

// A server holds a client per database of one server.
type server struct {
	opt     *goredis.Options
	clients map[int]*goredis.Client
}

func newServer(opt *goredis.Options) *server {
	return &server{opt: opt, clients: map[int]*goredis.Client{}}
}

// db returns the client for database n.
func (s *server) db(n int) *goredis.Client {
	c, ok := s.clients[n]
	if !ok {
		c = client(s.opt, n)
		s.clients[n] = c
	}
	return c
}

func (s *server) close() {
	for _, c := range s.clients {
		c.Close()
	}
}

// mapDB returns the target database of source database db.
func mapDB(m map[int]int, db int) int {
	if t, ok := m[db]; ok {
		return t
	}
	return db
}

// serverError describes a failure to talk to the server at addr.
func serverError(addr, what string, err error) error {
	return fmt.Errorf("redis: %s: %s: %w", addr, what, err)
}

// isReplyError reports whether err is an error reply of the server (as
// opposed to a network or client error).
func isReplyError(err error) bool {
	var re goredis.Error
	return errors.As(err, &re) && !errors.Is(err, goredis.Nil)
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

// execPipeline sends the commands queued in pipe. The caller checks each
// command's own error; execPipeline returns the error of the pipeline as a
// whole when no command carries it. go-redis leaves every command's error
// nil when the connection could not be set up because the server answered
// the set-up with an error reply (SELECT of a database it lacks, AUTH):
// nothing was sent, yet each command looks as if it had succeeded.
func execPipeline(ctx context.Context, pipe goredis.Pipeliner) error {
	cmds, err := pipe.Exec(ctx)
	if err == nil {
		return nil
	}
	for _, cmd := range cmds {
		if cmd.Err() != nil {
			return nil // the commands tell
		}
	}
	return err
}

// A missingDB is a database the server lacks: SELECT db was refused, and
// the server has databases 0 to have-1 (its databases setting is have).
type missingDB struct {
	db, have int
	refusal  error // the server's reply to SELECT db
}

// describe says what the server has, e.g. "1 database (databases 1; SELECT
// 3: ERR DB index is out of range)".
func (m *missingDB) describe() string {
	return fmt.Sprintf("%s (databases %d; SELECT %d: %v)", plural(m.have, "database"), m.have, m.db, m.refusal)
}

// checkDB tells whether the server of opt has database db, by SELECT db on
// a connection of its own (CONFIG GET databases is blocked on Memorystore,
// and a SELECT that fails on a pooled connection would fail every command
// sent on it). When SELECT db is refused it finds how many databases the
// server has by selecting lower ones (a binary search: at most 16 SELECTs)
// and returns them as a missingDB.
func checkDB(ctx context.Context, opt *goredis.Options, db int) (*missingDB, error) {
	c := client(opt, 0)
	defer c.Close()
	conn := c.EphemeralConn() // never back into a pool with a database selected
	defer conn.Close()
	// sel returns the server's refusal of SELECT n, or another error.
	sel := func(n int) (refusal, err error) {
		err = conn.Select(ctx, n).Err()
		switch {
		case err == nil:
			return nil, nil
		case isReplyError(err) && n > 0:
			return err, nil
		}
		return nil, serverError(opt.Addr, fmt.Sprintf("SELECT %d", n), err)
	}
	refusal, err := sel(db)
	if refusal == nil || err != nil {
		return nil, err
	}
	// Database 0 always exists: an error here is not about databases.
	if _, err := sel(0); err != nil {
		return nil, err
	}
	lo, hi := 0, db // lo exists, hi does not
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		r, err := sel(mid)
		if err != nil {
			return nil, err
		}
		if r == nil {
			lo = mid
		} else {
			hi = mid
		}
	}
	return &missingDB{db: db, have: lo + 1, refusal: refusal}, nil
}

// plural returns "1 key", "2 keys" and the like.
func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}

// An expiryCounts counts keys by their expiry time, to tell how many may
// have expired by a given moment. Expiries are counted in buckets of width
// milliseconds (1 s at first); when there are more than maxExpiryBuckets
// buckets, the width doubles and neighbours merge, so that memory stays
// bounded whatever the number of keys. A bucket counts as expired as soon
// as its start has passed: the count errs on the high side by at most the
// keys of one bucket.
type expiryCounts struct {
	width   int64
	buckets map[int64]int64 // expiry/width: keys
}

const maxExpiryBuckets = 1 << 14

// add counts a key that expires at expiry (Unix ms; 0 for none, not
// counted); n = -1 removes one.
func (e *expiryCounts) add(expiry, n int64) {
	if expiry <= 0 {
		return
	}
	if e.buckets == nil {
		e.width, e.buckets = 1000, map[int64]int64{}
	}
	b := expiry / e.width
	if e.buckets[b] += n; e.buckets[b] == 0 {
		delete(e.buckets, b)
	}
	for len(e.buckets) > maxExpiryBuckets {
		merged := make(map[int64]int64, len(e.buckets)/2+1)
		for b, n := range e.buckets {
			merged[b/2] += n
		}
		e.width *= 2
		e.buckets = merged
	}
}

// by returns how many of the keys counted may have expired at t (Unix ms).
func (e *expiryCounts) by(t int64) int64 {
	var n int64
	for b, k := range e.buckets {
		if b*e.width <= t {
			n += k
		}
	}
	return n
}

// info runs INFO section on c.
func info(ctx context.Context, c *goredis.Client, section string) (string, error) {
	s, err := c.Info(ctx, section).Result()
	if err != nil {
		return "", serverError(c.Options().Addr, "INFO "+section, err)
	}
	return s, nil
}

// keyspace returns the databases listed by INFO keyspace, ascending.
func keyspace(ctx context.Context, c *goredis.Client) ([]int, error) {
	s, err := info(ctx, c, "keyspace")
	if err != nil {
		return nil, err
	}
	var dbs []int
	for line := range strings.SplitSeq(s, "\n") {
		name, _, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "db") {
			continue
		}
		db, err := strconv.Atoi(name[2:])
		if err != nil || db < 0 || db > maxDB {
			return nil, fmt.Errorf("redis: %s: unexpected INFO keyspace line %q", c.Options().Addr, line)
		}
		dbs = append(dbs, db)
	}
	slices.Sort(dbs) // INFO lists them ascending; do not depend on it
	return dbs, nil
}

// KeyCount is what INFO keyspace says of one database.
type KeyCount struct {
	Keys    int64 // keys
	Expires int64 // keys with an expiry
}

// Keyspace returns the key counts of the databases of the server at url
// that hold keys, by number, as INFO keyspace gives them (caFile as for
// Dumper.TLSCAFile).
func Keyspace(ctx context.Context, url, caFile string) (map[int]KeyCount, error) {
	opt, err := Options(url, caFile)
	if err != nil {
		return nil, err
	}
	c := client(opt, 0)
	defer c.Close()
	return keyCounts(ctx, c)
}

// keyCounts returns what INFO keyspace says of the databases that hold
// keys.
func keyCounts(ctx context.Context, c *goredis.Client) (map[int]KeyCount, error) {
	text, err := info(ctx, c, "keyspace")
	if err != nil {
		return nil, err
	}
	counts := map[int]KeyCount{}
	for line := range strings.SplitSeq(text, "\n") {
		name, fields, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "db") {
			continue
		}
		db, err := strconv.Atoi(name[2:])
		if err != nil || db < 0 || db > maxDB {
			return nil, fmt.Errorf("redis: %s: unexpected INFO keyspace line %q", c.Options().Addr, line)
		}
		var kc KeyCount
		for f := range strings.SplitSeq(fields, ",") {
			k, v, _ := strings.Cut(f, "=")
			n, _ := strconv.ParseInt(v, 10, 64)
			switch k {
			case "keys":
				kc.Keys = n
			case "expires":
				kc.Expires = n
			}
		}
		counts[db] = kc
	}
	return counts, nil
}

// rdbVersions maps the first Redis version of each RDB format version, newest
// first.
var rdbVersions = []struct {
	major, minor int
	rdb          int
}{
	{7, 4, 12}, {7, 2, 11}, {7, 0, 10}, {5, 0, 9}, {4, 0, 8}, {3, 2, 7}, {2, 6, 6},
}

// serverRDBVersion returns the highest RDB version the server described by
// INFO server loads: from redis_version (7.4 or newer: 12, 7.2: 11, 7.0: 10,
// 5.0–6.2: 9, 4.0: 8, 3.2: 7, 2.6–3.0: 6). Valkey (valkey_version, which
// reports redis_version 7.2.4) is taken as 11. It returns 0 when the
// version is not recognised.
func serverRDBVersion(infoServer string) int {
	if infoField(infoServer, "valkey_version") != "" {
		return 11
	}
	major, minor, ok := parseVersion(infoField(infoServer, "redis_version"))
	if !ok {
		return 0
	}
	for _, v := range rdbVersions {
		if major > v.major || major == v.major && minor >= v.minor {
			return v.rdb
		}
	}
	return 0
}

func parseVersion(s string) (major, minor int, ok bool) {
	parts := strings.SplitN(strings.TrimSpace(s), ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	return major, minor, err1 == nil && err2 == nil
}

// ParseDBMap parses a database map such as "0:0,1:0" (source:target pairs)
// for Restorer.DBMap.
func ParseDBMap(s string) (map[int]int, error) {
	m := map[int]int{}
	for pair := range strings.SplitSeq(s, ",") {
		from, to, ok := strings.Cut(strings.TrimSpace(pair), ":")
		f, ferr := strconv.Atoi(from)
		t, terr := strconv.Atoi(to)
		if !ok || ferr != nil || terr != nil || f < 0 || t < 0 || f > maxDB || t > maxDB {
			return nil, fmt.Errorf("redis: invalid database map entry %q: want SOURCE:TARGET database numbers", pair)
		}
		if _, dup := m[f]; dup {
			return nil, fmt.Errorf("redis: database map names source database %d twice", f)
		}
		m[f] = t
	}
	return m, nil
}
