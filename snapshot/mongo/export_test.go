package mongo

import (
	"bytes"
	"context"
	"errors"
	"github.com/stackport/stackport/internal/streamtest"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/stackport/stackport/snapshot"
)

func TestExport(t *testing.T) {
	ctx := context.Background()
	docs := everyType(t)
	users := plainCollection("appsmith", "user")
	odd := plainCollection("appsmith", "odd/name")
	view := &collection{ns: namespace{"appsmith", "activeUsers"}, meta: &metadata{
		Options:        marshal(t, bson.D{{Key: "viewOn", Value: "user"}, {Key: "pipeline", Value: bson.A{bson.D{{Key: "$match", Value: bson.D{{Key: "active", Value: true}}}}}}}),
		CollectionName: "activeUsers", Type: typeView,
	}}
	oplog := []bson.Raw{entry(t, 2, "i", "appsmith.user", bson.D{{Key: "_id", Value: int32(99)}})}
	store := streamtest.New()
	writeSnapshot(t, store, []*collection{view, odd, users}, map[namespace][]bson.Raw{users.ns: docs, odd.ns: docs[:1]}, oplog)

	base := t.TempDir()
	dir := filepath.Join(base, "dump")
	stats, err := Export(ctx, store.Reader(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if stats["documents"] != int64(len(docs)+1) || stats["views"] != 1 || stats["oplog_entries"] != 1 {
		t.Errorf("stats %v", stats)
	}
	// mongorestore's layout: <db>/<escaped coll>.{bson,metadata.json}, oplog.bson.
	var files []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			files = append(files, rel)
		}
		return nil
	})
	want := []string{"appsmith/activeUsers.metadata.json", "appsmith/odd%2Fname.bson", "appsmith/odd%2Fname.metadata.json",
		"appsmith/user.bson", "appsmith/user.metadata.json", "oplog.bson"}
	if !slices.Equal(files, want) {
		t.Errorf("files %v, want %v", files, want)
	}
	for _, name := range want {
		got, err := os.ReadFile(filepath.Join(dir, name))
		stream, _ := store.Bytes(name)
		if err != nil || !bytes.Equal(got, stream) {
			t.Errorf("%s differs from its stream (%v)", name, err)
		}
	}
	if entries, _ := os.ReadDir(base); len(entries) != 1 {
		t.Errorf("%s holds %v", base, entries)
	}

	// A non-empty directory is refused; a damaged snapshot leaves nothing.
	if _, err := Export(ctx, store.Reader(), dir); !errors.Is(err, snapshot.ErrTargetNotEmpty) {
		t.Errorf("export into a non-empty directory: %v", err)
	}
	bad := store.Reader()
	for i := range bad.Streams {
		if bad.Streams[i].Name == "appsmith/user.bson" {
			bad.Streams[i].Data = bad.Streams[i].Data[:100]
		}
	}
	other := filepath.Join(base, "bad")
	if _, err := Export(ctx, bad, other); !errors.Is(err, snapshot.ErrCorrupt) {
		t.Errorf("export of a damaged snapshot: %v", err)
	}
	if entries, _ := os.ReadDir(base); len(entries) != 1 {
		t.Errorf("after a failed export, %s holds %v", base, entries)
	}
}
