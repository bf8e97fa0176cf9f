package redis

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stackport/stackport/snapshot"
)

// ErrDiffers marks a target whose keys differ from the snapshot's.
var ErrDiffers = snapshot.ErrDiffers

// maxLoggedDiffs bounds how many differences a Checker logs.
const maxLoggedDiffs = 20

// ttlTolerance is how far a target key's expiry may be from the snapshot's.
const ttlTolerance = time.Second

// Checker compares a target server with the snapshot, reading it with
// pipelined DUMP and PTTL and with DBSIZE only, plus SCAN with NameExtra
// (commands Memorystore allows). Per key it checks that the key exists,
// that its type and value match and that its expiry is within a second
// of the snapshot's; per
// target database that it holds as many keys as the snapshot. Keys that
// have expired are skipped, and so are keys that expire while they are
// compared, by their recorded expiry: a key missing in the target whose
// expiry passed (within a second) is counted as expired, not as missing,
// and the key counts allow for keys whose expiry passed before DBSIZE
// (fewer keys) and for expired keys the target has not reclaimed yet (more
// keys; with NameExtra, the SCAN reclaims them and DBSIZE is read again).
//
// Values are compared as DUMP payloads without the footer (so the RDB
// versions may differ). Sets and hashes in hashtable encoding, whose
// payload order depends on the server, are compared as unordered
// collections of elements. A value the target encodes differently (another
// RDB version or other *-max-listpack-* settings, such as a small set
// moving from 7.0 to 7.2) cannot be compared: its type is checked and it is
// counted as "unverified" with a warning.
//
// Differences are logged (the first 20) and counted; if there are any,
// Restore returns an error wrapping ErrDiffers. Stats: those of Verifier
// plus "matched", "differences", "unverified" and "skipped_expired".
//
// The streams need not come from a snapshot: a Dumper of a live server
// connected through a snapshot.Pipe makes the Checker compare two servers
// (Reference "the source").
type Checker struct {
	URL       string // redis://[user:password@]host:port or rediss://…
	TLSCAFile string // PEM CA certificates for rediss:// (default: system roots)
	DBMap     map[int]int
	Log       *slog.Logger // differences (nil = slog.Default())
	// Reference names where the streams come from in the messages:
	// "the snapshot" when empty.
	Reference string
	// NameExtra: when a target database holds more keys than the streams,
	// scan it (SCAN) and report the keys the streams do not hold by name,
	// instead of the counts alone. It costs a hash of every key name read.
	NameExtra bool
	// Differ, when set, is called with every difference: the target
	// database, the key ("" for a difference of the key count) and why.
	Differ func(db int, key, why string)
}

// Restore implements snapshot.Restorer: it compares instead of restoring.
func (c *Checker) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	opt, err := Options(c.URL, c.TLSCAFile)
	if err != nil {
		return nil, err
	}
	k := &checkSink{server: newServer(opt), c: c, log: logger(c.Log), want: map[int]int64{}, seed: maphash.MakeSeed(), ref: c.Reference,
		expiries: map[int]*expiryCounts{}, expiredIn: map[int]int64{}, dbs: map[int]bool{}}
	if k.ref == "" {
		k.ref = "the snapshot"
	}
	if c.NameExtra {
		k.seen = map[int]map[uint64]struct{}{}
	}
	defer k.close()
	stats, err := readStreams(ctx, in, k)
	if err == nil {
		err = k.countKeys(ctx)
	}
	for name, v := range map[string]int64{"matched": k.matched, "differences": k.diffs, "unverified": k.unverified, "skipped_expired": k.expired} {
		stats[name] = v
	}
	if err == nil && k.diffs > 0 {
		err = fmt.Errorf("redis: %s: %d differences, the first: %s: %w", opt.Addr, k.diffs, k.first, ErrDiffers)
	}
	return stats, err
}

// A checkSink compares decoded records with the target.
type checkSink struct {
	*server
	c    *Checker
	log  *slog.Logger
	seed maphash.Seed
	want map[int]int64 // keys per target database
	// expiries of the keys counted in want, and the number of keys of
	// each target database skipped as expired, per target database
	expiries  map[int]*expiryCounts
	expiredIn map[int]int64
	dbs       map[int]bool // target databases checked to exist
	tdb       int
	batch     []record
	size      int

	matched, diffs, unverified, expired int64
	first                               string
	ref                                 string                      // "the snapshot" or Checker.Reference
	seen                                map[int]map[uint64]struct{} // NameExtra: hashes of the key names per target database
}

