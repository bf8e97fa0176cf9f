package main

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/snapshot/mongo"
	"github.com/stackport/stackport/snapshot/postgres"
	"github.com/stackport/stackport/snapshot/redis"
	"github.com/stackport/stackport/snapshot/volume"
)

type snapshotOptions struct {
	Volume         string
	Exclude        []string
	SkipUnreadable bool
	Compression    string
	Level          int
	Tags           []string
	Host           string
	Crypto         cryptoOptions
	// Profile (--profile appsmith --stack DIR, snapshot only) fills in the
	// sources from the stack.
	Profile profileOptions

	Mongo          string
	MongoTLSCAFile string
	MongoDBs       []string
	MongoParallel  int

	Redis          string
	RedisTLSCAFile string

	Postgres         string
	PostgresSchemas  []string
	PostgresParallel int
	PgDump           string
}

func newSnapshotCommand(g *globalOptions) *cobra.Command {
	var opts snapshotOptions
	cmd := &cobra.Command{
		Use:   "snapshot --volume DIR [flags]",
		Short: "Take a new snapshot and store it in the repository",
		Long: `Take a new snapshot of the given components and store it in the repository.

Each component is streamed through compression and a SHA-256 checksum straight
into storage; nothing is staged on local disk. The snapshot becomes visible
only when its manifest is written, after every object: a failed or interrupted
run (SIGINT, SIGTERM) aborts its uploads, removes what it wrote and leaves
earlier snapshots untouched.

On success the new snapshot's ID is the only thing printed on stdout.`,
		Example: `  # the Appsmith volume to S3, logs and backups left out
  export AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=…
  stackport snapshot --repo 's3://backups?region=eu-west-1&prefix=appsmith/' \
    --volume /appsmith-stacks --exclude logs --exclude data/backup --tag env=prod

  # encrypted to an age key (restore with --identity-file key.txt)
  stackport snapshot --repo file:///var/backups/stackport --volume /appsmith-stacks \
    --encrypt-to age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p

  # the volume and the embedded MongoDB in one snapshot
  stackport snapshot --repo file:///var/backups/stackport --volume /appsmith-stacks \
    --exclude data/mongodb --mongo 'mongodb://127.0.0.1:27017/?directConnection=true'

  # to a local directory, gzip instead of zstd
  stackport snapshot --repo file:///var/backups/stackport --volume /data --compression gzip`,
		Args: wrapArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshot(cmd.Context(), g, opts)
		},
	}
	opts.addFlags(cmd.Flags())
	opts.Profile.addFlags(cmd.Flags(), "the Appsmith stack folder (with --profile appsmith): the volume without its raw database files, logs and backups, and the databases of its configuration/docker.env")
	return cmd
}

// addFlags adds the flags of snapshot (also used by schedule).
func (opts *snapshotOptions) addFlags(f *pflag.FlagSet) {
	f.StringVar(&opts.Volume, "volume", "", "directory to snapshot (the persistent volume)")
	f.StringArrayVar(&opts.Exclude, "exclude", nil, "leave out paths matching this pattern, relative to --volume or by base name (repeatable)")
	f.BoolVar(&opts.SkipUnreadable, "skip-unreadable", false, "skip files that cannot be read, with a warning, instead of failing")
	f.StringVar(&opts.Compression, "compression", "zstd", "zstd, gzip or none")
	f.IntVar(&opts.Level, "level", 0, "compression level (zstd 1-22, gzip 1-9; 0 for the default)")
	f.StringArrayVar(&opts.Tags, "tag", nil, "tag the snapshot with key=value (repeatable)")
	f.StringVar(&opts.Host, "host", "", "host name to record (default: this machine's)")
	opts.Crypto.addEncryptFlags(f)
	f.StringVar(&opts.Mongo, "mongo", "", "MongoDB to snapshot: mongodb:// or mongodb+srv:// URI (credentials and TLS options in the URI)")
	f.StringVar(&opts.MongoTLSCAFile, "mongo-tls-ca-file", "", "PEM file of the CA that signed the MongoDB server's certificate")
	f.StringArrayVar(&opts.MongoDBs, "mongo-db", nil, "MongoDB database to snapshot (repeatable; default: all but admin, local, config)")
	f.IntVar(&opts.MongoParallel, "mongo-parallel", 4, "MongoDB collections dumped at once")
	f.StringVar(&opts.Redis, "redis", "", "Redis to snapshot: redis:// or rediss:// URL (user and password in the URL)")
	f.StringVar(&opts.RedisTLSCAFile, "redis-tls-ca-file", "", "PEM file of the CA that signed the Redis server's certificate")
	f.StringVar(&opts.Postgres, "postgres", "", "PostgreSQL to snapshot: postgres:// URL or key=value DSN")
	f.StringArrayVar(&opts.PostgresSchemas, "postgres-schema", nil, "PostgreSQL schema to snapshot (repeatable; default: all non-system schemas)")
	f.IntVar(&opts.PostgresParallel, "postgres-parallel", 4, "PostgreSQL tables copied at once")
	f.StringVar(&opts.PgDump, "pg-dump", "", "pg_dump to use (default: from PATH, else the server's major version under /usr/lib/postgresql)")
}

