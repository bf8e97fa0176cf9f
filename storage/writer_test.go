package storage_test

import (
	"context"
	"errors"
	"io/fs"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/stackport/stackport/storage"
)

// TestCancelledUpload cancels uploads after 24 MiB: Close reports
// the cancellation, no object appears, and S3 keeps no multipart upload
// (the SDK aborts it with the cancelled context unless the writer keeps
// one alive for it).
func TestCancelledUpload(t *testing.T) {
	for _, name := range []string{"file", "s3", "gcs", "azure"} {
		t.Run(name, func(t *testing.T) {
			url := backends[name](t)
			repo, err := storage.Open(context.Background(), url, storage.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer repo.Close()
			const id = "20261125T210000Z-cccccc"
			ctx, cancel := context.WithCancel(context.Background())
			w, err := repo.NewWriter(ctx, id, "big")
			if err != nil {
				t.Fatal(err)
			}
			chunk := randomData(1<<20, 3)
			for range 24 { // past the SDK's multipart threshold (16 MiB)
				if _, err := w.Write(chunk); err != nil {
					t.Fatal(err)
				}
			}
			cancel()
			for range 12 {
				if _, err := w.Write(chunk); err != nil {
					if !errors.Is(err, context.Canceled) {
						t.Fatalf("a write after the cancel: %v, want context.Canceled", err)
					}
					break
				}
			}
			err = w.Close()
			t.Logf("close: %v", err)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("close after the cancel: %v, want context.Canceled", err)
			}
			if _, err := get(repo, id, "big"); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("the cancelled object: %v, want not found", err)
			}
			var c *s3.Client
			if repo.Bucket().As(&c) {
				bucket := "stackport"
				out, err := c.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: &bucket})
				if err != nil {
					t.Fatal(err)
				}
				for _, u := range out.Uploads {
					t.Errorf("multipart upload of %s left behind", *u.Key)
				}
			}
		})
	}
}
