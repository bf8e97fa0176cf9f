package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/stackport/stackport/migrate"
	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/snapshot/mongo"
	"github.com/stackport/stackport/storage"
)

// migrateOptions are the flags of migrate: the sources are snapshot's
// flags (whose compression, encryption and tag flags also shape the --repo
// copy), the targets restore's --*-to flags.
type migrateOptions struct {
	Source snapshotOptions
	Target restoreOptions

	Plan    bool   // inspect only
	Profile string // "appsmith" or ""
	Stack   string // the Appsmith stack folder
	EnvOut  string // where to write the migrated container's environment
	State   string // where to keep the state that lets a run resume
}

func newMigrateCommand(g *globalOptions) *cobra.Command {
	var opts migrateOptions
	cmd := &cobra.Command{
		Use:   "migrate --volume DIR --volume-to DIR [--mongo URI --mongo-to URI] [flags]",
		Short: "Move every component straight from its source to its target, then verify it",
		Long: `Move the components of the monolith to their new homes in one run, without an
intermediate archive: the volume into another directory (a Filestore or NFS
mount), MongoDB into Atlas, DocumentDB or another MongoDB, Redis into
Memorystore, PostgreSQL into Cloud SQL. Each source is named by a snapshot
flag (--volume, --mongo, --redis, --postgres) and needs the target of the
same component (--volume-to, --mongo-to, --redis-to, --postgres-to); a source
without a target, or a target without a source, is a usage error.

Every component moves concurrently, its streams going straight from the
source's reader into the target's writer, with the same code as snapshot and
restore. The first failure stops them all: a volume target is left as it was
(unless its move had already finished), a PostgreSQL target too (one
transaction), a MongoDB or Redis target may hold what was loaded so far.
With --repo (or STACKPORT_REPO) the run also keeps a snapshot of what it
moved, tagged migration=<start time>, committed only when every component
moved.

Interrupted (or failed), the same command run again resumes: the run records
its progress in a state object, and the next run with the same sources and
targets skips what was finished, after a quick check, and moves the rest.
The volume and PostgreSQL move whole or not at all: they are skipped when the
target matches the source (names, types and sizes of the files; row counts of
the tables). MongoDB moves collection by collection: a collection loaded
completely is skipped when the source and the target hold as many documents
as were loaded; one loaded in part is dropped and loaded again, so nothing is
duplicated. Redis moves database by database: a database written completely
is skipped when the target holds as many keys as the source, the keys of one
written in part replace those the interrupted run wrote. The state is kept
in the repository (migrations/<key>.json) with --repo, else next to the
volume target (.<name>.stackport-migrate-<key>.json beside it), else in the
user's cache folder, or in the file given with --state. After a complete
migration a run again moves nothing and only verifies. With --repo a resumed
run still keeps a complete snapshot: what is skipped is read from the source
into the snapshot, but not written to the target.

Then every target is compared with its source: the volume entry by entry
(content SHA-256, mode, mtime, symlink targets), MongoDB collection by
collection and PostgreSQL table by table (counts and digests of the raw
documents and rows), Redis key by key (type and value by DUMP, expiry
within a second, key counts per database, keys only in the target named).
Stop the application's writers first: changes made during the run show up
as differences.

--plan inspects the sources and targets and writes nothing: sizes and
counts, server versions, the MongoDB target's flavor and its compatibility
table (what DocumentDB, Atlas or FerretDB keep, adapt, skip or refuse), the
Memorystore-like Redis target (commands it blocks, databases, maxmemory,
whether it loads the source's payloads), the Cloud SQL-like PostgreSQL
target (superuser or not, extensions, privileges, version), the free space
of the volume target, a conservative estimate of the time, and the state an
earlier run left (what it finished, that the run resumes). It exits 0 only
when nothing blocks the move.

--profile appsmith --stack DIR reads DIR/configuration/docker.env (the
process environment wins, as in Appsmith) and fills in the sources of the
targets given: the volume is DIR without data/mongodb, data/redis,
data/postgres, logs and data/backup; the databases are APPSMITH_DB_URL,
APPSMITH_REDIS_URL and the PostgreSQL of Keycloak and Temporal
(APPSMITH_DB_URL when it is postgresql://, else APPSMITH_KEYCLOAK_DB_URL,
else the embedded one). After a verified move --env-out FILE writes the
stateless container's environment (APPSMITH_DB_URL with the database name,
APPSMITH_REDIS_URL, APPSMITH_KEYCLOAK_DB_URL and the APPSMITH_TEMPORAL_*
variables when the stack has them, APPSMITH_ENABLE_EMBEDDED_DB=0, the
encryption password and salt unchanged), readable by its owner only.

A report (component, items, bytes, time, result) is printed on stderr, or
with --json as one JSON object on stdout. Exits 0 when every component moved
and matches, 3 when a target differs from its source, 2 on usage errors, 1 on
other failures.`,
		Example: `  # Appsmith: the stack folder onto Filestore, MongoDB into Atlas, Redis into Memorystore,
  # with a snapshot on the way and the new container's environment
  stackport migrate --profile appsmith --stack /appsmith-stacks \
    --volume-to /mnt/filestore/stacks --chown 1000:1000 \
    --mongo-to 'mongodb+srv://user:pass@cluster0.example.mongodb.net/' \
    --redis-to 'rediss://:AUTH@10.0.0.3:6378' --redis-to-tls-ca-file server-ca.pem \
    --repo 's3://backups?region=eu-west-1&prefix=appsmith/' --env-out appsmith.env

  # the same with every source named
  stackport migrate --volume /appsmith-stacks --exclude data/mongodb --exclude logs \
    --volume-to /mnt/filestore/stacks \
    --mongo 'mongodb://127.0.0.1:27017/?directConnection=true' --mongo-db appsmith \
    --mongo-to 'mongodb+srv://user:pass@cluster0.example.mongodb.net/'

  # MongoDB only, appsmith.* as appsmith_prod.*, replacing what the target holds
  stackport migrate --mongo mongodb://127.0.0.1:27017/ \
    --mongo-to mongodb://10.0.0.5:27017/ --mongo-ns-from appsmith --mongo-ns-to appsmith_prod --drop --json`,
		Args: wrapArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runMigrate(cmd.Context(), g, opts)
		},
	}
	opts.addFlags(cmd.Flags())
	return cmd
}

