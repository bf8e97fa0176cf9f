package lab

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// MemorystoreBlocked are the commands Memorystore for Redis does not allow.
var MemorystoreBlocked = strings.Fields("CONFIG SAVE BGSAVE BGREWRITEAOF LASTSAVE MIGRATE REPLICAOF SLAVEOF SYNC PSYNC DEBUG MONITOR OBJECT CLIENT CLUSTER COMMAND SHUTDOWN ACL")

// Memorystore returns the redis.conf lines, for Redis, that make a server
// behave like Memorystore: every MemorystoreBlocked command renamed away,
// then the extra lines (such as requirepass, Memorystore's AUTH string).
func Memorystore(extra ...string) []string {
	var conf []string
	for _, c := range MemorystoreBlocked {
		conf = append(conf, `rename-command `+c+` ""`)
	}
	return append(conf, extra...)
}

// Redis starts redis-server 7 without persistence (save "", appendonly
// no). Each extraConfig entry is a line of redis.conf appended after the
// defaults, e.g. `rename-command CONFIG ""` or `requirepass secret`.
// It returns redis://127.0.0.1:PORT/0.
func Redis(t testing.TB, extraConfig ...string) (*Server, string) {
	t.Helper()
	bin := lookBin(t, "redis-server", "/usr/bin", "/usr/local/bin")
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	s := newServer(t, "redis-server", filepath.Join(dir, "redis.log"), port)
	conf := []string{
		"bind 127.0.0.1",
		"port " + strconv.Itoa(port),
		`save ""`,
		"appendonly no",
		"daemonize no",
		`logfile ""`,
		"dir " + strconv.Quote(data),
	}
	conf = append(conf, extraConfig...)
	confPath := filepath.Join(dir, "redis.conf")
	if err := os.WriteFile(confPath, []byte(strings.Join(conf, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.newCmd = func() *exec.Cmd { return exec.Command(bin, confPath) }
	s.ready = func(ctx context.Context) error {
		c, err := dialCtx(ctx, s.Addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = respDo(c, bufio.NewReader(c), "PING")
		var re respError
		if errors.As(err, &re) && !strings.HasPrefix(string(re), "LOADING") {
			// Any error reply but "still loading" means the server is
			// serving (it may want a password or have PING renamed).
			return nil
		}
		return err
	}
	s.Start(t)
	return s, fmt.Sprintf("redis://%s/0", s.Addr)
}

// pgBinDir holds the PostgreSQL 15 binaries of Debian's postgresql-15.
const pgBinDir = "/usr/lib/postgresql/15/bin"

// Postgres initialises a PostgreSQL 15 cluster (trust authentication, user
// postgres) in a temporary directory and starts it on 127.0.0.1 with
// fsync=off. As root the server runs as the system user postgres (initdb
// refuses root). It returns
// postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable.
func Postgres(t testing.TB) (*Server, string) {
	t.Helper()
	initdb := lookBin(t, "initdb", pgBinDir)
	postgres := lookBin(t, "postgres", filepath.Dir(initdb))

	// The directory also holds the Unix socket, whose path is limited to
	// about 100 bytes, so it is a short directory under $TMPDIR rather than
	// t.TempDir() (whose name grows with the test's name).
	dir, err := os.MkdirTemp("", "stackport-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("lab: running as root needs the system user postgres: %v", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
		if err := os.Chown(dir, int(uid), int(gid)); err != nil {
			t.Fatal(err)
		}
	}
	data := filepath.Join(dir, "data")
	logPath := filepath.Join(dir, "postgres.log")
	env := append(cleanPGEnv(), "LC_ALL=C.UTF-8")

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, initdb, "-D", data, "-U", "postgres", "--auth=trust",
		"--no-sync", "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions")
	cmd.Env = env
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("lab: initdb: %v\n%s", err, out)
	}

	port := freePort(t)
	s := newServer(t, "postgres", logPath, port)
	s.newCmd = func() *exec.Cmd {
		cmd := exec.Command(postgres, "-D", data, "-p", strconv.Itoa(port), "-k", dir,
			"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off")
		cmd.Env = env
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		return cmd
	}
	s.ready = func(ctx context.Context) error { return pgPing(ctx, s.Addr) }
	s.Start(t)
	return s, fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", s.Addr)
}

// cleanPGEnv returns the environment without libpq's PG* variables.
func cleanPGEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}

// pgPing opens a session with the v3 protocol (user and database postgres,
// trust authentication) and succeeds when the server reports ReadyForQuery.
func pgPing(ctx context.Context, addr string) error {
	c, err := dialCtx(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	params := "user\x00postgres\x00database\x00postgres\x00\x00"
	msg := make([]byte, 8, 8+len(params))
	binary.BigEndian.PutUint32(msg[0:], uint32(8+len(params)))
	binary.BigEndian.PutUint32(msg[4:], 3<<16)
	msg = append(msg, params...)
	if _, err := c.Write(msg); err != nil {
		return err
	}
	r := bufio.NewReader(c)
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		if n < 0 || n > 1<<20 {
			return fmt.Errorf("postgres: bad message length %d", n)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return err
		}
		switch hdr[0] {
		case 'E':
			return fmt.Errorf("postgres: %s", strings.ReplaceAll(strings.TrimRight(string(body), "\x00"), "\x00", " "))
		case 'R':
			if len(body) < 4 || binary.BigEndian.Uint32(body) != 0 {
				return errors.New("postgres: server asks for a password")
			}
		case 'Z':
			_, _ = c.Write([]byte{'X', 0, 0, 0, 4})
			return nil
		}
	}
}

// Mongo starts FerretDB 1.24.2 with the SQLite handler (data in a temporary
// directory) as the one-node replica set rs0 with a real oplog, the way
// Appsmith runs its embedded MongoDB: hello reports setName, and every
// insert, update and delete is recorded in the capped collection
// local.oplog.rs (1 GiB), created at the first start. It returns
// mongodb://127.0.0.1:PORT/?directConnection=true (MongoURI adds a
// database).
func Mongo(t testing.TB) (*Server, string) {
	t.Helper()
	return startMongo(t, true)
}

// MongoStandalone starts FerretDB as Mongo does, but as a standalone server
// without an oplog, and returns mongodb://127.0.0.1:PORT/.
func MongoStandalone(t testing.TB) (*Server, string) {
	t.Helper()
	return startMongo(t, false)
}

// MongoURI returns uri, a URI that Mongo or MongoStandalone returned, with
// db as its database: mongodb://HOST/db?directConnection=true.
func MongoURI(uri, db string) string {
	base, query, _ := strings.Cut(uri, "?")
	if query != "" {
		query = "?" + query
	}
	return strings.TrimSuffix(base, "/") + "/" + db + query
}

// oplogSize is the size of the lab's oplog: 1 GiB, as in LAB.md.
const oplogSize = 1 << 30

func startMongo(t testing.TB, replicaSet bool) (*Server, string) {
	bin := labBin(t, "ferretdb")
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	state := filepath.Join(dir, "state")
	for _, d := range []string{data, state} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	port := freePort(t)
	s := newServer(t, "ferretdb", filepath.Join(dir, "ferretdb.log"), port)
	s.newCmd = func() *exec.Cmd {
		args := []string{
			"--handler=sqlite",
			"--sqlite-url=file:" + data + "/",
			"--listen-addr=" + s.Addr,
			"--debug-addr=-",
			"--state-dir=" + state,
			"--telemetry=disable",
		}
		if replicaSet {
			args = append(args, "--repl-set-name=rs0")
		}
		return exec.Command(bin, args...)
	}
	s.ready = func(ctx context.Context) error {
		c, err := dialCtx(ctx, s.Addr)
		if err != nil {
			return err
		}
		defer c.Close()
		reply, err := mongoCommand(c, bsonD{{"hello", int32(1)}, {"$db", "admin"}})
		if err != nil {
			return err
		}
		if ok, _ := reply.get("ok").(float64); ok != 1 {
			return fmt.Errorf("mongo: hello: %v", reply)
		}
		if !replicaSet {
			return nil
		}
		if set, _ := reply.get("setName").(string); set != "rs0" {
			return fmt.Errorf("mongo: hello reports setName %q, want rs0: %v", set, reply)
		}
		// The oplog survives restarts (same data directory): create it
		// once; NamespaceExists (48) means a restart.
		reply, err = mongoCommand(c, bsonD{{"create", "oplog.rs"}, {"capped", true}, {"size", int64(oplogSize)}, {"$db", "local"}})
		if err != nil {
			return err
		}
		if ok, _ := reply.get("ok").(float64); ok != 1 && reply.get("code") != int32(48) {
			return fmt.Errorf("mongo: create local.oplog.rs: %v", reply)
		}
		return nil
	}
	s.Start(t)
	if replicaSet {
		return s, fmt.Sprintf("mongodb://%s/?directConnection=true", s.Addr)
	}
	return s, fmt.Sprintf("mongodb://%s/", s.Addr)
}

// dialCtx connects to addr and applies the context's deadline to the
// connection.
func dialCtx(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	return c, nil
}

// --- Redis RESP ---

// respError is an error reply ("-ERR ...") without the leading '-'.
type respError string

func (e respError) Error() string { return "redis: " + string(e) }

// respDo sends one command and reads its reply: a string for simple and
// bulk strings, int64 for integers, nil for null, []any for arrays.
func respDo(w io.Writer, r *bufio.Reader, args ...string) (any, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return nil, err
	}
	return respRead(r)
}

