package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stackport/stackport/internal/faultproxy"
	"github.com/stackport/stackport/internal/lab"
)

// The migrate fault tests of Redis and PostgreSQL, after TestFaultMigrate
// (MongoDB): the connections to the source, then (separately) to the
// target, are reset once a third into the move; the run either verifies
// or fails with a clear error naming the component and commits no
// snapshot; the same command, run again on the healed link, resumes and
// ends verified, with the target matching the source and the run's
// snapshot. Redis rides out both resets, so it also has its source cut
// off (see migrateFault.cut), which fails the run and exercises the resume.

// migrateFault is one run of a fault case.
type migrateFault struct {
	kind string
	p    *faultproxy.Proxy
	size int64 // about the bytes the move forwards through p
	e    *testEnv
	opts migrateOptions
	// cut: half way through the move (by the bytes the dumper has
	// handed to the restorer) every connection is reset and new ones are
	// refused until the link is healed, so that retries on new
	// connections fail too and the run must fail. Else the connections
	// open once size/3 bytes went through p are reset, once.
	cut   bool
	after func(t *testing.T) // after a failed first run, before the re-run
	// resumed checks the re-run's component after a failed first run.
	resumed func(t *testing.T, c migrateComponent)
}

// run runs the migration with the fault armed, then (after a failure) the
// same command on the healed link, and returns the result that verified.
func (f *migrateFault) run(t *testing.T) migrateResult {
	t.Helper()
	if f.cut {
		f.e.onProgress = interruptAt(f.size/2, func() {
			f.p.Refuse(true)
			f.p.ResetAll()
		})
	} else {
		f.p.ResetAfter(f.size / 3)
	}
	ctx := faultCtx(t)
	res, err := f.e.migrateJSON(ctx, f.opts)
	f.e.onProgress = nil
	if f.p.Stats().Resets == 0 {
		t.Fatalf("the fault did not fire (%+v)", f.p.Stats())
	}
	if err == nil && f.cut {
		t.Fatalf("the migration succeeded through a link that refused every connection from the fault point on: %+v", res)
	}
	if err == nil {
		t.Logf("the migration survived %d reset connections", f.p.Stats().Resets)
	} else {
		checkClearFailure(t, ctx, err, f.kind, false)
		if res.OK || res.Snapshot != "" || res.Resumed {
			t.Fatalf("failed run: %+v", res)
		}
		if c := comp(res, f.kind); c.Result != "failed" {
			t.Errorf("failed run: %s: %s, want failed", f.kind, c.Result)
		}
		checkNothingCommitted(t, f.e, nil)

		f.p.Heal()
		if f.after != nil {
			f.after(t)
		}
		res, err = f.e.migrateJSON(faultCtx(t), f.opts)
		if err != nil {
			t.Fatalf("re-run: %v\n%s", err, f.e.stderr.String())
		}
		if !res.Resumed {
			t.Errorf("the re-run did not resume: %+v", res)
		}
		f.resumed(t, comp(res, f.kind))
	}
	if !res.OK || res.Snapshot == "" || len(res.Components) != 1 {
		t.Fatalf("result: %+v", res)
	}
	c := comp(res, f.kind)
	if c.Result != "verified" {
		t.Fatalf("%s: %s (%s)", c.Kind, c.Result, c.Error)
	}
	t.Logf("%s: %d items moved (restored %v), skipped %v, notes %q", f.kind, c.Items, c.Restored, c.Skipped, c.Resume)
	checkNothingCommitted(t, f.e, []string{res.Snapshot})
	return res
}

// TestFaultMigrateRedis migrates a Redis of two databases (about 3 MiB)
// into a Memorystore-like Redis with the connections to the target, then to
// the source, reset a third into the move: both the restorer (by design,
// per batch) and the dumper (the client's retries, on a server whose
// run_id did not change) carry on over new connections, so those runs may
// verify at once. A source cut off half way through the move (reset, and
// new connections refused) fails the run after the target received part
// of database 0; the re-run writes that database again, its keys replacing
// those the failed run wrote (RESTORE without REPLACE would refuse them),
// and nothing is duplicated or left over. (A target
// cut off is left out: the restorer retries it for about 16 s before it
// gives up, too long for this test; TestFaultRedis covers a target outage
// that ends.)
func TestFaultMigrateRedis(t *testing.T) {
	src, srcURL := lab.Redis(t)
	size := seedRedisFaults(t, srcURL)
	for _, c := range []struct {
		name   string
		target bool // the target behind the proxy, else the source
		cut    bool // see migrateFault.cut
	}{
		{"target connections reset", true, false},
		{"source connections reset", false, false},
		{"source cut off", false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			dst, dstURL := lab.Redis(t, lab.Memorystore()...)
			from, to := srcURL, dstURL
			var p *faultproxy.Proxy
			if c.target {
				p = faultproxy.New(t, dst.Addr)
				to = via(dstURL, dst, p)
			} else {
				p = faultproxy.New(t, src.Addr)
				from = via(srcURL, src, p)
			}
			e := &testEnv{t: t, repo: "file://" + t.TempDir()}
			var partial int64 // keys of database 0 in the target after a failed run
			f := &migrateFault{kind: "redis", p: p, size: size, e: e, cut: c.cut,
				opts: migrateOptions{Source: snapshotOptions{Redis: from}, Target: restoreOptions{RedisTo: to}},
				after: func(t *testing.T) {
					partial = redisDBSize(t, dstURL, 0)
					t.Logf("after the failed run the target's database 0 holds %d keys, database 1 %d", partial, redisDBSize(t, dstURL, 1))
					// The pipe buffers nothing and the restorer writes
					// each batch of 1,000 keys before it reads on: half
					// the bytes (about 1,500 keys) in, the first batch
					// is in the target.
					if c.cut && (partial < 1000 || partial >= 2503) {
						t.Errorf("after the cut the target's database 0 holds %d keys, want at least the first batch of 1000 and not all", partial)
					}
				},
				resumed: func(t *testing.T, c migrateComponent) {
					// The fault fired in database 0 (2,500 of the
					// 3,000 values): nothing was finished, database 0
					// is written again over what the failed run wrote.
					if len(c.Skipped) != 0 {
						t.Errorf("the re-run skipped %v", c.Skipped)
					}
					want := fmt.Sprintf("database 0: partly written by the interrupted run (the target's database 0 holds %d keys): written again, its keys replacing those the run wrote", partial)
					if !strings.Contains(strings.Join(c.Resume, "\n"), want) {
						t.Errorf("the re-run's notes lack %q: %q", want, c.Resume)
					}
				},
			}
			res := f.run(t)
			if n := comp(res, "redis").Items; n != 3006 {
				t.Errorf("redis: %d keys moved, want 3006", n)
			}
			// The target and the source against the run's snapshot: key
			// by key (type, value, expiry) and key counts per database.
			if err := runVerify(context.Background(), e.global(), verifyOptions{AgainstRedis: dstURL}, res.Snapshot); err != nil {
				t.Fatalf("the target against the run's snapshot: %v\n%s", err, e.stderr.String())
			}
			if err := runVerify(context.Background(), e.global(), verifyOptions{AgainstRedis: srcURL}, res.Snapshot); err != nil {
				t.Fatalf("the source against the run's snapshot: %v", err)
			}
			for db, want := range []int64{2503, 503} {
				if got := redisDBSize(t, dstURL, db); got != want {
					t.Errorf("target database %d holds %d keys, want %d", db, got, want)
				}
			}
		})
	}
}

