package mongo

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/streamtest"
)

// TestCreateAfterLateWrites: a restore with Drop whose target collection
// appears after the checks (as when inserts of an earlier restore, sent on
// a connection that was reset, still land on the server) drops it again and
// completes; without Drop the restore fails with NamespaceExists, naming
// the collection.
func TestCreateAfterLateWrites(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, srcURI := lab.Mongo(t)
	_, dstURI := lab.Mongo(t)
	src, dst := connectT(t, srcURI), connectT(t, dstURI)
	seedAppsmith(t, ctx, src.Database("appsmith"))
	want := readDB(t, ctx, src.Database("appsmith"))
	store := streamtest.New()
	if _, err := (&Dumper{URI: srcURI, DBs: []string{"appsmith"}, Log: quiet}).Dump(ctx, store); err != nil {
		t.Fatal(err)
	}
	// late recreates appsmith.newPage with a stray document, after the
	// restore checked the target and before it creates the collections.
	late := func(ctx context.Context) error {
		_, err := dst.Database("appsmith").Collection("newPage").InsertOne(ctx, bson.D{{Key: "_id", Value: "late"}})
		return err
	}

	_, err := (&Restorer{URI: dstURI, Log: quiet, Starting: late}).Restore(ctx, store.Reader())
	t.Logf("without Drop: %v", err)
	if err == nil || !strings.Contains(err.Error(), "appsmith.newPage") {
		t.Fatalf("without Drop: want an error naming appsmith.newPage, got %v", err)
	}
	if err := dst.Database("appsmith").Drop(ctx); err != nil {
		t.Fatal(err)
	}

	var log streamtest.LogBuffer
	if _, err := (&Restorer{URI: dstURI, Drop: true, Log: log.Logger(), Starting: late}).Restore(ctx, store.Reader()); err != nil {
		t.Fatalf("with Drop: %v", err)
	}
	if !strings.Contains(log.String(), "a collection that was dropped exists again") {
		t.Errorf("the restore did not meet the recreated collection:\n%s", log.String())
	}
	compareDBs(t, want, readDB(t, ctx, dst.Database("appsmith")))
}
