package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/storage"
)

type oneStream struct{}

func (oneStream) Dump(ctx context.Context, out snapshot.StreamWriter) (snapshot.Stats, error) {
	w, err := out.Create("x")
	if err != nil {
		return nil, err
	}
	io.WriteString(w, "x")
	return snapshot.Stats{}, w.Close()
}

// seed writes a snapshot taken at t with tags straight into the repository.
func seed(t *testing.T, repo *storage.Repo, ts time.Time, tags map[string]string) string {
	t.Helper()
	w, err := snapshot.NewWriter(context.Background(), repo, snapshot.Options{Now: func() time.Time { return ts }, Tags: tags})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Add("volume", oneStream{}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	return w.ID()
}

func TestPrune(t *testing.T) {
	dir := t.TempDir()
	url := "file://" + dir
	repo, err := storage.Open(context.Background(), url, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	now := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)
	var daily, staging []string
	for i := range 10 { // one a day, newest last
		daily = append(daily, seed(t, repo, now.Add(-time.Duration(10-i)*24*time.Hour), map[string]string{"env": "prod"}))
	}
	staging = append(staging, seed(t, repo, now.Add(-20*24*time.Hour), map[string]string{"env": "staging"}))
	// Leftovers: an old failed run and a run in progress.
	old := now.Add(-3*24*time.Hour).Format("20060102T150405Z") + "-dead00"
	running := now.Add(-time.Hour).Format("20060102T150405Z") + "-beef00"
	for _, id := range []string{old, running} {
		os.MkdirAll(filepath.Join(dir, "snapshots", id, "volume"), 0o755)
		os.WriteFile(filepath.Join(dir, "snapshots", id, "volume", "x.zst"), []byte("partial"), 0o644)
	}

	e := &testEnv{t: t, repo: url}
	prune := func(opts pruneOptions) []pruneEntry {
		t.Helper()
		g := e.global()
		g.JSON = true
		opts.now = now
		if opts.Grace == 0 {
			opts.Grace = 24 * time.Hour
		}
		if err := runPrune(context.Background(), g, opts); err != nil {
			t.Fatal(err)
		}
		var entries []pruneEntry
		if err := json.Unmarshal(e.stdout.Bytes(), &entries); err != nil {
			t.Fatal(err)
		}
		return entries
	}
	actions := func(entries []pruneEntry) map[string]string {
		m := map[string]string{}
		for _, x := range entries {
			m[x.ID] = x.Action
		}
		return m
	}

	// A dry run decides but deletes nothing.
	dry := actions(prune(pruneOptions{Policy: storage.Policy{Last: 3}, Tags: []string{"env=prod"}, DryRun: true}))
	if dry[daily[9]] != "keep" || dry[daily[6]] != "delete" || dry[old] != "delete" || dry[running] != "keep" {
		t.Fatalf("dry run decisions: %v", dry)
	}
	if _, ok := dry[staging[0]]; ok {
		t.Fatalf("--tag env=prod considered a staging snapshot: %v", dry)
	}
	if ids, _ := repo.List(context.Background()); len(ids) != 11 {
		t.Fatalf("dry run deleted: %d left", len(ids))
	}

	prune(pruneOptions{Policy: storage.Policy{Last: 3}, Tags: []string{"env=prod"}})
	ids, _ := repo.List(context.Background())
	want := []string{staging[0], daily[7], daily[8], daily[9]}
	slices.Sort(want)
	if strings.Join(ids, ",") != strings.Join(want, ",") {
		t.Fatalf("after prune: %v, want %v", ids, want)
	}
	folders, _ := repo.Folders(context.Background())
	for _, f := range folders {
		if f.ID == old {
			t.Fatal("the old leftover was not removed")
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "snapshots", running)); err != nil {
		t.Fatal("a run in progress was touched")
	}

	// The newest snapshot survives any policy.
	got := actions(prune(pruneOptions{Policy: storage.Policy{Within: time.Hour}, Tags: []string{"env=staging"}}))
	if got[staging[0]] != "keep" {
		t.Fatalf("the only staging snapshot was deleted: %v", got)
	}
	got = actions(prune(pruneOptions{Policy: storage.Policy{Monthly: 1}}))
	if got[daily[9]] != "keep" {
		t.Fatalf("newest deleted: %v", got)
	}
	for _, id := range []string{daily[7], daily[8], staging[0]} {
		if got[id] != "delete" {
			t.Errorf("%s: %s, want delete", id, got[id])
		}
	}
}

func TestPruneRefusesEmptyPolicy(t *testing.T) {
	err := runPrune(context.Background(), (&testEnv{t: t, repo: "mem://"}).global(), pruneOptions{})
	if exitCode(err) != 2 {
		t.Fatalf("exit %d: %v", exitCode(err), err)
	}
}
