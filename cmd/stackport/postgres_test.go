package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

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

// TestPostgresThroughTheCLI restores into a database owned by a role that
// is not a superuser, as on Cloud SQL, and verifies against it.
func TestPostgresThroughTheCLI(t *testing.T) {
	ctx := context.Background()
	_, src := lab.Postgres(t)
	_, dst := lab.Postgres(t)
	pgExec(t, src,
		`CREATE SCHEMA appsmith`,
		`CREATE TABLE appsmith.app (id serial PRIMARY KEY, name text NOT NULL, doc jsonb, created timestamptz DEFAULT now())`,
		`INSERT INTO appsmith.app (name, doc) SELECT 'app ' || g, jsonb_build_object('n', g) FROM generate_series(1, 5000) g`,
		`CREATE INDEX app_name ON appsmith.app (name)`)
	pgExec(t, dst,
		`CREATE ROLE app LOGIN PASSWORD 'pw' NOSUPERUSER CREATEDB`,
		`CREATE DATABASE appdb OWNER app`)
	target := strings.Replace(strings.Replace(dst, "postgres@", "app:pw@", 1), "/postgres?", "/appdb?", 1)

	e := &testEnv{t: t, repo: "file://" + t.TempDir()}
	id, err := e.snapshot(ctx, snapshotOptions{Postgres: src, PostgresParallel: 2})
	if err != nil {
		t.Fatalf("snapshot: %v\n%s", err, e.stderr.String())
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

	out := filepath.Join(t.TempDir(), "db.sql")
	if err := runExport(ctx, e.global(), exportOptions{Component: "postgres", Out: out}, id); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	if !bytes.Contains(b, []byte(`COPY "appsmith"."app" FROM stdin;`)) {
		t.Fatalf("export has no COPY block for appsmith.app")
	}
}