func (k *checkSink) begin(ctx context.Context, fr *frameReader) error {
	k.tdb = mapDB(k.c.DBMap, fr.db)
	k.want[k.tdb] += 0 // an empty stream still names a database to count
	if k.expiries[k.tdb] == nil {
		k.expiries[k.tdb] = &expiryCounts{}
	}
	if !k.dbs[k.tdb] {
		m, err := checkDB(ctx, k.opt, k.tdb)
		if err != nil {
			return err
		}
		if m != nil {
			return fmt.Errorf("redis: %s: the target has %s, but %s's database %d goes into its database %d", k.opt.Addr, m.describe(), k.ref, fr.db, k.tdb)
		}
		k.dbs[k.tdb] = true
	}
	return nil
}

func (k *checkSink) record(ctx context.Context, fr *frameReader, rec record) error {
	if k.seen != nil {
		// Also a key that expired: the target may still hold it.
		k.saw(k.tdb, rec.key)
	}
	if rec.expiry != 0 && rec.expiry <= time.Now().Add(ttlTolerance).UnixMilli() {
		k.expired++
		k.expiredIn[k.tdb]++
		return nil
	}
	k.want[k.tdb]++
	k.expiries[k.tdb].add(rec.expiry, 1)
	k.batch = append(k.batch, rec)
	k.size += len(rec.payload)
	if len(k.batch) >= batchKeys || k.size >= batchBytes {
		return k.flush(ctx, fr)
	}
	return nil
}

func (k *checkSink) end(ctx context.Context, fr *frameReader) error { return k.flush(ctx, fr) }

// flush compares the batch with the target.
func (k *checkSink) flush(ctx context.Context, fr *frameReader) error {
	batch := k.batch
	k.batch, k.size = k.batch[:0], 0
	defer clear(batch)
	pipe := k.db(k.tdb).Pipeline()
	dumps := make([]*goredis.Cmd, len(batch))
	ttls := make([]*goredis.Cmd, len(batch))
	for i, rec := range batch {
		dumps[i] = pipe.Do(ctx, "DUMP", rec.key)
		ttls[i] = pipe.Do(ctx, "PTTL", rec.key)
	}
	now := time.Now().UnixMilli() // see Dumper.dumpKeys
	// The commands' own errors are checked below; this is the pipeline's.
	if err := execPipeline(ctx, pipe); err != nil && len(batch) > 0 {
		return fmt.Errorf("redis: %s: frames %d to %d: DUMP from %s db %d: %w", fr.stream, batch[0].frame, batch[len(batch)-1].frame, k.opt.Addr, k.tdb, err)
	}
	// Keys whose recorded expiry passed by the replies (within the TTL
	// tolerance) may have expired meanwhile.
	passed := time.Now().Add(ttlTolerance).UnixMilli()
	for i, rec := range batch {
		payload, err := dumps[i].Text()
		if errors.Is(err, goredis.Nil) {
			if rec.expiry != 0 && rec.expiry <= passed {
				k.expiredMeanwhile(rec)
				continue
			}
			k.differ(fr, rec, "missing in the target")
			continue
		}
		if err != nil {
			return fmt.Errorf("redis: %s: frame %d (key %q): DUMP from %s db %d: %w", fr.stream, rec.frame, rec.key, k.opt.Addr, k.tdb, err)
		}
		ttl, err := ttls[i].Int64()
		if err != nil {
			return fmt.Errorf("redis: %s: frame %d (key %q): PTTL from %s db %d: %w", fr.stream, rec.frame, rec.key, k.opt.Addr, k.tdb, err)
		}
		if ttl == -2 && rec.expiry != 0 && rec.expiry <= passed { // expired between DUMP and PTTL
			k.expiredMeanwhile(rec)
			continue
		}
		same, why := k.compare(rec.payload, []byte(payload))
		why = k.reword(why)
		if !same {
			k.differ(fr, rec, why)
			continue
		}
		if diff := ttlDiff(rec.expiry, ttl, now); diff != "" {
			k.differ(fr, rec, diff)
			continue
		}
		if why != "" {
			k.unverified++
			k.log.Warn("redis: cannot compare a value the target encodes differently", "stream", fr.stream, "frame", rec.frame, "key", rec.key, "why", why)
			continue
		}
		k.matched++
	}
	return nil
}

