package main

import (
	"context"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stackport/stackport/internal/faultproxy"
	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/treetest"
)

// TestFaultGCS runs the bucket fault suite against fake-gcs-server. The
// emulator serves downloads only to requests naming its public host, so it
// is started behind the proxy and every client, the checks' too, reaches
// it through the proxy (healed for the checks).
func TestFaultGCS(t *testing.T) {
	var p *faultproxy.Proxy
	_, url := lab.GCSBehind(t, func(up string) string { p = faultproxy.New(t, up); return p.Addr() })
	runBlobFaultSuite(t, &blobFaults{p: p, repo: url, direct: url, name: "gs://stackport", mib: 8,
		skip: map[string]string{"restore through an outage": "the SDKs' retries take long to give up; tested on S3"}})
}

// TestGCSListStdout: `stackport list --repo gs://…` writes the table and
// nothing else to stdout (gocloud's GCS opener used to print a warning
// about missing credentials there), and without credentials (and without
// an emulator) it fails with one line on stderr and nothing on stdout.
func TestGCSListStdout(t *testing.T) {
	_, url := lab.GCS(t)
	e := &testEnv{t: t, repo: url}
	id := e.mustSnapshot(treetest.Fixture(t, t.TempDir()))
	// Without Application Default Credentials.
	home := t.TempDir()
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", "")
	t.Setenv("HOME", home)
	t.Setenv("CLOUDSDK_CONFIG", home)

	out, err := stdoutOf(t, func(g *globalOptions) error { return runList(context.Background(), g) }, url)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 2 || !regexp.MustCompile(`^ID\s+CREATED\s+HOST`).MatchString(lines[0]) || !strings.HasPrefix(lines[1], id+" ") {
		t.Fatalf("stdout of list is not just the table:\n%s", out)
	}

	t.Setenv("STORAGE_EMULATOR_HOST", "")
	out, err = stdoutOf(t, func(g *globalOptions) error { return runList(context.Background(), g) }, url)
	t.Logf("without credentials: %v", err)
	if err == nil || !strings.Contains(err.Error(), "no Google credentials") || exitCode(err) != 1 {
		t.Fatalf("list without credentials: %v", err)
	}
	if out != "" {
		t.Fatalf("list without credentials printed %q to stdout", out)
	}
}

// stdoutOf runs a command with its stdout and the process's os.Stdout
// (where a library might print) both going to one pipe, and returns what
// arrived there.
func stdoutOf(t *testing.T, run func(*globalOptions) error, repo string) (string, error) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = w
	defer func() { os.Stdout = saved }()
	done := make(chan string)
	go func() { b, _ := io.ReadAll(r); done <- string(b) }()
	var stderr strings.Builder
	g := &globalOptions{Repo: repo, stdout: w, stderr: &stderr}
	g.setup()
	rerr := run(g)
	os.Stdout = saved
	w.Close()
	return <-done, rerr
}
