package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stackport/stackport/internal/lab"
)

func pgExec(t *testing.T, url string, sql ...string) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, s := range sql {
		if _, err := conn.Exec(context.Background(), s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// pgQuery returns the rows of a query, the columns joined by " | ".
func pgQuery(t *testing.T, url, sql string) []string {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(context.Background(), sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		var parts []string
		for _, v := range vals {
			parts = append(parts, fmt.Sprint(v))
		}
		out = append(out, strings.Join(parts, " | "))
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// nonSuperuserTarget creates on the server at url a role that is not a
// superuser and a database it owns, as on Cloud SQL, and returns the URL
// of that database as that role.
func nonSuperuserTarget(t *testing.T, url string) string {
	t.Helper()
	pgExec(t, url,
		`CREATE ROLE app LOGIN PASSWORD 'pw' NOSUPERUSER CREATEDB`,
		`CREATE DATABASE appdb OWNER app`)
	return strings.Replace(strings.Replace(url, "postgres@", "app:pw@", 1), "/postgres?", "/appdb?", 1)
}

// TestPostgresThroughTheCLI restores into a database owned by a role that
// is not a superuser, as on Cloud SQL, and verifies against it.
func TestPostgresThroughTheCLI(t *testing.T) {
	ctx := context.Background()
	_, src := lab.Postgres(t)
	_, dst := lab.Postgres(t)
	pgExec(t, src,
		`CREATE SCHEMA appsmith`,
		`CREATE TABLE appsmith.workspace (id serial PRIMARY KEY, name text NOT NULL)`,
		`INSERT INTO appsmith.workspace (name) SELECT 'workspace ' || g FROM generate_series(1, 100) g`,
		`CREATE TABLE appsmith.app (id serial PRIMARY KEY, workspace int REFERENCES appsmith.workspace, name text NOT NULL, doc jsonb, created timestamptz DEFAULT now())`,
		`INSERT INTO appsmith.app (workspace, name, doc) SELECT 1 + g % 100, 'app ' || g, jsonb_build_object('n', g) FROM generate_series(1, 5000) g`,
		`CREATE INDEX app_name ON appsmith.app (name)`)
	target := nonSuperuserTarget(t, dst)

	e := &testEnv{t: t, repo: "file://" + t.TempDir()}
	id, err := e.snapshot(ctx, snapshotOptions{Postgres: src, PostgresParallel: 2})
	if err != nil {
		t.Fatalf("snapshot: %v\n%s", err, e.stderr.String())
	}

	// A damaged table object: the restore fails naming it (exit 3) and
	// removes what it created; once the object is repaired the same
	// command completes.
	object := filepath.Join(strings.TrimPrefix(e.repo, "file://"), "snapshots", id, "postgres", "data", "appsmith.app.copy.zst")
	good, err := os.ReadFile(object)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(good)
	bad[len(bad)/2] ^= 0x40
	if err := os.WriteFile(object, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	err = runRestore(ctx, e.global(), restoreOptions{PostgresTo: target, PostgresParallel: 2}, id)
	if exitCode(err) != 3 || !strings.Contains(err.Error(), "appsmith.app") {
		t.Fatalf("restore of a damaged table: exit %d, %v", exitCode(err), err)
	}
	t.Logf("error seen by the operator: %v", err)
	if got := pgQuery(t, target, `SELECT count(*) FROM pg_namespace WHERE nspname = 'appsmith'`); !slices.Equal(got, []string{"0"}) {
		t.Fatalf("the failed restore left the schema appsmith behind")
	}
	if err := os.WriteFile(object, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := runRestore(ctx, e.global(), restoreOptions{PostgresTo: target, PostgresParallel: 2}, id); err != nil {
		t.Fatalf("restore: %v\n%s", err, e.stderr.String())
	}
	if err := runVerify(ctx, e.global(), verifyOptions{AgainstPostgres: target}, id); err != nil {
		t.Fatalf("verify against the target: %v", err)
	}
	// The sequence continues past the restored rows.
	pgExec(t, target, `INSERT INTO appsmith.app (name) VALUES ('new')`)
	if err := runVerify(ctx, e.global(), verifyOptions{AgainstPostgres: target}, id); exitCode(err) != 3 {
		t.Fatalf("verify of a changed target: exit %d, %v", exitCode(err), err)
	}
	if err := runRestore(ctx, e.global(), restoreOptions{PostgresTo: target}, id); err == nil || !strings.Contains(err.Error(), "appsmith.app") {
		t.Fatalf("restore into a database with the tables: %v", err)
	}
	// One transaction (--postgres-parallel 1), replacing what is there.
	if err := runRestore(ctx, e.global(), restoreOptions{PostgresTo: target, PostgresParallel: 1, PostgresClean: true}, id); err != nil {
		t.Fatalf("restore with --postgres-parallel 1 --postgres-clean: %v", err)
	}
	if err := runVerify(ctx, e.global(), verifyOptions{AgainstPostgres: target}, id); err != nil {
		t.Fatalf("verify against the target: %v", err)
	}

	out := filepath.Join(t.TempDir(), "db.sql")
	if err := runExport(ctx, e.global(), exportOptions{Component: "postgres", Out: out}, id); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	if !bytes.Contains(b, []byte(`COPY "appsmith"."app" FROM stdin;`)) {
		t.Fatalf("export has no COPY block for appsmith.app")
	}
}

// TestPostgresMillionRows takes `pgbench -i -s 10 --foreign-keys` (a table
// of 1,000,000 rows) and a table with a sequence, restores them with four
// table loaders as a role that is not a superuser, and checks every row
// (verify: counts and digests), the indexes and constraints, and that the
// sequence continues past the restored maximum.
func TestPostgresMillionRows(t *testing.T) {
	ctx := context.Background()
	_, src := lab.Postgres(t)
	_, dst := lab.Postgres(t)
	start := time.Now()
	if out, err := exec.Command("/usr/lib/postgresql/15/bin/pgbench", "-i", "-q", "-s", "10", "--foreign-keys", src).CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	pgExec(t, src,
		`CREATE TABLE public.audit (id bigserial PRIMARY KEY, aid int REFERENCES pgbench_accounts, note text)`,
		`INSERT INTO public.audit (aid, note) SELECT 1 + g * 97 % 1000000, md5(g::text) FROM generate_series(1, 20000) g`)
	t.Logf("pgbench -i -s 10 in %v", time.Since(start).Round(time.Millisecond))
	target := nonSuperuserTarget(t, dst)
	schema := func(url string) []string {
		return pgQuery(t, url, `SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
			UNION ALL SELECT 'constraint ' || conrelid::regclass::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
				WHERE connamespace = 'public'::regnamespace
			ORDER BY 1`)
	}
	want := schema(src)

	e := &testEnv{t: t, repo: "file://" + t.TempDir()}
	start = time.Now()
	id, err := e.snapshot(ctx, snapshotOptions{Postgres: src, PostgresParallel: 4})
	if err != nil {
		t.Fatalf("snapshot: %v\n%s", err, e.stderr.String())
	}
	t.Logf("snapshot in %v", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := runRestore(ctx, e.global(), restoreOptions{PostgresTo: target, PostgresParallel: 4}, id); err != nil {
		t.Fatalf("restore: %v\n%s", err, e.stderr.String())
	}
	t.Logf("restore with 4 loaders in %v", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := runVerify(ctx, e.global(), verifyOptions{AgainstPostgres: target}, id); err != nil {
		t.Fatalf("verify against the target: %v", err)
	}
	t.Logf("verify in %v", time.Since(start).Round(time.Millisecond))
	if got := schema(target); !slices.Equal(got, want) {
		t.Errorf("indexes and constraints:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The sequence continues past the restored maximum.
	restored, _ := strconv.Atoi(pgQuery(t, target, `SELECT max(id) FROM public.audit`)[0])
	next, _ := strconv.Atoi(pgQuery(t, target, `INSERT INTO public.audit (aid, note) VALUES (1, 'new') RETURNING id`)[0])
	if restored != 20000 || next <= restored {
		t.Errorf("restored maximum %d, next id %d", restored, next)
	}
}
