package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/snapshot/mongo"
	"github.com/stackport/stackport/snapshot/postgres"
	"github.com/stackport/stackport/snapshot/redis"
	"github.com/stackport/stackport/snapshot/volume"
)

type restoreOptions struct {
	// Host chooses whose newest snapshot "latest" is (restore only).
	Host     string
	VolumeTo string
	Force    bool
	Chown    string
	Crypto   cryptoOptions
	Profile  profileOptions // --profile appsmith --stack DIR: the volume target is the stack folder

	MongoTo        string
	MongoTLSCAFile string
	MongoNSFrom    string
	MongoNSTo      string
	Drop           bool
	MongoParallel  int
	MongoFlavor    string
	Strict         bool

	RedisTo        string
	RedisTLSCAFile string
	RedisReplace   bool
	RedisFlush     bool
	RedisDBMap     string
	Yes            bool

	PostgresTo         string
	PostgresKeepOwners bool
	PostgresClean      bool
	PostgresParallel   int
	// PostgresLoaders is the number of tables a PostgreSQL restore loads
	// at once (postgres.Restorer.Loaders): restore sets it from
	// --postgres-parallel; migrate leaves it 0, one transaction.
	PostgresLoaders int

	// keep lists the paths the volume restore must leave in place: the
	// folder of a file:// repository (restore sets it from --repo).
	keep []string
}

func newRestoreCommand(g *globalOptions) *cobra.Command {
	var opts restoreOptions
	cmd := &cobra.Command{
		Use:   "restore [ID|latest] --volume-to DIR [flags]",
		Short: "Restore a snapshot's components into targets",
		Long: `Restore a snapshot (the newest when no ID is given) into the targets named by
the --*-to flags.

latest is the newest snapshot of --host; without --host, of this host (its
host name, as snapshot records it) when the repository holds snapshots of
several hosts, or of the only host there is. The host chosen is logged; when
the repository holds no snapshot of it, the error lists the hosts it has. An
empty ID ("$ID" unset) is refused, never taken as latest.

The volume is unpacked into a staging folder inside the target and moved into
place only after every byte was read and every checksum matched: a damaged
snapshot or an interruption leaves the target exactly as it was. A target that
is not empty is refused unless --force, which replaces its content. Owners are
restored when running as root; --chown gives every file one owner instead (for
NFS shares such as Filestore). Archive entries that would write outside the
target (../ or absolute paths, writes through symlinks, device files) are
rejected by name.

PostgreSQL is restored in three steps: pre-data (types, functions, tables) is
committed first, then --postgres-parallel connections load the tables at once,
each table's COPY in a transaction of its own, then indexes, constraints,
triggers and sequence values are committed. If anything fails after pre-data,
what the restore created is dropped again, so the same command can simply run
again; if even that fails, the error says the target holds a partial restore,
which a run with --postgres-clean replaces. --postgres-parallel 1, and every
--postgres-clean restore, run in one transaction instead: a failure leaves the
target exactly as it was (with --postgres-clean: the data it was to replace
stays).`,
		Example: `  stackport restore latest --volume-to /appsmith-stacks
  # the newest snapshot of another host (say, onto a new machine)
  stackport restore latest --host appsmith-0 --volume-to /appsmith-stacks
  stackport restore 20261125T210000Z-3f9a1c --volume-to /mnt/filestore/stacks --chown 1000:1000 --force
  # MongoDB into Atlas, appsmith.* as appsmith_prod.*
  stackport restore latest --mongo-to 'mongodb+srv://user:pass@cluster0.example.mongodb.net/' \
    --mongo-ns-from appsmith --mongo-ns-to appsmith_prod
  # Redis into Memorystore (TLS, AUTH, one database)
  stackport restore latest --redis-to 'rediss://:AUTH_STRING@10.0.0.3:6378' \
    --redis-tls-ca-file server-ca.pem --redis-db-map 0:0,1:0
  # PostgreSQL into Cloud SQL, as the cloudsqlsuperuser-like application role
  stackport restore latest --postgres-to 'postgres://appsmith:PASS@10.0.0.5:5432/appsmith?sslmode=require'`,
		Args: wrapArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRestore(cmd.Context(), g, opts, snapshotRef(args))
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Host, "host", "", "latest is the newest snapshot of this host (default: this host's, or the only host's); an ID must be of it")
	opts.Crypto.addDecryptFlags(f)
	opts.addTargetFlags(f, false)
	opts.Profile.addFlags(f, "the Appsmith stack folder to restore the volume into (with --profile appsmith; instead of --volume-to)")
	f.IntVar(&opts.MongoParallel, "mongo-parallel", 4, "MongoDB insert batches in flight")
	f.IntVar(&opts.PostgresParallel, "postgres-parallel", 4,
		"PostgreSQL tables loaded at once, each on its own connection, and workers per index build (1: the whole restore in one transaction)")
	return cmd
}

type restoreResult struct {
	ID         string                    `json:"id"`
	Components map[string]snapshot.Stats `json:"components"`
}

