package redis

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stackport/stackport/internal/lab"
)

const targetPassword = "s3cret pass"

// memorystoreConfig are redis.conf lines that make a target like
// Memorystore: the blocked commands renamed away and a password.
func memorystoreConfig() []string {
	return lab.Memorystore(`requirepass "` + targetPassword + `"`)
}

// quietClient connects like the package does (no CLIENT SETINFO, RESP2),
// for reading from a Memorystore-like target in tests.
func quietClient(t testing.TB, url, caFile string, db int) *goredis.Client {
	t.Helper()
	opt, err := Options(url, caFile)
	if err != nil {
		t.Fatal(err)
	}
	c := client(opt, db)
	t.Cleanup(func() { c.Close() })
	return c
}

// plainClient connects to a test server that is not Memorystore-like.
func plainClient(t testing.TB, url string, db int) *goredis.Client {
	t.Helper()
	opt, err := goredis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opt.DB = db
	c := goredis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// fixtureOptions sizes the fixture.
type fixtureOptions struct {
	big bool // a 20 MB string and a hash with 200,000 fields
}

// fixture fills databases 0, 1 and 5 of the server at url with every type
// and encoding, binary key names, TTLs and optionally big keys. It returns
// the key count per database.
func fixture(t testing.TB, url string, o fixtureOptions) map[int]int {
	t.Helper()
	ctx := context.Background()
	rnd := rand.New(rand.NewPCG(1, 2))
	c := plainClient(t, url, 0)
	p := c.Pipeline()
	// strings: int, embstr, raw, compressible (LZF), binary, empty name
	p.Set(ctx, "str:int", "12345", 0)
	p.Set(ctx, "str:negint", "-9000000000", 0)
	p.Set(ctx, "str:short", "hello", 0)
	p.Set(ctx, "str:long", randomString(rnd, 300), 0)
	p.Set(ctx, "str:compressible", strings.Repeat("abc", 1000), 0)
	p.Set(ctx, "str:binary", "\x00\x01\xff\xfe\r\n", 0)
	p.Set(ctx, "str:empty", "", 0)
	p.Set(ctx, "", "empty key name", 0)
	p.Set(ctx, "bin:\x00\xff\r\n key\t", "binary key name", 0)
	// lists: listpack and quicklist with several nodes
	p.RPush(ctx, "list:small", "a", "b", "c", 1, 2)
	for i := range 2000 {
		p.RPush(ctx, "list:big", fmt.Sprintf("element-%d-%s", i, randomString(rnd, 40)))
	}
	// sets: intset, hashtable (and listpack on 7.2)
	p.SAdd(ctx, "set:int", 1, 2, 3, -4, 1<<40)
	p.SAdd(ctx, "set:small", "x", "y", "z")
	for i := range 300 {
		p.SAdd(ctx, "set:big", fmt.Sprintf("member-%d", i))
	}
	// sorted sets: listpack and skiplist
	p.ZAdd(ctx, "zset:small", goredis.Z{Score: 1.5, Member: "a"}, goredis.Z{Score: -2, Member: "b"})
	for i := range 300 {
		p.ZAdd(ctx, "zset:big", goredis.Z{Score: float64(i) / 3, Member: fmt.Sprintf("m%d", i)})
	}
	// hashes: listpack and hashtable
	p.HSet(ctx, "hash:small", "f1", "v1", "f2", 2)
	for i := range 300 {
		p.HSet(ctx, "hash:big", fmt.Sprintf("field-%d", i), randomString(rnd, 20))
	}
	p.HSet(ctx, "hash:big", "long", strings.Repeat("xyz", 100), "int", 123456) // LZF and integer elements
	p.SAdd(ctx, "set:big", strings.Repeat("long member ", 10), 987654)
	// stream with consumer groups and pending entries
	for i := range 50 {
		p.XAdd(ctx, &goredis.XAddArgs{Stream: "stream", Values: []any{"n", i, "s", "v"}})
	}
	p.XGroupCreate(ctx, "stream", "g1", "0")
	p.XGroupCreate(ctx, "stream", "g2", "$")
	p.XReadGroup(ctx, &goredis.XReadGroupArgs{Group: "g1", Consumer: "alice", Streams: []string{"stream", ">"}, Count: 10})
	p.XReadGroup(ctx, &goredis.XReadGroupArgs{Group: "g1", Consumer: "bob", Streams: []string{"stream", ">"}, Count: 5})
	// HyperLogLog (sparse and dense) and bitmap
	p.PFAdd(ctx, "hll:sparse", "a", "b", "c")
	for i := range 20 {
		members := make([]any, 500)
		for j := range members {
			members[j] = fmt.Sprintf("u%d-%d", i, j)
		}
		p.PFAdd(ctx, "hll:dense", members...)
	}
	p.SetBit(ctx, "bitmap", 100_000, 1)
	p.SetBit(ctx, "bitmap", 7, 1)
	// TTLs
	p.Set(ctx, "ttl:minute", "expires", time.Minute)
	p.HSet(ctx, "ttl:hash", "a", "b")
	p.Expire(ctx, "ttl:hash", 24*time.Hour)
	_, err := p.Exec(ctx)
	must(t, err)
	counts := map[int]int{0: 24}

	if o.big {
		must(t, c.Set(ctx, "big:string", randomString(rnd, 20<<20), 0).Err())
		for i := 0; i < 200_000; i += 2000 {
			args := make([]any, 0, 4000)
			for j := i; j < i+2000; j++ {
				args = append(args, fmt.Sprintf("field:%d", j), j)
			}
			p.HSet(ctx, "big:hash", args...)
		}
		_, err := p.Exec(ctx)
		must(t, err)
		counts[0] += 2
	}

	c1 := plainClient(t, url, 1)
	must(t, c1.Set(ctx, "db1:a", "one", 0).Err())
	must(t, c1.Set(ctx, "db1:ttl", "soon", 10*time.Minute).Err())
	must(t, c1.RPush(ctx, "str:short", "same name as in db 0").Err())
	counts[1] = 3
	c5 := plainClient(t, url, 5)
	must(t, c5.SAdd(ctx, "db5:set", "x").Err())
	counts[5] = 1

	for db, n := range counts {
		got, err := plainClient(t, url, db).DBSize(ctx).Result()
		must(t, err)
		if int(got) != n {
			t.Fatalf("fixture: db %d has %d keys, want %d", db, got, n)
		}
	}
	return counts
}

func randomString(rnd *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rnd.Uint32())
	}
	return string(b)
}

