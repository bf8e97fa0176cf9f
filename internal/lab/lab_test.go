package lab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"gocloud.dev/blob"
)

func writeObject(t *testing.T, url, key string, data []byte) {
	t.Helper()
	ctx := context.Background()
	b, err := blob.OpenBucket(ctx, url)
	if err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	defer b.Close()
	if err := b.WriteAll(ctx, key, data, nil); err != nil {
		t.Fatalf("write %s: %v", key, err)
	}
}

func readObject(t *testing.T, url, key string) []byte {
	t.Helper()
	ctx := context.Background()
	b, err := blob.OpenBucket(ctx, url)
	if err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	defer b.Close()
	got, err := b.ReadAll(ctx, key)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return got
}

func bucketRoundTrip(t *testing.T, url string) {
	t.Helper()
	data := bytes.Repeat([]byte("stackport lab round trip\n"), 100_000) // 2.5 MB
	writeObject(t, url, "dir/object.txt", data)
	if got := readObject(t, url, "dir/object.txt"); !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, want %d identical bytes", len(got), len(data))
	}
}

func TestS3(t *testing.T) {
	_, url := S3(t)
	bucketRoundTrip(t, url)
}

func TestGCS(t *testing.T) {
	_, url := GCS(t)
	bucketRoundTrip(t, url)
}

func TestAzure(t *testing.T) {
	_, url := Azure(t)
	bucketRoundTrip(t, url)
}

func TestS3KillStart(t *testing.T) {
	s, url := S3(t)
	addr := s.Addr
	data := []byte("written before the kill")
	writeObject(t, url, "before-kill", data)

	s.Kill()
	if c, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after Kill", s.Addr)
	}
	s.Kill() // killing a stopped server is a no-op

	s.Start(t)
	if s.Addr != addr {
		t.Fatalf("address changed from %s to %s", addr, s.Addr)
	}
	if got := readObject(t, url, "before-kill"); !bytes.Equal(got, data) {
		t.Fatalf("after restart read %q, want %q", got, data)
	}
	writeObject(t, url, "after-restart", []byte("ok"))
}

func TestRedis(t *testing.T) {
	s, url := Redis(t, `rename-command CONFIG ""`)
	if want := "redis://" + s.Addr + "/0"; url != want {
		t.Fatalf("url %q, want %q", url, want)
	}
	c, err := net.DialTimeout("tcp", s.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if v, err := respDo(c, r, "SET", "greeting", "hello\r\nworld"); err != nil || v != "OK" {
		t.Fatalf("SET: %v %v", v, err)
	}
	if v, err := respDo(c, r, "GET", "greeting"); err != nil || v != "hello\r\nworld" {
		t.Fatalf("GET: %q %v", v, err)
	}
	var re respError
	if _, err := respDo(c, r, "CONFIG", "GET", "save"); !errors.As(err, &re) {
		t.Fatalf("CONFIG should be renamed away by the extra config, got err %v", err)
	}
}

func psqlCmd(t *testing.T, ctx context.Context, url string, sql ...string) *exec.Cmd {
	t.Helper()
	args := []string{"-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url}
	for _, s := range sql {
		args = append(args, "-c", s)
	}
	cmd := exec.CommandContext(ctx, lookBin(t, "psql", pgBinDir), args...)
	cmd.Env = cleanPGEnv()
	return cmd
}

func psql(t *testing.T, url string, sql ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := psqlCmd(t, ctx, url, sql...).CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestPostgres also kills the server while a backend is busy: PostgreSQL's
// backends leave the process group, and a restart on the same data must
// still work.
func TestPostgres(t *testing.T) {
	s, url := Postgres(t)
	got := psql(t, url,
		"CREATE TABLE t (id int PRIMARY KEY, v text)",
		"INSERT INTO t VALUES (1, 'héllo')",
		"SELECT v FROM t WHERE id = 1")
	if got != "héllo" {
		t.Fatalf("psql returned %q", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	busy := psqlCmd(t, ctx, url, "SELECT pg_sleep(25)")
	if err := busy.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if psql(t, url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'") == "1" {
			break
		}
		if i == 100 {
			t.Fatal("the busy query did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Kill()
	if err := busy.Wait(); err == nil {
		t.Fatal("the busy query succeeded although the server was killed")
	}
	s.Start(t)
	if got := psql(t, url, "SELECT v FROM t WHERE id = 1"); got != "héllo" {
		t.Fatalf("after restart psql returned %q", got)
	}
}

func TestMongo(t *testing.T) {
	s, url := Mongo(t)
	if want := "mongodb://" + s.Addr + "/?directConnection=true"; url != want {
		t.Fatalf("url %q, want %q", url, want)
	}
	if got, want := MongoURI(url, "appsmith"), "mongodb://"+s.Addr+"/appsmith?directConnection=true"; got != want {
		t.Fatalf("MongoURI = %q, want %q", got, want)
	}
	c, err := net.DialTimeout("tcp", s.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))

	reply, err := mongoCommand(c, bsonD{
		{"insert", "things"},
		{"documents", []any{
			bsonD{{"_id", int32(1)}, {"name", "one"}, {"n", int64(1) << 40}},
			bsonD{{"_id", int32(2)}, {"name", "two"}, {"f", 2.5}},
		}},
		{"$db", "labtest"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := reply.get("ok").(float64); ok != 1 || reply.get("n") != int32(2) {
		t.Fatalf("insert reply: %v", reply)
	}

	reply, err = mongoCommand(c, bsonD{
		{"find", "things"},
		{"filter", bsonD{{"_id", int32(1)}}},
		{"$db", "labtest"},
	})
	if err != nil {
		t.Fatal(err)
	}
	cursor, _ := reply.get("cursor").(bsonD)
	batch, _ := cursor.get("firstBatch").([]any)
	if len(batch) != 1 {
		t.Fatalf("find reply: %v", reply)
	}
	doc, _ := batch[0].(bsonD)
	if doc.get("name") != "one" || doc.get("n") != int64(1)<<40 {
		t.Fatalf("found %v", doc)
	}
}

func TestDir(t *testing.T) {
	t.Setenv("STACKPORT_LAB", "/x/lab")
	if d := Dir(); d != "/x/lab" {
		t.Fatalf("Dir() = %q", d)
	}
	t.Setenv("STACKPORT_LAB", "")
	t.Setenv("XDG_CACHE_HOME", "/x/cache")
	if d := Dir(); d != "/x/cache/stackport-lab" {
		t.Fatalf("Dir() = %q", d)
	}
	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("HOME", "/x/home")
	if d := Dir(); d != "/x/home/.cache/stackport-lab" {
		t.Fatalf("Dir() = %q", d)
	}
}