// expiredMeanwhile counts a key of the current target database that
// expired while it was compared as expired instead of wanted.
func (k *checkSink) expiredMeanwhile(rec record) {
	k.expired++
	k.want[k.tdb]--
	k.expiries[k.tdb].add(rec.expiry, -1)
	k.expiredIn[k.tdb]++
}

// ttlDiff describes how the target's PTTL reply ttl, read at now, differs
// from the snapshot's expiry, or returns "".
func ttlDiff(expiry, ttl, now int64) string {
	switch {
	case expiry == 0 && ttl >= 0:
		return fmt.Sprintf("expires in %v in the target, never in the snapshot", time.Duration(ttl)*time.Millisecond)
	case expiry != 0 && ttl < 0:
		return fmt.Sprintf("never expires in the target, at %s in the snapshot", time.UnixMilli(expiry).UTC().Format(time.RFC3339))
	case expiry != 0 && (now+ttl-expiry > ttlTolerance.Milliseconds() || expiry-now-ttl > ttlTolerance.Milliseconds()):
		return fmt.Sprintf("expires at %s in the target, %s in the snapshot",
			time.UnixMilli(now+ttl).UTC().Format(time.RFC3339Nano), time.UnixMilli(expiry).UTC().Format(time.RFC3339Nano))
	}
	return ""
}

func (k *checkSink) differ(fr *frameReader, rec record, why string) {
	why = k.reword(why)
	msg := fmt.Sprintf("db %d key %q (%s frame %d): %s", k.tdb, rec.key, fr.stream, rec.frame, why)
	k.report(k.tdb, rec.key, why, msg)
}

// reword names the Reference instead of the snapshot in why.
func (k *checkSink) reword(why string) string {
	if k.ref == "the snapshot" {
		return why
	}
	return strings.ReplaceAll(why, "the snapshot", k.ref)
}

// report counts, logs and passes on a difference.
func (k *checkSink) report(db int, key, why, msg string) {
	k.diffs++
	if k.diffs == 1 {
		k.first = msg
	}
	if k.diffs <= maxLoggedDiffs {
		k.log.Warn("redis: the target differs from "+k.ref, "difference", msg)
	}
	if k.c.Differ != nil {
		k.c.Differ(db, key, why)
	}
}

// saw records that the streams hold key in target database db.
func (k *checkSink) saw(db int, key string) {
	s := k.seen[db]
	if s == nil {
		s = map[uint64]struct{}{}
		k.seen[db] = s
	}
	s[maphash.String(k.seed, key)] = struct{}{}
}

// countKeys compares each target database's key count with the snapshot's.
// Keys whose recorded expiry passed by DBSIZE (within the TTL tolerance)
// may be missing; keys skipped as expired may still be counted by DBSIZE
// (the target reclaims expired keys lazily and over time).
func (k *checkSink) countKeys(ctx context.Context) error {
	for _, db := range slices.Sorted(maps.Keys(k.want)) {
		want := k.want[db]
		n, err := k.dbSize(ctx, db)
		if err != nil {
			return err
		}
		low := want - k.expiries[db].by(time.Now().Add(ttlTolerance).UnixMilli())
		high := want + k.expiredIn[db]
		if n >= low && n <= high {
			continue
		}
		if n > high && k.seen != nil {
			named, err := k.nameExtra(ctx, db, n-want)
			if err != nil {
				return err
			}
			if named {
				continue
			}
			// None: keys that expired, which the SCAN reclaimed.
			if n, err = k.dbSize(ctx, db); err != nil {
				return err
			}
			if n >= low && n <= high {
				continue
			}
		}
		why := fmt.Sprintf("holds %d keys, %s %d", n, k.ref, want)
		k.report(db, "", why, fmt.Sprintf("db %d %s", db, why))
	}
	return nil
}

