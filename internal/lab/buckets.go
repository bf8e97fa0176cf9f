package lab

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"cloud.google.com/go/storage"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"gocloud.dev/blob"
	_ "gocloud.dev/blob/azureblob" // azblob://
	_ "gocloud.dev/blob/gcsblob"   // gs://
	_ "gocloud.dev/blob/s3blob"    // s3://
	"google.golang.org/api/googleapi"
)

// bucketName is the bucket (or container) that S3, GCS and Azure create.
const bucketName = "stackport"

// Credentials of the test servers.
const (
	s3AccessKey = "stackport-lab"
	s3SecretKey = "stackport-lab-secret-key"

	azureAccount = "devstoreaccount1"
	// azureKey is the well-known key of Azurite's devstoreaccount1.
	azureKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// S3 starts versitygw (posix backend), creates the bucket "stackport", sets
// the AWS environment for gocloud (static keys; the host's AWS profile and
// config files are neutralised) and returns the bucket's gocloud URL:
// s3://stackport?endpoint=http://127.0.0.1:PORT&use_path_style=true&region=us-east-1
func S3(t testing.TB) (*Server, string) {
	t.Helper()
	bin := labBin(t, "versitygw")
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	// Keep the host's AWS configuration out of the SDK.
	empty := filepath.Join(dir, "aws-empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID":           s3AccessKey,
		"AWS_SECRET_ACCESS_KEY":       s3SecretKey,
		"AWS_SESSION_TOKEN":           "",
		"AWS_EC2_METADATA_DISABLED":   "true",
		"AWS_PROFILE":                 "",
		"AWS_DEFAULT_PROFILE":         "",
		"AWS_CONFIG_FILE":             empty,
		"AWS_SHARED_CREDENTIALS_FILE": empty,
		"AWS_REGION":                  "us-east-1",
		"AWS_DEFAULT_REGION":          "us-east-1",
		"AWS_ENDPOINT_URL":            "",
		"AWS_ENDPOINT_URL_S3":         "",
		"AWS_ROLE_ARN":                "",
		"AWS_WEB_IDENTITY_TOKEN_FILE": "",
		"AWS_CA_BUNDLE":               "",
	} {
		t.Setenv(k, v)
	}

	port := freePort(t)
	s := newServer(t, "versitygw", filepath.Join(dir, "versitygw.log"), port)
	url := fmt.Sprintf("s3://%s?endpoint=http://%s&use_path_style=true&region=us-east-1", bucketName, s.Addr)
	s.newCmd = func() *exec.Cmd {
		cmd := exec.Command(bin, "--port", s.Addr, "posix", data)
		cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s3AccessKey, "ROOT_SECRET_KEY="+s3SecretKey)
		return cmd
	}
	s.ready = func(ctx context.Context) error {
		return withBucket(ctx, url, func(b *blob.Bucket) error {
			var c *s3.Client
			if !b.As(&c) {
				return errors.New("bucket.As(*s3.Client) failed")
			}
			name := bucketName
			_, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &name})
			var owned *s3types.BucketAlreadyOwnedByYou
			var exists *s3types.BucketAlreadyExists
			if errors.As(err, &owned) || errors.As(err, &exists) {
				return nil
			}
			return err
		})
	}
	s.Start(t)
	return s, url
}

// GCS starts fake-gcs-server (filesystem backend), creates the bucket
// "stackport", sets STORAGE_EMULATOR_HOST=127.0.0.1:PORT and returns the
// bucket's gocloud URL gs://stackport. STORAGE_EMULATOR_HOST names a
// single server, so a test can use only one GCS server at a time.
func GCS(t testing.TB) (*Server, string) {
	t.Helper()
	return gcs(t, nil)
}

// GCSBehind starts fake-gcs-server like GCS for clients that reach it
// through a TCP proxy (internal/faultproxy): front is called once with the
// server's address, before the server starts, and returns the address
// clients connect to (the proxy's). That address becomes the emulator's
// public host and STORAGE_EMULATOR_HOST, since fake-gcs-server serves
// downloads only to requests naming its public host; so every GCS client of
// the test, the lab's readiness check included, goes through the proxy.
func GCSBehind(t testing.TB, front func(upstream string) string) (*Server, string) {
	t.Helper()
	return gcs(t, front)
}