// addFlags adds snapshot's flags for the sources and restore's --*-to flags
// for the targets.
func (opts *migrateOptions) addFlags(f *pflag.FlagSet) {
	opts.Source.addFlags(f)
	f.Lookup("volume").Usage = "directory to migrate (the persistent volume)"
	f.Lookup("mongo").Usage = "MongoDB to migrate: mongodb:// or mongodb+srv:// URI (credentials and TLS options in the URI)"
	f.Lookup("mongo-parallel").Usage = "MongoDB collections dumped, and insert batches sent, at once"
	f.Lookup("redis").Usage = "Redis to migrate: redis:// or rediss:// URL (user and password in the URL)"
	f.Lookup("postgres").Usage = "PostgreSQL to migrate: postgres:// URL or key=value DSN"
	f.Lookup("postgres-parallel").Usage = "PostgreSQL tables copied, and index builds run, at once"
	opts.Target.addTargetFlags(f, true)
	f.BoolVar(&opts.Plan, "plan", false, "inspect the sources and targets without writing anything: sizes, versions, compatibility, free space, an estimate of the time, an earlier run's state, what would block the move")
	f.StringVar(&opts.Profile, "profile", "", "the application's layout: appsmith (with --stack)")
	f.StringVar(&opts.Stack, "stack", "", "the application's stack folder (Appsmith: /appsmith-stacks), read for its configuration/docker.env")
	f.StringVar(&opts.State, "state", "", "keep the state that lets an interrupted migration resume in this file (default: in the --repo repository, else next to --volume-to, else in the user's cache folder)")
	f.StringVar(&opts.EnvOut, "env-out", "", "after a verified move, write the migrated container's environment to this file (mode 0600: it holds secrets)")
}

// profileOptions are --profile and --stack of snapshot and restore (and,
// as fields of their own, of migrate).
type profileOptions struct {
	Profile string // "appsmith" or ""
	Stack   string // the Appsmith stack folder
}

func (p *profileOptions) addFlags(f *pflag.FlagSet, stackUsage string) {
	f.StringVar(&p.Profile, "profile", "", "the application's layout: appsmith (with --stack)")
	f.StringVar(&p.Stack, "stack", "", stackUsage)
}

// loadProfile reads the Appsmith stack of --profile appsmith --stack DIR
// for command, and warns when it lacks the encryption values (what, of the
// command's result, could not decrypt its data). It returns nil without a
// profile.
func loadProfile(command string, p profileOptions, what string, log *slog.Logger) (*migrate.Appsmith, error) {
	switch p.Profile {
	case "":
		if p.Stack != "" {
			return nil, usageErrorf("%s: --stack needs --profile appsmith", command)
		}
		return nil, nil
	case "appsmith":
	default:
		return nil, usageErrorf("%s: unknown profile %q (known: appsmith)", command, p.Profile)
	}
	if p.Stack == "" {
		return nil, usageErrorf("%s: --profile appsmith needs --stack DIR, the Appsmith stack folder (e.g. /appsmith-stacks)", command)
	}
	app, err := migrate.LoadAppsmith(p.Stack, os.Environ())
	if err != nil {
		return nil, usageError{fmt.Errorf("%s: %w", command, err)}
	}
	warnSecrets(app, what, log)
	return app, nil
}

