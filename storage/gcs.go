package storage

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"os"
	"strconv"

	gcs "cloud.google.com/go/storage"
	"gocloud.dev/blob"
	"gocloud.dev/blob/gcsblob"
	"gocloud.dev/gcp"
	"google.golang.org/api/option"
)

// gsMux opens gs:// URLs with gcsOpener instead of gcsblob's default
// opener, which prints a warning to stdout when it finds no Application
// Default Credentials (stdout carries only results).
var gsMux = func() *blob.URLMux {
	m := new(blob.URLMux)
	m.RegisterBucket(gcsblob.Scheme, gcsOpener{})
	return m
}()

// errNoGoogleCredentials is returned for a gs:// repository when no
// Application Default Credentials are found.
type errNoGoogleCredentials struct{ err error }

func (e errNoGoogleCredentials) Error() string {
	return "no Google credentials (set GOOGLE_APPLICATION_CREDENTIALS or run on Google Cloud; anonymous=true for a public bucket): " + oneLine(e.err)
}

func (e errNoGoogleCredentials) Unwrap() error { return e.err }

// gcsOpener opens a GCS bucket like gcsblob's default opener, except that
// missing credentials are an error, not a warning on stdout. Against an
// emulator (STORAGE_EMULATOR_HOST), and with anonymous=true or access_id=-,
// the client does not authenticate.
type gcsOpener struct{}

func (gcsOpener) OpenBucketURL(ctx context.Context, u *url.URL) (*blob.Bucket, error) {
	q := u.Query()
	anon, _ := strconv.ParseBool(q.Get("anonymous"))
	anon = anon || q.Get("access_id") == "-" ||
		os.Getenv("STORAGE_EMULATOR_HOST") != "" || os.Getenv("STORAGE_EMULATOR_HOST_GRPC") != ""
	var o gcsblob.URLOpener
	if anon {
		o.Client = gcp.NewAnonymousHTTPClient(idleTransport())
	} else {
		creds, err := gcp.DefaultCredentials(ctx)
		if err != nil {
			return nil, errNoGoogleCredentials{err}
		}
		if ud, err := creds.GetUniverseDomain(); err == nil && ud != "" {
			o.Options.ClientOptions = append(o.Options.ClientOptions, option.WithUniverseDomain(ud))
		}
		o.TokenSource = gcp.CredentialsTokenSource(creds)
		if o.Client, err = gcp.NewHTTPClient(idleTransport(), o.TokenSource); err != nil {
			return nil, err
		}
	}
	b, err := o.OpenBucketURL(ctx, u)
	if err != nil {
		return nil, err
	}
	// The client retries a failing call for ever by default (until its
	// context ends): a few attempts, so that an unreachable service fails
	// the command; a cut-off read is resumed by Repo's reader.
	var c *gcs.Client
	if b.As(&c) {
		c.SetRetry(gcs.WithMaxAttempts(gcsAttempts))
	}
	return b, nil
}

// gcsAttempts is how many times the GCS client tries a call that fails
// with a retryable error (with its default backoff: 1 s, then 2 s).
const gcsAttempts = 3

// idleTransport is a clone of http.DefaultTransport whose connections
// have the idle timeout.
func idleTransport() *http.Transport {
	return withIdleTimeout(http.DefaultTransport.(*http.Transport).Clone())
}

// openBucket opens the bucket of a repository URL: s3:// with openS3,
// gs:// with gcsOpener, other schemes with gocloud's default URL mux.
func openBucket(ctx context.Context, u *url.URL) (*blob.Bucket, error) {
	if u.Scheme == "s3" {
		return s3Mux.OpenBucketURL(ctx, u)
	}
	if u.Scheme == gcsblob.Scheme {
		b, err := gsMux.OpenBucketURL(ctx, u)
		var nc errNoGoogleCredentials
		if errors.As(err, &nc) {
			return nil, nc
		}
		return b, err
	}
	return blob.OpenBucket(ctx, u.String())
}