func gcs(t testing.TB, front func(upstream string) string) (*Server, string) {
	t.Helper()
	bin := labBin(t, "fake-gcs-server")
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	s := newServer(t, "fake-gcs-server", filepath.Join(dir, "fake-gcs-server.log"), port)
	public := s.Addr
	if front != nil {
		public = front(s.Addr)
	}
	t.Setenv("STORAGE_EMULATOR_HOST", public)
	t.Setenv("STORAGE_EMULATOR_HOST_GRPC", "")
	url := "gs://" + bucketName
	s.newCmd = func() *exec.Cmd {
		return exec.Command(bin,
			"-scheme", "http",
			"-host", "127.0.0.1",
			"-port", strconv.Itoa(port),
			"-backend", "filesystem",
			"-filesystem-root", data,
			"-external-url", "http://"+public,
			"-public-host", public,
			"-log-level", "warn",
		)
	}
	s.ready = func(ctx context.Context) error {
		return withBucket(ctx, url, func(b *blob.Bucket) error {
			var c *storage.Client
			if !b.As(&c) {
				return errors.New("bucket.As(*storage.Client) failed")
			}
			err := c.Bucket(bucketName).Create(ctx, "stackport-lab", nil)
			var gerr *googleapi.Error
			if errors.As(err, &gerr) && gerr.Code == http.StatusConflict {
				return nil
			}
			return err
		})
	}
	s.Start(t)
	return s, url
}

// Azure starts Azurite's blob service, creates the container "stackport",
// sets AZURE_STORAGE_ACCOUNT/AZURE_STORAGE_KEY to Azurite's well-known
// account and returns the container's gocloud URL
// azblob://stackport?protocol=http&domain=127.0.0.1:PORT
//
// Azurite saves its metadata every 5 s (LokiJS autosave), so after Kill and
// Start the blobs (and even the container, which Start then creates again)
// written in the last 5 s before the kill are gone.
func Azure(t testing.TB) (*Server, string) {
	t.Helper()
	script := labBin(t, "azurite-blob")
	if p, err := filepath.EvalSymlinks(script); err == nil {
		script = p
	}
	node := lookBin(t, "node", "/usr/bin", "/usr/local/bin")
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"AZURE_STORAGE_ACCOUNT":              azureAccount,
		"AZURE_STORAGE_KEY":                  azureKey,
		"AZURE_STORAGE_CONNECTION_STRING":    "",
		"AZURE_STORAGEBLOB_CONNECTIONSTRING": "",
		"AZURE_STORAGE_SAS_TOKEN":            "",
	} {
		t.Setenv(k, v)
	}
	port := freePort(t)
	s := newServer(t, "azurite-blob", filepath.Join(dir, "azurite.log"), port)
	url := fmt.Sprintf("azblob://%s?protocol=http&domain=%s", bucketName, s.Addr)
	s.newCmd = func() *exec.Cmd {
		return exec.Command(node, script,
			"--blobHost", "127.0.0.1",
			"--blobPort", strconv.Itoa(port),
			"--location", data,
			"--skipApiVersionCheck",
			"--loose",
			"--disableTelemetry",
			"--silent",
		)
	}
	s.ready = func(ctx context.Context) error {
		return withBucket(ctx, url, func(b *blob.Bucket) error {
			var c *container.Client
			if !b.As(&c) {
				return errors.New("bucket.As(*container.Client) failed")
			}
			_, err := c.Create(ctx, nil)
			if bloberror.HasCode(err, bloberror.ContainerAlreadyExists) {
				return nil
			}
			return err
		})
	}
	s.Start(t)
	return s, url
}

func withBucket(ctx context.Context, url string, f func(*blob.Bucket) error) error {
	b, err := blob.OpenBucket(ctx, url)
	if err != nil {
		return err
	}
	defer b.Close()
	return f(b)
}