// restorers returns the components the --*-to flags ask for.
func (opts restoreOptions) restorers(log *slog.Logger) ([]part[snapshot.Restorer], error) {
	var parts []part[snapshot.Restorer]
	if opts.VolumeTo != "" {
		var owner *volume.Owner
		if opts.Chown != "" {
			var err error
			if owner, err = volume.ParseOwner(opts.Chown); err != nil {
				return nil, usageError{fmt.Errorf("restore: --chown: %w", err)}
			}
		}
		vr := &volume.Restorer{Dir: opts.VolumeTo, Force: opts.Force, Chown: owner, Keep: opts.keep, Log: log}
		if err := vr.CheckKeep(); err != nil {
			return nil, usageError{fmt.Errorf("restore: --volume-to: %w", err)}
		}
		parts = append(parts, part[snapshot.Restorer]{"volume", vr})
	}
	if (opts.MongoNSFrom == "") != (opts.MongoNSTo == "") {
		return nil, usageErrorf("restore: give both --mongo-ns-from and --mongo-ns-to, or neither")
	}
	if opts.MongoTo != "" {
		flavor, err := mongo.ParseFlavor(opts.MongoFlavor)
		if err != nil {
			return nil, usageError{fmt.Errorf("--mongo-flavor: %w", err)}
		}
		parts = append(parts, part[snapshot.Restorer]{"mongo", &mongo.Restorer{URI: opts.MongoTo, TLSCAFile: opts.MongoTLSCAFile,
			NSFrom: opts.MongoNSFrom, NSTo: opts.MongoNSTo, Drop: opts.Drop, Parallel: opts.MongoParallel,
			Flavor: flavor, Strict: opts.Strict, Log: log}})
	}
	if opts.RedisTo != "" {
		if opts.RedisFlush && !opts.Yes {
			return nil, usageErrorf("restore: --redis-flush deletes every key of the target databases: confirm with --yes")
		}
		dbMap, err := parseDBMap(opts.RedisDBMap)
		if err != nil {
			return nil, err
		}
		parts = append(parts, part[snapshot.Restorer]{"redis", &redis.Restorer{URL: opts.RedisTo, TLSCAFile: opts.RedisTLSCAFile,
			Replace: opts.RedisReplace, Flush: opts.RedisFlush, DBMap: dbMap, Log: log}})
	}
	if opts.PostgresTo != "" {
		parts = append(parts, part[snapshot.Restorer]{"postgres", &postgres.Restorer{URL: opts.PostgresTo, KeepOwners: opts.PostgresKeepOwners,
			Clean: opts.PostgresClean, Loaders: opts.PostgresLoaders, Parallel: opts.PostgresParallel, Log: log}})
	}
	if len(parts) == 0 {
		return nil, usageErrorf("restore: nothing to restore to: give --volume-to DIR, --mongo-to URI, --redis-to URL and/or --postgres-to URL")
	}
	return parts, nil
}

func runRestore(ctx context.Context, g *globalOptions, opts restoreOptions, ref string) error {
	log := g.logger()
	if err := checkSnapshotRef("restore", ref); err != nil {
		return err
	}
	opts.PostgresLoaders = opts.PostgresParallel
	opts.keep = repoFolder(g.Repo)
	if err := opts.Profile.applyRestoreProfile(&opts); err != nil {
		return err
	}
	parts, err := opts.restorers(log)
	if err != nil {
		return err
	}
	repo, m, ropts, err := loadSnapshotOf(ctx, g, "restore", opts.Crypto, ref, opts.Host)
	if err != nil {
		return err
	}
	defer repo.Close()
	var total int64
	for _, p := range parts {
		c := m.Component(p.kind)
		if c == nil {
			return fmt.Errorf("restore: snapshot %s has no %s component", m.ID, p.kind)
		}
		for _, o := range c.Objects {
			total += o.RawSize
		}
	}
	for _, c := range m.Components {
		if !slices.ContainsFunc(parts, func(p part[snapshot.Restorer]) bool { return p.kind == c.Kind }) {
			log.Warn("component not restored: no target given for it", "component", c.Kind)
		}
	}
	log.Info("restore started", "id", m.ID, "host", m.Host)
	bar := startProgress(g, "restore", total)
	defer bar.Stop()
	ropts.Progress = bar.Add

	res := restoreResult{ID: m.ID, Components: map[string]snapshot.Stats{}}
	var mu sync.Mutex
	var errs []error // every component's: the first failure cancels the others, whose errors may say what they left behind
	grp, gctx := errgroup.WithContext(ctx)
	for _, p := range parts {
		grp.Go(func() error {
			in, err := snapshot.OpenComponent(gctx, repo, m, p.kind, ropts)
			var stats snapshot.Stats
			if err == nil {
				stats, err = p.impl.Restore(gctx, in)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				err = fmt.Errorf("restore: %w", err) // component errors name their component
				errs = append(errs, err)
				return err
			}
			res.Components[p.kind] = stats
			return nil
		})
	}
	_ = grp.Wait() // its error is errs[0]
	bar.Stop()
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, p := range parts {
		args := []any{"component", p.kind}
		stats := res.Components[p.kind]
		for _, k := range slices.Sorted(maps.Keys(stats)) {
			args = append(args, k, stats[k])
		}
		log.Info("component restored", args...)
	}
	opts.Profile.checkRestoredProfile(log)
	if g.JSON {
		return printJSON(g, res)
	}
	for _, p := range parts {
		stats := res.Components[p.kind]
		fmt.Fprintf(g.stdout, "restored %s of snapshot %s: %s\n", p.kind, m.ID, summary(stats))
	}
	return nil
}

