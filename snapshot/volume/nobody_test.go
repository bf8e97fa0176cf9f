package volume

import (
	"context"
	"encoding/json"
	"github.com/stackport/stackport/internal/streamtest"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stackport/stackport/snapshot"
)

// Tests that need an unprivileged user re-execute the test binary as nobody
// (setpriv), running TestAsNobodyHelper, which reads its task from the
// environment and writes a helperResult as JSON.

const nobody = 65534

type helperResult struct {
	Stats snapshot.Stats
	Err   string
	Names []string // archive entries, for dumps
}

func TestAsNobodyHelper(t *testing.T) {
	task := os.Getenv("VOLUME_HELPER")
	if task == "" {
		t.Skip("runs only as a subprocess of other tests")
	}
	var res helperResult
	var err error
	switch task {
	case "dump":
		store := streamtest.New()
		d := &Dumper{Dir: os.Getenv("VOLUME_DIR"), SkipUnreadable: os.Getenv("VOLUME_SKIP") == "1", Log: quiet}
		res.Stats, err = d.Dump(context.Background(), store)
		if data, ok := store.Bytes(streamName); ok {
			res.Names = tarNames(t, data)
		}
	case "restore":
		var data []byte
		if data, err = os.ReadFile(os.Getenv("VOLUME_TAR")); err == nil {
			r := &Restorer{Dir: os.Getenv("VOLUME_DIR"), Log: quiet}
			res.Stats, err = r.Restore(context.Background(), streamtest.One(streamName, data, nil))
		}
	default:
		t.Fatalf("unknown task %q", task)
	}
	if err != nil {
		res.Err = err.Error()
	}
	out, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(os.Getenv("VOLUME_OUT"), out, 0o644); err != nil {
		t.Fatal(err)
	}
}

// sharedDir returns a new directory that nobody can traverse, holding a copy
// of the test binary. It skips t unless running as root with setpriv.
func sharedDir(t *testing.T) (dir, bin string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch to nobody")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv")
	}
	dir, err := os.MkdirTemp("", "volume-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "volume.test")
	if err := copyFile(self, bin); err != nil {
		t.Fatal(err)
	}
	return dir, bin
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

// runAsNobody runs the helper test named helper (TestAsNobodyHelper,
// TestAsNobodyForceHelper) as nobody with env and returns its result.
func runAsNobody(t *testing.T, shared, bin, helper string, env ...string) helperResult {
	t.Helper()
	outDir, err := os.MkdirTemp(shared, "out-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(outDir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(outDir, "result.json")
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		bin, "-test.run=^"+helper+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), append(env, "VOLUME_OUT="+out)...)
	if output, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper as nobody: %v\n%s", err, output)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res helperResult
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

func TestUnreadable(t *testing.T) {
	shared, bin := sharedDir(t)
	src := filepath.Join(shared, "src")
	files := map[string]os.FileMode{
		"ok.txt":               0o644,
		"pub/f":                0o644,
		"secret.txt":           0o600,
		"secretdir/inside.txt": 0o644,
	}
	for name, mode := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(name), mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(src, "secretdir"), 0o700); err != nil {
		t.Fatal(err)
	}

	res := runAsNobody(t, shared, bin, "TestAsNobodyHelper", "VOLUME_HELPER=dump", "VOLUME_DIR="+src)
	if !strings.Contains(res.Err, filepath.Join(src, "secret.txt")) || !strings.Contains(res.Err, "permission denied") {
		t.Errorf("dump without SkipUnreadable: error %q, want permission denied naming secret.txt", res.Err)
	}
	if res.Names != nil {
		t.Error("a failed dump committed its stream")
	}

	res = runAsNobody(t, shared, bin, "TestAsNobodyHelper", "VOLUME_HELPER=dump", "VOLUME_DIR="+src, "VOLUME_SKIP=1")
	if res.Err != "" {
		t.Fatalf("dump with SkipUnreadable: %s", res.Err)
	}
	if res.Stats["unreadable"] != 2 || res.Stats["files"] != 2 {
		t.Errorf("stats %v, want 2 unreadable, 2 files", res.Stats)
	}
	// An unreadable directory is kept, without its content.
	want := []string{"./", "ok.txt", "pub/", "pub/f", "secretdir/"}
	if !slices.Equal(res.Names, want) {
		t.Errorf("entries %q, want %q", res.Names, want)
	}
}

// TestRestoreAsNobody restores the fixture without privileges: read-only
// directories, setuid and setgid bits and mtimes are restored, owners are
// the restoring user's.
func TestRestoreAsNobody(t *testing.T) {
	shared, bin := sharedDir(t)
	src := buildFixture(t)
	store, _ := dump(t, &Dumper{Dir: src})
	data, _ := store.Bytes(streamName)
	archive := filepath.Join(shared, "volume.tar")
	if err := os.WriteFile(archive, data, 0o644); err != nil {
		t.Fatal(err)
	}
	parent := filepath.Join(shared, "restore")
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(parent, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(parent, "dst")
	res := runAsNobody(t, shared, bin, "TestAsNobodyHelper", "VOLUME_HELPER=restore", "VOLUME_DIR="+dst, "VOLUME_TAR="+archive)
	if res.Err != "" {
		t.Fatalf("restore as nobody: %s", res.Err)
	}
	compareTrees(t, src, dst, compareOpts{owner: &Owner{UID: nobody, GID: nobody}})

	// A failed restore as nobody leaves the target as it was, even with
	// read-only directories already extracted.
	bad := filepath.Join(shared, "bad.tar")
	truncated := data[:len(data)-sparseSize/2]
	if err := os.WriteFile(bad, truncated, 0o644); err != nil {
		t.Fatal(err)
	}
	dst2 := filepath.Join(parent, "dst2")
	res = runAsNobody(t, shared, bin, "TestAsNobodyHelper", "VOLUME_HELPER=restore", "VOLUME_DIR="+dst2, "VOLUME_TAR="+bad)
	if !strings.Contains(res.Err, snapshot.ErrCorrupt.Error()) {
		t.Errorf("restore of a truncated archive: %q, want corrupt", res.Err)
	}
	if entries, err := os.ReadDir(parent); err != nil || len(entries) != 1 {
		t.Errorf("after the failed restore %s holds %v (%v), want only dst", parent, entries, err)
	}
}