// warnSecrets warns loudly when the stack lacks the encryption values.
func warnSecrets(app *migrate.Appsmith, what string, log *slog.Logger) {
	if missing := app.MissingSecrets(); len(missing) > 0 {
		log.Warn("the Appsmith stack does not set " + strings.Join(missing, " and ") +
			": " + what + " could not decrypt the data encrypted with them (datasource credentials, git keys)")
	}
}

// applySnapshotProfile fills the sources of snapshot from --profile
// appsmith --stack DIR: the volume is the stack folder without the raw
// database files, logs and backups; the databases are those of the
// stack's environment. Sources given by flags win.
func (p profileOptions) applySnapshotProfile(opts *snapshotOptions, log *slog.Logger) error {
	app, err := loadProfile("snapshot", p, "an instance restored from the snapshot", log)
	if app == nil {
		return err
	}
	if opts.Volume != "" && filepath.Clean(opts.Volume) != filepath.Clean(p.Stack) {
		return usageErrorf("snapshot: --volume %s and --stack %s name two volumes: give one", opts.Volume, p.Stack)
	}
	opts.Volume = p.Stack
	opts.Exclude = append(opts.Exclude, migrate.AppsmithExcludes...)
	pgURL, pgWhat := app.PostgresSource()
	for _, src := range []struct {
		flag       *string
		from, what string
	}{
		{&opts.Mongo, app.MongoURI(), "APPSMITH_DB_URL"},
		{&opts.Redis, app.RedisURL(), "APPSMITH_REDIS_URL"},
		{&opts.Postgres, pgURL, pgWhat},
	} {
		if *src.flag == "" && src.from != "" {
			*src.flag = src.from
			log.Info("appsmith profile: source from "+src.what, "source", withoutSecrets(src.from))
		}
	}
	return nil
}

// applyRestoreProfile makes the stack folder of --profile appsmith
// --stack DIR the volume target of restore. The stack need not exist (a
// new machine); an existing one with embedded databases' files is not
// replaced (--force would remove them: the snapshot does not hold them).
func (p profileOptions) applyRestoreProfile(opts *restoreOptions) error {
	switch {
	case p.Profile == "" && p.Stack != "":
		return usageErrorf("restore: --stack needs --profile appsmith")
	case p.Profile == "":
		return nil
	case p.Profile != "appsmith":
		return usageErrorf("restore: unknown profile %q (known: appsmith)", p.Profile)
	case p.Stack == "":
		return usageErrorf("restore: --profile appsmith needs --stack DIR, the Appsmith stack folder to restore into (e.g. /appsmith-stacks)")
	case opts.VolumeTo != "" && filepath.Clean(opts.VolumeTo) != filepath.Clean(p.Stack):
		return usageErrorf("restore: --volume-to %s and --stack %s name two targets: give one", opts.VolumeTo, p.Stack)
	}
	opts.VolumeTo = p.Stack
	if opts.Force {
		var held []string
		for _, dir := range migrate.AppsmithExcludes {
			if entries, err := os.ReadDir(filepath.Join(p.Stack, dir)); err == nil && len(entries) > 0 && strings.HasPrefix(dir, "data/") && dir != "data/backup" {
				held = append(held, dir)
			}
		}
		if len(held) > 0 {
			return usageErrorf("restore: --force would remove %s of the stack %s, the embedded databases' files, which a snapshot does not hold: "+
				"restore into an empty folder (or move the stack away first) and the databases with --mongo-to, --redis-to, --postgres-to", strings.Join(held, ", "), p.Stack)
		}
	}
	return nil
}

// checkRestoredProfile reads the environment of the restored stack and
// warns when it lacks docker.env or the encryption values.
func (p profileOptions) checkRestoredProfile(log *slog.Logger) {
	if p.Profile != "appsmith" {
		return
	}
	app, err := migrate.LoadAppsmith(p.Stack, os.Environ())
	if err != nil {
		log.Warn("the restored stack is not a complete Appsmith stack: Appsmith would start without its configuration", "error", err)
		return
	}
	warnSecrets(app, "the restored instance", log)
}