func respRead(r *bufio.Reader) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("redis: empty reply")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, respError(line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = respRead(r); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("redis: unexpected reply %q", line)
}

// --- MongoDB OP_MSG with a minimal BSON codec ---

type bsonE struct {
	Key   string
	Value any
}

// bsonD is an ordered BSON document. Values: float64, string, bsonD,
// []any, bool, nil, int32, int64; decoding also yields []byte for binary
// and object ids, time.Time for dates.
type bsonD []bsonE

func (d bsonD) get(key string) any {
	for _, e := range d {
		if e.Key == key {
			return e.Value
		}
	}
	return nil
}

func bsonEncode(d bsonD) ([]byte, error) {
	b := []byte{0, 0, 0, 0}
	for _, e := range d {
		var err error
		if b, err = bsonAppendElem(b, e.Key, e.Value); err != nil {
			return nil, err
		}
	}
	b = append(b, 0)
	binary.LittleEndian.PutUint32(b, uint32(len(b)))
	return b, nil
}

func bsonAppendElem(b []byte, key string, v any) ([]byte, error) {
	head := func(typ byte) []byte {
		b = append(b, typ)
		b = append(b, key...)
		return append(b, 0)
	}
	switch v := v.(type) {
	case float64:
		b = head(0x01)
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
	case string:
		b = head(0x02)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(v)+1))
		b = append(append(b, v...), 0)
	case bsonD:
		doc, err := bsonEncode(v)
		if err != nil {
			return nil, err
		}
		b = append(head(0x03), doc...)
	case []any:
		arr := make(bsonD, len(v))
		for i, x := range v {
			arr[i] = bsonE{strconv.Itoa(i), x}
		}
		doc, err := bsonEncode(arr)
		if err != nil {
			return nil, err
		}
		b = append(head(0x04), doc...)
	case bool:
		b = head(0x08)
		if v {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
	case nil:
		b = head(0x0A)
	case int32:
		b = head(0x10)
		b = binary.LittleEndian.AppendUint32(b, uint32(v))
	case int64:
		b = head(0x12)
		b = binary.LittleEndian.AppendUint64(b, uint64(v))
	default:
		return nil, fmt.Errorf("bson: cannot encode %T", v)
	}
	return b, nil
}

