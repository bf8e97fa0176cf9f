// Package mongo snapshots MongoDB databases in mongodump's directory layout
// and restores them into MongoDB, Atlas, DocumentDB or FerretDB.
//
// A snapshot of the mongo component is a sequence of streams, in this order:
//
//  1. "<db>/<coll>.metadata.json" for every collection and view, sorted by
//     database and collection name: mongodump's metadata format (options,
//     indexes, uuid, collectionName, type) as canonical extended JSON.
//  2. "<db>/<coll>.bson" for every collection (not for views): its documents
//     as raw BSON, concatenated, exactly as the server returned them. The
//     streams of several collections are written concurrently, so their
//     order is the order in which the Dumper started them.
//  3. "oplog.bson", only when the source is a replica set with a readable
//     oplog: the oplog entries written while the collections were dumped,
//     up to the newest entry when the last collection was read, for a
//     replay to that one point in time (mongodump --oplog; the Restorer
//     replays them as ordinary writes, mongorestore --oplogReplay with
//     applyOps).
//
// Collection names are percent-encoded in stream names as mongodump does
// (url.PathEscape), so after decompression the streams form a directory that
// mongorestore reads. Documents are never decoded: they are copied as raw
// bytes from the server's cursor into the stream and from the stream into
// insert batches, so field order, numeric types and every BSON type survive
// byte for byte.
//
// Memory is bounded: a Dumper holds one buffer per collection in flight, a
// Restorer at most Parallel insert batches of up to 8 MiB (2000 documents,
// each sent as up to two insert commands at once) plus the one it fills.
// Metadata is held for every collection.
package mongo

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/stackport/stackport/snapshot"
)

const (
	oplogStream = "oplog.bson"
	metadataExt = ".metadata.json"
	dataExt     = ".bson"

	// maxDocSize bounds one document of a .bson stream: MongoDB's 16 MiB
	// limit plus the 16 KiB the server allows internally (oplog entries).
	maxDocSize = 16<<20 + 16<<10

	// maxMetadataSize bounds one metadata stream.
	maxMetadataSize = 16 << 20

	// batchBytes and batchDocs bound one insert batch of a Restorer
	// (sent as insertWorkers commands at once: see insert).
	batchBytes = 8 << 20
	batchDocs  = 2000

	// defaultParallel is the default number of collections dumped, or
	// insert batches sent, at once.
	defaultParallel = 4

	// bufSize is the size of the buffer in front of each stream.
	bufSize = 256 << 10

	// disconnectTimeout bounds closing the connections at the end.
	disconnectTimeout = 10 * time.Second
)

// systemDB reports whether db is one of the databases that stackport never
// dumps nor writes: admin, local and config.
func systemDB(db string) bool {
	return db == "admin" || db == "local" || db == "config"
}

// A namespace names a collection or view.
type namespace struct{ db, coll string }

func (n namespace) String() string { return n.db + "." + n.coll }

// streamBase returns the stream name of ns without its extension:
// "<db>/<percent-encoded collection>".
func (n namespace) streamBase() string { return n.db + "/" + url.PathEscape(n.coll) }

// Kinds of streams.
type streamKind int

const (
	kindMetadata streamKind = iota
	kindData
	kindOplog
)

// parseStreamName returns the kind and namespace of a stream name.
func parseStreamName(name string) (streamKind, namespace, error) {
	if name == oplogStream {
		return kindOplog, namespace{}, nil
	}
	db, file, ok := strings.Cut(name, "/")
	if !ok {
		return 0, namespace{}, errors.New("not <db>/<collection> nor oplog.bson")
	}
	if err := checkDBName(db); err != nil {
		return 0, namespace{}, err
	}
	kind := kindData
	esc, ok := strings.CutSuffix(file, dataExt)
	if !ok {
		kind = kindMetadata
		if esc, ok = strings.CutSuffix(file, metadataExt); !ok {
			return 0, namespace{}, errors.New("neither .bson nor .metadata.json")
		}
	}
	coll, err := url.PathUnescape(esc)
	switch {
	case err != nil:
		return 0, namespace{}, fmt.Errorf("collection name: %v", err)
	case coll == "" || strings.ContainsAny(esc, "/\x00") || strings.ContainsRune(coll, 0):
		return 0, namespace{}, fmt.Errorf("invalid collection name %q", coll)
	}
	return kind, namespace{db, coll}, nil
}