// applyProfile reads the Appsmith stack of --profile appsmith --stack DIR
// and fills the sources the flags leave out, for the targets they name: the
// volume is the stack folder without the raw database files, logs and
// backups, the databases are those of the stack's environment. It returns
// nil without a profile.
func (opts *migrateOptions) applyProfile(log *slog.Logger) (*migrate.Appsmith, error) {
	if opts.Profile == "" && opts.EnvOut != "" {
		return nil, usageErrorf("migrate: --env-out needs --profile appsmith")
	}
	app, err := loadProfile("migrate", profileOptions{opts.Profile, opts.Stack}, "the migrated instance", log)
	if app == nil {
		return nil, err
	}
	s, t := &opts.Source, opts.Target
	if t.VolumeTo != "" && s.Volume == "" {
		s.Volume = opts.Stack
		s.Exclude = append(s.Exclude, migrate.AppsmithExcludes...)
	}
	pgURL, pgWhat := app.PostgresSource()
	for _, src := range []struct {
		flag           *string
		to, from, what string
	}{
		{&s.Mongo, t.MongoTo, app.MongoURI(), "APPSMITH_DB_URL"},
		{&s.Redis, t.RedisTo, app.RedisURL(), "APPSMITH_REDIS_URL"},
		{&s.Postgres, t.PostgresTo, pgURL, pgWhat},
	} {
		if src.to != "" && *src.flag == "" && src.from != "" {
			*src.flag = src.from
			log.Info("appsmith profile: source from "+src.what, "source", withoutSecrets(src.from))
		}
	}
	return app, nil
}

// writeEnv writes the environment of the migrated Appsmith to --env-out.
func (opts migrateOptions) writeEnv(app *migrate.Appsmith, log *slog.Logger) error {
	t := opts.Target
	lines, err := app.TargetEnv(migrate.AppsmithTargets{MongoURI: t.MongoTo, MongoNSFrom: t.MongoNSFrom, MongoNSTo: t.MongoNSTo,
		RedisURL: t.RedisTo, PostgresURL: t.PostgresTo, PostgresFrom: opts.Source.Postgres})
	if err == nil {
		header := fmt.Sprintf("The environment of the migrated Appsmith, by stackport migrate on %s.\n"+
			"It holds secrets (the encryption password and salt, database credentials): keep it private.", time.Now().UTC().Format(time.RFC3339))
		err = migrate.WriteEnvFile(opts.EnvOut, header, lines)
	}
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	log.Warn("the environment file holds secrets (the encryption password and salt, database credentials): keep it private", "path", opts.EnvOut)
	return nil
}

// pairs matches the sources with the targets by kind.
func (opts migrateOptions) pairs(log *slog.Logger) ([]migrate.Pair, error) {
	opts.Target.MongoParallel = opts.Source.MongoParallel
	opts.Target.PostgresParallel = opts.Source.PostgresParallel
	if err := opts.checkDistinct(); err != nil {
		return nil, err
	}
	sources, err := opts.Source.dumpers(log)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	targets, err := opts.Target.restorers(log)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	var pairs []migrate.Pair
	for _, s := range sources {
		i := slices.IndexFunc(targets, func(t part[snapshot.Restorer]) bool { return t.kind == s.kind })
		if i < 0 {
			return nil, usageErrorf("migrate: the %s source has no target: give --%s-to", s.kind, s.kind)
		}
		check, plan, err := opts.inspect(s.kind, s.impl, log)
		if err != nil {
			return nil, err
		}
		pairs = append(pairs, migrate.Pair{Kind: s.kind, Dumper: s.impl, Restorer: targets[i].impl, Check: check, Plan: plan})
	}
	for _, t := range targets {
		if !slices.ContainsFunc(sources, func(s part[snapshot.Dumper]) bool { return s.kind == t.kind }) {
			return nil, usageErrorf("migrate: the %s target has no source: give --%s", t.kind, t.kind)
		}
	}
	return pairs, nil
}

// checkDistinct refuses a target that is its own source: a volume target
// inside the source (it would copy itself into itself) or a database server
// given as its own target (--drop, --redis-flush or --postgres-clean would
// delete what is being read), unless MongoDB databases are renamed.
func (opts migrateOptions) checkDistinct() error {
	s, t := opts.Source, opts.Target
	if s.Volume != "" && t.VolumeTo != "" {
		src, err1 := filepath.Abs(s.Volume)
		dst, err2 := filepath.Abs(t.VolumeTo)
		if err1 == nil && err2 == nil && (dst == src || strings.HasPrefix(dst, src+string(filepath.Separator))) {
			return usageErrorf("migrate: --volume-to %s is inside the source volume %s", t.VolumeTo, s.Volume)
		}
	}
	mongoTo := t.MongoTo
	if t.MongoNSFrom != "" {
		mongoTo = "" // renamed databases may share the server
	}
	for _, db := range []struct{ flag, src, dst string }{
		{"--mongo-to", s.Mongo, mongoTo}, {"--redis-to", s.Redis, t.RedisTo}, {"--postgres-to", s.Postgres, t.PostgresTo},
	} {
		if db.src != "" && db.src == db.dst {
			return usageErrorf("migrate: %s is the source itself", db.flag)
		}
	}
	return nil
}

