package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/spf13/cobra"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/treetest"
	"github.com/stackport/stackport/snapshot"
)

// testEnv runs commands against one repository, capturing their output.
type testEnv struct {
	t      *testing.T
	repo   string
	stdout bytes.Buffer
	stderr bytes.Buffer
	// onProgress is passed to every command.
	onProgress func(int64)
}

func (e *testEnv) global() *globalOptions {
	e.stdout.Reset()
	e.stderr.Reset()
	g := &globalOptions{Repo: e.repo, stdout: &e.stdout, stderr: &e.stderr, onProgress: e.onProgress}
	g.setup()
	return g
}

func (e *testEnv) snapshot(ctx context.Context, opts snapshotOptions) (string, error) {
	if opts.Compression == "" {
		opts.Compression = "zstd"
	}
	err := runSnapshot(ctx, e.global(), opts)
	return strings.TrimSpace(e.stdout.String()), err
}

func (e *testEnv) mustSnapshot(dir string) string {
	e.t.Helper()
	id, err := e.snapshot(context.Background(), snapshotOptions{Volume: dir})
	if err != nil {
		e.t.Fatalf("snapshot: %v\n%s", err, e.stderr.String())
	}
	if !snapshot.ValidID(id) {
		e.t.Fatalf("snapshot printed %q, want an ID", id)
	}
	return id
}

func (e *testEnv) list() []listEntry {
	e.t.Helper()
	g := e.global()
	g.JSON = true
	if err := runList(context.Background(), g); err != nil {
		e.t.Fatal(err)
	}
	var entries []listEntry
	if err := json.Unmarshal(e.stdout.Bytes(), &entries); err != nil {
		e.t.Fatalf("list --json: %v: %s", err, e.stdout.String())
	}
	return entries
}

func (e *testEnv) verify(ref string) error {
	return runVerify(context.Background(), e.global(), verifyOptions{}, ref)
}

func (e *testEnv) restore(ref, dir string, opts restoreOptions) error {
	opts.VolumeTo = dir
	return runRestore(context.Background(), e.global(), opts, ref)
}

// roundTrip is the suite every backend runs: snapshot, list, verify,
// restore, export, and byte-for-byte comparison of the trees.
func roundTrip(t *testing.T, repo string) {
	e := &testEnv{t: t, repo: repo}
	src := treetest.Fixture(t, t.TempDir())
	owners := treetest.Options{Owners: os.Geteuid() == 0, Root: true}

	first := e.mustSnapshot(src)
	id := e.mustSnapshot(src)
	entries := e.list()
	if len(entries) != 2 || entries[0].ID != first || entries[1].ID != id || entries[1].Components[0] != "volume" {
		t.Fatalf("list = %+v; want [%s %s]", entries, first, id)
	}
	if err := e.verify("latest"); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if !strings.Contains(e.stdout.String(), id) {
		t.Errorf("verify printed %q", e.stdout.String())
	}

	dst := filepath.Join(t.TempDir(), "restored")
	if err := e.restore(id, dst, restoreOptions{}); err != nil {
		t.Fatalf("restore: %v\n%s", err, e.stderr.String())
	}
	treetest.Compare(t, src, dst, owners)
	if err := e.restore(id, dst, restoreOptions{}); !errors.Is(err, snapshot.ErrTargetNotEmpty) || exitCode(err) != 1 {
		t.Fatalf("restore into non-empty target: %v", err)
	}

	out := filepath.Join(t.TempDir(), "volume.tar")
	if err := runExport(context.Background(), e.global(), exportOptions{Component: "volume", Out: out}, id); err != nil {
		t.Fatalf("export: %v", err)
	}
	untarred := t.TempDir()
	tar := exec.Command("tar", "-xpf", out, "-C", untarred)
	if b, err := tar.CombinedOutput(); err != nil {
		t.Fatalf("GNU tar cannot extract the export: %v\n%s", err, b)
	}
	treetest.Compare(t, src, untarred, owners)
}

func TestRoundTrip(t *testing.T) {
	backends := map[string]func(t *testing.T) string{
		"file":  func(t *testing.T) string { return "file://" + t.TempDir() + "/repo" },
		"s3":    func(t *testing.T) string { _, u := lab.S3(t); return u },
		"gcs":   func(t *testing.T) string { _, u := lab.GCS(t); return u },
		"azure": func(t *testing.T) string { _, u := lab.Azure(t); return u },
	}
	for name, start := range backends {
		t.Run(name, func(t *testing.T) { roundTrip(t, start(t)) })
	}
}

