package storage_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/stackport/stackport/internal/faultproxy"
	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/storage"
)

// proxied starts a bucket server of each kind behind a fault proxy and
// returns the repository URL through the proxy.
var proxied = map[string]func(t *testing.T) (*faultproxy.Proxy, string){
	"s3": func(t *testing.T) (*faultproxy.Proxy, string) {
		srv, u := lab.S3(t)
		p := faultproxy.New(t, srv.Addr)
		return p, strings.Replace(u, srv.Addr, p.Addr(), 1)
	},
	"gcs": func(t *testing.T) (*faultproxy.Proxy, string) {
		var p *faultproxy.Proxy
		_, u := lab.GCSBehind(t, func(up string) string { p = faultproxy.New(t, up); return p.Addr() })
		return p, u
	},
	"azure": func(t *testing.T) (*faultproxy.Proxy, string) {
		srv, u := lab.Azure(t)
		p := faultproxy.New(t, srv.Addr)
		return p, strings.Replace(u, srv.Addr, p.Addr(), 1)
	},
}

func randomData(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// TestResumedReads cuts the connections of object reads from S3, GCS and
// Azure: a read resumes from where it was and returns every byte, also
// when every connection is reset after 512 KiB; and it fails when the
// object was replaced between the first read and the resumed one. (How
// often it tries without progress, and the waits, are tested on a fake
// bucket in reader_internal_test.go: the SDKs' own retries make an outage
// take long here.)
func TestResumedReads(t *testing.T) {
	const id = "20261125T210000Z-aaaaaa"
	for _, name := range []string{"s3", "gcs", "azure"} {
		t.Run(name, func(t *testing.T) {
			p, url := proxied[name](t)
			ctx := context.Background()
			repo, err := storage.Open(ctx, url, storage.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer repo.Close()
			data := randomData(4<<20, 1)
			put(t, repo, id, "obj", data)

			t.Run("reset once", func(t *testing.T) {
				t.Cleanup(p.Heal)
				resets := p.Stats().Resets
				p.ResetAfter(1 << 20)
				got, err := get(repo, id, "obj")
				if err != nil {
					t.Fatalf("read through a reset: %v", err)
				}
				if p.Stats().Resets == resets {
					t.Fatal("the fault did not fire")
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("read %d bytes that differ from the %d written", len(got), len(data))
				}
			})
			t.Run("every connection reset after 512 KiB", func(t *testing.T) {
				t.Cleanup(p.Heal)
				resets := p.Stats().Resets
				p.ResetConnsAfter(512 << 10)
				got, err := get(repo, id, "obj")
				if err != nil {
					t.Fatalf("read through resets: %v", err)
				}
				t.Logf("%d connections reset", p.Stats().Resets-resets)
				if p.Stats().Resets-resets < 4 {
					t.Fatalf("only %d resets", p.Stats().Resets-resets)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("read %d bytes that differ from the %d written", len(got), len(data))
				}
			})
			t.Run("object replaced", func(t *testing.T) {
				t.Cleanup(p.Heal)
				p.SetBandwidth(4 << 20)
				r, err := repo.NewReader(ctx, id, "obj")
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				if _, err := io.ReadFull(r, make([]byte, 256<<10)); err != nil {
					t.Fatal(err)
				}
				p.SetBandwidth(0)
				put(t, repo, id, "obj", randomData(4<<20, 2)) // the same size
				p.ResetAll()
				_, err = io.Copy(io.Discard, r)
				t.Logf("error: %v", err)
				if err == nil || !strings.Contains(err.Error(), "the object changed while it was read") {
					t.Fatalf("a read across a replaced object: %v", err)
				}
			})
		})
	}
}

// TestRetryable checks which errors a read retries.
func TestRetryable(t *testing.T) {
	ctx := context.Background()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	for _, c := range []struct {
		ctx  context.Context
		err  error
		want bool
	}{
		{ctx, fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		{ctx, io.ErrUnexpectedEOF, true},
		{ctx, statusErr(503), true},
		{ctx, statusErr(429), true},
		{ctx, statusErr(404), false},
		{ctx, statusErr(403), false},
		{ctx, errors.New("something else"), false},
		{ctx, context.Canceled, false},
		{cancelled, syscall.ECONNRESET, false},
	} {
		if got := storage.Retryable(c.ctx, c.err); got != c.want {
			t.Errorf("retryable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

type statusErr int

func (e statusErr) Error() string       { return fmt.Sprintf("status %d", int(e)) }
func (e statusErr) HTTPStatusCode() int { return int(e) }

// TestGCSWithoutCredentials: a gs:// repository without Application
// Default Credentials fails at once with one line, and nothing reaches
// stdout (gocloud's default opener prints a warning there).
func TestGCSWithoutCredentials(t *testing.T) {
	home := t.TempDir()
	for k, v := range map[string]string{
		"STORAGE_EMULATOR_HOST":          "",
		"STORAGE_EMULATOR_HOST_GRPC":     "",
		"GOOGLE_APPLICATION_CREDENTIALS": "",
		"HOME":                           home,
		"CLOUDSDK_CONFIG":                home,
	} {
		t.Setenv(k, v)
	}
	var err error
	out := captureStdout(t, func() {
		_, err = storage.Open(context.Background(), "gs://stackport-nowhere?prefix=x/", storage.Options{})
	})
	t.Logf("error: %v", err)
	if err == nil || !strings.Contains(err.Error(), "storage: repository gs://stackport-nowhere?prefix=x%2F: no Google credentials") {
		t.Fatalf("want a clear error about credentials, got %v", err)
	}
	if out != "" {
		t.Fatalf("stdout got %q", out)
	}
}

// captureStdout runs f with os.Stdout going to a pipe and returns what was
// written to it.
func captureStdout(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = w
	done := make(chan []byte)
	go func() { b, _ := io.ReadAll(r); done <- b }()
	defer func() {
		os.Stdout = saved
	}()
	f()
	os.Stdout = saved
	w.Close()
	return string(<-done)
}
