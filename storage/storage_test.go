package storage_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/storage"
)

// backends starts each kind of repository; the servers are real processes on
// loopback.
var backends = map[string]func(t *testing.T) string{
	"file":  func(t *testing.T) string { return "file://" + t.TempDir() },
	"mem":   func(t *testing.T) string { return "mem://" },
	"s3":    func(t *testing.T) string { _, u := lab.S3(t); return u },
	"gcs":   func(t *testing.T) string { _, u := lab.GCS(t); return u },
	"azure": func(t *testing.T) string { _, u := lab.Azure(t); return u },
}

func put(t *testing.T, repo *storage.Repo, id, key string, data []byte) {
	t.Helper()
	w, err := repo.NewWriter(context.Background(), id, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func get(repo *storage.Repo, id, key string) ([]byte, error) {
	r, err := repo.NewReader(context.Background(), id, key)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func TestRepository(t *testing.T) {
	for name, start := range backends {
		t.Run(name, func(t *testing.T) {
			url := start(t)
			ctx := context.Background()
			repo, err := storage.Open(ctx, url+sep(url)+"prefix=team-a/", storage.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer repo.Close()

			const a, b, c = "20261125T210000Z-aaaaaa", "20261125T220000Z-bbbbbb", "20261125T230000Z-cccccc"
			data := bytes.Repeat([]byte("0123456789"), 100000)
			put(t, repo, a, "volume/volume.tar.zst", data)
			put(t, repo, a, "manifest.json", []byte("{}"))
			put(t, repo, b, "volume/volume.tar.zst", data) // no manifest: a failed run
			put(t, repo, c, "manifest.json", []byte("{}"))

			got, err := get(repo, a, "volume/volume.tar.zst")
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes, %v", len(got), err)
			}
			if _, err := get(repo, a, "nope"); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("missing object: %v; want fs.ErrNotExist", err)
			}
			ids, err := repo.List(ctx)
			if err != nil || strings.Join(ids, ",") != a+","+c {
				t.Fatalf("List = %v, %v; want [%s %s]", ids, err, a, c)
			}

			// A cancelled upload is never committed.
			wctx, cancel := context.WithCancel(ctx)
			w, err := repo.NewWriter(wctx, c, "volume/partial")
			if err != nil {
				t.Fatal(err)
			}
			w.Write(data)
			cancel()
			if err := w.Close(); err == nil {
				t.Fatal("Close after cancel succeeded")
			}
			if _, err := get(repo, c, "volume/partial"); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("aborted object is visible: %v", err)
			}

			if err := repo.Delete(ctx, a); err != nil {
				t.Fatal(err)
			}
			if _, err := get(repo, a, "volume/volume.tar.zst"); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("deleted object still there: %v", err)
			}
			if ids, _ := repo.List(ctx); strings.Join(ids, ",") != c {
				t.Fatalf("List after delete = %v", ids)
			}
			// The prefix keeps repositories apart in one bucket.
			if name != "file" && name != "mem" {
				other, err := storage.Open(ctx, url+sep(url)+"prefix=team-b/", storage.Options{})
				if err != nil {
					t.Fatal(err)
				}
				defer other.Close()
				if ids, err := other.List(ctx); err != nil || len(ids) != 0 {
					t.Fatalf("other prefix sees %v, %v", ids, err)
				}
			}
		})
	}
}

func sep(url string) string {
	if strings.Contains(url, "?") {
		return "&"
	}
	return "?"
}

// openErr opens url expecting a failure and checks that the message is one
// line naming the repository without secrets.
func openErr(t *testing.T, url string, secrets ...string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	repo, err := storage.Open(ctx, url, storage.Options{CheckTimeout: 20 * time.Second})
	if err == nil {
		repo.Close()
		t.Fatalf("Open(%s) succeeded", storage.Redact(url))
	}
	msg := err.Error()
	if strings.ContainsAny(msg, "\n\r") {
		t.Errorf("error is not one line: %q", msg)
	}
	if !strings.Contains(msg, "repository ") {
		t.Errorf("error does not name the repository: %q", msg)
	}
	for _, s := range secrets {
		if strings.Contains(msg, s) {
			t.Errorf("error leaks secret %q: %q", s, msg)
		}
	}
	t.Log(msg)
	return err
}

func TestOpenErrors(t *testing.T) {
	t.Run("missing file directory", func(t *testing.T) {
		err := openErr(t, "file://"+t.TempDir()+"/nope")
		if !strings.Contains(err.Error(), "does not exist") {
			t.Fatal(err)
		}
	})
	t.Run("not a URL", func(t *testing.T) { openErr(t, "/var/backups") })
	t.Run("unknown scheme", func(t *testing.T) { openErr(t, "ftp://host/x") })

	t.Run("s3", func(t *testing.T) {
		srv, url := lab.S3(t)
		base := strings.Replace(url, "s3://stackport?", "s3://no-such-bucket?", 1)
		if err := openErr(t, base); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("missing bucket: %v", err)
		}
		secret := os.Getenv("AWS_SECRET_ACCESS_KEY")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
		if err := openErr(t, url, "wrong-secret-value"); !strings.Contains(err.Error(), "access denied") {
			t.Errorf("bad credentials: %v", err)
		}
		t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
		srv.Kill()
		if err := openErr(t, url); !strings.Contains(err.Error(), "cannot reach") {
			t.Errorf("unreachable: %v", err)
		}
	})
	t.Run("gcs missing bucket", func(t *testing.T) {
		_, url := lab.GCS(t)
		if err := openErr(t, "gs://no-such-bucket"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("missing bucket: %v", err)
		}
		_ = url
	})
	t.Run("azure", func(t *testing.T) {
		_, url := lab.Azure(t)
		if err := openErr(t, strings.Replace(url, "azblob://stackport", "azblob://no-such-container", 1)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("missing container: %v", err)
		}
		// Bad Azure credentials are not tested here: gocloud reads
		// AZURE_STORAGE_* once per process.
		_ = url
	})
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"s3://b?region=x&prefix=p/":                         "s3://b?prefix=p%2F&region=x",
		"azblob://c?sig=SECRET&sv=2020":                     "azblob://c?sig=REDACTED&sv=2020",
		"s3://user:pass@b?endpoint=http://h:1&access_key=A": "s3://REDACTED@b?access_key=REDACTED&endpoint=http%3A%2F%2Fh%3A1",
	} {
		if got := storage.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q; want %q", in, got, want)
		}
	}
}
