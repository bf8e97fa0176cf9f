package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/treetest"
	"github.com/stackport/stackport/migrate"
)

// appsmithStack builds a fake Appsmith stack folder: a tree, docker.env
// (env), the raw files of the embedded databases, logs and backups.
func appsmithStack(t *testing.T, env string) string {
	t.Helper()
	stack := treetest.Fixture(t, t.TempDir())
	for name, data := range map[string]string{
		"configuration/docker.env":       env,
		"data/mongodb/WiredTiger":        "raw database file",
		"data/redis/dump.rdb":            "raw redis file",
		"logs/backend/backend.log":       "a log line",
		"data/backup/appsmith.tar.gz":    "an old backup",
		"git-storage/repo/.git/HEAD":     "ref: refs/heads/main\n",
		"ssl/fullchain.pem":              "certificate",
		"letsencrypt/live/x/privkey.pem": "key",
	} {
		os.MkdirAll(filepath.Join(stack, filepath.Dir(name)), 0o755)
		if err := os.WriteFile(filepath.Join(stack, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return stack
}

// runCLI runs stackport with args, returning its error and stderr.
func runCLI(t *testing.T, args ...string) (error, string) {
	t.Helper()
	cmd := newRootCommand()
	cmd.SetArgs(args)
	var stdout, stderr bytes.Buffer
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	t.Setenv("STACKPORT_REPO", "")
	err := cmd.Execute()
	return err, stdout.String() + stderr.String()
}

// TestSnapshotRestoreAppsmithProfile: `snapshot --profile appsmith --stack
// DIR` takes the volume without the raw database files, logs and backups
// and the MongoDB and Redis of docker.env; `restore --profile appsmith
// --stack DIR2` puts the volume into DIR2 and the databases where the
// flags say.
func TestSnapshotRestoreAppsmithProfile(t *testing.T) {
	ctx := context.Background()
	_, msrc := lab.Mongo(t)
	_, mdst := lab.Mongo(t)
	seedMongo(t, msrc, 30)
	_, rsrc := lab.Redis(t)
	_, rdst := lab.Redis(t)
	ropt, _ := goredis.ParseURL(rsrc)
	rc := goredis.NewClient(ropt)
	defer rc.Close()
	for i := range 50 {
		rc.Set(ctx, fmt.Sprintf("session:%d", i), "v", 0)
	}
	stack := appsmithStack(t, "APPSMITH_DB_URL="+lab.MongoURI(msrc, "appsmith")+"\nAPPSMITH_REDIS_URL="+rsrc+
		"\nAPPSMITH_ENCRYPTION_PASSWORD=pw\nAPPSMITH_ENCRYPTION_SALT=salt\n")
	repo := "file://" + t.TempDir()

	e := &testEnv{t: t, repo: repo}
	id, err := e.snapshot(ctx, snapshotOptions{Profile: profileOptions{"appsmith", stack}})
	if err != nil {
		t.Fatalf("snapshot: %v\n%s", err, e.stderr.String())
	}
	if log := e.stderr.String(); !strings.Contains(log, "appsmith profile: source from APPSMITH_DB_URL") ||
		!strings.Contains(log, "holds APPSMITH_ENCRYPTION_* secrets and the snapshot is not encrypted") {
		t.Errorf("snapshot log:\n%s", log)
	}
	l := e.list()
	if len(l) != 1 || l[0].ID != id || strings.Join(slices.Sorted(slices.Values(l[0].Components)), ",") != "mongo,redis,volume" {
		t.Fatalf("list: %+v", l)
	}

	// Through the command line: the flags are wired.
	restored := filepath.Join(t.TempDir(), "appsmith-stacks")
	if err, out := runCLI(t, "restore", "latest", "--repo", repo, "--profile", "appsmith", "--stack", restored,
		"--mongo-to", mdst, "--redis-to", rdst); err != nil {
		t.Fatalf("restore --profile: %v\n%s", err, out)
	}
	if err := (migrate.Volume{Source: stack, Target: restored, Exclude: migrate.AppsmithExcludes}).Check(ctx); err != nil {
		t.Errorf("the restored stack: %v", err)
	}
	for _, gone := range []string{"data/mongodb", "data/redis", "logs", "data/backup"} {
		if _, err := os.Lstat(filepath.Join(restored, gone)); err == nil {
			t.Errorf("%s was snapshotted", gone)
		}
	}
	if got := rawByID(t, lab.MongoClient(t, mdst).Database("appsmith").Collection("user")); len(got) != 30 {
		t.Errorf("restored appsmith.user: %d documents", len(got))
	}
	dopt, _ := goredis.ParseURL(rdst)
	dc := goredis.NewClient(dopt)
	defer dc.Close()
	if n := dc.DBSize(ctx).Val(); n != 50 {
		t.Errorf("restored Redis: %d keys", n)
	}

	// And a snapshot through the command line.
	if err, out := runCLI(t, "snapshot", "--repo", repo, "--profile", "appsmith", "--stack", stack); err != nil {
		t.Fatalf("snapshot --profile: %v\n%s", err, out)
	}
}

// TestAppsmithProfileBadInput: a stack without docker.env, conflicting
// flags, a restore with --force over a stack whose embedded databases'
// files it would remove, and a restored stack without the encryption
// values (a loud warning).
func TestAppsmithProfileBadInput(t *testing.T) {
	repo := "file://" + t.TempDir()
	empty := t.TempDir()
	stack := appsmithStack(t, "APPSMITH_INSTANCE_NAME=x\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"snapshot", "--repo", repo, "--profile", "appsmith", "--stack", empty}, "configuration/docker.env"},
		{[]string{"snapshot", "--repo", repo, "--profile", "appsmith"}, "--profile appsmith needs --stack DIR"},
		{[]string{"snapshot", "--repo", repo, "--stack", stack}, "--stack needs --profile appsmith"},
		{[]string{"snapshot", "--repo", repo, "--profile", "odoo", "--stack", stack}, "unknown profile"},
		{[]string{"snapshot", "--repo", repo, "--profile", "appsmith", "--stack", stack, "--volume", empty}, "name two volumes"},
		{[]string{"restore", "--repo", repo, "--profile", "appsmith"}, "--profile appsmith needs --stack DIR"},
		{[]string{"restore", "--repo", repo, "--profile", "appsmith", "--stack", stack, "--volume-to", empty}, "name two targets"},
		{[]string{"restore", "--repo", repo, "--profile", "appsmith", "--stack", stack, "--force"}, "--force would remove data/mongodb, data/redis of the stack"},
	} {
		err, out := runCLI(t, tc.args...)
		if exitCode(err) != 2 || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("stackport %s: exit %d (%v), want 2 and %q\n%s", strings.Join(tc.args, " "), exitCode(err), err, tc.want, out)
		}
	}

	// A stack without the encryption values: the snapshot warns, and so
	// does the restore of it.
	e := &testEnv{t: t, repo: repo}
	if _, err := e.snapshot(context.Background(), snapshotOptions{Profile: profileOptions{"appsmith", stack}}); err != nil {
		t.Fatalf("snapshot: %v\n%s", err, e.stderr.String())
	}
	const warning = "the Appsmith stack does not set APPSMITH_ENCRYPTION_PASSWORD and APPSMITH_ENCRYPTION_SALT"
	if !strings.Contains(e.stderr.String(), warning+": an instance restored from the snapshot could not decrypt") {
		t.Errorf("snapshot without encryption values:\n%s", e.stderr.String())
	}
	restored := filepath.Join(t.TempDir(), "stacks")
	if err := runRestore(context.Background(), e.global(), restoreOptions{Profile: profileOptions{"appsmith", restored}}, "latest"); err != nil {
		t.Fatalf("restore: %v\n%s", err, e.stderr.String())
	}
	if !strings.Contains(e.stderr.String(), warning+": the restored instance could not decrypt") {
		t.Errorf("restore without encryption values:\n%s", e.stderr.String())
	}

	// A snapshot of something else restored as an Appsmith stack: no
	// docker.env, a warning.
	id := e.mustSnapshot(bigTree(t, 1))
	other := filepath.Join(t.TempDir(), "stacks")
	if err := runRestore(context.Background(), e.global(), restoreOptions{Profile: profileOptions{"appsmith", other}}, id); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.stderr.String(), "the restored stack is not a complete Appsmith stack") {
		t.Errorf("restore of a non-Appsmith volume:\n%s", e.stderr.String())
	}
}
