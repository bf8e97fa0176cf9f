package redis

import (
	"bytes"
	"context"
	"github.com/stackport/stackport/internal/streamtest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stackport/stackport/internal/lab"
)

func TestCRC64Jones(t *testing.T) {
	if got := crc64Jones(0, []byte("123456789")); got != 0xe9c6d914c4b8d9ca {
		t.Errorf("crc64Jones = %#x", got)
	}
	if got := crc64Jones(crc64Jones(0, []byte("1234")), []byte("56789")); got != 0xe9c6d914c4b8d9ca {
		t.Errorf("incremental crc64Jones = %#x", got)
	}
}

// checkRDB runs redis-check-rdb on path.
func checkRDB(t testing.TB, path string) {
	t.Helper()
	out, err := exec.Command("redis-check-rdb", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "RDB looks OK") {
		t.Fatalf("redis-check-rdb %s: %v\n%s", path, err, out)
	}
}

func TestExportLoads(t *testing.T) {
	ctx := context.Background()
	_, srcURL := lab.Redis(t)
	counts := fixture(t, srcURL, fixtureOptions{})
	m, dstats := dump(t, srcURL)

	dir := t.TempDir()
	path := filepath.Join(dir, "export.rdb")
	f, err := os.Create(path)
	must(t, err)
	stats, err := Export(ctx, m.Reader(), f)
	must(t, err)
	must(t, f.Close())
	if stats["keys"] != dstats["keys"] || stats["rdb_version"] != 10 {
		t.Errorf("stats %v, dump %v", stats, dstats)
	}
	head, err := os.ReadFile(path)
	must(t, err)
	if !bytes.HasPrefix(head, []byte("REDIS0010")) {
		t.Errorf("header %q", head[:9])
	}
	checkRDB(t, path)

	_, loadedURL := lab.Redis(t, "dir "+strconv.Quote(dir), "dbfilename export.rdb")
	for db := range counts {
		compareDB(t, plainClient(t, srcURL, db), plainClient(t, loadedURL, db))
	}
}

func TestExportEmpty(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty.rdb")
	var buf bytes.Buffer
	if _, err := Export(context.Background(), &streamtest.Reader{Streams: []streamtest.Stream{{Name: "db0.frames", Data: encode(t, 0)}}}, &buf); err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(path, buf.Bytes(), 0o644))
	if !bytes.HasPrefix(buf.Bytes(), []byte("REDIS0009")) || buf.Len() != 9+1+8 {
		t.Errorf("empty export %q", buf.Bytes())
	}
	checkRDB(t, path)
}

func TestExportMixedVersions(t *testing.T) {
	in := &streamtest.Reader{Streams: []streamtest.Stream{
		{Name: "db0.frames", Data: encode(t, 0, rec{"a", 0, fakePayload(9, "x")})},
		{Name: "db1.frames", Data: encode(t, 1, rec{"b", 0, fakePayload(10, "y")})},
	}}
	_, err := Export(context.Background(), in, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "db1.frames has RDB version 10, newer than 9") {
		t.Errorf("got %v", err)
	}
}

func TestRDBStrings(t *testing.T) {
	_, url := lab.Redis(t)
	c := plainClient(t, url, 0)
	for _, v := range []string{"", "hello", "12345", "-5", "-32768", "2147483647", "1099511627776", "007",
		strings.Repeat("abc", 1000), strings.Repeat("long member ", 10)} {
		p := realPayload(t, c, v)
		r := &rdbReader{b: []byte(p[1 : len(p)-footerSize])}
		got, err := r.str()
		if err != nil || string(got) != v || len(r.b) != 0 {
			t.Errorf("str(%.20q) = %.20q, %v (%d bytes left)", v, got, err, len(r.b))
		}
	}
	for _, bad := range [][]byte{{0x01}, {0x00, 'a', 0x20}, {0x20, 0x05}, {0xe0}} {
		if _, err := lzfDecompress(bad, 10); err == nil {
			t.Errorf("lzfDecompress(%x) accepted", bad)
		}
	}
}