// inspect returns how to compare the target of kind with its source after
// the move and how to inspect both before it, nil for what this build does
// not know.
func (opts migrateOptions) inspect(kind string, dumper snapshot.Dumper, log *slog.Logger) (check func(context.Context) error, plan func(context.Context) migrate.Finding, err error) {
	s, t := opts.Source, opts.Target
	switch kind {
	case "volume":
		v := migrate.Volume{Source: s.Volume, Target: t.VolumeTo, Exclude: s.Exclude, SkipUnreadable: s.SkipUnreadable, Force: t.Force}
		return v.Check, v.Plan, nil
	case "mongo":
		flavor, err := mongo.ParseFlavor(t.MongoFlavor)
		if err != nil {
			return nil, nil, usageError{fmt.Errorf("--mongo-flavor: %w", err)}
		}
		m := migrate.Mongo{Source: s.Mongo, Target: t.MongoTo, SourceTLSCAFile: s.MongoTLSCAFile, TargetTLSCAFile: t.MongoTLSCAFile,
			DBs: s.MongoDBs, NSFrom: t.MongoNSFrom, NSTo: t.MongoNSTo, Parallel: s.MongoParallel, Drop: t.Drop,
			Flavor: flavor, Strict: t.Strict, Log: log}
		if d, ok := dumper.(*mongo.Dumper); ok {
			m.Copied = d.Position
		}
		return m.Check, m.Plan, nil
	case "redis":
		dbMap, err := parseDBMap(t.RedisDBMap)
		if err != nil {
			return nil, nil, err
		}
		r := migrate.Redis{Source: s.Redis, Target: t.RedisTo, SourceTLSCAFile: s.RedisTLSCAFile, TargetTLSCAFile: t.RedisTLSCAFile,
			DBMap: dbMap, Replace: t.RedisReplace, Flush: t.RedisFlush, Log: log}
		return r.Check, r.Plan, nil
	case "postgres":
		p := migrate.Postgres{Source: s.Postgres, Target: t.PostgresTo, Schemas: s.PostgresSchemas,
			KeepOwners: t.PostgresKeepOwners, Clean: t.PostgresClean, PgDump: s.PgDump}
		return p.Check, p.Plan, nil
	}
	return nil, nil, nil
}

// userPassword and secretParam match the passwords of connection URLs
// and key=value connection strings.
var (
	userPassword = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*://[^:@/]*):[^@/]*@`)
	secretParam  = regexp.MustCompile(`(?i)\b([a-z_]*(?:password|passwd|secret|token)[a-z_]*)=('[^']*'|[^&\s]*)`)
)

// withoutSecrets returns a connection URL or string without its passwords.
func withoutSecrets(s string) string {
	s = userPassword.ReplaceAllString(s, "$1:REDACTED@")
	return secretParam.ReplaceAllString(s, "$1=REDACTED")
}

// key returns the key of the migration, a hash of its sources and targets
// without passwords (so that a changed password does not start it over),
// and its description.
func (opts migrateOptions) key() (key, about string) {
	s, t := opts.Source, opts.Target
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	sorted := func(v []string) string { return strings.Join(slices.Sorted(slices.Values(v)), ",") }
	w := withoutSecrets
	var parts, desc []string
	if s.Volume != "" {
		parts = append(parts, "volume", abs(s.Volume), sorted(s.Exclude), abs(t.VolumeTo))
		desc = append(desc, fmt.Sprintf("volume %s to %s", abs(s.Volume), abs(t.VolumeTo)))
	}
	if s.Mongo != "" {
		parts = append(parts, "mongo", w(s.Mongo), sorted(s.MongoDBs), w(t.MongoTo), t.MongoNSFrom, t.MongoNSTo)
		desc = append(desc, fmt.Sprintf("mongo %s to %s", w(s.Mongo), w(t.MongoTo)))
	}
	if s.Redis != "" {
		parts = append(parts, "redis", w(s.Redis), w(t.RedisTo), t.RedisDBMap)
		desc = append(desc, fmt.Sprintf("redis %s to %s", w(s.Redis), w(t.RedisTo)))
	}
	if s.Postgres != "" {
		parts = append(parts, "postgres", w(s.Postgres), sorted(s.PostgresSchemas), w(t.PostgresTo))
		desc = append(desc, fmt.Sprintf("postgres %s to %s", w(s.Postgres), w(t.PostgresTo)))
	}
	return migrate.Key(parts...), strings.Join(desc, "; ")
}