// snapshotResult is what snapshot prints with --json.
type snapshotResult struct {
	ID          string               `json:"id"`
	StoredBytes int64                `json:"stored_bytes"`
	RawBytes    int64                `json:"raw_bytes"`
	Components  []snapshot.Component `json:"components"`
}

// dumpers returns the components the flags ask for, in snapshot order.
func (opts snapshotOptions) dumpers(log *slog.Logger) ([]part[snapshot.Dumper], error) {
	var parts []part[snapshot.Dumper]
	if opts.Volume != "" {
		if fi, err := os.Stat(opts.Volume); err != nil {
			return nil, fmt.Errorf("snapshot: volume: %w", err)
		} else if !fi.IsDir() {
			return nil, fmt.Errorf("snapshot: volume: %s is not a directory", opts.Volume)
		}
		parts = append(parts, part[snapshot.Dumper]{"volume", &volume.Dumper{Dir: opts.Volume, Exclude: opts.Exclude, SkipUnreadable: opts.SkipUnreadable, Log: log}})
	}
	if opts.Mongo != "" {
		parts = append(parts, part[snapshot.Dumper]{"mongo", &mongo.Dumper{URI: opts.Mongo, TLSCAFile: opts.MongoTLSCAFile, DBs: opts.MongoDBs, Parallel: opts.MongoParallel, Log: log}})
	}
	if opts.Redis != "" {
		parts = append(parts, part[snapshot.Dumper]{"redis", &redis.Dumper{URL: opts.Redis, TLSCAFile: opts.RedisTLSCAFile, Log: log}})
	}
	if opts.Postgres != "" {
		parts = append(parts, part[snapshot.Dumper]{"postgres", &postgres.Dumper{URL: opts.Postgres, Schemas: opts.PostgresSchemas,
			Parallel: opts.PostgresParallel, PgDump: opts.PgDump, Log: log}})
	}
	if len(parts) == 0 {
		return nil, usageErrorf("snapshot: nothing to snapshot: give --volume DIR, --mongo URI, --redis URL and/or --postgres URL")
	}
	return parts, nil
}

// componentError says which component failed (for schedule's metrics).
type componentError struct {
	kind string
	err  error
}

func (e componentError) Error() string { return e.err.Error() }
func (e componentError) Unwrap() error { return e.err }

// part is one component of a command: its kind and what handles it.
type part[T any] struct {
	kind string
	impl T
}

func runSnapshot(ctx context.Context, g *globalOptions, opts snapshotOptions) error {
	if err := opts.Profile.applySnapshotProfile(&opts, g.logger()); err != nil {
		return err
	}
	m, err := takeSnapshot(ctx, g, opts)
	if err != nil {
		return err
	}
	if g.JSON {
		return printJSON(g, snapshotResult{ID: m.ID, StoredBytes: m.StoredSize(), RawBytes: m.RawSize(), Components: m.Components})
	}
	_, err = fmt.Fprintln(g.stdout, m.ID)
	return err
}

