package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"gocloud.dev/blob"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/treetest"
	"github.com/stackport/stackport/storage"
)

// TestPruneUploadsS3 leaves a multipart upload in a snapshot folder, as a
// run killed mid-upload does, and prunes: within --leftover-grace it is
// kept (and not listed), --dry-run lists it, after the grace it is aborted.
// An upload outside the repository's prefix is never touched.
func TestPruneUploadsS3(t *testing.T) {
	_, direct := lab.S3(t)
	repo := direct + "&prefix=app/"
	e := &testEnv{t: t, repo: repo}
	e.mustSnapshot(treetest.Fixture(t, t.TempDir()))

	b, err := blob.OpenBucket(context.Background(), direct)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var c *s3.Client
	if !b.As(&c) {
		t.Fatal("not S3")
	}
	bucket := "stackport"
	begin := func(key string) {
		t.Helper()
		if _, err := c.CreateMultipartUpload(context.Background(), &s3.CreateMultipartUploadInput{Bucket: &bucket, Key: &key}); err != nil {
			t.Fatal(err)
		}
	}
	const leftKey = "snapshots/20240101T000000Z-dead00/volume/volume.tar.zst"
	begin("app/" + leftKey)
	begin("other/" + leftKey) // another repository's
	count := func() int {
		t.Helper()
		out, err := c.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: &bucket})
		if err != nil {
			t.Fatal(err)
		}
		return len(out.Uploads)
	}

	prune := func(grace time.Duration, dryRun bool) map[string]string {
		t.Helper()
		g := e.global()
		g.JSON = true
		opts := pruneOptions{Policy: storage.Policy{Last: -1}, Grace: grace, DryRun: dryRun}
		if err := runPrune(context.Background(), g, opts); err != nil {
			t.Fatalf("prune: %v\n%s", err, e.stderr.String())
		}
		var entries []pruneEntry
		if err := json.Unmarshal(e.stdout.Bytes(), &entries); err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, x := range entries {
			if strings.Contains(x.ID, "/") {
				m[x.ID] = x.Action
				t.Logf("%s %s: %s", x.Action, x.ID, strings.Join(x.Reasons, ", "))
			}
		}
		return m
	}
	time.Sleep(1100 * time.Millisecond) // S3's Initiated has a resolution of a second
	if got := prune(24*time.Hour, false); len(got) != 0 || count() != 2 {
		t.Fatalf("within the grace: %v, %d uploads left, want them kept", got, count())
	}
	if got := prune(0, true); got[leftKey] != "would abort" || len(got) != 1 || count() != 2 {
		t.Fatalf("--dry-run: %v, %d uploads left", got, count())
	}
	if got := prune(0, false); got[leftKey] != "abort" || len(got) != 1 {
		t.Fatalf("after the grace: %v", got)
	}
	if n := count(); n != 1 {
		t.Fatalf("%d uploads left, want only the other repository's", n)
	}
	if got := prune(0, false); len(got) != 0 {
		t.Fatalf("a second prune: %v", got)
	}
}