// stateStore returns where the state of the migration is kept: in
// --state FILE, else in the repository, else next to the volume target,
// else in the user's cache folder (dir, to be created before a run
// writes it).
func (opts migrateOptions) stateStore(repo *storage.Repo) (store migrate.StateStore, dir string, err error) {
	key, _ := opts.key()
	switch {
	case opts.State != "":
		return migrate.FileStore(opts.State), "", nil
	case repo != nil:
		return migrate.BucketStore{Bucket: repo.Bucket(), Key: migrate.StateObject(key), Name: repo.Name()}, "", nil
	case opts.Target.VolumeTo != "":
		dir, base := filepath.Split(filepath.Clean(opts.Target.VolumeTo))
		return migrate.FileStore(filepath.Join(dir, "."+base+".stackport-migrate-"+key+".json")), "", nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return nil, "", fmt.Errorf("migrate: no place for the state that lets the migration resume (give --state FILE): %w", err)
	}
	dir = filepath.Join(cache, "stackport")
	return migrate.FileStore(filepath.Join(dir, "migrate-"+key+".json")), dir, nil
}

// journal opens the state of the migration (see stateStore).
func (opts migrateOptions) journal(ctx context.Context, repo *storage.Repo, log *slog.Logger) (*migrate.Journal, error) {
	key, about := opts.key()
	store, dir, err := opts.stateStore(repo)
	if err != nil {
		return nil, err
	}
	if dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("migrate: state: %w (give --state FILE)", err)
		}
	}
	j, err := migrate.OpenJournal(ctx, store, key, about, log)
	if err != nil {
		return nil, err
	}
	if j.Resumed() {
		st := j.State()
		log.Info("resuming the migration: an earlier run left its state", "state", j.Where(), "runs", st.Runs, "complete", st.Complete)
	}
	return j, nil
}

// plan runs migrate --plan: it inspects the pairs, the repository and the
// state an earlier run left, writing nothing.
func (opts migrateOptions) plan(ctx context.Context, g *globalOptions, pairs []migrate.Pair, log *slog.Logger) error {
	var repoNotes, repoBlockers []string
	var repo *storage.Repo
	if g.Repo != "" {
		var err error
		if dir, ok := missingFileRepo(g.Repo); ok {
			repoNotes = append(repoNotes, fmt.Sprintf("repository %s does not exist yet: the run creates it", dir))
		} else if repo, err = openRepo(ctx, g, false); err != nil {
			repoBlockers = append(repoBlockers, err.Error())
		} else {
			defer repo.Close()
			repoNotes = append(repoNotes, "repository "+repo.Name()+": reachable; the run keeps a snapshot of what it moves there")
		}
	}
	var popts migrate.PlanOptions
	var stateBlockers []string
	if repo != nil || g.Repo == "" {
		key, about := opts.key()
		store, _, err := opts.stateStore(repo)
		if err == nil {
			popts.Journal, err = migrate.OpenJournal(ctx, store, key, about, log)
		}
		if err != nil {
			stateBlockers = append(stateBlockers, err.Error())
		}
	}
	rep := migrate.Plan(ctx, pairs, popts)
	return printPlan(g, rep, planExtra{"repository", repoNotes, repoBlockers}, planExtra{"state", nil, stateBlockers})
}

// planExtra is what the plan found out about something else than a
// component: the repository, the state.
type planExtra struct {
	what            string
	notes, blockers []string
}

// missingFileRepo returns the directory of a file:// repository URL that
// does not exist (which a run creates).
func missingFileRepo(rawURL string) (string, bool) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "file" || u.Path == "" {
		return "", false
	}
	_, err = os.Stat(u.Path)
	return u.Path, errors.Is(err, fs.ErrNotExist)
}

// tee starts the snapshot that keeps a copy of the run in the --repo
// repository, or returns nil without a repository.
func (opts migrateOptions) tee(ctx context.Context, g *globalOptions, start time.Time) (*snapshot.Writer, *storage.Repo, error) {
	if g.Repo == "" {
		return nil, nil, nil
	}
	s := opts.Source
	comp, err := snapshot.ParseCompression(s.Compression)
	if err == nil {
		err = comp.CheckLevel(s.Level)
	}
	if err != nil {
		return nil, nil, usageError{fmt.Errorf("migrate: %w", err)}
	}
	tags, err := parseTags(s.Tags)
	if err != nil {
		return nil, nil, err
	}
	if tags == nil {
		tags = map[string]string{}
	}
	tags["migration"] = start.UTC().Format(time.RFC3339)
	recipients, err := s.Crypto.recipients()
	if err != nil {
		return nil, nil, err
	}
	if len(recipients) == 0 && s.Volume != "" && holdsAppsmithSecrets(s.Volume) {
		g.logger().Warn("the volume holds APPSMITH_ENCRYPTION_* secrets and the --repo snapshot is not encrypted; use --encrypt-to or --passphrase-file")
	}
	host := s.Host
	if host == "" {
		host, _ = os.Hostname()
	}
	repo, err := openRepo(ctx, g, true)
	if err != nil {
		return nil, nil, err
	}
	w, err := snapshot.NewWriter(ctx, repo, snapshot.Options{Compression: comp, Level: s.Level, Host: host,
		Version: version(), Tags: tags, Recipients: recipients, Now: func() time.Time { return start }})
	if err != nil {
		repo.Close()
		return nil, nil, err
	}
	return w, repo, nil
}

