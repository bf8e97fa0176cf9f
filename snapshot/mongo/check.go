package mongo

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash/fnv"
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
// oplog change the target after the data: collections are compared in parts
// (DigestBuckets), leaving out the parts of the documents the oplog wrote
// and the collections a command changed, and a note counts them.
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

// Merge adds the documents of o.
func (d *Digest) Merge(o Digest) {
	for i := range o.Sum {
		d.Sum[i] ^= o.Sum[i]
	}
	d.Docs += o.Docs
	d.Bytes += o.Bytes
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
	ctx = WithoutDeadline(ctx)
	rn, err := parseRename(c.NSFrom, c.NSTo)
	if err != nil {
		return nil, err
	}
	s := &digestSink{want: map[namespace][]Digest{}, changes: newChanges()}
	stats, err := decode(ctx, in, s, nil)
	if err != nil {
		return stats, err
	}
	log := c.Log
	if log == nil {
		log = slog.Default()
	}
	client, err := Connect(ctx, c.URI, c.TLSCAFile)
	if err != nil {
		return stats, err
	}
	defer Disconnect(ctx, client)
	var diffs []string
	var leftDocs, leftColls int64
	for _, ns := range slices.SortedFunc(maps.Keys(s.want), func(a, b namespace) int { return strings.Compare(a.String(), b.String()) }) {
		target := namespace{db: rn.apply(ns.db), coll: ns.coll}
		if s.changes.Touched(ns.db, ns.coll) {
			leftColls++
			continue
		}
		parts, err := DigestBuckets(ctx, client.Database(target.db).Collection(target.coll))
		if err != nil {
			return stats, fmt.Errorf("mongo: read %s: %w", target, err)
		}
		want, got, left := s.changes.Compare(ns.String(), s.want[ns], parts)
		leftDocs += left
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
	if stats["oplog_entries"] > 0 {
		log.Info("mongo: the snapshot's oplog entries change the target after the data: what they wrote is left out of the comparison",
			"entries", stats["oplog_entries"], "documents_left_out", leftDocs, "collections_left_out", leftColls)
	}
	if len(diffs) > 0 {
		return stats, fmt.Errorf("mongo: %d of %d collections differ, the first: %s: %w", len(diffs), len(s.want), diffs[0], snapshot.ErrDiffers)
	}
	return stats, nil
}

// Buckets is how many parts DigestBuckets splits a collection into, by
// _id: documents that a live source changed after a copy leave out only
// their parts from a comparison (with a few hundred changed documents,
// about a tenth of the collection), and the memory of a digest is fixed
// (Buckets × 48 bytes).
const Buckets = 4096

// bucket returns the part of the document whose _id is id.
func bucket(id bson.RawValue) int {
	h := fnv.New32a()
	h.Write([]byte{byte(id.Type)})
	h.Write(id.Value)
	return int(h.Sum32() % Buckets)
}

// DigestBuckets reads every document of coll into the digest of its part
// (Buckets parts, by _id).
func DigestBuckets(ctx context.Context, coll *mongo.Collection) ([]Digest, error) {
	parts := make([]Digest, Buckets)
	cur, err := coll.Find(ctx, bson.D{}, options.Find().SetBatchSize(1000))
	if err != nil {
		return nil, err
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for cur.Next(ctx) {
		parts[bucket(cur.Current.Lookup("_id"))].Add(cur.Current)
	}
	return parts, cur.Err()
}

// Changes are what a source changed after a point in time, by its oplog:
// the parts (see DigestBuckets) of the documents written, by namespace
// ("db.coll"), and the collections and databases that commands changed as
// a whole.
type Changes struct {
	Parts   map[string]map[int]bool
	Colls   map[string]bool // created, dropped, renamed (both names), altered
	DBs     map[string]bool // dropped
	Writes  int64           // document writes
	Entries int64           // oplog entries read
}

// Touched reports whether the collection db.coll was changed as a whole.
func (c *Changes) Touched(db, coll string) bool { return c.DBs[db] || c.Colls[db+"."+coll] }

func newChanges() *Changes {
	return &Changes{Parts: map[string]map[int]bool{}, Colls: map[string]bool{}, DBs: map[string]bool{}}
}

// add records what the oplog operation raw (one of replayOps) changes.
func (ch *Changes) add(raw bson.Raw) {
	op, err := translate(raw)
	ns := op.ns.String()
	key := "o"
	if op.kind == opUpdate {
		key = "o2"
	}
	id := raw.Lookup(key, "_id")
	switch {
	case op.kind == opCommand && op.name == "dropDatabase":
		ch.DBs[op.ns.db] = true
	case op.kind == opCommand || err != nil || id.Type == 0:
		ch.Colls[ns] = true
		if to, err := renameTarget(op.o); op.name == "renameCollection" && err == nil {
			ch.Colls[to.String()] = true
		}
	default:
		if ch.Parts[ns] == nil {
			ch.Parts[ns] = map[int]bool{}
		}
		ch.Parts[ns][bucket(id)] = true
		ch.Writes++
	}
}

// Compare compares the parts of want and got (see DigestBuckets), leaving
// out those of the documents the changes wrote to ns, and returns the two
// sums compared and the documents of want left out.
func (ch *Changes) Compare(ns string, want, got []Digest) (w, g Digest, left int64) {
	for i := range want {
		if ch.Parts[ns][i] {
			left += want[i].Docs
			continue
		}
		w.Merge(want[i])
		g.Merge(got[i])
	}
	return w, g, left
}

// ChangedSince reads the oplog entries of client after the timestamp since
// that touch the databases dbs and returns what they changed.
func ChangedSince(ctx context.Context, client *mongo.Client, since bson.Timestamp, dbs []string) (*Changes, error) {
	ch := newChanges()
	keep := func(db string) bool { return slices.Contains(dbs, db) }
	filter := bson.D{{Key: "ts", Value: bson.D{{Key: "$gt", Value: since}}}}
	cur, err := client.Database("local").Collection("oplog.rs").Find(ctx, filter, options.Find().SetHint(bson.D{{Key: "$natural", Value: 1}}))
	if err != nil {
		return nil, fmt.Errorf("mongo: read the oplog: %w", err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for cur.Next(ctx) {
		ch.Entries++
		ops, err := replayOps(cur.Current, keep, nil)
		if err != nil {
			return nil, fmt.Errorf("mongo: oplog entry at %v: %w", cur.Current.Lookup("ts"), err)
		}
		for _, raw := range ops {
			ch.add(raw)
		}
	}
	if err := cur.Err(); err != nil {
		return nil, fmt.Errorf("mongo: read the oplog: %w", err)
	}
	return ch, nil
}

// digestSink is the sink of Checker: it digests every collection's
// documents in parts (see DigestBuckets) and records what the oplog
// changes.
type digestSink struct {
	discard
	want    map[namespace][]Digest
	changes *Changes
}

func (s *digestSink) metadata(c *collection) error {
	if c.meta.Type != "view" {
		s.want[c.ns] = make([]Digest, Buckets)
	}
	return nil
}

func (s *digestSink) documents(ctx context.Context, c *collection, docs *docReader) error {
	parts := s.want[c.ns]
	return readAll(ctx, docs, func(doc []byte) error {
		parts[bucket(bson.Raw(doc).Lookup("_id"))].Add(doc)
		return nil
	})
}

func (s *digestSink) oplog(ctx context.Context, docs *docReader) error {
	all := func(string) bool { return true }
	return replayEntries(ctx, docs, all, nil, func(_ int64, op bson.Raw) error {
		s.changes.add(op)
		return nil
	})
}