// damageObject applies f to the volume object of snapshot id in a file://
// repository.
func damageObject(t *testing.T, repoDir, id string, f func([]byte) []byte) {
	t.Helper()
	path := filepath.Join(repoDir, "snapshots", id, "volume", "volume.tar.zst")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, f(b), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestDamagedSnapshots(t *testing.T) {
	src := treetest.Fixture(t, t.TempDir())
	for name, damage := range map[string]func([]byte) []byte{
		"flipped byte": func(b []byte) []byte { b[len(b)/3] ^= 1; return b },
		"truncated":    func(b []byte) []byte { return b[:len(b)-1000] },
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			e := &testEnv{t: t, repo: "file://" + dir}
			good := e.mustSnapshot(src)
			bad := e.mustSnapshot(src)
			damageObject(t, dir, bad, damage)

			err := e.verify(bad)
			if exitCode(err) != 3 || !strings.Contains(err.Error(), "volume/volume.tar.zst") {
				t.Fatalf("verify: exit %d, %v; want 3 naming the object", exitCode(err), err)
			}
			if err := e.verify(good); err != nil {
				t.Fatalf("the good snapshot: %v", err)
			}

			// A restore over existing data fails and leaves it as it was.
			target := t.TempDir()
			os.WriteFile(filepath.Join(target, "keep.txt"), []byte("precious"), 0o644)
			before := filepath.Join(t.TempDir(), "before")
			if out, err := exec.Command("cp", "-a", target, before).CombinedOutput(); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			err = e.restore(bad, target, restoreOptions{Force: true})
			if exitCode(err) != 3 {
				t.Fatalf("restore of a damaged snapshot: exit %d, %v", exitCode(err), err)
			}
			treetest.Compare(t, before, target, treetest.Options{Owners: true, Root: true})
		})
	}
}

func TestMissingSnapshots(t *testing.T) {
	dir := t.TempDir()
	e := &testEnv{t: t, repo: "file://" + dir}
	src := treetest.Fixture(t, t.TempDir())
	good := e.mustSnapshot(src)
	gone := e.mustSnapshot(src)
	if err := os.Remove(filepath.Join(dir, "snapshots", gone, "manifest.json")); err != nil {
		t.Fatal(err)
	}
	if l := e.list(); len(l) != 1 || l[0].ID != good {
		t.Fatalf("list shows a snapshot without manifest: %+v", l)
	}
	for _, ref := range []string{gone, "20200101T000000Z-000000"} {
		err := e.verify(ref)
		if !errors.Is(err, snapshot.ErrNotFound) || exitCode(err) != 1 || !strings.Contains(err.Error(), ref) {
			t.Errorf("verify %s: exit %d, %v", ref, exitCode(err), err)
		}
	}
	if err := e.verify("latest"); err != nil {
		t.Fatalf("latest should be the complete snapshot: %v", err)
	}
	// A deleted object is missing data: exit 3.
	os.Remove(filepath.Join(dir, "snapshots", good, "volume", "volume.tar.zst"))
	if err := e.verify(good); exitCode(err) != 3 {
		t.Fatalf("missing object: exit %d, %v", exitCode(err), err)
	}
}