// migrateResult is what migrate prints with --json.
type migrateResult struct {
	OK bool `json:"ok"`
	// Resumed: an earlier run of the same migration left a state, kept in
	// State.
	Resumed    bool               `json:"resumed"`
	State      string             `json:"state,omitempty"`
	Snapshot   string             `json:"snapshot,omitempty"`
	EnvFile    string             `json:"env_file,omitempty"`
	Seconds    float64            `json:"seconds"`
	Components []migrateComponent `json:"components"`
	Error      string             `json:"error,omitempty"`
}

type migrateComponent struct {
	Kind     string         `json:"kind"`
	Items    int64          `json:"items"`
	Bytes    int64          `json:"bytes"`
	Seconds  float64        `json:"seconds"`
	Result   string         `json:"result"`
	Error    string         `json:"error,omitempty"`
	Dumped   snapshot.Stats `json:"dumped"`
	Restored snapshot.Stats `json:"restored"`
	// Skipped are the parts an earlier run moved (see migrate.Component).
	Skipped []string `json:"skipped,omitempty"`
	// Resume explains what was skipped and why, and what is moved again.
	Resume []string `json:"resume,omitempty"`
}

func runMigrate(ctx context.Context, g *globalOptions, opts migrateOptions) error {
	log := g.logger()
	start := time.Now()
	app, err := opts.applyProfile(log)
	if err != nil {
		return err
	}
	pairs, err := opts.pairs(log)
	if err != nil {
		return err
	}
	if opts.Plan {
		return opts.plan(ctx, g, pairs, log)
	}
	tee, repo, err := opts.tee(ctx, g, start)
	if err != nil {
		return err
	}
	if repo != nil {
		defer repo.Close()
		log.Info("migration started", "components", len(pairs), "snapshot", tee.ID(), "repo", repo.Name())
	} else {
		log.Info("migration started", "components", len(pairs))
	}
	journal, err := opts.journal(ctx, repo, log)
	if err != nil {
		if tee != nil {
			tee.Abort()
		}
		return err
	}
	bar := startProgress(g, "migrate", 0)
	rep, err := migrate.Run(ctx, pairs, migrate.Options{Tee: tee, Progress: bar.Add, Journal: journal})
	bar.Stop()
	envFile := ""
	if err == nil && opts.EnvOut != "" {
		if err = opts.writeEnv(app, log); err == nil {
			envFile = opts.EnvOut
		}
	}
	if err != nil && ctx.Err() == nil && !errors.Is(err, snapshot.ErrDiffers) {
		log.Info("run the same command again to resume the migration", "state", journal.Where())
	}
	if perr := printMigrateReport(g, rep, journal.Where(), envFile, err); perr != nil && err == nil {
		err = perr
	}
	return err
}