// takeSnapshot takes and commits one snapshot, logging what it stored.
func takeSnapshot(ctx context.Context, g *globalOptions, opts snapshotOptions) (*snapshot.Manifest, error) {
	log := g.logger()
	comp, err := snapshot.ParseCompression(opts.Compression)
	if err != nil {
		return nil, usageError{fmt.Errorf("snapshot: %w", err)}
	}
	if err := comp.CheckLevel(opts.Level); err != nil {
		return nil, usageError{fmt.Errorf("snapshot: %w", err)}
	}
	tags, err := parseTags(opts.Tags)
	if err != nil {
		return nil, err
	}
	if rel, ok := repoInVolume(g.Repo, opts.Volume); ok {
		// Backed up into itself, it would grow by itself every run.
		log.Warn("the repository is inside the volume: it is left out of the snapshot", "volume", opts.Volume, "exclude", rel)
		opts.Exclude = append(slices.Clone(opts.Exclude), globEscape(rel))
	}
	parts, err := opts.dumpers(log)
	if err != nil {
		return nil, err
	}
	recipients, err := opts.Crypto.recipients()
	if err != nil {
		return nil, err
	}
	if len(recipients) == 0 && opts.Volume != "" && holdsAppsmithSecrets(opts.Volume) {
		log.Warn("the volume holds APPSMITH_ENCRYPTION_* secrets and the snapshot is not encrypted; use --encrypt-to or --passphrase-file")
	}
	host := opts.Host
	if host == "" {
		host, _ = os.Hostname()
	}

	repo, err := openRepo(ctx, g, true)
	if err != nil {
		return nil, err
	}
	defer repo.Close()

	var total int64
	if g.tty {
		for _, p := range parts {
			if s, ok := p.impl.(interface {
				Size(context.Context) (int64, error)
			}); ok {
				n, _ := s.Size(ctx)
				total += n
			}
		}
	}
	bar := startProgress(g, "snapshot", total)
	defer bar.Stop()

	w, err := snapshot.NewWriter(ctx, repo, snapshot.Options{
		Compression: comp, Level: opts.Level, Host: host, Version: version(), Tags: tags,
		Progress: bar.Add, Recipients: recipients,
	})
	if err != nil {
		return nil, err
	}
	log.Info("snapshot started", "id", w.ID(), "repo", repo.Name())

	var grp errgroup.Group
	for _, p := range parts {
		grp.Go(func() error {
			if err := w.Add(p.kind, p.impl); err != nil {
				return componentError{p.kind, err}
			}
			return nil
		})
	}
	err = grp.Wait()
	var m *snapshot.Manifest
	if err == nil {
		m, err = w.Commit()
	}
	bar.Stop()
	if err != nil {
		if aerr := w.Abort(); aerr != nil {
			log.Warn("could not remove the failed snapshot's objects; they have no manifest and are ignored", "id", w.ID(), "err", aerr)
		}
		return nil, fmt.Errorf("snapshot %s failed, nothing was committed: %w", w.ID(), err)
	}
	for _, c := range m.Components {
		args := []any{"component", c.Kind}
		for _, k := range slices.Sorted(maps.Keys(c.Stats)) {
			args = append(args, k, c.Stats[k])
		}
		log.Info("component stored", args...)
		if c.Stats["changed"] > 0 || c.Stats["unreadable"] > 0 || c.Stats["vanished"] > 0 {
			log.Warn("some files changed or could not be read during the snapshot; see the warnings above", "component", c.Kind)
		}
	}
	log.Info("snapshot committed", "id", m.ID, "stored", snapshot.HumanBytes(m.StoredSize()), "raw", snapshot.HumanBytes(m.RawSize()))
	return m, nil
}

// repoInVolume returns the path, relative to volume and slash-separated, of
// the folder a file:// repository keeps its snapshots in, when that folder
// is inside volume (symbolic links resolved).
func repoInVolume(repoURL, volume string) (string, bool) {
	u, err := url.Parse(repoURL)
	if err != nil || u.Scheme != "file" || u.Path == "" || volume == "" {
		return "", false
	}
	vol, err := filepath.EvalSymlinks(volume)
	if err != nil {
		return "", false
	}
	dir := filepath.Join(u.Path, filepath.FromSlash(u.Query().Get("prefix")))
	if d, err := filepath.EvalSymlinks(dir); err == nil {
		dir = d
	} else if d, err := filepath.EvalSymlinks(u.Path); err == nil {
		dir = filepath.Join(d, filepath.FromSlash(u.Query().Get("prefix"))) // the prefix folder is not made yet
	}
	rel, err := filepath.Rel(vol, filepath.Join(dir, "snapshots"))
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", false
	}
	// The snapshots folder, not the repository's whole folder: a
	// repository at the volume's root leaves out only that.
	return filepath.ToSlash(rel), true
}

// globEscape quotes the filepath.Match metacharacters of s.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
