package main

// Issue 13, "Retention and schedule": negative retention values, retention
// and latest across hosts, cron expressions that never fire, schedule flags
// checked only at the first run, an empty snapshot argument taken as latest.
// Every test runs the command line in process against a real file://
// repository.

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

// cliResult is what one in-process run of the command line gave.
type cliResult struct {
	stdout, stderr string
	err            error
	code           int
}

// stackportCLI runs stackport with args as main does (the real command tree,
// flag parsing, exit codes), its stdout and stderr captured, and ctx as the
// signal context. A panic fails the test instead of the test binary.
func stackportCLI(t *testing.T, ctx context.Context, args ...string) (res cliResult) {
	t.Helper()
	dir := t.TempDir()
	out, err := os.Create(filepath.Join(dir, "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	errf, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("STACKPORT_REPO", "")
	t.Setenv(passphraseEnv, "")
	saveOut, saveErr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = out, errf // newRootCommand takes them once
	cmd := newRootCommand()
	os.Stdout, os.Stderr = saveOut, saveErr
	cmd.SetOut(out) // --help
	cmd.SetErr(errf)
	cmd.SetArgs(args)
	func() {
		defer func() {
			if p := recover(); p != nil {
				res.err = fmt.Errorf("panic: %v", p)
			}
		}()
		res.err = cmd.ExecuteContext(ctx)
	}()
	out.Close()
	errf.Close()
	b, _ := os.ReadFile(out.Name())
	res.stdout = string(b)
	b, _ = os.ReadFile(errf.Name())
	res.stderr = string(b)
	res.code = exitCode(res.err)
	if strings.HasPrefix(fmt.Sprint(res.err), "panic: ") {
		t.Errorf("stackport %s panicked: %v", strings.Join(args, " "), res.err)
		res.code = -1
	}
	return res
}

// seedAt writes a snapshot of host taken at ts straight into the repository.
func seedAt(t *testing.T, repo *storage.Repo, ts time.Time, host string, tags map[string]string) string {
	t.Helper()
	w, err := snapshot.NewWriter(context.Background(), repo, snapshot.Options{Now: func() time.Time { return ts }, Host: host, Tags: tags})
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

func openFileRepo(t *testing.T, dir string) *storage.Repo {
	t.Helper()
	repo, err := storage.Open(context.Background(), "file://"+dir, storage.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { repo.Close() })
	return repo
}

func listIDs(t *testing.T, repo *storage.Repo) []string {
	t.Helper()
	ids, err := repo.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestRetentionNegativeRefused: a negative count (other than -1) or a
// negative --keep-within, in prune and in schedule, is a usage error naming
// the flag, and nothing is deleted or taken. They used to keep nothing:
// prune deleted every snapshot but the newest.
func TestRetentionNegativeRefused(t *testing.T) {
	dir := t.TempDir()
	repo := openFileRepo(t, dir)
	now := time.Now().UTC().Truncate(time.Second)
	var all []string
	for i := range 6 {
		all = append(all, seedAt(t, repo, now.Add(-time.Duration(6-i)*25*time.Hour), "alpha", nil))
	}
	slices.Sort(all)
	volume := t.TempDir()
	for _, bad := range [][]string{
		{"--keep-last", "-2"}, {"--keep-hourly", "-3"}, {"--keep-daily", "-3"}, {"--keep-weekly", "-2"},
		{"--keep-monthly", "-5"}, {"--keep-yearly", "-9"}, {"--keep-within", "-5h"}, {"--keep-within", "-5d"},
		{"--keep-within", "-2w"}, {"--keep-last", "3", "--keep-daily", "-3"}, {"--keep-within", "0s"}, {},
		{"--keep-last", "3", "--leftover-grace", "-1h"}, {"--keep-last", "3", "--group-by", "hostname"},
	} {
		flag := "--keep-" // no rule: "no --keep-… rule given"
		if len(bad) > 0 && bad[len(bad)-1] != "0s" {
			flag = bad[len(bad)-2]
		}
		args := append([]string{"prune", "--repo", "file://" + dir}, bad...)
		res := stackportCLI(t, context.Background(), args...)
		if res.code != 2 || !strings.Contains(res.err.Error(), flag) {
			t.Errorf("stackport %s: exit %d (%v), want 2 naming %s", strings.Join(args, " "), res.code, res.err, flag)
		}
		if len(bad) == 0 {
			continue // schedule without --keep flags does not prune
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		args = append([]string{"schedule", "--repo", "file://" + dir, "--cron", "* * * * * *", "--volume", volume, "--host", "alpha"}, bad...)
		res = stackportCLI(t, ctx, args...)
		cancel()
		if res.code != 2 || !strings.Contains(res.err.Error(), flag) {
			t.Errorf("stackport %s: exit %d (%v), want 2 naming %s", strings.Join(args, " "), res.code, res.err, flag)
		}
		if got := listIDs(t, repo); !slices.Equal(got, all) {
			t.Fatalf("after stackport %s the repository holds %v, want %v", strings.Join(args, " "), got, all)
		}
	}
}

// TestRetentionMinusOneKeepsAll: -1 is restic's "keep all" for the count
// flags: --keep-last -1 keeps every snapshot, --keep-daily -1 the newest of
// every day (it used to keep nothing).
func TestRetentionMinusOneKeepsAll(t *testing.T) {
	dir := t.TempDir()
	repo := openFileRepo(t, dir)
	day := time.Date(2026, 3, 1, 3, 0, 0, 0, time.UTC)
	var newestOfDay, older []string
	for d := range 5 {
		older = append(older, seedAt(t, repo, day.Add(time.Duration(d)*24*time.Hour), "alpha", nil))
		newestOfDay = append(newestOfDay, seedAt(t, repo, day.Add(time.Duration(d)*24*time.Hour+time.Hour), "alpha", nil))
	}
	all := listIDs(t, repo)
	res := stackportCLI(t, context.Background(), "prune", "--repo", "file://"+dir, "--keep-last", "-1", "--json")
	if res.err != nil {
		t.Fatalf("prune --keep-last -1: %v\n%s", res.err, res.stderr)
	}
	if got := listIDs(t, repo); !slices.Equal(got, all) {
		t.Fatalf("--keep-last -1 deleted snapshots: %v left of %v", got, all)
	}
	res = stackportCLI(t, context.Background(), "prune", "--repo", "file://"+dir, "--keep-daily", "-1")
	if res.err != nil {
		t.Fatalf("prune --keep-daily -1: %v\n%s", res.err, res.stderr)
	}
	slices.Sort(newestOfDay)
	if got := listIDs(t, repo); !slices.Equal(got, newestOfDay) {
		t.Fatalf("--keep-daily -1 left %v, want the newest of each day %v (deleted %v)", got, newestOfDay, older)
	}
	for _, want := range []string{"ACTION", "HOST", "alpha", "daily"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("prune's table lacks %q:\n%s", want, res.stdout)
		}
	}
	help := stackportCLI(t, context.Background(), "prune", "--help")
	for _, want := range []string{"-1 keeps all", "--group-by", "--host"} {
		if !strings.Contains(help.stdout, want) {
			t.Errorf("prune --help does not teach %q", want)
		}
	}
}

// TestRetentionGroupsByHost: two hosts snapshot into one repository every
// day, one an hour after the other. --keep-daily 7 used to keep only the
// later host's snapshot of each day and delete every one of the other host;
// by default each host is now a group of its own.
func TestRetentionGroupsByHost(t *testing.T) {
	seedTwo := func(t *testing.T) (string, *storage.Repo, map[string][]string) {
		dir := t.TempDir()
		repo := openFileRepo(t, dir)
		ids := map[string][]string{}
		day := time.Date(2026, 3, 1, 3, 0, 0, 0, time.UTC)
		for d := range 10 {
			at := day.Add(time.Duration(d) * 24 * time.Hour)
			ids["alpha"] = append(ids["alpha"], seedAt(t, repo, at, "alpha", map[string]string{"env": "prod"}))
			ids["beta"] = append(ids["beta"], seedAt(t, repo, at.Add(time.Hour), "beta", map[string]string{"env": "prod"}))
		}
		return "file://" + dir, repo, ids
	}
	byHost := func(t *testing.T, repo *storage.Repo) map[string][]string {
		got := map[string][]string{}
		for _, id := range listIDs(t, repo) {
			m, err := snapshot.Load(context.Background(), repo, id)
			if err != nil {
				t.Fatal(err)
			}
			got[m.Host] = append(got[m.Host], id)
		}
		return got
	}

	t.Run("default", func(t *testing.T) {
		url, repo, ids := seedTwo(t)
		res := stackportCLI(t, context.Background(), "prune", "--repo", url, "--keep-daily", "7", "--json")
		if res.err != nil {
			t.Fatalf("prune: %v\n%s", res.err, res.stderr)
		}
		got := byHost(t, repo)
		for _, h := range []string{"alpha", "beta"} {
			if !slices.Equal(got[h], ids[h][3:]) {
				t.Errorf("host %s: kept %v, want its 7 newest %v", h, got[h], ids[h][3:])
			}
		}
		var entries []pruneEntry
		if err := json.Unmarshal([]byte(res.stdout), &entries); err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Host == "" || !strings.Contains(e.Group, e.Host) {
				t.Errorf("entry without its host and group: %+v", e)
			}
		}
	})
	t.Run("host filter", func(t *testing.T) {
		url, repo, ids := seedTwo(t)
		res := stackportCLI(t, context.Background(), "prune", "--repo", url, "--host", "alpha", "--keep-last", "2")
		if res.err != nil {
			t.Fatalf("prune: %v\n%s", res.err, res.stderr)
		}
		got := byHost(t, repo)
		if !slices.Equal(got["alpha"], ids["alpha"][8:]) || !slices.Equal(got["beta"], ids["beta"]) {
			t.Fatalf("prune --host alpha --keep-last 2 left %v", got)
		}
		res = stackportCLI(t, context.Background(), "prune", "--repo", url, "--host", "gamma", "--keep-last", "1")
		if res.code != 1 || !strings.Contains(res.err.Error(), `"alpha", "beta"`) || !errors.Is(res.err, snapshot.ErrNotFound) {
			t.Fatalf("prune --host gamma: exit %d (%v), want 1 naming the hosts there are", res.code, res.err)
		}
		if got2 := byHost(t, repo); len(got2["beta"]) != 10 || len(got2["alpha"]) != 2 {
			t.Fatalf("prune --host gamma deleted: %v", got2)
		}
	})
	t.Run("group by tags", func(t *testing.T) {
		url, repo, ids := seedTwo(t)
		// One group (same tags): the policy across both hosts, as before.
		res := stackportCLI(t, context.Background(), "prune", "--repo", url, "--group-by", "tags", "--keep-daily", "7")
		if res.err != nil {
			t.Fatalf("prune: %v\n%s", res.err, res.stderr)
		}
		got := byHost(t, repo)
		if len(got["alpha"]) != 0 || !slices.Equal(got["beta"], ids["beta"][3:]) {
			t.Fatalf("--group-by tags: %v", got)
		}
	})
}

// TestSchedulePrunesOnlyItsOwnHost: a scheduler prunes the snapshots of its
// host (and tags) only; it used to apply its policy to every host's.
func TestSchedulePrunesOnlyItsOwnHost(t *testing.T) {
	dir := t.TempDir()
	repo := openFileRepo(t, dir)
	var others []string
	for i := range 3 {
		others = append(others, seedAt(t, repo, time.Now().Add(-time.Duration(3-i)*time.Hour), "other", nil))
	}
	e := &testEnv{t: t, repo: "file://" + dir}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr := make(chan string, 1)
	done := make(chan error, 1)
	opts := scheduleOptions{Cron: "* * * * * *", MetricsAddr: "127.0.0.1:0", HealthMaxAge: time.Hour, RetryBackoff: time.Second,
		Snapshot: snapshotOptions{Volume: t.TempDir(), Compression: "zstd", Host: "sched"},
		Prune:    pruneOptions{Policy: storage.Policy{Last: 1}, Grace: time.Hour},
		ready:    func(a string) { addr <- a }}
	g := e.global()
	go func() { done <- runSchedule(ctx, g, opts) }()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case err := <-done:
		t.Fatalf("schedule: %v", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, metrics := httpGet(t, base+"/metrics")
		if !strings.Contains(metrics, "stackport_last_success_timestamp_seconds 0") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no scheduled run:\n%s", metrics)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var mine, theirs []string
	for _, id := range listIDs(t, repo) {
		m, err := snapshot.Load(context.Background(), repo, id)
		if err != nil {
			t.Fatal(err)
		}
		if m.Host == "sched" {
			mine = append(mine, id)
		} else {
			theirs = append(theirs, id)
		}
	}
	if !slices.Equal(theirs, others) || len(mine) != 1 {
		t.Fatalf("after a scheduled run with --keep-last 1: the other host's %v (want %v), the scheduler's %v", theirs, others, mine)
	}
}

// TestScheduleRefusesBadCron: an expression that never fires, or an @every
// interval that is not positive, made schedule take snapshots in a tight
// loop (robfig/cron's Next returns the zero time, always due; @every 0s
// runs every second). They are usage errors naming the expression, before
// anything is written.
func TestScheduleRefusesBadCron(t *testing.T) {
	for _, expr := range []string{"0 0 30 2 *", "0 0 31 4 *", "@every 0s", "@every -5m", "@every 500ms", "TZ=UTC @every 0s", "TZ=UTC", "0 0 30 2 * *"} {
		dir := t.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		res := stackportCLI(t, ctx, "schedule", "--repo", "file://"+dir, "--cron", expr, "--volume", t.TempDir(), "--keep-last", "3")
		cancel()
		if res.code != 2 || !strings.Contains(res.err.Error(), fmt.Sprintf("%q", expr)) {
			t.Errorf("schedule --cron %q: exit %d (%v), want 2 naming the expression", expr, res.code, res.err)
		}
		if entries, _ := os.ReadDir(filepath.Join(dir, "snapshots")); len(entries) != 0 {
			t.Errorf("schedule --cron %q took %d snapshots", expr, len(entries))
		}
	}
	// Expressions that do fire still start.
	for _, expr := range []string{"0 0 29 2 *", "@every 1s", "@yearly", "TZ=UTC 0 3 * * *"} {
		if _, err := parseCron(expr, time.Now()); err != nil {
			t.Errorf("parseCron(%q): %v", expr, err)
		}
	}
}

// TestScheduleChecksFlagsAtStart: schedule refuses every bad flag at start,
// with the checks snapshot and prune make, instead of at its first run
// (hours later: here a year). Nothing is written.
func TestScheduleChecksFlagsAtStart(t *testing.T) {
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	volume := t.TempDir()
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--compression", "lz4"}, 2, "lz4"},
		{[]string{"--level", "99"}, 2, "level"},
		{[]string{"--tag", "novalue"}, 2, "novalue"},
		{[]string{"--encrypt-to", "bogus-key"}, 2, "--encrypt-to"},
		{[]string{"--encrypt-to", "age1notakey"}, 2, "--encrypt-to"},
		{[]string{"--passphrase-file", filepath.Join(volume, "missing")}, 1, "passphrase"},
		{[]string{"--jitter", "-1m"}, 2, "--jitter"},
		{[]string{"--retries", "-1"}, 2, "--retries"},
		{[]string{"--retry-backoff", "-1s"}, 2, "--retry-backoff"},
		{[]string{"--metrics-addr", "127.0.0.1:0", "--healthz-max-age", "0s"}, 2, "--healthz-max-age"},
		{[]string{"--keep-daily", "-3"}, 2, "--keep-daily"},
		{[]string{"--keep-within", "-5h"}, 2, "--keep-within"},
		{[]string{"--keep-last", "2", "--group-by", "planet"}, 2, "--group-by"},
		{[]string{"--repo", "file://" + notDir + "/repo"}, 1, "repository"},
		{[]string{"--volume", filepath.Join(volume, "missing")}, 1, "volume"},
	} {
		dir := t.TempDir()
		args := append([]string{"schedule", "--repo", "file://" + dir, "--cron", "@yearly", "--volume", volume}, c.args...)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		start := time.Now()
		res := stackportCLI(t, ctx, args...)
		cancel()
		if res.code != c.code || !strings.Contains(fmt.Sprint(res.err), c.want) || time.Since(start) > 2*time.Second {
			t.Errorf("stackport %s: exit %d (%v) after %s, want %d at once naming %q", strings.Join(args, " "), res.code, res.err,
				time.Since(start).Round(time.Millisecond), c.code, c.want)
		}
		if entries, _ := os.ReadDir(filepath.Join(dir, "snapshots")); len(entries) != 0 {
			t.Errorf("stackport %s wrote %d snapshots", strings.Join(args, " "), len(entries))
		}
	}
}

// hostRepo is a repository with one volume snapshot of each host, in that
// order, each of a tree whose file "who" names the host ("(this host)": a
// snapshot recorded with this machine's host name, as snapshot does by
// default).
func hostRepo(t *testing.T, hosts ...string) (url string, ids map[string]string) {
	t.Helper()
	e := &testEnv{t: t, repo: "file://" + t.TempDir()}
	ids = map[string]string{}
	for _, h := range hosts {
		src := t.TempDir()
		if err := os.WriteFile(filepath.Join(src, "who"), []byte(h), 0o644); err != nil {
			t.Fatal(err)
		}
		host := h
		if h == "(this host)" {
			host = ""
		}
		id, err := e.snapshot(context.Background(), snapshotOptions{Volume: src, Host: host})
		if err != nil {
			t.Fatalf("snapshot: %v\n%s", err, e.stderr.String())
		}
		ids[h] = id
		time.Sleep(10 * time.Millisecond) // distinct creation times
	}
	return e.repo, ids
}

// restoredWho restores ref with args into a new folder and returns its
// "who" file.
func restoredWho(t *testing.T, url, ref string, args ...string) (string, cliResult) {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "restored")
	res := stackportCLI(t, context.Background(), append([]string{"restore", ref, "--repo", url, "--volume-to", dst}, args...)...)
	b, _ := os.ReadFile(filepath.Join(dst, "who"))
	return string(b), res
}

// TestHostLatest: with snapshots of several hosts, latest in restore,
// verify and export is the newest of --host, else of this host, and never
// silently another host's (it used to be the newest of any host). With one
// host, latest is that host's newest. A missing host names those there are.
func TestHostLatest(t *testing.T) {
	local := localHost()
	if slices.Contains([]string{"alpha", "beta", "gamma"}, local) {
		t.Fatalf("this machine's host name %q is one the test gives other hosts", local)
	}
	t.Run("two other hosts", func(t *testing.T) {
		url, ids := hostRepo(t, "alpha", "beta")
		who, res := restoredWho(t, url, "latest")
		if res.code != 1 || !errors.Is(res.err, snapshot.ErrNotFound) || who != "" ||
			!strings.Contains(res.err.Error(), `"alpha", "beta"`) || !strings.Contains(res.err.Error(), "--host") {
			t.Fatalf("restore latest with two other hosts: restored %q, exit %d (%v); want 1 naming the hosts", who, res.code, res.err)
		}
		who, res = restoredWho(t, url, "latest", "--host", "alpha")
		if res.err != nil || who != "alpha" {
			t.Fatalf("restore latest --host alpha: restored %q, %v\n%s", who, res.err, res.stderr)
		}
		if !strings.Contains(res.stderr, "host=alpha") || !strings.Contains(res.stderr, ids["alpha"]) {
			t.Errorf("restore does not log the host it chose:\n%s", res.stderr)
		}
		who, res = restoredWho(t, url, "latest", "--host", "gamma")
		if res.code != 1 || who != "" || !strings.Contains(res.err.Error(), `no snapshot of host "gamma"`) || !strings.Contains(res.err.Error(), `"alpha", "beta"`) {
			t.Fatalf("restore latest --host gamma: restored %q, exit %d (%v)", who, res.code, res.err)
		}
		who, res = restoredWho(t, url, ids["beta"], "--host", "alpha")
		if res.code != 2 || who != "" || !strings.Contains(res.err.Error(), "beta") {
			t.Fatalf("restore BETA-ID --host alpha: restored %q, exit %d (%v); want 2", who, res.code, res.err)
		}
		who, res = restoredWho(t, url, ids["alpha"])
		if res.err != nil || who != "alpha" {
			t.Fatalf("restore by ID: %q, %v", who, res.err)
		}

		res = stackportCLI(t, context.Background(), "verify", "latest", "--repo", url, "--host", "beta")
		if res.err != nil || !strings.Contains(res.stdout, ids["beta"]) || !strings.Contains(res.stdout, "host beta") {
			t.Fatalf("verify latest --host beta: %v, %q", res.err, res.stdout)
		}
		res = stackportCLI(t, context.Background(), "verify", "--repo", url)
		if res.code != 1 || !strings.Contains(res.err.Error(), `"alpha", "beta"`) {
			t.Fatalf("verify with two other hosts: exit %d (%v)", res.code, res.err)
		}

		out := filepath.Join(t.TempDir(), "v.tar")
		res = stackportCLI(t, context.Background(), "export", "latest", "--repo", url, "--host", "alpha", "--out", out)
		if res.err != nil || tarFile(t, out, "who") != "alpha" {
			t.Fatalf("export latest --host alpha: %v", res.err)
		}
		res = stackportCLI(t, context.Background(), "export", "latest", "--repo", url, "--out", out+"2")
		if res.code != 1 || !strings.Contains(res.err.Error(), `"alpha", "beta"`) {
			t.Fatalf("export with two other hosts: exit %d (%v)", res.code, res.err)
		}
		if _, err := os.Stat(out + "2"); err == nil {
			t.Fatal("export wrote a file")
		}

		res = stackportCLI(t, context.Background(), "list", "--repo", url, "--host", "alpha", "--json")
		var entries []listEntry
		if err := json.Unmarshal([]byte(res.stdout), &entries); err != nil || len(entries) != 1 || entries[0].ID != ids["alpha"] {
			t.Fatalf("list --host alpha: %v, %+v (%v)", err, entries, res.err)
		}
		res = stackportCLI(t, context.Background(), "list", "--repo", url)
		if res.err != nil || !strings.Contains(res.stdout, "alpha") || !strings.Contains(res.stdout, "beta") {
			t.Fatalf("list: %v\n%s", res.err, res.stdout)
		}
	})
	t.Run("this host and a newer other", func(t *testing.T) {
		url, _ := hostRepo(t, "(this host)", "beta")
		who, res := restoredWho(t, url, "latest")
		if res.err != nil || who != "(this host)" {
			t.Fatalf("restore latest: restored %q, %v; want this host's (%s), not beta's newer one", who, res.err, local)
		}
		if !strings.Contains(res.stderr, "the newest of this host") {
			t.Errorf("restore does not say whose latest it took:\n%s", res.stderr)
		}
		who, _ = restoredWho(t, url, "latest", "--host", "beta")
		if who != "beta" {
			t.Fatalf("--host beta restored %q", who)
		}
	})
	t.Run("one other host", func(t *testing.T) {
		url, _ := hostRepo(t, "alpha")
		who, res := restoredWho(t, url, "latest")
		if res.err != nil || who != "alpha" {
			t.Fatalf("restore latest with one host: %q, %v", who, res.err)
		}
		if !strings.Contains(res.stderr, "the only host") {
			t.Errorf("restore does not say it took the only host's:\n%s", res.stderr)
		}
	})
	help := stackportCLI(t, context.Background(), "restore", "--help")
	if !strings.Contains(help.stdout, "--host") {
		t.Error("restore --help does not teach --host")
	}
}

// tarFile returns the content of name in the tar file at path.
func tarFile(t *testing.T, path, name string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s: no %s: %v", path, name, err)
		}
		if strings.TrimPrefix(h.Name, "./") == name {
			b, _ := io.ReadAll(tr)
			return string(b)
		}
	}
}

// TestRestoreVerifyExportEmptyID: an empty snapshot argument (restore "$ID"
// with ID unset) is a usage error; it used to mean latest.
func TestRestoreVerifyExportEmptyID(t *testing.T) {
	url, _ := hostRepo(t, "alpha")
	dst := filepath.Join(t.TempDir(), "restored")
	out := filepath.Join(t.TempDir(), "v.tar")
	for _, args := range [][]string{
		{"restore", "", "--volume-to", dst},
		{"restore", "", "--volume-to", dst, "--host", "alpha"},
		{"verify", ""},
		{"export", "", "--out", out},
	} {
		res := stackportCLI(t, context.Background(), append(args, "--repo", url)...)
		if res.code != 2 || !strings.Contains(res.err.Error(), "snapshot ID is empty") || res.stdout != "" {
			t.Errorf("stackport %q: exit %d (%v), stdout %q; want 2: snapshot ID is empty", args, res.code, res.err, res.stdout)
		}
	}
	for _, p := range []string{dst, out} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s was written", p)
		}
	}
}