// checkDBName returns why db is not a valid MongoDB database name, or nil.
func checkDBName(db string) error {
	if db == "" || len(db) > 63 || strings.ContainsAny(db, "/\\. \"$*<>:|?\x00") {
		return fmt.Errorf("invalid database name %q", db)
	}
	return nil
}

// corrupt returns an error wrapping snapshot.ErrCorrupt.
func corrupt(format string, args ...any) error {
	return fmt.Errorf("mongo: %s: %w", fmt.Sprintf(format, args...), snapshot.ErrCorrupt)
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}

func parallel(n int) int {
	if n <= 0 {
		return defaultParallel
	}
	return n
}

// Connect opens a client for uri, with the certificate authorities of the
// PEM file caFile (if set) trusted for TLS, and checks that the server
// answers (which also checks the credentials).
func Connect(ctx context.Context, uri, caFile string) (*mongo.Client, error) {
	opts := options.Client().ApplyURI(uri)
	if opts.AppName == nil {
		opts.SetAppName("stackport")
	}
	if opts.ServerSelectionTimeout == nil {
		// The driver waits 30 s for an unreachable server by default;
		// an operator wants to hear about it sooner.
		opts.SetServerSelectionTimeout(10 * time.Second)
	}
	if caFile != "" {
		pool, err := snapshot.LoadCAFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("mongo: %w", err)
		}
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if opts.TLSConfig != nil {
			cfg = opts.TLSConfig.Clone()
		}
		cfg.RootCAs = pool
		opts.SetTLSConfig(cfg)
	}
	client, err := mongo.Connect(opts)
	if err != nil {
		return nil, fmt.Errorf("mongo: %s: %w", redact(uri), err)
	}
	if err := client.Ping(ctx, nil); err != nil {
		Disconnect(ctx, client)
		return nil, fmt.Errorf("mongo: cannot reach %s: %w", redact(uri), err)
	}
	return client, nil
}

// WithoutDeadline returns ctx without its deadline, still cancelled with
// it (when the deadline passes too). The driver retries a retryable
// operation on a replica set as often as it can until the context's
// deadline (client-side operation timeouts), so under connection resets
// that persist an operation would last until the deadline instead of
// failing after its one retry; stackport's operations run with it.
func WithoutDeadline(ctx context.Context) context.Context { return noDeadline{ctx} }

type noDeadline struct{ context.Context }

func (noDeadline) Deadline() (time.Time, bool) { return time.Time{}, false }

// Disconnect closes client's connections, also when ctx is done.
func Disconnect(ctx context.Context, client *mongo.Client) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), disconnectTimeout)
	defer cancel()
	_ = client.Disconnect(ctx)
}

// redact returns uri with its password replaced by REDACTED.
func redact(uri string) string {
	scheme, rest, ok := strings.Cut(uri, "://")
	if !ok {
		return "(invalid URI)"
	}
	hosts := rest
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		hosts = rest[:i]
	}
	at := strings.LastIndexByte(hosts, '@')
	if at < 0 {
		return uri
	}
	user, _, hasPassword := strings.Cut(hosts[:at], ":")
	if !hasPassword {
		return uri
	}
	return scheme + "://" + user + ":REDACTED" + rest[at:]
}

// serverMessage returns the server's message for a command error, without
// the driver's wrapping, or err's text.
func serverMessage(err error) string {
	var ce mongo.CommandError
	if errors.As(err, &ce) && ce.Message != "" {
		if ce.Name != "" {
			return ce.Message + " (" + ce.Name + ")"
		}
		return ce.Message
	}
	return err.Error()
}

// statKey returns the name of a per-collection counter, such as
// "documents:appsmith.user".
func statKey(what string, ns namespace) string { return what + ":" + ns.String() }
