package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stackport/stackport/internal/streamtest"
	"github.com/stackport/stackport/snapshot"
)

// errKilled stands for a kill -9: the restore stops without any cleanup.
var errKilled = errors.New("killed")

type killed struct{}

// oldTree writes the previous content of a target: files, a nested and a
// read-only directory, names the new tree also has.
func oldTree(t *testing.T, dir string) {
	t.Helper()
	for name, content := range map[string]string{
		"a-old.txt": "old a", "small.txt": "old small", "olddir/x": "x", "olddir/sub/y": "y",
		"ro-dir/old.txt": "old inside ro", "zz-old": "last",
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "ro-dir"), 0o555); err != nil {
		t.Fatal(err)
	}
}

func logTo(buf *bytes.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// killedRestore runs a --force restore of store into dst that is killed
// (a panic out of the final move, no cleanup) after n entries moved.
func killedRestore(t *testing.T, dst string, data []byte, n int) {
	t.Helper()
	r := &Restorer{Dir: dst, Force: true, Log: quiet, afterMove: func(i int) error {
		if i == n {
			panic(killed{})
		}
		return nil
	}}
	defer func() {
		if p := recover(); p != nil {
			if _, ok := p.(killed); !ok {
				panic(p)
			}
		}
	}()
	r.Restore(context.Background(), oneStream(data))
	t.Fatalf("restore not killed after %d moves", n)
}

func oneStream(data []byte) snapshot.StreamReader {
	return streamtest.One(streamName, data, nil)
}

// reservedLeft lists the names of staging, trash and journal files left
// in dir.
func reservedLeft(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), reservedPrefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestKilledDuringForceMove kills a --force restore after n entries of
// the final move (old entries into the trash, then new ones into place),
// for every n: the next restore completes the interrupted one and says so,
// and the tree is the new one, byte for byte; a snapshot then holds the
// new tree and nothing else.
func TestKilledDuringForceMove(t *testing.T) {
	src := buildFixture(t)
	store, _ := dump(t, &Dumper{Dir: src})
	data, _ := store.Bytes(streamName)
	wantNames := tarNames(t, data)

	// The number of moves of a whole restore.
	total := 0
	count := filepath.Join(t.TempDir(), "count")
	oldTree(t, count)
	r := &Restorer{Dir: count, Force: true, Log: quiet, afterMove: func(i int) error { total = i; return nil }}
	if _, err := r.Restore(context.Background(), oneStream(data)); err != nil {
		t.Fatal(err)
	}
	if total < 10 {
		t.Fatalf("%d moves", total)
	}
	for n := 1; n <= total; n++ {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "dst")
			if err := os.Mkdir(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			oldTree(t, dst)
			killedRestore(t, dst, data, n)
			if left := reservedLeft(t, dst); !slices.Contains(left, journalName) {
				t.Fatalf("after the kill: %v, want a journal", left)
			}

			// The next restore (here one refused: the target is not
			// empty) first completes the interrupted one.
			var logs bytes.Buffer
			_, err := (&Restorer{Dir: dst, Log: logTo(&logs)}).Restore(context.Background(), oneStream(data))
			if !errors.Is(err, snapshot.ErrTargetNotEmpty) {
				t.Fatalf("next restore: %v, want ErrTargetNotEmpty", err)
			}
			if !strings.Contains(logs.String(), "an interrupted restore was completed") {
				t.Errorf("next restore logged %q, want it to say the interrupted restore was completed", logs.String())
			}
			if left := reservedLeft(t, dst); len(left) != 0 {
				t.Errorf("left behind: %v", left)
			}
			compareTrees(t, src, dst, compareOpts{})

			// A snapshot now holds exactly the new tree.
			again, _ := dump(t, &Dumper{Dir: dst})
			d2, _ := again.Bytes(streamName)
			if got := tarNames(t, d2); !slices.Equal(got, wantNames) {
				t.Errorf("snapshot after recovery holds %q, want %q", got, wantNames)
			}
		})
	}
}

// killedFixture returns a source tree, the snapshot stream of it and a
// target holding an old tree, for a restore to be killed into.
func killedFixture(t *testing.T) (src string, data []byte, dst string) {
	t.Helper()
	src = buildFixture(t)
	store, _ := dump(t, &Dumper{Dir: src})
	data, _ = store.Bytes(streamName)
	dst = filepath.Join(t.TempDir(), "dst")
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	oldTree(t, dst)
	return src, data, dst
}

// TestKilledThenRecover: Recover, which a snapshot of the folder is to
// call first, completes the interrupted restore by itself.
func TestKilledThenRecover(t *testing.T) {
	src, data, dst := killedFixture(t)
	killedRestore(t, dst, data, 4)
	msg, err := Recover(dst, quiet)
	if err != nil || !strings.Contains(msg, "completed") {
		t.Fatalf("Recover: %q, %v", msg, err)
	}
	compareTrees(t, src, dst, compareOpts{})
	if msg, err := Recover(dst, quiet); msg != "" || err != nil {
		t.Errorf("second Recover: %q, %v, want nothing to do", msg, err)
	}
}