func (k *checkSink) dbSize(ctx context.Context, db int) (int64, error) {
	n, err := k.db(db).DBSize(ctx).Result()
	if err != nil {
		return 0, serverError(k.opt.Addr, fmt.Sprintf("db %d: DBSIZE", db), err)
	}
	return n, nil
}

// nameExtra scans target database db for the keys the streams do not
// hold and reports each (up to maxLoggedDiffs by name, then their
// number). It returns false when it found none (a key expired or was
// deleted meanwhile): the counts are reported instead.
func (k *checkSink) nameExtra(ctx context.Context, db int, extra int64) (bool, error) {
	c := k.db(db)
	seen := k.seen[db]
	var found int64
	var cursor uint64
	for {
		keys, next, err := c.Scan(ctx, cursor, "", batchKeys).Result()
		if err != nil {
			return false, serverError(k.opt.Addr, fmt.Sprintf("db %d: SCAN", db), err)
		}
		for _, key := range keys {
			if _, ok := seen[maphash.String(k.seed, key)]; ok {
				continue
			}
			if found++; found <= maxLoggedDiffs {
				why := "only in the target"
				k.report(db, key, why, fmt.Sprintf("db %d key %q: %s", db, key, why))
			}
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	if found > maxLoggedDiffs {
		why := fmt.Sprintf("%d more keys only in the target (it holds %d more keys than %s)", found-maxLoggedDiffs, extra, k.ref)
		k.report(db, "", why, fmt.Sprintf("db %d: %s", db, why))
	}
	return found > 0, nil
}

// RDB object types of DUMP payloads, and the Redis type of each.
var rdbTypeNames = map[byte]string{
	0: "string",
	1: "list", 10: "list", 14: "list", 18: "list",
	2: "set", 11: "set", 20: "set",
	3: "zset", 5: "zset", 12: "zset", 17: "zset",
	4: "hash", 9: "hash", 13: "hash", 16: "hash", 22: "hash", 23: "hash", 24: "hash", 25: "hash",
	6: "module", 7: "module",
	15: "stream", 19: "stream", 21: "stream",
}

const (
	rdbTypeSet  = 2
	rdbTypeHash = 4
)

func typeName(t byte) string {
	if n, ok := rdbTypeNames[t]; ok {
		return n
	}
	return "RDB type " + strconv.Itoa(int(t))
}

// compare compares a snapshot payload with the target's. It returns
// same=true, why="" when the values match; same=false and why for values
// that differ; same=true and why for values of the same type that cannot
// be compared.
func (k *checkSink) compare(want, got []byte) (same bool, why string) {
	if len(got) < minPayload {
		return false, fmt.Sprintf("the target's DUMP payload has %d bytes", len(got))
	}
	a, b := want[:len(want)-footerSize], got[:len(got)-footerSize]
	if bytes.Equal(a, b) {
		return true, ""
	}
	if ta, tb := typeName(a[0]), typeName(b[0]); ta != tb {
		return false, fmt.Sprintf("type %s in the target, %s in the snapshot", tb, ta)
	}
	if a[0] != b[0] {
		return true, fmt.Sprintf("RDB encoding %d in the target, %d in the snapshot", b[0], a[0])
	}
	if a[0] != rdbTypeSet && a[0] != rdbTypeHash {
		return false, "the value differs"
	}
	da, erra := k.digest(a)
	db, errb := k.digest(b)
	if err := errors.Join(erra, errb); err != nil {
		return false, "the value differs (" + err.Error() + ")"
	}
	if da != db {
		return false, "the value differs"
	}
	return true, ""
}

// A digest is an order-independent summary of a collection.
type digest struct{ n, sum uint64 }

// digest summarises the elements (or field-value pairs) of a set or hash
// payload body in hashtable encoding, independent of their order.
func (k *checkSink) digest(body []byte) (digest, error) {
	r := &rdbReader{b: body[1:]}
	n, err := r.length()
	if err != nil {
		return digest{}, err
	}
	per := uint64(1)
	if body[0] == rdbTypeHash {
		per = 2
	}
	d := digest{n: n}
	var h maphash.Hash
	h.SetSeed(k.seed)
	for range n {
		h.Reset()
		for range per {
			s, err := r.str()
			if err != nil {
				return digest{}, err
			}
			var l [8]byte
			binary.LittleEndian.PutUint64(l[:], uint64(len(s)))
			h.Write(l[:])
			h.Write(s)
		}
		d.sum += h.Sum64()
	}
	if len(r.b) != 0 {
		return digest{}, errors.New("trailing bytes in the payload")
	}
	return d, nil
}

// An rdbReader decodes RDB lengths and strings.
type rdbReader struct{ b []byte }

var errShort = errors.New("truncated payload")

func (r *rdbReader) take(n uint64) ([]byte, error) {
	if n > uint64(len(r.b)) {
		return nil, errShort
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p, nil
}

// lengthOrEnc reads a length; enc reports a special string encoding
// (0xC0-0xC3) whose number is returned instead.
func (r *rdbReader) lengthOrEnc() (n uint64, enc bool, err error) {
	p, err := r.take(1)
	if err != nil {
		return 0, false, err
	}
	switch p[0] >> 6 {
	case 0:
		return uint64(p[0] & 0x3f), false, nil
	case 1:
		q, err := r.take(1)
		if err != nil {
			return 0, false, err
		}
		return uint64(p[0]&0x3f)<<8 | uint64(q[0]), false, nil
	case 3:
		return uint64(p[0] & 0x3f), true, nil
	}
	switch p[0] {
	case 0x80:
		q, err := r.take(4)
		if err != nil {
			return 0, false, err
		}
		return uint64(binary.BigEndian.Uint32(q)), false, nil
	case 0x81:
		q, err := r.take(8)
		if err != nil {
			return 0, false, err
		}
		return binary.BigEndian.Uint64(q), false, nil
	}
	return 0, false, fmt.Errorf("unknown length encoding %#x", p[0])
}

func (r *rdbReader) length() (uint64, error) {
	n, enc, err := r.lengthOrEnc()
	if err == nil && enc {
		err = errors.New("string encoding where a length belongs")
	}
	return n, err
}

// str reads a string, decoding integer and LZF encodings.
func (r *rdbReader) str() ([]byte, error) {
	n, enc, err := r.lengthOrEnc()
	if err != nil || !enc {
		if err != nil {
			return nil, err
		}
		return r.take(n)
	}
	switch n {
	case 0, 1, 2: // 8, 16 or 32-bit little-endian integer
		p, err := r.take(1 << n)
		if err != nil {
			return nil, err
		}
		var v int64
		switch n {
		case 0:
			v = int64(int8(p[0]))
		case 1:
			v = int64(int16(binary.LittleEndian.Uint16(p)))
		case 2:
			v = int64(int32(binary.LittleEndian.Uint32(p)))
		}
		return strconv.AppendInt(nil, v, 10), nil
	case 3:
		clen, err := r.length()
		if err != nil {
			return nil, err
		}
		ulen, err := r.length()
		if err != nil {
			return nil, err
		}
		p, err := r.take(clen)
		if err != nil {
			return nil, err
		}
		return lzfDecompress(p, ulen)
	}
	return nil, fmt.Errorf("unknown string encoding %d", n)
}

// lzfDecompress decompresses LZF data to exactly n bytes.
func lzfDecompress(in []byte, n uint64) ([]byte, error) {
	if n > uint64(len(in))*1<<8+1<<8 { // LZF expands at most ~264 times
		return nil, errors.New("implausible LZF length")
	}
	out := make([]byte, 0, n)
	bad := errors.New("bad LZF data")
	for i := 0; i < len(in); {
		ctrl := int(in[i])
		i++
		if ctrl < 1<<5 { // a literal run of ctrl+1 bytes
			l := ctrl + 1
			if i+l > len(in) || uint64(len(out)+l) > n {
				return nil, bad
			}
			out = append(out, in[i:i+l]...)
			i += l
			continue
		}
		l := ctrl >> 5 // a back reference
		if l == 7 {
			if i >= len(in) {
				return nil, bad
			}
			l += int(in[i])
			i++
		}
		l += 2
		if i >= len(in) {
			return nil, bad
		}
		ref := len(out) - (ctrl&0x1f)<<8 - int(in[i]) - 1
		i++
		if ref < 0 || uint64(len(out)+l) > n {
			return nil, bad
		}
		for j := range l {
			out = append(out, out[ref+j])
		}
	}
	if uint64(len(out)) != n {
		return nil, bad
	}
	return out, nil
}
