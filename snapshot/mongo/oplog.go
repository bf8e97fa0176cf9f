package mongo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/stackport/stackport/snapshot"
)

// errOplogRolledOver reports that the oplog no longer holds the entry at
// which a dump started, so the entries written during the dump are lost.
var errOplogRolledOver = errors.New("the oplog rolled over during the dump (its start entry is gone); retry, or enlarge the oplog")

// oplogStart returns the timestamp of the newest oplog entry, read before
// the first collection is dumped. hasOplog is false when the source is not
// a replica set or its oplog cannot be read (the reason is logged).
func oplogStart(ctx context.Context, client *mongo.Client, log *slog.Logger) (start bson.Timestamp, hasOplog bool, err error) {
	hello, err := client.Database("admin").RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Raw()
	if err != nil {
		// Servers before MongoDB 4.4.2 (and some DocumentDB versions)
		// know only the legacy name.
		hello, err = client.Database("admin").RunCommand(ctx, bson.D{{Key: "isMaster", Value: 1}}).Raw()
	}
	if err != nil {
		return start, false, fmt.Errorf("mongo: hello: %w", err)
	}
	if set, _ := hello.Lookup("setName").StringValueOK(); set == "" {
		log.Info("mongo: the source is not a replica set: no oplog")
		return start, false, nil
	}
	start, err = newestEntry(ctx, client)
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		// An oplog without entries yet (FerretDB's until the first
		// write; MongoDB writes a no-op every 10 s): every entry is
		// after the start.
		return bson.Timestamp{}, true, nil
	case err != nil && ctx.Err() != nil:
		return start, false, fmt.Errorf("mongo: read the oplog: %w", ctx.Err())
	case err != nil:
		log.Warn("mongo: the replica set's oplog cannot be read", "error", err)
		return start, false, nil
	}
	return start, true, nil
}

// newestEntry returns the timestamp of the newest oplog entry
// (mongo.ErrNoDocuments for an empty oplog).
func newestEntry(ctx context.Context, client *mongo.Client) (bson.Timestamp, error) {
	last, err := client.Database("local").Collection("oplog.rs").FindOne(ctx, bson.D{},
		options.FindOne().SetSort(bson.D{{Key: "$natural", Value: -1}}).SetProjection(bson.D{{Key: "ts", Value: 1}})).Raw()
	if err != nil {
		return bson.Timestamp{}, err
	}
	t, i, ok := last.Lookup("ts").TimestampOK()
	if !ok {
		return bson.Timestamp{}, errors.New("the newest oplog entry has no timestamp")
	}
	return bson.Timestamp{T: t, I: i}, nil
}

// dumpOplog writes the oplog entries after start that touch the databases
// keepDB accepts to the stream oplog.bson, up to the newest entry when it
// is called (the point in time the snapshot restores to), and returns how
// many it wrote and that end.
func dumpOplog(ctx context.Context, client *mongo.Client, out snapshot.StreamWriter, start bson.Timestamp, keepDB func(string) bool) (int64, bson.Timestamp, error) {
	var n int64
	end, err := newestEntry(ctx, client)
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		end = start // nothing was written during the dump
	case err != nil:
		return 0, end, fmt.Errorf("mongo: read the oplog: %w", err)
	}
	err = writeStream(out, oplogStream, func(w io.Writer) error {
		filter := bson.D{{Key: "ts", Value: bson.D{{Key: "$gte", Value: start}, {Key: "$lte", Value: end}}}}
		cur, err := client.Database("local").Collection("oplog.rs").Find(ctx, filter,
			options.Find().SetHint(bson.D{{Key: "$natural", Value: 1}}))
		if err != nil {
			return fmt.Errorf("mongo: read the oplog: %w", err)
		}
		defer cur.Close(context.WithoutCancel(ctx))
		n, err = captureOplog(ctx, cursor{cur}, w, start, keepDB)
		return err
	})
	return n, end, err
}

// captureOplog copies the entries of src, which starts at the entry start
// (or at the oplog's first entry when start is zero: the oplog was empty),
// to w: those after start that replayOps keeps. An entry that cannot be
// replayed as ordinary writes fails the capture, so that no snapshot holds
// one: a restore would refuse it.
func captureOplog(ctx context.Context, src docSource, w io.Writer, start bson.Timestamp, keepDB func(string) bool) (int64, error) {
	first := !start.IsZero()
	n, _, err := copyDocs(ctx, src, w, func(entry bson.Raw) (bool, error) {
		if first {
			first = false
			if t, i, _ := entry.Lookup("ts").TimestampOK(); t != start.T || i != start.I {
				return false, errOplogRolledOver
			}
			return false, nil // written before the dump started
		}
		ops, err := replayOps(entry, keepDB, nil)
		for _, raw := range ops {
			if _, terr := translate(raw); errors.Is(terr, errUnreplayable) {
				err = fmt.Errorf("the entry at %v: %w: retry the snapshot (the entry will be older than its start)", entry.Lookup("ts"), terr)
			}
		}
		return len(ops) > 0, err
	})
	if err == nil && first {
		err = errOplogRolledOver
	}
	if err != nil {
		return n, fmt.Errorf("mongo: oplog: %w", err)
	}
	return n, nil
}

