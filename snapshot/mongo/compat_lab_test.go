package mongo

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/streamtest"
)

// TestLabCompatibility restores, into FerretDB (detected as such), a
// snapshot written without a server whose metadata has what FerretDB lacks:
// a TTL index and a collection collation. The restore adapts or skips them
// and logs each; Strict, and a collection the target cannot hold, stop it
// before anything is written.
func TestLabCompatibility(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, uri := lab.Mongo(t)
	client := connectT(t, uri)

	f, v, err := DetectFlavor(ctx, client, uri)
	if err != nil || f != FlavorFerretDB || v != "v1.24.2" {
		t.Fatalf("detectFlavor = %s %q, %v; want ferretdb v1.24.2", f, v, err)
	}

	idx := func(d bson.D) bson.Raw { return marshal(t, append(bson.D{{Key: "v", Value: int32(2)}}, d...)) }
	session := plainCollection("app", "session")
	session.meta.Indexes = []bson.Raw{
		idx(bson.D{{Key: "key", Value: bson.D{{Key: "_id", Value: int32(1)}}}, {Key: "name", Value: "_id_"}}),
		idx(bson.D{{Key: "key", Value: bson.D{{Key: "createdAt", Value: int32(1)}}}, {Key: "name", Value: "ttl"}, {Key: "expireAfterSeconds", Value: int32(3600)}}),
		idx(bson.D{{Key: "key", Value: bson.D{{Key: "userId", Value: int32(1)}}}, {Key: "name", Value: "userId_1"}}),
	}
	names := plainCollection("app", "names")
	names.meta.Options = marshal(t, bson.D{{Key: "collation", Value: bson.D{{Key: "locale", Value: "fr"}, {Key: "strength", Value: int32(1)}}}})
	docs := map[namespace][]bson.Raw{}
	for i := range 50 {
		docs[session.ns] = append(docs[session.ns], marshal(t, bson.D{{Key: "_id", Value: int32(i)}, {Key: "userId", Value: "u" + string(rune('a'+i%26))},
			{Key: "createdAt", Value: bson.DateTime(1700000000000 + int64(i))}}))
	}
	docs[names.ns] = []bson.Raw{marshal(t, bson.D{{Key: "_id", Value: "é"}, {Key: "n", Value: "Élodie"}}), marshal(t, bson.D{{Key: "_id", Value: "e"}, {Key: "n", Value: "elodie"}})}
	store := streamtest.New()
	writeSnapshot(t, store, []*collection{names, session}, docs, nil)

	dbNames := func() []string {
		t.Helper()
		n, err := client.ListDatabaseNames(ctx, bson.D{})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	t.Run("strict refuses before writing", func(t *testing.T) {
		var log streamtest.LogBuffer
		_, err := (&Restorer{URI: uri, Strict: true, Log: log.Logger()}).Restore(ctx, store.Reader())
		if !errors.Is(err, ErrIncompatible) {
			t.Fatalf("err = %v, want ErrIncompatible", err)
		}
		for _, s := range []string{"strict", "app.session index ttl: adapted", "app.names option collation: skipped", "nothing was written"} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not say %q", err, s)
			}
		}
		if slices.Contains(dbNames(), "app") {
			t.Error("strict restore wrote to the target")
		}
	})

	t.Run("refused collection", func(t *testing.T) {
		ts := plainCollection("app", "metrics")
		ts.meta.Type = typeTimeseries
		ts.meta.Options = marshal(t, bson.D{{Key: "timeseries", Value: bson.D{{Key: "timeField", Value: "t"}}}})
		bad := streamtest.New()
		writeSnapshot(t, bad, []*collection{ts, session}, map[namespace][]bson.Raw{session.ns: docs[session.ns][:1]}, nil)
		_, err := (&Restorer{URI: uri, Log: quiet}).Restore(ctx, bad.Reader())
		if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "app.metrics time-series collection: refused") {
			t.Fatalf("err = %v, want ErrIncompatible naming app.metrics", err)
		}
		if slices.Contains(dbNames(), "app") {
			t.Error("refused restore wrote to the target")
		}
	})

	t.Run("adapt and skip", func(t *testing.T) {
		var log streamtest.LogBuffer
		r := store.Reader()
		stats, err := (&Restorer{URI: uri, Log: log.Logger()}).Restore(ctx, r)
		if err != nil {
			t.Fatalf("%v\n%s", err, log.String())
		}
		if stats["compat_adapted"] != 1 || stats["compat_skipped"] != 1 || stats["documents"] != 52 {
			t.Errorf("stats %v", stats)
		}
		out := log.String()
		for _, s := range []string{`flavor=ferretdb version=v1.24.2`, `msg="mongo: compatibility: adapted" target=app.session item="index ttl"`,
			`msg="mongo: compatibility: skipped" target=app.names item="option collation"`, `as_is=3 adapted=1 skipped=1 refused=0`} {
			if !strings.Contains(out, s) {
				t.Errorf("log lacks %q:\n%s", s, out)
			}
		}
		if n := strings.Count(out, "mongo: compatibility: "); n != 2 {
			t.Errorf("%d compatibility lines, want one per adapted or skipped item:\n%s", n, out)
		}

		got := readDB(t, ctx, client.Database("app"))
		if len(got["session"].docs) != 50 || len(got["names"].docs) != 2 {
			t.Fatalf("restored %d and %d documents", len(got["session"].docs), len(got["names"].docs))
		}
		for _, d := range docs[session.ns] {
			id := d.Lookup("_id")
			if !bytes.Equal(got["session"].docs[string(append([]byte{byte(id.Type)}, id.Value...))], d) {
				t.Errorf("document %v differs", d)
			}
		}
		ttl := got["session"].indexes["ttl"]
		if ttl == nil || ttl.Lookup("expireAfterSeconds").Type != 0 {
			t.Errorf("ttl index %v, want it without expireAfterSeconds", ttl)
		}
		if got["session"].indexes["userId_1"] == nil {
			t.Error("userId_1 not built")
		}
		if got["names"].options.Lookup("collation").Type != 0 {
			t.Errorf("names options %v", got["names"].options)
		}
	})

	t.Run("forced flavor", func(t *testing.T) {
		// Forced to mongodb, the restore keeps the collation and FerretDB
		// refuses it, with its own message.
		var log streamtest.LogBuffer
		_, err := (&Restorer{URI: uri, Flavor: FlavorMongoDB, NSFrom: "app", NSTo: "app_forced", Log: log.Logger()}).Restore(ctx, store.Reader())
		if err == nil || !strings.Contains(err.Error(), "create collection app_forced.names") || !strings.Contains(err.Error(), "NotImplemented") {
			t.Errorf("err = %v, want FerretDB's refusal of the collation", err)
		}
		if !strings.Contains(log.String(), "set=mongodb detected=ferretdb") {
			t.Errorf("no warning about the forced flavor:\n%s", log.String())
		}
		_, err = (&Restorer{URI: uri, Flavor: "cosmosdb", Log: quiet}).Restore(ctx, store.Reader())
		if err == nil || !strings.Contains(err.Error(), "unknown flavor") {
			t.Errorf("unknown flavor: %v", err)
		}
	})
}
