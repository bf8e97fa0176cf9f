package storage

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	gcaws "gocloud.dev/aws"
	"gocloud.dev/blob"
	"gocloud.dev/blob/s3blob"
)

// s3Mux opens s3:// URLs with s3Opener; the mux handles prefix= and key=.
var s3Mux = func() *blob.URLMux {
	m := new(blob.URLMux)
	m.RegisterBucket(s3blob.Scheme, s3Opener{})
	return m
}()

type s3Opener struct{}

func (s3Opener) OpenBucketURL(ctx context.Context, u *url.URL) (*blob.Bucket, error) {
	return openS3(ctx, u)
}

// openS3 opens an s3:// URL like s3blob's default URL opener (the same
// query parameters), except that the client's connections have the idle
// timeout (see idleConn).
func openS3(ctx context.Context, u *url.URL) (*blob.Bucket, error) {
	q := u.Query()
	var opts s3blob.Options
	if v := q.Get("ssetype"); v != "" {
		q.Del("ssetype")
		var ok bool
		for _, t := range s3types.ServerSideEncryptionAes256.Values() {
			if strings.EqualFold(string(t), v) {
				opts.EncryptionType, ok = t, true
			}
		}
		if !ok {
			return nil, fmt.Errorf("unsupported ssetype %q", v)
		}
	}
	if v := q.Get("kmskeyid"); v != "" {
		q.Del("kmskeyid")
		opts.KMSEncryptionID = v
	}
	var s3opts []func(*s3.Options)
	if v := q.Get("accelerate"); v != "" {
		q.Del("accelerate")
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("invalid value for %q: %w", "accelerate", err)
		}
		s3opts = append(s3opts, func(o *s3.Options) { o.UseAccelerate = b })
	}
	if v := q.Get("disable_https"); v != "" {
		q.Del("disable_https")
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("invalid value for %q: %w", "disable_https", err)
		}
		s3opts = append(s3opts, func(o *s3.Options) { o.EndpointOptions.DisableHTTPS = b })
	}
	for _, key := range []string{"use_path_style", "s3ForcePathStyle"} {
		if v := q.Get(key); v != "" {
			q.Del(key)
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("invalid value for %q: %w", key, err)
			}
			s3opts = append(s3opts, func(o *s3.Options) { o.UsePathStyle = b })
		}
	}
	q.Del("awssdk") // only v2 is left
	cfg, err := gcaws.V2ConfigFromURLParams(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("open bucket %v: %w", Redact(u.String()), err)
	}
	cfg.HTTPClient = awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) { withIdleTimeout(tr) })
	client := s3.NewFromConfig(cfg, s3opts...)
	opts.RequestChecksumCalculation = cfg.RequestChecksumCalculation
	return s3blob.OpenBucket(ctx, client, u.Host, &opts)
}