// printMigrateReport prints the report: a table on stderr, or with --json
// one object on stdout.
func printMigrateReport(g *globalOptions, rep *migrate.Report, state, envFile string, err error) error {
	if g.JSON {
		res := migrateResult{OK: err == nil, Resumed: rep.Resumed, State: state, Snapshot: rep.Snapshot, EnvFile: envFile,
			Seconds: rep.Duration.Seconds(), Components: []migrateComponent{}}
		if err != nil {
			res.Error = err.Error()
		}
		for _, c := range rep.Components {
			cr := migrateComponent{Kind: c.Kind, Items: c.Items, Bytes: c.Bytes, Seconds: c.Duration.Seconds(),
				Result: c.Result, Dumped: c.Dumped, Restored: c.Restored, Skipped: c.Skipped, Resume: c.Resume}
			if c.Err != nil {
				cr.Error = c.Err.Error()
			}
			res.Components = append(res.Components, cr)
		}
		return printJSON(g, res)
	}
	tw := tabwriter.NewWriter(g.stderr, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COMPONENT\tITEMS\tBYTES\tTIME\tRESULT")
	for _, c := range rep.Components {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", c.Kind, c.Items, snapshot.HumanBytes(c.Bytes), c.Duration.Round(time.Millisecond), c.Result)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if rep.Resumed {
		fmt.Fprintf(g.stderr, "resumed: an earlier run left the state %s\n", state)
	}
	for _, c := range rep.Components {
		for _, n := range c.Resume {
			fmt.Fprintf(g.stderr, "%s: %s\n", c.Kind, n)
		}
	}
	if rep.Snapshot != "" {
		fmt.Fprintf(g.stderr, "snapshot %s keeps a copy of this migration\n", rep.Snapshot)
	}
	if envFile != "" {
		fmt.Fprintf(g.stderr, "the migrated container's environment is in %s (it holds secrets)\n", envFile)
	}
	if err == nil {
		fmt.Fprintf(g.stderr, "moved and checked in %s: the application's writers must stay stopped at least that long\n", rep.Duration.Round(time.Millisecond))
	}
	return nil
}

// planResult is what migrate --plan prints with --json.
type planResult struct {
	OK         bool              `json:"ok"`
	Components []migrate.Finding `json:"components"`
	// Seconds estimates the run: the components move concurrently, then
	// every target is read again for the check.
	Seconds float64 `json:"estimate_seconds"`
	// Notes are about the repository.
	Notes    []string            `json:"notes,omitempty"`
	Resume   *migrate.ResumePlan `json:"resume,omitempty"`
	Blockers []string            `json:"blockers"` // of every component ("kind: …"), the repository and the state

}

// printPlan prints the plan on stdout (a table, then every note,
// compatibility row and blocker, the estimate and the resume state) and
// fails when something blocks the move.
func printPlan(g *globalOptions, rep *migrate.PlanReport, extras ...planExtra) error {
	blockers := rep.Blocked()
	var others []string
	for _, x := range extras {
		for _, n := range x.notes {
			others = append(others, x.what+": "+n)
		}
		for _, b := range x.blockers {
			blockers = append(blockers, x.what+": "+b)
		}
	}
	if g.JSON {
		res := planResult{OK: len(blockers) == 0, Components: rep.Components, Seconds: rep.Estimate.Seconds(),
			Notes: others, Resume: rep.Resume, Blockers: blockers}
		if res.Blockers == nil {
			res.Blockers = []string{}
		}
		if err := printJSON(g, res); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "COMPONENT\tITEMS\tBYTES\tESTIMATE\tSTATUS")
		for _, f := range rep.Components {
			items, bytes, estimate, status := "?", "?", "?", "ready"
			if f.Items >= 0 {
				items = fmt.Sprint(f.Items)
			}
			if f.Bytes >= 0 {
				bytes = snapshot.HumanBytes(f.Bytes)
				estimate = roundEstimate(f.Estimate)
			}
			if len(f.Blockers) > 0 {
				status = "BLOCKED"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", f.Kind, items, bytes, estimate, status)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		w := g.stdout
		for _, f := range rep.Components {
			for _, n := range f.Notes {
				fmt.Fprintf(w, "%s: %s\n", f.Kind, n)
			}
			for _, c := range f.Compat {
				fmt.Fprintf(w, "%s: compat: %s\n", f.Kind, c)
			}
			if f.Bytes >= 0 {
				fmt.Fprintf(w, "%s: estimate %s at %g MiB/s\n", f.Kind, roundEstimate(f.Estimate), f.Throughput)
			}
			for _, b := range f.Blockers {
				fmt.Fprintf(w, "%s: BLOCKS: %s\n", f.Kind, b)
			}
		}
		for _, x := range extras {
			for _, n := range x.notes {
				fmt.Fprintf(w, "%s: %s\n", x.what, n)
			}
			for _, b := range x.blockers {
				fmt.Fprintf(w, "%s: BLOCKS: %s\n", x.what, b)
			}
		}
		fmt.Fprintf(w, "estimate: about %s for the run (a conservative estimate at the rates above: the components move concurrently, then every target is read again to check it); the application's writers stay stopped that long\n",
			roundEstimate(rep.Estimate))
		if r := rep.Resume; r != nil {
			state := "interrupted or failed"
			if r.Complete {
				state = "complete: the run moves nothing and only verifies"
			}
			fmt.Fprintf(w, "resume: state %s found (%d runs, the last at %s, %s); the run resumes:\n", r.State, r.Runs, r.Updated.Format(time.RFC3339), state)
			for _, f := range rep.Components {
				if d, ok := r.Components[f.Kind]; ok {
					fmt.Fprintf(w, "resume: %s: %s\n", f.Kind, d)
				}
			}
		}
		if len(blockers) == 0 {
			fmt.Fprintln(w, "nothing blocks the migration")
		}
	}
	if len(blockers) > 0 {
		return fmt.Errorf("migrate: plan: %d problem(s) block the migration: %s", len(blockers), strings.Join(blockers, "; "))
	}
	return nil
}

// roundEstimate formats an estimate: under a minute in seconds, else to
// the minute.
func roundEstimate(d time.Duration) string {
	switch {
	case d < time.Second:
		return "<1s"
	case d < time.Minute:
		return d.Round(time.Second).String()
	}
	return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
}