// bigTree writes n MiB of incompressible data, so that a snapshot of it takes
// long enough to be interrupted.
func bigTree(t *testing.T, mib int) string {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range mib {
		for j := range buf {
			buf[j] = byte(j*7 + i*13 + j>>8*31 + j>>16)
		}
		// A cheap deterministic but poorly compressible pattern.
		for j := 0; j < len(buf); j += 8 {
			x := uint64(i)<<40 ^ uint64(j)*0x9E3779B97F4A7C15
			x ^= x >> 29
			x *= 0xBF58476D1CE4E5B9
			x ^= x >> 32
			for k := range 8 {
				buf[j+k] = byte(x >> (8 * k))
			}
		}
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

// interruptAt returns a progress hook that runs f once, when a command has
// processed at least n bytes.
func interruptAt(n int64, f func()) func(int64) {
	var once sync.Once
	return func(done int64) {
		if done >= n {
			once.Do(f)
		}
	}
}

func TestInterruptedSnapshot(t *testing.T) {
	dir := t.TempDir()
	e := &testEnv{t: t, repo: "file://" + dir}
	small := treetest.Fixture(t, t.TempDir())
	good := e.mustSnapshot(small)
	big := bigTree(t, 96)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.onProgress = interruptAt(16<<20, cancel) // as SIGINT would
	id, err := e.snapshot(ctx, snapshotOptions{Volume: big})
	e.onProgress = nil
	if err == nil || id != "" || !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted snapshot: %q, %v", id, err)
	}
	ids, _ := os.ReadDir(filepath.Join(dir, "snapshots"))
	if len(ids) != 1 || ids[0].Name() != good {
		t.Fatalf("after the interrupted run the repository holds %v; want only %s", ids, good)
	}
	if err := e.verify(good); err != nil {
		t.Fatal(err)
	}
}

func TestInterruptedRestore(t *testing.T) {
	e := &testEnv{t: t, repo: "file://" + t.TempDir()}
	id := e.mustSnapshot(bigTree(t, 64))
	target := t.TempDir()
	os.WriteFile(filepath.Join(target, "keep.txt"), []byte("precious"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.onProgress = interruptAt(16<<20, cancel)
	err := runRestore(ctx, e.global(), restoreOptions{VolumeTo: target, Force: true}, id)
	if err == nil {
		t.Fatal("interrupted restore succeeded")
	}
	entries, _ := os.ReadDir(target)
	if len(entries) != 1 || entries[0].Name() != "keep.txt" {
		t.Fatalf("target after an interrupted restore: %v", entries)
	}
}

func TestStorageKilledDuringSnapshot(t *testing.T) {
	srv, url := lab.S3(t)
	e := &testEnv{t: t, repo: url}
	good := e.mustSnapshot(treetest.Fixture(t, t.TempDir()))
	big := bigTree(t, 128)

	e.onProgress = interruptAt(32<<20, srv.Kill)
	id, err := e.snapshot(context.Background(), snapshotOptions{Volume: big})
	e.onProgress = nil
	if err == nil || id != "" {
		t.Fatalf("snapshot survived a dead server: %q, %v", id, err)
	}
	t.Logf("error seen by the operator: %v", err)
	srv.Start(t)
	if l := e.list(); len(l) != 1 || l[0].ID != good {
		t.Fatalf("list after the failed run: %+v", l)
	}
	if err := e.verify(good); err != nil {
		t.Fatalf("earlier snapshot: %v", err)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"bogus"},
		{"snapshot", "--no-such-flag"},
		{"snapshot", "--repo", "mem://"},
		{"snapshot", "--repo", "mem://", "--volume", ".", "--compression", "lz4"},
		{"snapshot", "--repo", "mem://", "--volume", ".", "--level", "99"},
		{"snapshot", "--repo", "mem://", "--volume", ".", "--tag", "novalue"},
		{"verify", "a", "b"},
		{"restore", "latest"},
		{"restore", "latest", "--volume-to", "x", "--chown", "root"},
		{"restore", "latest", "--mongo-to", "mongodb://127.0.0.1:1/", "--mongo-flavor", "cosmos"},
		{"restore", "latest", "--redis-to", "redis://127.0.0.1:1/", "--redis-flush"},
		{"export", "latest"},
		{"list"},
	} {
		cmd := newRootCommand()
		cmd.SetArgs(args)
		cmd.SetOut(&bytes.Buffer{})
		cmd.SetErr(&bytes.Buffer{})
		t.Setenv("STACKPORT_REPO", "")
		if err := cmd.Execute(); exitCode(err) != 2 {
			t.Errorf("stackport %s: exit %d (%v), want 2", strings.Join(args, " "), exitCode(err), err)
		}
	}
}

func TestEveryCommandHasAnExample(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Example == "" && c.Name() != "help" && c.Name() != "completion" {
			t.Errorf("%s --help has no example", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCommand())
}

// TestLogLevels: -v logs debug messages, -q only warnings (and wins over
// -v).
func TestLogLevels(t *testing.T) {
	for _, c := range []struct {
		quiet, verbose bool
		want           slog.Level
	}{{false, false, slog.LevelInfo}, {false, true, slog.LevelDebug}, {true, false, slog.LevelWarn}, {true, true, slog.LevelWarn}} {
		g := &globalOptions{Quiet: c.quiet, Verbose: c.verbose, stderr: &bytes.Buffer{}}
		g.setup()
		ctx := context.Background()
		if !g.log.Enabled(ctx, c.want) || g.log.Enabled(ctx, c.want-1) {
			t.Errorf("quiet %v, verbose %v: the logger does not start at %v", c.quiet, c.verbose, c.want)
		}
	}
}
