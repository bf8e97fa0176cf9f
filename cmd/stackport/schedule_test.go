package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackport/stackport/internal/treetest"
	"github.com/stackport/stackport/storage"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestSchedule(t *testing.T) {
	dir := t.TempDir()
	e := &testEnv{t: t, repo: "file://" + dir}
	src := treetest.Fixture(t, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr := make(chan string, 1)
	done := make(chan error, 1)
	opts := scheduleOptions{
		Cron: "* * * * * *", MetricsAddr: "127.0.0.1:0", HealthMaxAge: time.Hour,
		Snapshot: snapshotOptions{Volume: src, Compression: "zstd", Tags: []string{"job=test"}},
		Prune:    pruneOptions{Policy: storage.Policy{Last: 2}, Grace: time.Hour},
		ready:    func(a string) { addr <- a },
	}
	g := e.global()
	go func() { done <- runSchedule(ctx, g, opts) }()
	base := "http://" + <-addr
	if code, _ := httpGet(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz before the first run: %d", code)
	}

	// Wait for three runs: prune keeps two.
	repo, err := storage.Open(context.Background(), e.repo, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, metrics := httpGet(t, base+"/metrics")
		if strings.Contains(metrics, "stackport_snapshots 2") && !strings.Contains(metrics, "stackport_last_success_timestamp_seconds 0") {
			if !strings.Contains(metrics, "stackport_written_bytes_total") || strings.Contains(metrics, "stackport_written_bytes_total 0\n") {
				t.Fatalf("bytes written not counted:\n%s", metrics)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no two runs in time; metrics:\n%s", metrics)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond) // at least one more run, pruned
	ids, err := repo.List(context.Background())
	if err != nil || len(ids) != 2 {
		t.Fatalf("prune between runs: %v, %v", ids, err)
	}
	if code, _ := httpGet(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz after success: %d", code)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("schedule returned %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("schedule did not stop")
	}
}

func TestScheduleStopsCleanlyMidUpload(t *testing.T) {
	dir := t.TempDir()
	e := &testEnv{t: t, repo: "file://" + dir}
	big := bigTree(t, 64)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.onProgress = interruptAt(8<<20, cancel) // SIGTERM during the upload
	err := runSchedule(ctx, e.global(), scheduleOptions{Cron: "* * * * * *", Retries: 3, RetryBackoff: time.Second,
		Snapshot: snapshotOptions{Volume: big, Compression: "zstd"}})
	if err != nil {
		t.Fatalf("schedule: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "snapshots"))
	if len(entries) != 0 {
		t.Fatalf("a partial snapshot was left: %v", entries)
	}
}

func TestScheduleHealthFailsWhenStale(t *testing.T) {
	e := &testEnv{t: t, repo: "file://" + t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr := make(chan string, 1)
	go runSchedule(ctx, e.global(), scheduleOptions{Cron: "@yearly", MetricsAddr: "127.0.0.1:0", HealthMaxAge: time.Nanosecond,
		Snapshot: snapshotOptions{Volume: t.TempDir(), Compression: "zstd"}, ready: func(a string) { addr <- a }})
	a := <-addr
	time.Sleep(10 * time.Millisecond)
	if code, body := httpGet(t, "http://"+a+"/healthz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/healthz with no success: %d %s", code, body)
	}
}

func TestScheduleCountsFailuresByComponent(t *testing.T) {
	e := &testEnv{t: t, repo: "file://" + t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr := make(chan string, 1)
	go runSchedule(ctx, e.global(), scheduleOptions{Cron: "* * * * * *", MetricsAddr: "127.0.0.1:0", HealthMaxAge: time.Hour,
		Snapshot: snapshotOptions{Volume: t.TempDir(), Compression: "zstd", Mongo: "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300&connectTimeoutMS=300"},
		ready:    func(a string) { addr <- a }})
	base := "http://" + <-addr
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, metrics := httpGet(t, base+"/metrics")
		if strings.Contains(metrics, `stackport_failures_total{component="mongo"} 1`) {
			if !strings.Contains(metrics, "stackport_last_success_timestamp_seconds 0") {
				t.Fatalf("a failed run counted as success:\n%s", metrics)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no mongo failure counted:\n%s", metrics)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