func bsonDecode(b []byte) (bsonD, error) {
	if len(b) < 5 || int(binary.LittleEndian.Uint32(b)) != len(b) || b[len(b)-1] != 0 {
		return nil, errors.New("bson: bad document length")
	}
	var d bsonD
	p := b[4 : len(b)-1]
	for len(p) > 0 {
		typ := p[0]
		i := 1
		for i < len(p) && p[i] != 0 {
			i++
		}
		if i >= len(p) {
			return nil, errors.New("bson: unterminated key")
		}
		key := string(p[1:i])
		p = p[i+1:]
		need := func(n int) error {
			if n < 0 || len(p) < n {
				return errors.New("bson: truncated")
			}
			return nil
		}
		var v any
		var n int
		switch typ {
		case 0x01:
			n = 8
			if err := need(n); err != nil {
				return nil, err
			}
			v = math.Float64frombits(binary.LittleEndian.Uint64(p))
		case 0x02:
			if err := need(4); err != nil {
				return nil, err
			}
			n = 4 + int(binary.LittleEndian.Uint32(p))
			if err := need(n); err != nil {
				return nil, err
			}
			v = string(p[4 : n-1])
		case 0x03, 0x04:
			if err := need(4); err != nil {
				return nil, err
			}
			n = int(binary.LittleEndian.Uint32(p))
			if err := need(n); err != nil {
				return nil, err
			}
			sub, err := bsonDecode(p[:n])
			if err != nil {
				return nil, err
			}
			if typ == 0x03 {
				v = sub
			} else {
				arr := make([]any, len(sub))
				for j, e := range sub {
					arr[j] = e.Value
				}
				v = arr
			}
		case 0x05:
			if err := need(5); err != nil {
				return nil, err
			}
			n = 5 + int(binary.LittleEndian.Uint32(p))
			if err := need(n); err != nil {
				return nil, err
			}
			v = append([]byte(nil), p[5:n]...)
		case 0x07:
			n = 12
			if err := need(n); err != nil {
				return nil, err
			}
			v = append([]byte(nil), p[:n]...)
		case 0x08:
			n = 1
			if err := need(n); err != nil {
				return nil, err
			}
			v = p[0] != 0
		case 0x09:
			n = 8
			if err := need(n); err != nil {
				return nil, err
			}
			v = time.UnixMilli(int64(binary.LittleEndian.Uint64(p))).UTC()
		case 0x0A:
			v = nil
		case 0x10:
			n = 4
			if err := need(n); err != nil {
				return nil, err
			}
			v = int32(binary.LittleEndian.Uint32(p))
		case 0x11, 0x12:
			n = 8
			if err := need(n); err != nil {
				return nil, err
			}
			v = int64(binary.LittleEndian.Uint64(p))
		default:
			return nil, fmt.Errorf("bson: unsupported type 0x%02x", typ)
		}
		p = p[n:]
		d = append(d, bsonE{key, v})
	}
	return d, nil
}