// replayOps returns the operations to replay for one oplog entry: none for
// no-ops and for the databases keepDB rejects or admin, local and config;
// the entry itself for a CRUD operation or a command; the inner operations
// of a transaction (an applyOps command on admin). Each operation is
// rewritten without its collection UUID ("ui", which differs on the
// target) and with its database renamed by rename (if set).
func replayOps(entry bson.Raw, keepDB func(string) bool, rename func(string) string) ([]bson.Raw, error) {
	op, ok := entry.Lookup("op").StringValueOK()
	if !ok {
		return nil, errors.New("oplog entry without op")
	}
	ns, ok := entry.Lookup("ns").StringValueOK()
	if !ok && op != "n" {
		return nil, errors.New("oplog entry without ns")
	}
	db, _, _ := strings.Cut(ns, ".")
	switch op {
	case "n":
		return nil, nil
	case "i", "u", "d", "c":
	default:
		return nil, fmt.Errorf("oplog entry with unknown op %q", op)
	}
	if op == "c" && ns == "admin.$cmd" {
		return transactionOps(entry, keepDB, rename)
	}
	if systemDB(db) || !keepDB(db) {
		return nil, nil
	}
	if rename == nil {
		rename = func(db string) string { return db }
	}
	renameNS := func(v bson.RawValue) (bson.RawValue, bool) {
		s, ok := v.StringValueOK()
		if !ok {
			return bson.RawValue{}, true
		}
		d, rest, _ := strings.Cut(s, ".")
		return stringValue(rename(d) + "." + rest), true
	}
	return []bson.Raw{rewrite(entry, func(key string, v bson.RawValue) (bson.RawValue, bool) {
		switch key {
		case "ui":
			return bson.RawValue{}, false
		case "ns":
			return renameNS(v)
		case "o":
			// renameCollection names full namespaces.
			o, isDoc := v.DocumentOK()
			if op != "c" || !isDoc || o.Lookup("renameCollection").Type == 0 {
				return bson.RawValue{}, true
			}
			return docValue(rewrite(o, func(k string, v bson.RawValue) (bson.RawValue, bool) {
				if k == "renameCollection" || k == "to" {
					return renameNS(v)
				}
				return bson.RawValue{}, true
			})), true
		}
		return bson.RawValue{}, true
	})}, nil
}

// transactionOps returns the operations to replay of a command on
// admin.$cmd: the inner operations of a transaction's applyOps, nothing for
// other commands on admin.
func transactionOps(entry bson.Raw, keepDB func(string) bool, rename func(string) string) ([]bson.Raw, error) {
	o, _ := entry.Lookup("o").DocumentOK()
	if prepared, _ := o.Lookup("prepare").BooleanOK(); prepared || o.Lookup("commitTransaction").Type != 0 {
		return nil, errors.New("prepared transactions in the oplog cannot be replayed")
	}
	inner, ok := o.Lookup("applyOps").ArrayOK()
	if !ok {
		return nil, nil
	}
	vals, err := inner.Values()
	if err != nil {
		return nil, fmt.Errorf("oplog applyOps: %w", err)
	}
	var ops []bson.Raw
	for _, v := range vals {
		doc, ok := v.DocumentOK()
		if !ok {
			return nil, errors.New("oplog applyOps with a non-document operation")
		}
		sub, err := replayOps(doc, keepDB, rename)
		if err != nil {
			return nil, err
		}
		ops = append(ops, sub...)
	}
	return ops, nil
}

func stringValue(s string) bson.RawValue {
	_, data, _ := bson.MarshalValue(s)
	return bson.RawValue{Type: bson.TypeString, Value: data}
}

func docValue(doc bson.Raw) bson.RawValue {
	return bson.RawValue{Type: bson.TypeEmbeddedDocument, Value: doc}
}

// replayEntries reads the oplog entries of docs and passes each operation
// to replay (see replayOps) to fn, with the byte offset of its entry. An
// entry that cannot be replayed is corrupt data.
func replayEntries(ctx context.Context, docs *docReader, keepDB func(string) bool, rename func(string) string, fn func(off int64, op bson.Raw) error) error {
	return readAll(ctx, docs, func(entry []byte) error {
		off := docs.off - int64(len(entry))
		ops, err := replayOps(entry, keepDB, rename)
		if err != nil {
			return corrupt("oplog: byte offset %d: %v", off, err)
		}
		for _, op := range ops {
			if err := fn(off, op); err != nil {
				return err
			}
		}
		return nil
	})
}