// redisDBSize returns the number of keys of database db at url.
func redisDBSize(t *testing.T, url string, db int) int64 {
	t.Helper()
	opt, err := goredis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opt.DB = db
	c := goredis.NewClient(opt)
	defer c.Close()
	n, err := c.DBSize(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestFaultMigratePostgres migrates a PostgreSQL schema (two tables, about
// 3 MiB of rows) into a database of its own per case, with the connections
// to the target, then to the source, reset a third into the move. migrate
// restores in one transaction: a failed run leaves the target database
// without a table, and the re-run, which finds nothing of the earlier run
// in the target, moves the whole database again.
func TestFaultMigratePostgres(t *testing.T) {
	src, srcURL := lab.Postgres(t)
	dst, dstURL := lab.Postgres(t)
	size := seedPostgresFaults(t, srcURL)
	for _, c := range []struct {
		name   string
		target bool // the target behind the proxy, else the source
		db     string
	}{
		{"target connections reset", true, "appsmith_t"},
		{"source connections reset", false, "appsmith_s"},
	} {
		t.Run(c.name, func(t *testing.T) {
			pgExec(t, dstURL, "CREATE DATABASE "+c.db)
			target := strings.Replace(dstURL, "/postgres?", "/"+c.db+"?", 1)
			from, to := srcURL, target
			var p *faultproxy.Proxy
			if c.target {
				p = faultproxy.New(t, dst.Addr)
				to = via(target, dst, p)
			} else {
				p = faultproxy.New(t, src.Addr)
				from = via(srcURL, src, p)
			}
			e := &testEnv{t: t, repo: "file://" + t.TempDir()}
			f := &migrateFault{kind: "postgres", p: p, size: size, e: e,
				opts: migrateOptions{Source: snapshotOptions{Postgres: from, PostgresParallel: 2}, Target: restoreOptions{PostgresTo: to}},
				after: func(t *testing.T) {
					// One transaction: once the failed run's session
					// has ended, the target is as it was.
					settlePostgres(t, dstURL, c.db)
					if tables := pgQuery(t, target, `SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')`); len(tables) != 0 {
						t.Errorf("the failed run left tables in the target: %v", tables)
					}
				},
				resumed: func(t *testing.T, c migrateComponent) {
					if len(c.Skipped) != 0 || len(c.Resume) != 0 {
						t.Errorf("the re-run skipped %v (notes %q); the target held nothing of the failed run", c.Skipped, c.Resume)
					}
				},
			}
			res := f.run(t)
			if n := comp(res, "postgres").Items; n != 30100 {
				t.Errorf("postgres: %d rows moved, want 30100", n)
			}
			// The target and the source against the run's snapshot:
			// row counts and row digests of every table.
			if err := runVerify(context.Background(), e.global(), verifyOptions{AgainstPostgres: target}, res.Snapshot); err != nil {
				t.Fatalf("the target against the run's snapshot: %v\n%s", err, e.stderr.String())
			}
			if err := runVerify(context.Background(), e.global(), verifyOptions{AgainstPostgres: srcURL}, res.Snapshot); err != nil {
				t.Fatalf("the source against the run's snapshot: %v", err)
			}
			// The sequences go on where the source's are.
			if got := pgQuery(t, target, `SELECT last_value FROM appsmith.app_id_seq`); len(got) != 1 || got[0] != "30000" {
				t.Errorf("target appsmith.app_id_seq: %v, want 30000", got)
			}
		})
	}
}

// settlePostgres waits until no session but this one is connected to the
// database db of the server at url (the failed run's ended and its
// transaction rolled back).
func settlePostgres(t *testing.T, url, db string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n := pgQuery(t, url, fmt.Sprintf(`SELECT count(*) FROM pg_stat_activity WHERE datname = '%s' AND pid <> pg_backend_pid()`, db))
		if len(n) == 1 && n[0] == "0" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sessions of the failed run still connected to %s: %v", db, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