var mongoRequestID atomic.Int32

// mongoCommand sends one OP_MSG command (the document must name "$db") and
// returns the reply document.
func mongoCommand(c net.Conn, cmd bsonD) (bsonD, error) {
	doc, err := bsonEncode(cmd)
	if err != nil {
		return nil, err
	}
	msg := make([]byte, 16, 21+len(doc))
	binary.LittleEndian.PutUint32(msg[0:], uint32(21+len(doc)))
	binary.LittleEndian.PutUint32(msg[4:], uint32(mongoRequestID.Add(1)))
	binary.LittleEndian.PutUint32(msg[12:], 2013) // OP_MSG
	msg = binary.LittleEndian.AppendUint32(msg, 0)
	msg = append(msg, 0) // section kind 0: body
	msg = append(msg, doc...)
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	var hdr [16]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.LittleEndian.Uint32(hdr[0:])) - 16
	if op := binary.LittleEndian.Uint32(hdr[12:]); op != 2013 || n < 10 || n > 48<<20 {
		return nil, fmt.Errorf("mongo: unexpected reply opcode %d length %d", op, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c, body); err != nil {
		return nil, err
	}
	if body[4] != 0 {
		return nil, fmt.Errorf("mongo: unexpected reply section kind %d", body[4])
	}
	doc = body[5:]
	if dl := int(binary.LittleEndian.Uint32(doc)); dl <= len(doc) {
		doc = doc[:dl] // drop an optional checksum
	}
	return bsonDecode(doc)
}