// addTargetFlags adds the --*-to flags and the options of each target, for
// restore and migrate. In migrate the sources' flags already use the plain
// CA file names, so the targets' are --mongo-to-tls-ca-file and
// --redis-to-tls-ca-file there; the --*-parallel flags are each command's own.
func (opts *restoreOptions) addTargetFlags(f *pflag.FlagSet, migrate bool) {
	ca := func(component string) string {
		if migrate {
			return component + "-to-tls-ca-file"
		}
		return component + "-tls-ca-file"
	}
	f.StringVar(&opts.VolumeTo, "volume-to", "", "put the volume into this directory (a Filestore/NFS mount, a local folder)")
	f.BoolVar(&opts.Force, "force", false, "replace the content of a non-empty volume target")
	f.StringVar(&opts.Chown, "chown", "", "give every file of the volume target this owner, UID:GID")
	f.StringVar(&opts.MongoTo, "mongo-to", "", "target MongoDB URI (Atlas, DocumentDB, MongoDB)")
	f.StringVar(&opts.MongoTLSCAFile, ca("mongo"), "", "PEM file of the CA of the target MongoDB (DocumentDB: global-bundle.pem)")
	f.StringVar(&opts.MongoNSFrom, "mongo-ns-from", "", "rename a database on the way: from this name (e.g. appsmith)…")
	f.StringVar(&opts.MongoNSTo, "mongo-ns-to", "", "…to this one (e.g. appsmith_prod)")
	f.BoolVar(&opts.Drop, "drop", false, "drop target MongoDB collections first (otherwise a collection with documents is refused)")
	f.StringVar(&opts.MongoFlavor, "mongo-flavor", "", "target MongoDB flavor: mongodb, atlas, documentdb or ferretdb (default: detected)")
	f.BoolVar(&opts.Strict, "strict", false, "refuse MongoDB collections or indexes that the target flavor needs adapted or skipped")
	f.StringVar(&opts.RedisTo, "redis-to", "", "target redis:// or rediss:// URL (Memorystore, Redis)")
	f.StringVar(&opts.RedisTLSCAFile, ca("redis"), "", "PEM file of the CA of the target Redis (Memorystore's server CA)")
	f.BoolVar(&opts.RedisReplace, "redis-replace", false, "replace Redis keys that already exist (otherwise an existing key is an error)")
	f.BoolVar(&opts.RedisFlush, "redis-flush", false, "FLUSHDB the target Redis databases first (needs --yes)")
	f.StringVar(&opts.RedisDBMap, "redis-db-map", "", "map Redis databases, source:target,… (e.g. 0:0,1:0 for single-database targets)")
	f.BoolVar(&opts.Yes, "yes", false, "confirm destructive options such as --redis-flush")
	f.StringVar(&opts.PostgresTo, "postgres-to", "", "target PostgreSQL database URL (Cloud SQL, PostgreSQL); the role need not be a superuser")
	f.BoolVar(&opts.PostgresKeepOwners, "postgres-keep-owners", false, "keep owners and privileges (needs a role that may set them)")
	f.BoolVar(&opts.PostgresClean, "postgres-clean", false, "replace what the target holds in the restored schemas (drops them first, in the restore's one transaction: a failed restore keeps them)")
}

// repoFolder returns the folder of a file:// repository URL (as storage
// and gocloud's fileblob read it: the path, relative to the working
// directory for file://./…), symbolic links resolved, for the volume
// restore to keep; nil for other schemes.
func repoFolder(repo string) []string {
	u, err := url.Parse(repo)
	if err != nil || u.Scheme != "file" || u.Path == "" {
		return nil
	}
	p := filepath.FromSlash(u.Path)
	if u.Host == "." {
		p = strings.TrimPrefix(p, string(filepath.Separator))
	}
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	return []string{p}
}

// parseDBMap parses --redis-db-map ("" is no map).
func parseDBMap(s string) (map[int]int, error) {
	if s == "" {
		return nil, nil
	}
	m, err := redis.ParseDBMap(s)
	if err != nil {
		return nil, usageError{fmt.Errorf("--redis-db-map: %w", err)}
	}
	return m, nil
}

// summary is a short human line of a component's main counters.
func summary(stats snapshot.Stats) string {
	var parts []string
	for _, k := range []string{"files", "collections", "documents", "tables", "rows", "keys"} {
		if v, ok := stats[k]; ok {
			parts = append(parts, fmt.Sprintf("%d %s", v, k))
		}
	}
	if v, ok := stats["bytes"]; ok {
		parts = append(parts, snapshot.HumanBytes(v))
	}
	return strings.Join(parts, ", ")
}
