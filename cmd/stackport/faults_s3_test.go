package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"gocloud.dev/blob"

	"github.com/stackport/stackport/internal/faultproxy"
	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/treetest"
)

// failedID is the snapshot ID a failed snapshot's error names.
var failedID = regexp.MustCompile(`snapshot (\d{8}T\d{6}Z-[0-9a-f]{6}) failed`)

// checkNoObjects checks that the bucket holds no object of snapshot id
// (read directly, not through the proxy).
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

// checkFailedSnapshotS3 checks a failed snapshot to S3: a clear error,
// nothing committed, and no object of it left in the bucket.
func checkFailedSnapshotS3(t *testing.T, ctx context.Context, e *testEnv, err error, before []string, direct string) {
	t.Helper()
	checkClearFailure(t, ctx, err, "volume", true)
	if !strings.Contains(err.Error(), "s3://stackport") {
		t.Errorf("the error does not name the repository")
	}
	checkNothingCommitted(t, e, before)
	m := failedID.FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("the error does not name the failed snapshot: %v", err)
	}
	checkNoObjects(t, direct, m[1])
}

// TestFaultS3 runs snapshots, verifies and restores of a volume against
// versitygw through the fault proxy.
func TestFaultS3(t *testing.T) {
	srv, direct := lab.S3(t)
	p := faultproxy.New(t, srv.Addr)
	e := &testEnv{t: t, repo: via(direct, srv, p)}
	base := e.mustSnapshot(treetest.Fixture(t, t.TempDir()))
	const mib = 12
	vol := bigTree(t, mib)
	const size = mib << 20
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
		t.Logf("12 MiB snapshot to S3 over 20ms latency and 24 MiB/s took %v", took)
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

	t.Run("snapshot with connections reset mid-upload", func(t *testing.T) {
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
			checkFailedSnapshotS3(t, ctx, e, err, before, direct)
			return
		}
		t.Logf("the upload survived %d reset connections (the SDK retried the part)", p.Stats().Resets-resets)
		if err := e.verify(nid); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(t.TempDir(), "restored")
		if err := e.restore(nid, dst, restoreOptions{}); err != nil {
			t.Fatal(err)
		}
		treetest.Compare(t, vol, dst, owners)
	})
	t.Run("snapshot with every connection reset", func(t *testing.T) {
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
		checkFailedSnapshotS3(t, ctx, e, err, before, direct)
	})

	// A volume restore reads the objects through the proxy; reset
	// mid-download it fails (or retries), leaves the target as it was,
	// and the same command completes afterwards.
	restoreCase := func(t *testing.T, fault func()) {
		t.Cleanup(p.Heal)
		target := t.TempDir()
		if err := os.WriteFile(filepath.Join(target, "keep.txt"), []byte("precious"), 0o644); err != nil {
			t.Fatal(err)
		}
		resets := p.Stats().Resets
		fault()
		ctx := faultCtx(t)
		err := e.restore(id, target, restoreOptions{Force: true})
		if p.Stats().Resets == resets {
			t.Fatal("the fault did not fire")
		}
		if err == nil {
			t.Logf("the restore survived %d reset connections", p.Stats().Resets-resets)
		} else {
			checkClearFailure(t, ctx, err, "volume", false)
			if !strings.Contains(err.Error(), "s3://stackport") {
				t.Errorf("the error does not name the repository")
			}
			if ents, _ := os.ReadDir(target); len(ents) != 1 || ents[0].Name() != "keep.txt" {
				t.Fatalf("the failed restore changed the target: %v", ents)
			}
			p.Heal()
			if err := e.restore(id, target, restoreOptions{Force: true}); err != nil {
				t.Fatalf("re-run of the failed restore: %v\n%s", err, e.stderr.String())
			}
		}
		treetest.Compare(t, vol, target, owners)
	}
	t.Run("restore with connections reset mid-download", func(t *testing.T) {
		restoreCase(t, func() { p.ResetAfter(size / 3) })
	})
	t.Run("restore with every connection reset", func(t *testing.T) {
		restoreCase(t, func() { p.ResetConnsAfter(1 << 20) })
	})

	// A verify cut off by the network must not call the snapshot corrupt
	// (exit 3): the data is fine, the link is not.
	t.Run("verify with connections reset", func(t *testing.T) {
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
