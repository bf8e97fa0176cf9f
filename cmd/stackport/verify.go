package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/snapshot/mongo"
	"github.com/stackport/stackport/snapshot/postgres"
	"github.com/stackport/stackport/snapshot/redis"
)

type verifyOptions struct {
	// Host chooses whose newest snapshot "latest" is.
	Host           string
	Crypto         cryptoOptions
	AgainstRedis   string
	RedisTLSCAFile string
	RedisDBMap     string

	AgainstPostgres string

	AgainstMongo   string
	MongoTLSCAFile string
	MongoNSFrom    string
	MongoNSTo      string
}

func newVerifyCommand(g *globalOptions) *cobra.Command {
	var opts verifyOptions
	cmd := &cobra.Command{
		Use:   "verify [ID|latest]",
		Short: "Re-read a snapshot and check every object",
		Long: `Re-read every object of a snapshot from the repository, check its size and
SHA-256 against the manifest, and decode it fully (for the volume: every tar
entry, with the same path checks a restore makes). Nothing is written.

With --against-mongo, --against-redis or --against-postgres a component is
also compared with a restored target: for MongoDB per collection the document
count and an order-independent digest of the raw documents; for Redis per
database the key count and, per key, type, value (DUMP payload) and TTL; for
PostgreSQL per table the row count and an order-independent row digest.

latest is the newest snapshot of --host; without --host, of this host when
the repository holds snapshots of several hosts, or of the only host there
is (the host chosen is printed). An empty ID ("$ID" unset) is refused, never
taken as latest.

Exits 0 when the snapshot is intact (and matches the target) and 3 when data
is corrupt or missing or the target differs, naming what is wrong.`,
		Example: `  stackport verify latest
  stackport verify latest --host appsmith-0
  stackport verify 20261125T210000Z-3f9a1c --json
  stackport verify latest --against-redis 'rediss://:AUTH@10.0.0.3:6378' --redis-tls-ca-file server-ca.pem`,
		Args: wrapArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVerify(cmd.Context(), g, opts, snapshotRef(args))
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Host, "host", "", "latest is the newest snapshot of this host (default: this host's, or the only host's); an ID must be of it")
	opts.Crypto.addDecryptFlags(f)
	f.StringVar(&opts.AgainstRedis, "against-redis", "", "also compare the redis component with this restored Redis")
	f.StringVar(&opts.RedisTLSCAFile, "redis-tls-ca-file", "", "PEM file of the CA of that Redis")
	f.StringVar(&opts.RedisDBMap, "redis-db-map", "", "the --redis-db-map the restore used")
	f.StringVar(&opts.AgainstPostgres, "against-postgres", "", "also compare every table's row count and row digest with this restored PostgreSQL")
	f.StringVar(&opts.AgainstMongo, "against-mongo", "", "also compare every collection's document count and digest with this restored MongoDB")
	f.StringVar(&opts.MongoTLSCAFile, "mongo-tls-ca-file", "", "PEM file of the CA of that MongoDB")
	f.StringVar(&opts.MongoNSFrom, "mongo-ns-from", "", "the --mongo-ns-from the restore used")
	f.StringVar(&opts.MongoNSTo, "mongo-ns-to", "", "the --mongo-ns-to the restore used")
	return cmd
}

// against returns decoders that use check for kind and next for the others.
func against(next func(string) snapshot.Restorer, kind string, check snapshot.Restorer) func(string) snapshot.Restorer {
	return func(k string) snapshot.Restorer {
		if k == kind {
			return check
		}
		return next(k)
	}
}

// postgresChecker decodes the postgres component, collecting each table's
// row count and digest, and compares them with a live database.
type postgresChecker struct{ url string }

func (c postgresChecker) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	want := map[string]postgres.TableDigest{}
	stats, err := postgres.Verifier{Digests: want}.Restore(ctx, in)
	if err != nil {
		return stats, err
	}
	got, err := postgres.Digest(ctx, c.url, nil)
	if err != nil {
		return stats, err
	}
	return stats, postgres.Compare(want, got)
}

type verifyResult struct {
	ID      string `json:"id"`
	Host    string `json:"host"`
	OK      bool   `json:"ok"`
	Objects int    `json:"objects"`
	Bytes   int64  `json:"stored_bytes"`
	Error   string `json:"error,omitempty"`
}

func runVerify(ctx context.Context, g *globalOptions, opts verifyOptions, ref string) error {
	if err := checkSnapshotRef("verify", ref); err != nil {
		return err
	}
	decode := decoder
	if opts.AgainstRedis != "" {
		dbMap, err := parseDBMap(opts.RedisDBMap)
		if err != nil {
			return err
		}
		checker := &redis.Checker{URL: opts.AgainstRedis, TLSCAFile: opts.RedisTLSCAFile, DBMap: dbMap, Log: g.logger()}
		decode = against(decode, "redis", checker)
	}
	if opts.AgainstMongo != "" {
		decode = against(decode, "mongo", &mongo.Checker{URI: opts.AgainstMongo, TLSCAFile: opts.MongoTLSCAFile,
			NSFrom: opts.MongoNSFrom, NSTo: opts.MongoNSTo, Log: g.logger()})
	}
	if opts.AgainstPostgres != "" {
		decode = against(decode, "postgres", postgresChecker{url: opts.AgainstPostgres})
	}
	repo, m, ropts, err := loadSnapshotOf(ctx, g, "verify", opts.Crypto, ref, opts.Host)
	if err != nil {
		return err
	}
	defer repo.Close()
	bar := startProgress(g, "verify", m.RawSize())
	ropts.Progress = bar.Add
	err = snapshot.Verify(ctx, repo, m, decode, ropts)
	bar.Stop()
	res := verifyResult{ID: m.ID, Host: m.Host, OK: err == nil, Bytes: m.StoredSize()}
	for _, c := range m.Components {
		res.Objects += len(c.Objects)
	}
	if err != nil {
		res.Error = err.Error()
	}
	if g.JSON {
		if perr := printJSON(g, res); perr != nil {
			return perr
		}
	} else if err == nil {
		fmt.Fprintf(g.stdout, "snapshot %s (host %s) is intact: %d objects, %s checked\n", m.ID, hostLabel(m.Host), res.Objects, snapshot.HumanBytes(res.Bytes))
	}
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	return nil
}
