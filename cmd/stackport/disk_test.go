package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stackport/stackport/internal/treetest"
)

// smallDisk mounts a tmpfs of size (e.g. "8m") with the given options and
// returns its path. Mounting needs root; the test is skipped otherwise.
func smallDisk(t *testing.T, size string, opts ...string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small file system needs root")
	}
	dir := t.TempDir()
	o := strings.Join(append([]string{"size=" + size}, opts...), ",")
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", o, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

func TestFullRepositoryDisk(t *testing.T) {
	disk := smallDisk(t, "8m")
	e := &testEnv{t: t, repo: "file://" + filepath.Join(disk, "repo")}
	small := t.TempDir()
	os.WriteFile(filepath.Join(small, "a.txt"), []byte("small"), 0o644)
	good := e.mustSnapshot(small)
	_, err := e.snapshot(context.Background(), snapshotOptions{Volume: bigTree(t, 32)})
	if err == nil || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("snapshot onto a full disk: %v", err)
	}
	if l := e.list(); len(l) != 1 || l[0].ID != good {
		t.Fatalf("after the failed run: %+v", l)
	}
	if left, _ := os.ReadDir(filepath.Join(disk, "repo", "snapshots")); len(left) != 1 {
		t.Fatalf("the failed run left %v behind", left)
	}
	if err := e.verify(good); err != nil {
		t.Fatal(err)
	}
}

func TestFullAndReadOnlyRestoreTarget(t *testing.T) {
	e := &testEnv{t: t, repo: "file://" + t.TempDir()}
	src := treetest.Fixture(t, t.TempDir())
	id := e.mustSnapshot(src)

	full := smallDisk(t, "1m")
	os.WriteFile(filepath.Join(full, "keep.txt"), []byte("precious"), 0o644)
	err := e.restore(id, full, restoreOptions{Force: true})
	if err == nil || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("restore onto a full disk: %v", err)
	}
	entries, _ := os.ReadDir(full)
	if len(entries) != 1 || entries[0].Name() != "keep.txt" {
		t.Fatalf("the full target was changed: %v", entries)
	}

	ro := smallDisk(t, "64m", "ro")
	err = e.restore(id, ro, restoreOptions{})
	if err == nil || !strings.Contains(err.Error(), "read-only file system") {
		t.Fatalf("restore onto a read-only file system: %v", err)
	}
}
