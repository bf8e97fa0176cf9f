package postgres

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSplitPassword(t *testing.T) {
	for _, tc := range []struct{ in, conn, password string }{
		{"postgres://u:s%40cret@h:5432/db?sslmode=require", "postgres://u@h:5432/db?sslmode=require", "s@cret"},
		{"postgresql://u@h/db?password=pw&sslmode=disable", "postgresql://u@h/db?sslmode=disable", "pw"},
		{"postgres://h/db", "postgres://h/db", ""},
		{"host=h user=u password=pw dbname=db", "host=h user=u dbname=db", "pw"},
		{`host=h password = 'a \'b\\ c' dbname='my db'`, `host=h dbname='my db'`, `a 'b\ c`},
		{"dbname=db", "dbname=db", ""},
	} {
		conn, password, err := splitPassword(tc.in)
		if err != nil || conn != tc.conn || password != tc.password {
			t.Errorf("splitPassword(%q) = %q, %q, %v; want %q, %q", tc.in, conn, password, err, tc.conn, tc.password)
		}
	}
	for _, bad := range []string{"host", "password='unterminated", "=x"} {
		if _, _, err := splitPassword(bad); err == nil {
			t.Errorf("splitPassword(%q): no error", bad)
		}
	}
}

func TestPgDumpVersions(t *testing.T) {
	dir := t.TempDir()
	fake := func(name, output string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\necho '"+output+"'\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ctx := context.Background()
	for _, tc := range []struct {
		output  string
		num     int
		version string
	}{
		{"pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)", 150020, "15.20"},
		{"pg_dump (PostgreSQL) 16beta1", 160000, "16"},
		{"pg_dump (PostgreSQL) 9.6.24", 90624, "9.6.24"},
	} {
		d, num, err := pgDumpAt(ctx, fake("pg_dump", tc.output))
		if err != nil || num != tc.num || d.version != tc.version {
			t.Errorf("%q: %v, %d, %v", tc.output, d, num, err)
		}
	}
	if _, _, err := pgDumpAt(ctx, fake("notdump", "hello")); err == nil || !strings.Contains(err.Error(), "is not pg_dump") {
		t.Errorf("not pg_dump: %v", err)
	}
	old := fake("old", "pg_dump (PostgreSQL) 14.1")
	if _, err := findPgDump(ctx, old, 150004, "15.4"); err == nil ||
		!strings.Contains(err.Error(), "pg_dump 14.1 ("+old+") is older than the server (PostgreSQL 15.4): install pg_dump 15 or newer") {
		t.Errorf("old pg_dump: %v", err)
	}
	if d, err := findPgDump(ctx, fake("new", "pg_dump (PostgreSQL) 17.2"), 150004, "15.4"); err != nil || d.version != "17.2" {
		t.Errorf("newer pg_dump: %v %v", d, err)
	}
	// Without a path, a pg_dump in PATH that is too old is passed over for
	// none at all: the error names the versions.
	t.Setenv("PATH", filepath.Dir(fake("pg_dump", "pg_dump (PostgreSQL) 12.3")))
	if _, err := findPgDump(ctx, "", 990000, "99.0"); err == nil || !strings.Contains(err.Error(), "pg_dump 12.3") {
		t.Errorf("old pg_dump in PATH: %v", err)
	}
	t.Setenv("PATH", t.TempDir())
	if _, err := findPgDump(ctx, "", 990000, "99.0"); err == nil ||
		!strings.Contains(err.Error(), "pg_dump not found in PATH or at /usr/lib/postgresql/99/bin/pg_dump") {
		t.Errorf("no pg_dump: %v", err)
	}
	if majorName(90624) != "9.6" || majorName(150020) != "15" {
		t.Error("majorName")
	}
}
