package mongo

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/stackport/stackport/snapshot"
)

// Checker decodes a mongo snapshot like Verifier and then compares every
// collection with a restored target: the document count and an
// order-independent digest of the documents' raw BSON (the XOR of their
// SHA-256). Differences give an error wrapping snapshot.ErrDiffers that names
// the collections; each difference is also logged. Entries of a captured
// oplog change the target after the data, so collections are compared as of
// the dump; a snapshot with oplog entries is reported as such.
type Checker struct {
	URI, TLSCAFile string
	NSFrom, NSTo   string // the rename the restore used
	Log            *slog.Logger
}

// Digest sums up a collection so that two copies can be compared without
// regard to document order: the number of documents, their bytes and the XOR
// of the SHA-256 of each raw document.
type Digest struct {
	Docs, Bytes int64
	Sum         [sha256.Size]byte
}

// Add adds one raw document.
func (d *Digest) Add(doc []byte) {
	h := sha256.Sum256(doc)
	for i := range h {
		d.Sum[i] ^= h[i]
	}
	d.Docs++
	d.Bytes += int64(len(doc))
}

// DigestCollection reads every document of coll.
func DigestCollection(ctx context.Context, coll *mongo.Collection) (Digest, error) {
	var d Digest
	cur, err := coll.Find(ctx, bson.D{}, options.Find().SetBatchSize(1000))
	if err != nil {
		return d, err
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for cur.Next(ctx) {
		d.Add(cur.Current)
	}
	return d, cur.Err()
}

// Restore implements snapshot.Restorer.
func (c *Checker) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	rn, err := parseRename(c.NSFrom, c.NSTo)
	if err != nil {
		return nil, err
	}
	s := &digestSink{want: map[namespace]*Digest{}}
	stats, err := decode(ctx, in, s, nil)
	if err != nil {
		return stats, err
	}
	log := c.Log
	if log == nil {
		log = slog.Default()
	}
	if stats["oplog_entries"] > 0 {
		log.Warn("the snapshot holds oplog entries replayed after the data: collections they touched may differ legitimately", "entries", stats["oplog_entries"])
	}
	client, err := Connect(ctx, c.URI, c.TLSCAFile)
	if err != nil {
		return stats, err
	}
	defer Disconnect(ctx, client)
	var diffs []string
	for _, ns := range slices.SortedFunc(maps.Keys(s.want), func(a, b namespace) int { return strings.Compare(a.String(), b.String()) }) {
		want := s.want[ns]
		target := namespace{db: rn.apply(ns.db), coll: ns.coll}
		got, err := DigestCollection(ctx, client.Database(target.db).Collection(target.coll))
		if err != nil {
			return stats, fmt.Errorf("mongo: read %s: %w", target, err)
		}
		switch {
		case got.Docs != want.Docs:
			diffs = append(diffs, fmt.Sprintf("%s: %d documents, snapshot has %d", target, got.Docs, want.Docs))
		case got.Sum != want.Sum:
			diffs = append(diffs, fmt.Sprintf("%s: %d documents, but their content differs", target, got.Docs))
		default:
			log.Info("collection matches", "collection", target.String(), "documents", got.Docs)
			continue
		}
		log.Warn("collection differs", "detail", diffs[len(diffs)-1])
	}
	if len(diffs) > 0 {
		return stats, fmt.Errorf("mongo: %d of %d collections differ, the first: %s: %w", len(diffs), len(s.want), diffs[0], snapshot.ErrDiffers)
	}
	return stats, nil
}

// digestSink is the sink of Checker: it digests every collection's
// documents.
type digestSink struct {
	discard
	want map[namespace]*Digest
}

func (s *digestSink) metadata(c *collection) error {
	if c.meta.Type != "view" {
		s.want[c.ns] = &Digest{}
	}
	return nil
}

func (s *digestSink) documents(ctx context.Context, c *collection, docs *docReader) error {
	d := s.want[c.ns]
	return readAll(ctx, docs, func(doc []byte) error {
		d.Add(doc)
		return nil
	})
}
