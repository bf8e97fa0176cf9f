package main

import (
	"testing"

	"github.com/stackport/stackport/internal/faultproxy"
	"github.com/stackport/stackport/internal/lab"
)

// TestFaultAzure runs the bucket fault suite against Azurite.
func TestFaultAzure(t *testing.T) {
	srv, direct := lab.Azure(t)
	p := faultproxy.New(t, srv.Addr)
	runBlobFaultSuite(t, &blobFaults{p: p, repo: via(direct, srv, p), direct: direct, name: "azblob://stackport", mib: 8,
		skip: map[string]string{
			"snapshot with every connection reset": "the SDK retries for 10 s; tested on S3 and GCS",
			"snapshot with connections refused":    "the SDK retries for 9 s; storage.Open's check is the same for every backend, tested on GCS",
			"restore through an outage":            "the SDK retries for long; tested on S3",
		}})
}