// encodings returns the set of OBJECT ENCODING values of the keys in db
// (for a source that allows OBJECT).
func encodings(t testing.TB, c *goredis.Client) map[string]bool {
	t.Helper()
	ctx := context.Background()
	enc := map[string]bool{}
	for _, k := range allKeys(t, c) {
		e, err := c.ObjectEncoding(ctx, k).Result()
		must(t, err)
		enc[e] = true
	}
	return enc
}

// allKeys returns the keys of c's database, sorted.
func allKeys(t testing.TB, c *goredis.Client) []string {
	t.Helper()
	var keys []string
	iter := c.Scan(context.Background(), 0, "", 1000).Iterator()
	for iter.Next(context.Background()) {
		keys = append(keys, iter.Val())
	}
	must(t, iter.Err())
	slices.Sort(keys)
	return slices.Compact(keys)
}

// value returns a canonical description of a key's type and value, read
// with commands Memorystore allows.
func value(t testing.TB, c *goredis.Client, key string) string {
	t.Helper()
	ctx := context.Background()
	typ, err := c.Type(ctx, key).Result()
	must(t, err)
	var v any
	switch typ {
	case "string":
		v, err = c.Get(ctx, key).Result()
	case "list":
		v, err = c.LRange(ctx, key, 0, -1).Result()
	case "set":
		var m []string
		m, err = c.SMembers(ctx, key).Result()
		slices.Sort(m)
		v = m
	case "zset":
		v, err = c.ZRangeWithScores(ctx, key, 0, -1).Result()
	case "hash":
		v, err = c.HGetAll(ctx, key).Result() // fmt prints maps sorted
	case "stream":
		var parts []any
		r, err1 := c.XRange(ctx, key, "-", "+").Result()
		g, err2 := c.XInfoGroups(ctx, key).Result()
		parts = append(parts, r, g)
		for _, grp := range g {
			p, err := c.XPending(ctx, key, grp.Name).Result()
			must(t, err)
			parts = append(parts, *p)
		}
		v, err = parts, firstErr(err1, err2)
	case "none":
		return "none"
	default:
		t.Fatalf("key %q: unexpected type %s", key, typ)
	}
	must(t, err)
	return typ + " " + fmt.Sprint(v)
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// compareDB checks that every key of src's database is in dst's with the
// same type, value and TTL (within a second), and that dst has no other
// keys.
func compareDB(t testing.TB, src, dst *goredis.Client) {
	t.Helper()
	ctx := context.Background()
	keys := allKeys(t, src)
	if got := allKeys(t, dst); !slices.Equal(got, keys) {
		t.Fatalf("db %d: target keys differ: %d keys, want %d (e.g. %q)", src.Options().DB, len(got), len(keys), firstDiff(got, keys))
	}
	for _, k := range keys {
		if a, b := value(t, src, k), value(t, dst, k); a != b {
			t.Errorf("db %d: key %q differs:\n source %s\n target %s", src.Options().DB, k, a, b)
		}
		a, err := src.PTTL(ctx, k).Result()
		must(t, err)
		b, err := dst.PTTL(ctx, k).Result()
		must(t, err)
		if (a < 0) != (b < 0) || (a-b).Abs() > time.Second {
			t.Errorf("db %d: key %q: TTL %v, source %v", src.Options().DB, k, b, a)
		}
	}
}

func firstDiff(a, b []string) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return a[i]
		}
	}
	if len(a) > len(b) {
		return a[len(b)]
	}
	if len(b) > len(a) {
		return b[len(a)]
	}
	return ""
}
