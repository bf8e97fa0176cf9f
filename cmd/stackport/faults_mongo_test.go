package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/stackport/stackport/internal/lab"
)

// seedMongoFaults writes about 3 MiB into three collections of the
// appsmith database (with an index) and returns the bytes of BSON written.
func seedMongoFaults(t *testing.T, uri string) int64 {
	t.Helper()
	ctx := context.Background()
	db := lab.MongoClient(t, uri).Database("appsmith")
	rng := rand.New(rand.NewPCG(5, 6))
	var total int64
	for ci, coll := range []string{"newPage", "newAction", "user"} {
		var docs []any
		for i := range 3000 {
			body := make([]byte, 300)
			for j := range body {
				body[j] = 'a' + byte(rng.IntN(26))
			}
			d := bson.D{{Key: "_id", Value: bson.NewObjectID()}, {Key: "n", Value: int32(i)},
				{Key: "name", Value: string(body)}, {Key: "layout", Value: bson.D{{Key: "w", Value: 1.5 * float64(ci)}, {Key: "tags", Value: bson.A{"a", int64(i)}}}}}
			raw, _ := bson.Marshal(d)
			total += int64(len(raw))
			docs = append(docs, d)
		}
		if _, err := db.Collection(coll).InsertMany(ctx, docs); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Collection("user").Indexes().CreateOne(ctx, mongoIndex("n")); err != nil {
		t.Fatal(err)
	}
	return total
}

// TestFaultMongo runs the fault suite with FerretDB as source and target.
func TestFaultMongo(t *testing.T) {
	src, srcURL := lab.Mongo(t)
	dst, dstURL := lab.Mongo(t)
	size := seedMongoFaults(t, srcURL)
	target := lab.MongoClient(t, dstURL)
	h := &faultDB{
		kind: "mongo", src: src, dst: dst, srcURL: srcURL, dstURL: dstURL, rawSize: size,
		snapshotOpts: func(url string) snapshotOptions { return snapshotOptions{Mongo: url, MongoParallel: 2} },
		restoreOpts:  func(url string) restoreOptions { return restoreOptions{MongoTo: url, MongoParallel: 2} },
		cleanup:      func(o *restoreOptions) { o.Drop = true },
		verifyOpts:   func(url string) verifyOptions { return verifyOptions{AgainstMongo: url} },
		// The inserts of a connection that was reset still complete on
		// the server (FerretDB commits each one in SQLite even when the
		// client is gone), so a re-run waits until the target is quiet,
		// as an operator re-running minutes later would find it.
		settle: func(t *testing.T) { settleMongo(t, target) },
		failFast: func(url string) string {
			// The driver waits 30 s (serverSelectionTimeoutMS) for an
			// unreachable server by default.
			if strings.Contains(url, "?") {
				return url + "&serverSelectionTimeoutMS=2000"
			}
			return url + "?serverSelectionTimeoutMS=2000"
		},
		emptyTarget: func(t *testing.T) {
			settleMongo(t, target)
			if err := target.Database("appsmith").Drop(context.Background()); err != nil {
				t.Fatal(err)
			}
			names, err := target.ListDatabaseNames(context.Background(), bson.D{})
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(strings.Join(names, ","), "appsmith") {
				t.Fatalf("target still holds %v", names)
			}
		},
	}
	runFaultSuite(t, h)
}

// settleMongo waits until the documents and collections of the target's
// appsmith database stop changing (the same for 600 ms).
func settleMongo(t *testing.T, c *mongo.Client) {
	t.Helper()
	ctx := context.Background()
	state := func() string {
		db := c.Database("appsmith")
		names, err := db.ListCollectionNames(ctx, bson.D{})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(names)
		out := ""
		for _, n := range names {
			k, err := db.Collection(n).CountDocuments(ctx, bson.D{})
			if err != nil {
				t.Fatal(err)
			}
			out += fmt.Sprintf("%s:%d ", n, k)
		}
		return out
	}
	last, stable := state(), 0
	deadline := time.Now().Add(20 * time.Second)
	for stable < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the target keeps changing: %s", last)
		}
		time.Sleep(200 * time.Millisecond)
		now := state()
		if now == last {
			stable++
		} else {
			t.Logf("target still changing after the failed restore: %s -> %s", last, now)
			stable = 0
		}
		last = now
	}
}

func mongoIndex(key string) mongo.IndexModel {
	return mongo.IndexModel{Keys: bson.D{{Key: key, Value: 1}}, Options: options.Index().SetName(key + "_1")}
}
