package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/treetest"
)

// rawByID returns every document of a collection as raw BSON, by _id.
func rawByID(t *testing.T, coll *mongo.Collection) map[string][]byte {
	t.Helper()
	cur, err := coll.Find(context.Background(), bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close(context.Background())
	out := map[string][]byte{}
	for cur.Next(context.Background()) {
		out[cur.Current.Lookup("_id").String()] = bytes.Clone(cur.Current)
	}
	if err := cur.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestVolumeAndMongo snapshots a volume and a MongoDB in one run, then
// restores both, the database under a new name, and exports the dump.
func TestVolumeAndMongo(t *testing.T) {
	_, src := lab.Mongo(t)
	_, dst := lab.Mongo(t)
	ctx := context.Background()
	source := lab.MongoClient(t, src)
	var docs []any
	for i := range 500 {
		docs = append(docs, bson.D{{Key: "_id", Value: bson.NewObjectID()}, {Key: "n", Value: int32(i)},
			{Key: "name", Value: "page"}, {Key: "layout", Value: bson.D{{Key: "w", Value: 1.5}, {Key: "tags", Value: bson.A{"a", int64(2)}}}}})
	}
	for _, coll := range []string{"newPage", "newAction", "user"} {
		if _, err := source.Database("appsmith").Collection(coll).InsertMany(ctx, docs); err != nil {
			t.Fatal(err)
		}
	}
	vol := treetest.Fixture(t, t.TempDir())
	e := &testEnv{t: t, repo: "file://" + t.TempDir()}
	id, err := e.snapshot(ctx, snapshotOptions{Volume: vol, Mongo: src, MongoParallel: 2})
	if err != nil {
		t.Fatalf("snapshot: %v\n%s", err, e.stderr.String())
	}
	if err := e.verify(id); err != nil {
		t.Fatal(err)
	}

	dstDir := filepath.Join(t.TempDir(), "vol")
	err = e.restore(id, dstDir, restoreOptions{MongoTo: dst, MongoNSFrom: "appsmith", MongoNSTo: "appsmith_prod", MongoParallel: 2})
	if err != nil {
		t.Fatalf("restore: %v\n%s", err, e.stderr.String())
	}
	treetest.Compare(t, vol, dstDir, treetest.Options{Owners: os.Geteuid() == 0, Root: true})
	target := lab.MongoClient(t, dst)
	for _, coll := range []string{"newPage", "newAction", "user"} {
		want := rawByID(t, source.Database("appsmith").Collection(coll))
		got := rawByID(t, target.Database("appsmith_prod").Collection(coll))
		if len(got) != len(want) {
			t.Fatalf("%s: %d documents, want %d", coll, len(got), len(want))
		}
		for k, w := range want {
			if !bytes.Equal(got[k], w) {
				t.Fatalf("%s: document %s differs", coll, k)
			}
		}
	}
	verifyAgainst := verifyOptions{AgainstMongo: dst, MongoNSFrom: "appsmith", MongoNSTo: "appsmith_prod"}
	if err := runVerify(ctx, e.global(), verifyAgainst, id); err != nil {
		t.Fatalf("verify against the target: %v", err)
	}
	if _, err := target.Database("appsmith_prod").Collection("user").UpdateOne(ctx, bson.D{}, bson.D{{Key: "$set", Value: bson.D{{Key: "name", Value: "tampered"}}}}); err != nil {
		t.Fatal(err)
	}
	if err := runVerify(ctx, e.global(), verifyAgainst, id); exitCode(err) != 3 || !strings.Contains(err.Error(), "appsmith_prod.user") {
		t.Fatalf("verify of a changed target: exit %d, %v", exitCode(err), err)
	}
	// A second restore into the same databases is refused, naming a
	// collection, unless --drop.
	if err := runRestore(ctx, e.global(), restoreOptions{MongoTo: dst, MongoNSFrom: "appsmith", MongoNSTo: "appsmith_prod"}, id); err == nil {
		t.Fatal("restore over existing collections succeeded")
	}
	if err := runRestore(ctx, e.global(), restoreOptions{MongoTo: dst, MongoNSFrom: "appsmith", MongoNSTo: "appsmith_prod", Drop: true}, id); err != nil {
		t.Fatalf("restore --drop: %v", err)
	}

	out := filepath.Join(t.TempDir(), "dump")
	if err := runExport(ctx, e.global(), exportOptions{Component: "mongo", Out: out}, id); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"appsmith/newPage.bson", "appsmith/newPage.metadata.json"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("export lacks %s: %v", f, err)
		}
	}
}
