package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"gocloud.dev/blob"

	"github.com/stackport/stackport/internal/faultproxy"
	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/treetest"
)

// failedID is the snapshot ID a failed snapshot's error names.
var failedID = regexp.MustCompile(`snapshot (\d{8}T\d{6}Z-[0-9a-f]{6}) failed`)

// checkNoObjects checks that the bucket holds no object of snapshot id
// (read directly, not through the proxy; for GCS, whose emulator is
// reached through the proxy by every client, through the healed proxy).
func checkNoObjects(t *testing.T, bucketURL, id string) {
	t.Helper()
	b, err := blob.OpenBucket(context.Background(), bucketURL)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	it := b.List(&blob.ListOptions{Prefix: "snapshots/" + id + "/"})
	obj, err := it.Next(context.Background())
	if err == nil {
		t.Fatalf("the failed snapshot left %s behind", obj.Key)
	}
}

// checkNoUploads checks that an S3 bucket holds no multipart upload that
// was begun and neither completed nor aborted (its parts would be stored,
// and billed, out of sight). Other buckets pass.
func checkNoUploads(t *testing.T, bucketURL string) {
	t.Helper()
	b, err := blob.OpenBucket(context.Background(), bucketURL)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var c *s3.Client
	if !b.As(&c) {
		return
	}
	name := strings.TrimPrefix(strings.SplitN(bucketURL, "?", 2)[0], "s3://")
	out, err := c.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: &name})
	if err != nil {
		t.Fatalf("list multipart uploads: %v", err)
	}
	for _, u := range out.Uploads {
		t.Errorf("multipart upload of %s (begun %v) left behind", *u.Key, u.Initiated)
	}
}

// blobFaults describes a bucket server behind a fault proxy, for
// runBlobFaultSuite.
type blobFaults struct {
	p *faultproxy.Proxy
	// repo is the repository URL through the proxy; direct reaches the
	// server without it (for checks after a fault).
	repo, direct string
	// name is what errors call the repository (its URL's start).
	name string
	// mib is the size of the volume snapshotted under faults.
	mib int
	// skip names subtests to leave out, with the reason: the cases that
	// only wait for an SDK's retries to give up take 5–10 s each, so
	// each backend runs some of them.
	skip map[string]string
}

// run runs a subtest of the suite unless b.skip names it.
func (b *blobFaults) run(t *testing.T, name string, f func(t *testing.T)) {
	t.Run(name, func(t *testing.T) {
		if why, ok := b.skip[name]; ok {
			t.Skip(why)
		}
		f(t)
	})
}

// checkFailedSnapshotBlob checks a failed snapshot to a bucket: a clear
// error naming the repository, nothing committed, and no object of it left
// in the bucket. The proxy must be healed.
func checkFailedSnapshotBlob(t *testing.T, ctx context.Context, e *testEnv, err error, before []string, b *blobFaults) {
	t.Helper()
	checkClearFailure(t, ctx, err, "volume", true)
	if !strings.Contains(err.Error(), b.name) {
		t.Errorf("the error does not name the repository %s", b.name)
	}
	checkNothingCommitted(t, e, before)
	m := failedID.FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("the error does not name the failed snapshot: %v", err)
	}
	checkNoObjects(t, b.direct, m[1])
	checkNoUploads(t, b.direct)
}

// TestFaultS3 runs the bucket fault suite against versitygw.
func TestFaultS3(t *testing.T) {
	srv, direct := lab.S3(t)
	p := faultproxy.New(t, srv.Addr)
	runBlobFaultSuite(t, &blobFaults{p: p, repo: via(direct, srv, p), direct: direct, name: "s3://stackport", mib: 12,
		skip: map[string]string{"snapshot with connections refused": "the SDK retries for 5 s; tested on GCS and Azure"}})
}

