package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// Upload is an incomplete multipart upload under a repository.
type Upload struct {
	// Key is the object's key in the repository (without its prefix=).
	Key       string
	UploadID  string
	Initiated time.Time
	// Aborted is true when StaleUploads aborted it.
	Aborted bool
}

// StaleUploads finds the incomplete multipart uploads under the
// repository's snapshot folders that were begun before cutoff and, unless
// dryRun, aborts them; it returns them oldest first. An upload interrupted
// by a kill (SIGKILL, a node lost) is never aborted by the run that began
// it, and its parts stay stored, and billed, out of sight of every listing
// until something aborts it.
//
// Only S3 has such uploads to find. The other schemes return nothing:
// Azure keeps the uncommitted blocks of an unfinished upload for 7 days
// and then deletes them by itself; gocloud's GCS driver uploads with the
// JSON API's resumable uploads (no XML multipart uploads), whose sessions
// expire after a week and keep no stored object; file:// and mem:// write
// temporary files or memory that the run's folder removal or the process's
// end take care of.
func (r *Repo) StaleUploads(ctx context.Context, cutoff time.Time, dryRun bool) ([]Upload, error) {
	if r.s3Bucket == "" {
		return nil, nil
	}
	var c *s3.Client
	if !r.bucket.As(&c) {
		return nil, nil
	}
	prefix := r.prefix + snapshotsDir
	in := &s3.ListMultipartUploadsInput{Bucket: &r.s3Bucket, Prefix: &prefix}
	var ups []Upload
	for {
		out, err := c.ListMultipartUploads(ctx, in)
		if err != nil {
			return nil, r.wrap(snapshotsDir, fmt.Errorf("list multipart uploads: %w", err))
		}
		for _, u := range out.Uploads {
			if u.Key == nil || u.UploadId == nil || u.Initiated == nil || !u.Initiated.Before(cutoff) {
				continue
			}
			ups = append(ups, Upload{Key: strings.TrimPrefix(*u.Key, r.prefix), UploadID: *u.UploadId, Initiated: *u.Initiated})
		}
		if out.IsTruncated == nil || !*out.IsTruncated || (out.NextKeyMarker == nil && out.NextUploadIdMarker == nil) {
			break
		}
		in.KeyMarker, in.UploadIdMarker = out.NextKeyMarker, out.NextUploadIdMarker
	}
	slices.SortFunc(ups, func(a, b Upload) int { return a.Initiated.Compare(b.Initiated) })
	if dryRun {
		return ups, nil
	}
	for i := range ups {
		key := r.prefix + ups[i].Key
		_, err := c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &r.s3Bucket, Key: &key, UploadId: &ups[i].UploadID})
		var gone *s3types.NoSuchUpload
		if errors.As(err, &gone) {
			continue // completed or aborted meanwhile
		}
		if err != nil {
			return ups, r.wrap(ups[i].Key, fmt.Errorf("abort multipart upload: %w", err))
		}
		ups[i].Aborted = true
	}
	return ups, nil
}
