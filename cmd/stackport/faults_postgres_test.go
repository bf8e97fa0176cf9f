package main

import (
	"testing"

	"github.com/stackport/stackport/internal/lab"
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
		restoreOpts:  func(url string) restoreOptions { return restoreOptions{PostgresTo: url} },
		// No cleanup flag: the restore is one transaction, so a failed
		// one leaves nothing behind and the same command runs again.
		cleanup:    nil,
		verifyOpts: func(url string) verifyOptions { return verifyOptions{AgainstPostgres: url} },
		emptyTarget: func(t *testing.T) {
			pgExec(t, dstURL, `DROP SCHEMA IF EXISTS appsmith CASCADE`)
		},
	}
	runFaultSuite(t, h)
}
