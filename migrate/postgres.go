package migrate

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/snapshot/postgres"
)

// Postgres is the move of a PostgreSQL database, for what happens around
// it: Plan inspects both servers beforehand, Check compares the target
// with the source afterwards.
//
// Check compares every table of the schemas by its row count and an
// order-independent digest of its rows (postgres.Digest), in one snapshot
// of each side.
type Postgres struct {
	Source, Target string   // postgres:// URLs or key=value connection strings
	Schemas        []string // as postgres.Dumper's (empty: all but the system schemas)
	KeepOwners     bool     // as postgres.Restorer's
	Clean          bool     // as postgres.Restorer's: the target may hold tables in the schemas
	PgDump         string   // as postgres.Dumper's
}

// Check implements Pair.Check.
func (c Postgres) Check(ctx context.Context) error {
	want, err := postgres.Digest(ctx, c.Source, c.Schemas)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	got, err := postgres.Digest(ctx, c.Target, c.Schemas)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	return postgres.Compare(want, got)
}

// pgServer is what Plan learns of one server.
type pgServer struct {
	conn       *pgx.Conn
	version    string // server_version
	versionNum int    // server_version_num
	database   string
	user       string
	superuser  bool
}

// connectPlan connects to url for Plan, giving up after 10 seconds.
func connectPlan(ctx context.Context, url string) (*pgServer, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres: connection string: %w", err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	cfg.RuntimeParams["application_name"] = "stackport"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect: %w", err)
	}
	s := &pgServer{conn: conn}
	err = conn.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('server_version_num')::int,
		current_database(), current_user, COALESCE((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)`).
		Scan(&s.version, &s.versionNum, &s.database, &s.user, &s.superuser)
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("postgres: server version: %w", err)
	}
	return s, nil
}

func (s *pgServer) close(ctx context.Context) { s.conn.Close(context.WithoutCancel(ctx)) }

// strings runs a query of one text column.
func (s *pgServer) strings(ctx context.Context, query string, args ...any) ([]string, error) {
	rows, err := s.conn.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// Plan implements Pair.Plan: both servers answer and their versions; the
// schemas, tables, rows and bytes of the source; pg_dump; and the rules of
// a managed target such as Cloud SQL, whose role is not a superuser: owners
// and privileges are left out (or, with KeepOwners, the roles must exist
// and be the target role's), every extension of the source must be in the
// target's pg_available_extensions, the role must be allowed to create the
// schemas and tables, a target older than the source is a warning; and
// tables already in the target's schemas (which block unless Clean).
func (c Postgres) Plan(ctx context.Context) Finding {
	f := Finding{Items: -1, Bytes: -1}
	src, err := connectPlan(ctx, c.Source)
	if err != nil {
		f.block("source: %v", err)
	} else {
		defer src.close(ctx)
		f.note("source: PostgreSQL %s, database %s", src.version, src.database)
	}
	dst, err := connectPlan(ctx, c.Target)
	if err != nil {
		f.block("target: %v", err)
	} else {
		defer dst.close(ctx)
		f.note("target: PostgreSQL %s, database %s, role %s", dst.version, dst.database, dst.user)
	}
	if src == nil {
		return f
	}
	schemas, err := c.sourceSchemas(ctx, src)
	if err != nil {
		f.block("source: %v", err)
		return f
	}
	c.planSource(ctx, &f, src, schemas)
	c.planPgDump(ctx, &f, src)
	if dst == nil {
		return f
	}
	if postgres.OlderMajor(dst.versionNum, src.versionNum) {
		f.note("warning: the target (PostgreSQL %s) is older than the source (%s): the schema may use what the target lacks (the restore is one transaction: it fails without leaving anything)", dst.version, src.version)
	}
	if err := c.planTarget(ctx, &f, src, dst, schemas); err != nil {
		f.block("%v", err)
	}
	return f
}

// sourceSchemas returns the schemas the Dumper dumps.
func (c Postgres) sourceSchemas(ctx context.Context, src *pgServer) ([]string, error) {
	if len(c.Schemas) == 0 {
		s, err := src.strings(ctx, `SELECT nspname FROM pg_namespace
			WHERE nspname <> 'information_schema' AND nspname NOT LIKE 'pg\_%' ORDER BY nspname`)
		if err != nil {
			return nil, fmt.Errorf("postgres: list schemas: %w", err)
		}
		return s, nil
	}
	have, err := src.strings(ctx, `SELECT nspname FROM pg_namespace WHERE nspname = ANY($1)`, c.Schemas)
	if err != nil {
		return nil, fmt.Errorf("postgres: list schemas: %w", err)
	}
	for _, s := range c.Schemas {
		if !slices.Contains(have, s) {
			return nil, fmt.Errorf("postgres: database %s has no schema %s", src.database, s)
		}
	}
	return slices.Sorted(slices.Values(c.Schemas)), nil
}

// planSource counts the source's tables, rows and bytes and finds what its
// Dumper refuses (large objects).
func (c Postgres) planSource(ctx context.Context, f *Finding, src *pgServer, schemas []string) {
	counts, err := rowCounts(ctx, c.Source, c.Schemas)
	if err != nil {
		f.block("source: %v", err)
		return
	}
	f.Items = 0
	for _, n := range counts {
		f.Items += n
	}
	var bytes int64
	err = src.conn.QueryRow(ctx, `SELECT COALESCE(sum(pg_table_size(c.oid)), 0)::bigint FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = ANY($1)`, schemas).Scan(&bytes)
	if err == nil {
		f.Bytes = bytes
	}
	f.note("source: %d schemas (%s), %d tables, %d rows, %s on disk without indexes", len(schemas), strings.Join(schemas, ", "), len(counts), f.Items, snapshot.HumanBytes(max(f.Bytes, 0)))
	var blobs int64
	if err := src.conn.QueryRow(ctx, "SELECT count(*) FROM pg_largeobject_metadata").Scan(&blobs); err == nil && blobs > 0 {
		if len(c.Schemas) == 0 {
			f.block("source: database %s has %d large objects, which stackport does not move: move them into bytea columns, or choose the schemas (--postgres-schema)", src.database, blobs)
		} else {
			f.note("warning: source: %d large objects belong to no schema and are not moved", blobs)
		}
	}
}

// planPgDump checks that the Dumper finds a pg_dump not older than the
// source server.
func (c Postgres) planPgDump(ctx context.Context, f *Finding, src *pgServer) {
	path, version, err := postgres.FindPgDump(ctx, c.PgDump, src.versionNum, src.version)
	if err != nil {
		f.block("%v", err)
		return
	}
	f.note("pg_dump: %s (PostgreSQL %s)", path, version)
}

// planTarget checks what the restore needs of the target.
func (c Postgres) planTarget(ctx context.Context, f *Finding, src, dst *pgServer, schemas []string) error {
	// Extensions: every one (plpgsql aside) when every schema moves, else
	// those the Dumper finds the chosen schemas use.
	exts, err := src.strings(ctx, `SELECT extname FROM pg_extension WHERE oid >= 16384 ORDER BY 1`)
	if len(c.Schemas) > 0 {
		var used []postgres.Extension
		used, err = postgres.UsedExtensions(ctx, src.conn, schemas)
		exts = nil
		for _, e := range used {
			exts = append(exts, e.Name)
		}
	}
	if err != nil {
		return fmt.Errorf("source: list extensions: %w", err)
	}
	available, err := dst.strings(ctx, `SELECT name FROM pg_available_extensions`)
	if err != nil {
		return fmt.Errorf("target: list available extensions: %w", err)
	}
	var missing []string
	for _, e := range exts {
		if !slices.Contains(available, e) {
			missing = append(missing, e)
		}
	}
	if len(missing) > 0 {
		f.block("target: the extensions %s of the source are not available (pg_available_extensions): enable them on the target service (Cloud SQL: supported extensions and database flags) or drop them from the source", strings.Join(missing, ", "))
	} else if len(exts) > 0 {
		f.note("target: offers every extension of the source (%s)", strings.Join(exts, ", "))
	}

	// Owners and privileges.
	owners, err := src.strings(ctx, `SELECT DISTINCT r.rolname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_roles r ON r.oid = c.relowner WHERE n.nspname = ANY($1)
		UNION SELECT r.rolname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE n.nspname = ANY($1) ORDER BY 1`, schemas)
	if err != nil {
		return fmt.Errorf("source: list owners: %w", err)
	}
	switch {
	case !c.KeepOwners && dst.superuser:
		f.note("target: owners and privileges are left out (as pg_restore --no-owner --no-acl): %s owns every object", dst.user)
	case !c.KeepOwners:
		f.note("target: role %s is not a superuser (as on Cloud SQL): owners (%s) and privileges are left out, %s owns every object", dst.user, strings.Join(owners, ", "), dst.user)
	case dst.superuser:
		f.note("target: owners and privileges are kept (--postgres-keep-owners); the roles %s must exist in the target", strings.Join(owners, ", "))
		fallthrough
	default:
		var absent, foreign []string
		for _, o := range owners {
			var exists, member bool
			err := dst.conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
				EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) AND pg_has_role(current_user, $1, 'MEMBER')`, o).Scan(&exists, &member)
			switch {
			case err != nil:
				return fmt.Errorf("target: role %s: %w", o, err)
			case !exists:
				absent = append(absent, o)
			case !member && !dst.superuser:
				foreign = append(foreign, o)
			}
		}
		if len(absent) > 0 {
			f.block("target: --postgres-keep-owners needs the roles %s, which the target lacks: create them, or leave owners out", strings.Join(absent, ", "))
		}
		if len(foreign) > 0 {
			f.block("target: role %s is not a superuser and not a member of %s: it cannot give them objects (--postgres-keep-owners); grant them to it, or leave owners out", dst.user, strings.Join(foreign, ", "))
		}
	}

	// The role must be able to create the schemas and tables.
	var createDB, createPublic, publicExists bool
	err = dst.conn.QueryRow(ctx, `SELECT has_database_privilege(current_database(), 'CREATE'),
		EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public'),
		COALESCE((SELECT has_schema_privilege('public', 'CREATE') WHERE EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public')), false)`).
		Scan(&createDB, &publicExists, &createPublic)
	if err != nil {
		return fmt.Errorf("target: privileges: %w", err)
	}
	others := slices.DeleteFunc(slices.Clone(schemas), func(s string) bool { return s == "public" })
	if len(others) > 0 && !createDB && !dst.superuser {
		f.block("target: role %s may not create schemas in database %s (CREATE privilege), and the source has %s", dst.user, dst.database, strings.Join(others, ", "))
	}
	if slices.Contains(schemas, "public") && publicExists && !createPublic && !dst.superuser {
		f.block("target: role %s may not create tables in the schema public (PostgreSQL 15 and later grant that to the database owner only): make it the database's owner or grant it CREATE on public", dst.user)
	}

	// Tables already in the target's schemas.
	if c.Clean {
		f.note("target: the schemas %s are dropped and created again first (--postgres-clean)", strings.Join(schemas, ", "))
		return nil
	}
	rels, existing, err := postgres.Occupied(ctx, dst.conn, schemas)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	switch {
	case len(rels) > 0:
		f.occupy("target database %s already has %s: use --postgres-clean to replace the schemas", dst.database, listNames(rels, 10))
	case len(existing) > 0:
		f.occupy("target database %s already has the schema %s: use --postgres-clean to replace it", dst.database, listNames(existing, 10))
	}
	return nil
}

// listNames joins up to n names and says how many more there are.
func listNames(names []string, n int) string {
	if len(names) <= n {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:n], ", "), len(names)-n)
}