// runBlobFaultSuite runs snapshots, verifies and restores of a volume
// against a bucket through the fault proxy: a slow link; connections reset
// once mid-upload (retried or a clean failure), reset after every MiB (a
// clean failure: no manifest, no objects left, earlier snapshots verify),
// refused; and for restores, connections reset mid-download, reset after
// every MiB and an outage of a second, which the resumed reads ride out
// (the restore completes and its checksums match), and an outage that
// does not end, after which the same command completes.
func runBlobFaultSuite(t *testing.T, b *blobFaults) {
	p := b.p
	e := &testEnv{t: t, repo: b.repo}
	base := e.mustSnapshot(treetest.Fixture(t, t.TempDir()))
	vol := bigTree(t, b.mib)
	size := int64(b.mib) << 20
	owners := treetest.Options{Owners: os.Geteuid() == 0, Root: true}
	var id string // a snapshot of vol, once taken

	t.Run("snapshot and restore over a slow link", func(t *testing.T) {
		t.Cleanup(p.Heal)
		p.SetLatency(20 * time.Millisecond)
		p.SetBandwidth(2 * size) // about half a second each way
		start := time.Now()
		before := p.Stats().Forwarded
		var err error
		id, err = e.snapshot(faultCtx(t), snapshotOptions{Volume: vol})
		if err != nil {
			t.Fatalf("snapshot: %v\n%s", err, e.stderr.String())
		}
		took := time.Since(start)
		t.Logf("%d MiB snapshot over 20ms latency and %d MiB/s took %v", b.mib, 2*b.mib, took)
		if fw := p.Stats().Forwarded - before; fw < size || took < 400*time.Millisecond {
			t.Fatalf("the upload did not go through the slow link: %d bytes in %v", fw, took)
		}
		if err := e.verify(id); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(t.TempDir(), "restored")
		start = time.Now()
		if err := e.restore(id, dst, restoreOptions{}); err != nil {
			t.Fatalf("restore: %v\n%s", err, e.stderr.String())
		}
		t.Logf("restore over the slow link took %v", time.Since(start))
		treetest.Compare(t, vol, dst, owners)
	})
	if id == "" {
		t.FailNow()
	}

	b.run(t, "snapshot with connections reset mid-upload", func(t *testing.T) {
		t.Cleanup(p.Heal)
		before := e.ids()
		resets := p.Stats().Resets
		p.ResetAfter(size / 3)
		ctx := faultCtx(t)
		nid, err := e.snapshot(ctx, snapshotOptions{Volume: vol})
		if p.Stats().Resets == resets {
			t.Fatal("the fault did not fire")
		}
		if err != nil {
			checkFailedSnapshotBlob(t, ctx, e, err, before, b)
			return
		}
		t.Logf("the upload survived %d reset connections (the SDK retried)", p.Stats().Resets-resets)
		if err := e.verify(nid); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(t.TempDir(), "restored")
		if err := e.restore(nid, dst, restoreOptions{}); err != nil {
			t.Fatal(err)
		}
		treetest.Compare(t, vol, dst, owners)
	})
	b.run(t, "snapshot with every connection reset", func(t *testing.T) {
		t.Cleanup(p.Heal)
		before := e.ids()
		p.ResetConnsAfter(1 << 20)
		start := time.Now()
		ctx := faultCtx(t)
		nid, err := e.snapshot(ctx, snapshotOptions{Volume: vol})
		t.Logf("failed after %v", time.Since(start).Round(time.Millisecond))
		if err == nil {
			t.Fatalf("snapshot %s succeeded through a link that resets every connection after 1 MiB", nid)
		}
		p.Heal() // for the checks, which go through the proxy
		checkFailedSnapshotBlob(t, ctx, e, err, before, b)
	})
	b.run(t, "snapshot with connections refused", func(t *testing.T) {
		t.Cleanup(p.Heal)
		before := e.ids()
		p.Refuse(true)
		p.ResetAll() // the HTTP clients' idle connections too
		start := time.Now()
		ctx := faultCtx(t)
		nid, err := e.snapshot(ctx, snapshotOptions{Volume: vol})
		t.Logf("failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
		if err == nil {
			t.Fatalf("snapshot %s succeeded with every connection refused", nid)
		}
		// The repository cannot be opened: a clear error, before any
		// snapshot was started.
		if code := exitCode(err); code != 1 || ctx.Err() != nil || !strings.Contains(err.Error(), "storage: repository "+b.name) {
			t.Fatalf("exit %d: %v", code, err)
		}
		p.Heal()
		checkNothingCommitted(t, e, before)
	})

	// A volume restore reads the objects through the proxy: a read cut
	// off is resumed where it was, so the restore completes, every
	// checksum matching.
	restoreTarget := func(t *testing.T) string {
		target := t.TempDir()
		if err := os.WriteFile(filepath.Join(target, "keep.txt"), []byte("precious"), 0o644); err != nil {
			t.Fatal(err)
		}
		return target
	}
	resumedRestore := func(t *testing.T, fault func()) {
		t.Cleanup(p.Heal)
		target := restoreTarget(t)
		resets := p.Stats().Resets
		fault()
		if err := runRestore(faultCtx(t), e.global(), restoreOptions{VolumeTo: target, Force: true}, id); err != nil {
			t.Fatalf("restore through resets: %v\n%s", err, e.stderr.String())
		}
		e.onProgress = nil
		if p.Stats().Resets == resets {
			t.Fatal("the fault did not fire")
		}
		t.Logf("the restore survived %d reset connections", p.Stats().Resets-resets)
		treetest.Compare(t, vol, target, owners)
	}
	b.run(t, "restore with connections reset mid-download", func(t *testing.T) {
		resumedRestore(t, func() { p.ResetAfter(size / 3) })
	})
	b.run(t, "restore with every connection reset", func(t *testing.T) {
		resumedRestore(t, func() { p.ResetConnsAfter(1 << 20) })
	})
	b.run(t, "restore through a one-second outage", func(t *testing.T) {
		t.Cleanup(func() { e.onProgress = nil })
		resumedRestore(t, func() {
			e.onProgress = interruptAt(size/3, func() {
				p.Refuse(true)
				p.ResetAll()
				time.AfterFunc(time.Second, func() { p.Refuse(false) })
			})
		})
	})
	// An outage that does not end: the restore gives up, leaves the
	// target as it was, and the same command completes afterwards.
	b.run(t, "restore through an outage", func(t *testing.T) {
		t.Cleanup(p.Heal)
		t.Cleanup(func() { e.onProgress = nil })
		target := restoreTarget(t)
		e.onProgress = interruptAt(size/3, func() { p.Refuse(true); p.ResetAll() })
		start := time.Now()
		ctx := faultCtx(t)
		err := runRestore(ctx, e.global(), restoreOptions{VolumeTo: target, Force: true}, id)
		e.onProgress = nil
		t.Logf("failed after %v", time.Since(start).Round(time.Millisecond))
		checkClearFailure(t, ctx, err, "volume", false)
		if !strings.Contains(err.Error(), b.name) {
			t.Errorf("the error does not name the repository")
		}
		if ents, _ := os.ReadDir(target); len(ents) != 1 || ents[0].Name() != "keep.txt" {
			t.Fatalf("the failed restore changed the target: %v", ents)
		}
		p.Heal()
		if err := e.restore(id, target, restoreOptions{Force: true}); err != nil {
			t.Fatalf("re-run of the failed restore: %v\n%s", err, e.stderr.String())
		}
		treetest.Compare(t, vol, target, owners)
	})

	// A verify cut off by the network resumes too; if it fails, it must
	// not call the snapshot corrupt (exit 3): the data is fine, the link
	// is not.
	b.run(t, "verify with connections reset", func(t *testing.T) {
		t.Cleanup(p.Heal)
		p.ResetConnsAfter(1 << 20)
		err := e.verify(id)
		t.Logf("verify: %v", err)
		if err != nil && exitCode(err) != 1 {
			t.Fatalf("a network failure during verify: exit %d (%v); want 1, not a verdict on the data", exitCode(err), err)
		}
		p.Heal()
		if err := e.verify(id); err != nil {
			t.Fatal(err)
		}
	})

	if err := e.verify(base); err != nil {
		t.Fatalf("the first snapshot after all faults: %v", err)
	}
}