// TestKilledWhileUnpacking kills a --force restore while it unpacks into
// the staging folder: the next restore removes the staging folder and says
// the target keeps its previous content, which is unchanged byte for byte.
func TestKilledWhileUnpacking(t *testing.T) {
	_, data, dst := killedFixture(t)
	before := listing(t, dst)
	func() {
		var n int64
		r := &Restorer{Dir: dst, Force: true, Log: quiet, Progress: func(b int64) {
			if n += b; n > 1<<20 {
				panic(killed{})
			}
		}}
		defer func() {
			if p := recover(); p == nil {
				t.Fatal("restore not killed")
			}
		}()
		r.Restore(context.Background(), oneStream(data))
	}()
	if left := reservedLeft(t, dst); len(left) != 2 {
		t.Fatalf("after the kill: %v, want the staging folder and the journal", left)
	}
	msg, err := Recover(dst, quiet)
	if err != nil || !strings.Contains(msg, "keeps its previous content") {
		t.Fatalf("Recover: %q, %v", msg, err)
	}
	if after := listing(t, dst); after != before {
		t.Errorf("target after recovery:\n%s\nwant:\n%s", after, before)
	}
}

// TestMoveFailureUndone: a move failing half way (not a kill) puts the old
// tree back at once, byte for byte, and leaves no journal.
func TestMoveFailureUndone(t *testing.T) {
	src := buildFixture(t)
	store, _ := dump(t, &Dumper{Dir: src})
	data, _ := store.Bytes(streamName)
	for _, n := range []int{1, 5, 6, 7, 12} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "dst")
			if err := os.Mkdir(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			oldTree(t, dst)
			before := listing(t, dst)
			r := &Restorer{Dir: dst, Force: true, Log: quiet, afterMove: func(i int) error {
				if i == n {
					return errKilled
				}
				return nil
			}}
			if _, err := r.Restore(context.Background(), oneStream(data)); !errors.Is(err, errKilled) {
				t.Fatalf("restore: %v, want the move's error", err)
			}
			if after := listing(t, dst); after != before {
				t.Errorf("target after the failed move:\n%s\nwant:\n%s", after, before)
			}
		})
	}
}

// TestForceKeepsRepository: with the repository's folder in Keep, a
// --force restore leaves it in place, untouched, does not restore the
// snapshot's copy of it, and replaces everything else.
func TestForceKeepsRepository(t *testing.T) {
	src := buildFixture(t)
	// The snapshot holds an older copy of the repository.
	for name, content := range map[string]string{"data/backup/snapshots/old": "stale copy", "data/other.txt": "other"} {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	store, _ := dump(t, &Dumper{Dir: src})
	data, _ := store.Bytes(streamName)

	dst := filepath.Join(t.TempDir(), "dst")
	oldTree(t, dst)
	repo := filepath.Join(dst, "data", "backup")
	for name, content := range map[string]string{"snapshots/1/manifest.json": "{}", "snapshots/2/manifest.json": "{}", "snapshots/2/volume/x": "x"} {
		p := filepath.Join(repo, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dst, "data", "old-sibling"), []byte("old"), 0o644)
	repoBefore := listing(t, repo)

	var logs bytes.Buffer
	// Keep through a symbolic link to the target's parent.
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(filepath.Dir(dst), link); err != nil {
		t.Fatal(err)
	}
	r := &Restorer{Dir: dst, Force: true, Keep: []string{filepath.Join(link, "dst", "data", "backup")}, Log: logTo(&logs)}
	if _, err := r.Restore(context.Background(), oneStream(data)); err != nil {
		t.Fatal(err)
	}
	if after := listing(t, repo); after != repoBefore {
		t.Errorf("repository changed:\n%s\nwant:\n%s", after, repoBefore)
	}
	if !strings.Contains(logs.String(), "not restored") {
		t.Errorf("log %q, want a warning that the snapshot's copy of the repository is not restored", logs.String())
	}
	// Everything else is the snapshot's.
	os.RemoveAll(filepath.Join(src, "data", "backup"))
	os.RemoveAll(repo)
	if err := os.Chtimes(filepath.Join(dst, "data"), fixtureTime(0), mtimeOf(t, filepath.Join(src, "data"))); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, dst, compareOpts{})

	// A target inside the repository is refused before anything is written.
	_, err := (&Restorer{Dir: filepath.Join(dst, "data"), Force: true, Keep: []string{filepath.Join(dst, "data")}, Log: quiet}).Restore(context.Background(), oneStream(data))
	if !errors.Is(err, ErrKeptTarget) {
		t.Errorf("restore into the repository: %v, want ErrKeptTarget", err)
	}
}

func mtimeOf(t *testing.T, p string) time.Time {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.ModTime()
}

// TestKilledThenSnapshot: a snapshot of a folder that a killed --force
// restore left half replaced first completes that restore, says so, and
// archives exactly the new tree.
func TestKilledThenSnapshot(t *testing.T) {
	src, data, dst := killedFixture(t)
	wantNames := tarNames(t, data)
	killedRestore(t, dst, data, 4)
	var logs bytes.Buffer
	again, _ := dump(t, &Dumper{Dir: dst, Log: logTo(&logs)})
	if !strings.Contains(logs.String(), "an interrupted restore was completed") {
		t.Errorf("the snapshot logged %q, want it to say the interrupted restore was completed", logs.String())
	}
	d2, _ := again.Bytes(streamName)
	if got := tarNames(t, d2); !slices.Equal(got, wantNames) {
		t.Errorf("the snapshot holds %q, want %q", got, wantNames)
	}
	compareTrees(t, src, dst, compareOpts{})
}
