package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stackport/stackport/internal/treetest"
)

// writeFiles writes name → content under dir.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRestoreForceKeepsFileRepository: a file:// repository inside the
// volume (/appsmith-stacks/data/backup), snapshots of the volume, then
// `restore --force` into the volume: the repository and all its snapshots
// survive and verify, the rest of the volume is the snapshot's, and the
// repository's stale copy in the snapshot is not restored over it.
func TestRestoreForceKeepsFileRepository(t *testing.T) {
	stack := filepath.Join(t.TempDir(), "appsmith-stacks")
	writeFiles(t, stack, map[string]string{
		"configuration/docker.env": "APPSMITH_X=1\n",
		"data/mongo/db":            "mongo files",
		"data/other.txt":           "beside the repository",
		"logs/a.log":               "log",
	})
	repoDir := filepath.Join(stack, "data", "backup")
	// Through a symbolic link, as --repo may name it.
	link := filepath.Join(t.TempDir(), "stacks-link")
	if err := os.Symlink(stack, link); err != nil {
		t.Fatal(err)
	}
	e := &testEnv{t: t, repo: "file://" + filepath.Join(link, "data", "backup")}
	first := e.mustSnapshot(stack)
	writeFiles(t, stack, map[string]string{"configuration/docker.env": "APPSMITH_X=2\n", "new.txt": "after the first snapshot"})
	second := e.mustSnapshot(stack)

	if err := e.restore(first, stack, restoreOptions{Force: true}); err != nil {
		t.Fatalf("restore --force into the folder holding the repository: %v\n%s", err, e.stderr.String())
	}
	if !strings.Contains(e.stderr.String(), "not restored") {
		t.Errorf("stderr %q, want a warning that the snapshot's copy of the repository is not restored", e.stderr.String())
	}
	if l := e.list(); len(l) != 2 || l[0].ID != first || l[1].ID != second {
		t.Fatalf("snapshots after the restore: %+v, want %s and %s", l, first, second)
	}
	for _, id := range []string{first, second} {
		if err := e.verify(id); err != nil {
			t.Errorf("verify %s after the restore: %v", id, err)
		}
	}
	for name, want := range map[string]string{"configuration/docker.env": "APPSMITH_X=1\n", "data/other.txt": "beside the repository", "data/mongo/db": "mongo files"} {
		if b, err := os.ReadFile(filepath.Join(stack, name)); err != nil || string(b) != want {
			t.Errorf("%s: %q, %v, want %q", name, b, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(stack, "new.txt")); !os.IsNotExist(err) {
		t.Errorf("new.txt, made after the snapshot, is still there: %v", err)
	}
	// And again, over the restored tree, of the other snapshot.
	if err := e.restore(second, stack, restoreOptions{Force: true}); err != nil {
		t.Fatalf("second restore --force: %v", err)
	}
	if err := e.verify(first); err != nil {
		t.Errorf("verify after the second restore: %v", err)
	}
	if _, err := os.Stat(filepath.Join(repoDir, "snapshots", first)); err != nil {
		t.Errorf("repository folder: %v", err)
	}
}

// TestRestoreIntoRepositoryRefused: a volume target that is the file://
// repository, or inside it, is a usage error naming the repository, before
// anything is written.
func TestRestoreIntoRepositoryRefused(t *testing.T) {
	repoDir := filepath.Join(t.TempDir(), "repo")
	e := &testEnv{t: t, repo: "file://" + repoDir}
	src := t.TempDir()
	writeFiles(t, src, map[string]string{"a": "a"})
	id := e.mustSnapshot(src)
	for _, target := range []string{repoDir, filepath.Join(repoDir, "snapshots")} {
		err := e.restore(id, target, restoreOptions{Force: true})
		if exitCode(err) != 2 || !strings.Contains(err.Error(), repoDir) {
			t.Errorf("restore --force into %s: exit %d (%v), want 2 naming %s", target, exitCode(err), err, repoDir)
		}
	}
	if err := e.verify(id); err != nil {
		t.Errorf("verify: %v", err)
	}
}

// TestRestoreForceReadOnlyAsNonRoot runs the built command as nobody (the
// Helm chart runs as uid 10001): restore, then `restore --force` twice
// over the tree it restored, which holds read-only directories.
func TestRestoreForceReadOnlyAsNonRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch to nobody") // as a non-root user the other tests cover it directly
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv")
	}
	shared, err := os.MkdirTemp("", "restore-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	if err := os.Chmod(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	built := buildStackport(t)
	bin := filepath.Join(shared, "stackport")
	if out, err := exec.Command("cp", built, bin).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}

	src := treetest.Fixture(t, t.TempDir())
	writeFiles(t, src, map[string]string{"ro-outer/ro-inner/f": "deep"})
	for _, d := range []string{"ro-outer/ro-inner", "ro-outer", "."} {
		if err := os.Chmod(filepath.Join(src, d), 0o555); err != nil {
			t.Fatal(err)
		}
	}
	repoDir := filepath.Join(shared, "repo")
	e := &testEnv{t: t, repo: "file://" + repoDir}
	e.mustSnapshot(src)
	if out, err := exec.Command("chown", "-R", "65534:65534", repoDir).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	parent := filepath.Join(shared, "target")
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(parent, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(parent, "stacks")
	for i, force := range []bool{false, true, true} {
		args := []string{"--reuid=65534", "--regid=65534", "--clear-groups", bin, "--repo", "file://" + repoDir, "restore", "latest", "--volume-to", dst}
		if force {
			args = append(args, "--force")
		}
		cmd := exec.Command("setpriv", args...)
		cmd.Env = append(os.Environ(), "HOME="+shared)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("restore %d (force %v) as nobody: %v\n%s", i+1, force, err, out)
		}
		treetest.Compare(t, src, dst, treetest.Options{Root: true})
	}
}
