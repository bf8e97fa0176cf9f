package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackport/stackport/internal/faultproxy"
	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/treetest"
	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/storage"
)

// stallIdle is the storage idle timeout in the stall tests.
const stallIdle = 2 * time.Second

// stallMax bounds how long a command may take to fail once its link
// stalled: the SDK tries a request 3 times, each waiting stallIdle, and
// a failed snapshot then tries to remove what it wrote.
const stallMax = 40 * time.Second

// TestStallS3 stalls every connection to versitygw (open, no byte
// forwarded) in the middle of an upload and of a download: the command
// fails with a clear error naming the stall instead of hanging, and the
// next run, the link healed, works.
func TestStallS3(t *testing.T) {
	t.Cleanup(storage.SetIdleTimeout(stallIdle))
	srv, direct := lab.S3(t)
	p := faultproxy.New(t, srv.Addr)
	e := &testEnv{t: t, repo: via(direct, srv, p)}
	const mib = 12
	vol := bigTree(t, mib)
	size := int64(mib) << 20
	checkStall := func(t *testing.T, ctx context.Context, err error, took time.Duration, snapshot bool) {
		t.Helper()
		t.Logf("failed after %v", took.Round(time.Millisecond))
		checkClearFailure(t, ctx, err, "volume", snapshot)
		if !strings.Contains(err.Error(), "no data for 2s: the connection stalled") || !strings.Contains(err.Error(), "storage: repository s3://stackport") {
			t.Errorf("the error does not say that the storage connection stalled")
		}
		if took > stallMax {
			t.Errorf("took %v to fail, want at most %v", took, stallMax)
		}
	}

	t.Run("snapshot stalled mid-upload", func(t *testing.T) {
		t.Cleanup(func() { e.onProgress = nil; p.Heal() })
		before := e.ids()
		var start time.Time
		e.onProgress = interruptAt(size/3, func() { start = time.Now(); p.Stall(true) })
		ctx := faultCtx(t)
		_, err := e.snapshot(ctx, snapshotOptions{Volume: vol})
		e.onProgress = nil
		if start.IsZero() {
			t.Fatal("the stall did not start")
		}
		checkStall(t, ctx, err, time.Since(start), true)
		p.Heal()
		checkNothingCommitted(t, e, before)
		// The parts stored before the stall: the abort could not reach
		// the server either; prune removes them (TestPruneUploadsS3).
		pruneAll(t, e)
		checkNoUploads(t, direct)
		// The next run works.
		id, err := e.snapshot(faultCtx(t), snapshotOptions{Volume: vol})
		if err != nil {
			t.Fatalf("the snapshot after the stall: %v\n%s", err, e.stderr.String())
		}
		if err := e.verify(id); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("restore stalled mid-download", func(t *testing.T) {
		t.Cleanup(func() { e.onProgress = nil; p.Heal() })
		id, err := e.snapshot(faultCtx(t), snapshotOptions{Volume: vol})
		if err != nil {
			t.Fatal(err)
		}
		target := t.TempDir()
		var start time.Time
		e.onProgress = interruptAt(size/3, func() { start = time.Now(); p.Stall(true) })
		ctx := faultCtx(t)
		err = runRestore(ctx, e.global(), restoreOptions{VolumeTo: target, Force: true}, id)
		e.onProgress = nil
		if start.IsZero() {
			t.Fatal("the stall did not start")
		}
		checkStall(t, ctx, err, time.Since(start), false)
		p.Heal()
		if err := e.restore(id, target, restoreOptions{Force: true}); err != nil {
			t.Fatalf("the restore after the stall: %v\n%s", err, e.stderr.String())
		}
		treetest.Compare(t, vol, target, treetest.Options{Owners: os.Geteuid() == 0, Root: true})
	})
}

// pruneAll runs prune keeping every snapshot, with no leftover grace.
func pruneAll(t *testing.T, e *testEnv) []pruneEntry {
	t.Helper()
	g := e.global()
	if err := runPrune(context.Background(), g, pruneOptions{Policy: storage.Policy{Last: -1}, Grace: 0}); err != nil {
		t.Fatalf("prune: %v\n%s", err, e.stderr.String())
	}
	t.Logf("prune:\n%s", e.stdout.String())
	return nil
}

// TestWrongKeyS3 opens an encrypted snapshot in S3 with a wrong
// passphrase: the error names the wrong key, as on file://, not "EOF".
func TestWrongKeyS3(t *testing.T) {
	_, direct := lab.S3(t)
	src := treetest.Fixture(t, t.TempDir())
	pass := filepath.Join(t.TempDir(), "pass")
	os.WriteFile(pass, []byte("a long passphrase\n"), 0o600)
	bad := filepath.Join(t.TempDir(), "bad")
	os.WriteFile(bad, []byte("not it\n"), 0o600)
	for _, repo := range []string{"file://" + t.TempDir(), direct} {
		e := &testEnv{t: t, repo: repo}
		id, err := e.snapshot(context.Background(), snapshotOptions{Volume: src, Crypto: cryptoOptions{PassphraseFile: pass}})
		if err != nil {
			t.Fatal(err)
		}
		err = e.restore(id, filepath.Join(t.TempDir(), "r"), restoreOptions{Crypto: cryptoOptions{PassphraseFile: bad}})
		t.Logf("%s: %v", repo[:5], err)
		if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), "wrong key or passphrase") {
			t.Fatalf("%s: restore with a wrong passphrase: exit %d, %v", repo, exitCode(err), err)
		}
		err = runVerify(context.Background(), e.global(), verifyOptions{Crypto: cryptoOptions{PassphraseFile: bad}}, id)
		if err == nil || !strings.Contains(err.Error(), "wrong key or passphrase") {
			t.Fatalf("%s: verify with a wrong passphrase: %v", repo, err)
		}
	}
}

// TestRepoInsideVolume snapshots a volume that holds its own file://
// repository twice: the repository is left out (with a warning), so the
// second snapshot is no bigger than the first.
func TestRepoInsideVolume(t *testing.T) {
	vol := treetest.Fixture(t, t.TempDir())
	e := &testEnv{t: t, repo: "file://" + filepath.Join(vol, "backups", "repo")}
	if err := os.MkdirAll(filepath.Join(vol, "backups", "repo"), 0o755); err != nil {
		t.Fatal(err)
	}
	stats := func() snapshot.Stats {
		t.Helper()
		g := e.global()
		g.JSON = true
		if err := runSnapshot(context.Background(), g, snapshotOptions{Volume: vol, Compression: "zstd"}); err != nil {
			t.Fatalf("snapshot: %v\n%s", err, e.stderr.String())
		}
		if !strings.Contains(e.stderr.String(), "the repository is inside the volume") {
			t.Errorf("no warning: %s", e.stderr.String())
		}
		var res snapshotResult
		if err := json.Unmarshal(e.stdout.Bytes(), &res); err != nil {
			t.Fatal(err)
		}
		return res.Components[0].Stats
	}
	first, second := stats(), stats()
	t.Logf("first %v, second %v", first, second)
	if second["files"] != first["files"] || second["bytes"] != first["bytes"] {
		t.Fatalf("the second snapshot holds the repository: %v files/%v bytes, first %v/%v",
			second["files"], second["bytes"], first["files"], first["bytes"])
	}
}
