package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stackport/stackport/internal/faultproxy"
	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/snapshot"
)

// seedPostgresFaults creates the schema appsmith with two tables (a
// sequence, an index, a foreign key) holding about 3 MiB of rows and
// returns that size.
func seedPostgresFaults(t *testing.T, url string) int64 {
	t.Helper()
	pgExec(t, url,
		`CREATE SCHEMA appsmith`,
		`CREATE TABLE appsmith.workspace (id serial PRIMARY KEY, name text NOT NULL)`,
		`INSERT INTO appsmith.workspace (name) SELECT 'workspace ' || g FROM generate_series(1, 100) g`,
		`CREATE TABLE appsmith.app (id serial PRIMARY KEY, workspace int REFERENCES appsmith.workspace, name text NOT NULL, doc jsonb, created timestamptz DEFAULT now())`,
		// md5 text is incompressible enough and about 100 bytes a row.
		`INSERT INTO appsmith.app (workspace, name, doc) SELECT 1 + g % 100, md5(g::text) || md5((g*7)::text), jsonb_build_object('n', g, 'h', md5((g*3)::text)) FROM generate_series(1, 30000) g`,
		`CREATE INDEX app_name ON appsmith.app (name)`)
	return 30000 * 110
}

// TestFaultPostgres runs the fault suite with PostgreSQL 15 as source and
// target (pg_dump goes through the proxy too).
func TestFaultPostgres(t *testing.T) {
	src, srcURL := lab.Postgres(t)
	dst, dstURL := lab.Postgres(t)
	size := seedPostgresFaults(t, srcURL)
	h := &faultDB{
		kind: "postgres", src: src, dst: dst, srcURL: srcURL, dstURL: dstURL, rawSize: size,
		snapshotOpts: func(url string) snapshotOptions { return snapshotOptions{Postgres: url, PostgresParallel: 2} },
		// Two table loaders, as restore runs by default (with four).
		restoreOpts: func(url string) restoreOptions { return restoreOptions{PostgresTo: url, PostgresParallel: 2} },
		// No cleanup flag: a failed restore removes what it created
		// (the README says so), so the same command runs again.
		cleanup:    nil,
		verifyOpts: func(url string) verifyOptions { return verifyOptions{AgainstPostgres: url} },
		emptyTarget: func(t *testing.T) {
			pgExec(t, dstURL, `DROP SCHEMA IF EXISTS appsmith CASCADE`)
		},
	}
	runFaultSuite(t, h)
}

// TestFaultPostgresCleanupFails cuts the target off (every connection
// reset, new ones refused) a third into a restore with table loaders, after
// pre-data was committed: the restore cannot remove what it created and
// says that the target holds a partial restore, which --postgres-clean
// replaces. The same command is then refused (the target has the tables);
// with --postgres-clean it completes.
func TestFaultPostgresCleanupFails(t *testing.T) {
	_, srcURL := lab.Postgres(t)
	dst, dstURL := lab.Postgres(t)
	size := seedPostgresFaults(t, srcURL)
	e := &testEnv{t: t, repo: "file://" + t.TempDir()}
	id, err := e.snapshot(context.Background(), snapshotOptions{Postgres: srcURL, PostgresParallel: 2})
	if err != nil {
		t.Fatalf("snapshot: %v\n%s", err, e.stderr.String())
	}
	p := faultproxy.New(t, dst.Addr)
	opts := restoreOptions{PostgresTo: via(dstURL, dst, p), PostgresParallel: 2}
	e.onProgress = interruptAt(size/3, func() {
		p.Refuse(true)
		p.ResetAll()
	})
	ctx := faultCtx(t)
	err = runRestore(ctx, e.global(), opts, id)
	e.onProgress = nil
	checkClearFailure(t, ctx, err, "postgres", false)
	if msg := err.Error(); !strings.Contains(msg, "partial restore") || !strings.Contains(msg, "--postgres-clean") {
		t.Fatalf("the error does not say that the target holds a partial restore that --postgres-clean replaces")
	}
	p.Heal()
	err = runRestore(faultCtx(t), e.global(), opts, id)
	if !errors.Is(err, snapshot.ErrTargetNotEmpty) || !strings.Contains(err.Error(), "appsmith.") {
		t.Fatalf("the same command on the partial restore: %v", err)
	}
	opts.PostgresClean = true
	if err := runRestore(faultCtx(t), e.global(), opts, id); err != nil {
		t.Fatalf("restore with --postgres-clean: %v\n%s", err, e.stderr.String())
	}
	if err := runVerify(context.Background(), e.global(), verifyOptions{AgainstPostgres: dstURL}, id); err != nil {
		t.Fatalf("verify --against the target: %v", err)
	}
}
