package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/stackport/stackport/internal/faultproxy"
	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/treetest"
)

// TestFaultMigrate runs migrate (a volume and a FerretDB, with a snapshot
// kept in a repository) with the connections to the MongoDB target, then
// to the MongoDB source, reset once a third into the move: the migration
// fails with a clear error naming the component and commits no snapshot,
// and the same command run again (the link healed, the target settled)
// resumes and ends verified.
func TestFaultMigrate(t *testing.T) {
	src, srcURL := lab.Mongo(t)
	dst, dstURL := lab.Mongo(t)
	size := seedMongoSmall(t, srcURL)
	target := lab.MongoClient(t, dstURL)

	for _, c := range []struct {
		name     string
		server   *lab.Server // the one behind the proxy
		target   string      // the database the run moves appsmith into
		parallel int         // --mongo-parallel
	}{
		{"target connections reset", dst, "appsmith_t", 2},
		{"source connections reset", src, "appsmith_s", 1},
		// With two collections dumped at once, the dump of the second
		// waits for the restorer while the first fails: the failed
		// stream must be aborted at once, not when Dump returns (which
		// waits for the second), or migrate hangs.
		{"source connections reset, parallel dumps", src, "appsmith_p", 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := faultproxy.New(t, c.server.Addr)
			from, to := srcURL, dstURL
			if c.server == src {
				from = via(srcURL, src, p)
			} else {
				to = via(dstURL, dst, p)
			}
			vol := treetest.Fixture(t, t.TempDir())
			e := &testEnv{t: t, repo: "file://" + t.TempDir()}
			opts := migrateOptions{
				Source: snapshotOptions{Volume: vol, Mongo: from, MongoParallel: c.parallel},
				Target: restoreOptions{VolumeTo: filepath.Join(t.TempDir(), "stacks"), MongoTo: to,
					MongoNSFrom: "appsmith", MongoNSTo: c.target, MongoParallel: c.parallel},
			}

			p.ResetAfter(size / 3)
			ctx := faultCtx(t)
			res, err := e.migrateJSON(ctx, opts)
			if p.Stats().Resets == 0 {
				t.Fatalf("the fault did not fire (%+v)", p.Stats())
			}
			if err == nil {
				// A driver that retried its way through is fine too,
				// if the result verified.
				t.Logf("the migration survived %d reset connections", p.Stats().Resets)
			} else {
				checkClearFailure(t, ctx, err, "mongo", false)
				if res.OK || res.Snapshot != "" {
					t.Fatalf("failed run: %+v", res)
				}
				checkNothingCommitted(t, e, nil)

				p.Heal()
				settleMongo(t, target)
				res, err = e.migrateJSON(faultCtx(t), opts)
				if err != nil {
					t.Fatalf("re-run: %v\n%s", err, e.stderr.String())
				}
				if !res.Resumed {
					t.Errorf("the re-run did not resume: %+v", res)
				}
			}
			if !res.OK || res.Snapshot == "" || len(res.Components) != 2 {
				t.Fatalf("result: %+v", res)
			}
			for _, comp := range res.Components {
				if comp.Result != "verified" {
					t.Errorf("%s: %s (%s)", comp.Kind, comp.Result, comp.Error)
				}
			}
			t.Logf("mongo: %d documents moved, skipped %v, notes %q", comp(res, "mongo").Restored["documents"], comp(res, "mongo").Skipped, comp(res, "mongo").Resume)
			// The target holds the source (counts and digests), and so
			// does the run's snapshot.
			if err := runVerify(context.Background(), e.global(),
				verifyOptions{AgainstMongo: dstURL, MongoNSFrom: "appsmith", MongoNSTo: c.target}, res.Snapshot); err != nil {
				t.Fatalf("the target against the run's snapshot: %v\n%s", err, e.stderr.String())
			}
			if err := runVerify(context.Background(), e.global(), verifyOptions{AgainstMongo: srcURL}, res.Snapshot); err != nil {
				t.Fatalf("the source against the run's snapshot: %v", err)
			}
		})
	}
}

// comp returns the component of a migrate result by kind.
func comp(res migrateResult, kind string) migrateComponent {
	for _, c := range res.Components {
		if c.Kind == kind {
			return c
		}
	}
	return migrateComponent{}
}

// seedMongoSmall writes 3 collections of 1,000 documents of about 330
// bytes into the appsmith database and returns the bytes of BSON written.
func seedMongoSmall(t *testing.T, uri string) int64 {
	t.Helper()
	db := lab.MongoClient(t, uri).Database("appsmith")
	body := strings.Repeat("appsmith ", 32)
	var total int64
	for _, coll := range []string{"newPage", "newAction", "user"} {
		var docs []any
		for i := range 1000 {
			d := bson.D{{Key: "_id", Value: bson.NewObjectID()}, {Key: "n", Value: int32(i)}, {Key: "body", Value: body}}
			raw, _ := bson.Marshal(d)
			total += int64(len(raw))
			docs = append(docs, d)
		}
		if _, err := db.Collection(coll).InsertMany(context.Background(), docs); err != nil {
			t.Fatal(err)
		}
	}
	return total
}
