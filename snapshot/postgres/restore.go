package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/stackport/stackport/snapshot"
)

// Restorer restores a snapshot into a database: pre-data, the rows of every
// table with COPY … FROM STDIN, post-data, then the sequences' values, all
// in one transaction, so that a failed restore leaves the target as it was.
//
// The restoring role need not be a superuser (Cloud SQL's
// cloudsqlsuperuser is not): by default owners and privileges are left out
// and the restoring role owns every object. COMMENT ON EXTENSION is always
// left out, and every CREATE EXTENSION is checked against the target's
// pg_available_extensions: the missing ones are all reported, and nothing
// is committed.
type Restorer struct {
	// URL is a postgres:// URL or a key=value connection string.
	URL string
	// KeepOwners keeps ALTER … OWNER TO, GRANT, REVOKE and ALTER DEFAULT
	// PRIVILEGES, which need the roles in the target. Without it they are
	// left out, as by pg_restore --no-owner --no-acl.
	KeepOwners bool
	// Clean drops the snapshot's schemas (DROP SCHEMA … CASCADE, public
	// is created again) before restoring. Without it a target that has
	// tables, views or sequences in those schemas, or has one of them but
	// public, is refused with an error wrapping snapshot.ErrTargetNotEmpty
	// that names them.
	Clean bool
	// Parallel, when positive, is the number of parallel workers each
	// index build may use (max_parallel_maintenance_workers). Tables are
	// loaded one after the other, in the order of the streams.
	Parallel int
	Log      *slog.Logger // nil: slog.Default()
}

// Restore implements snapshot.Restorer. Its stats are those of Dump but
// sequences.
func (r *Restorer) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	conn, err := connect(ctx, r.URL)
	if err != nil {
		return nil, err
	}
	defer closeConn(conn) // rolls back unless committed
	return readSnapshot(ctx, in, &restoreSink{r: r, ctx: ctx, conn: conn, log: logger(r.Log)})
}

// restoreSink applies the streams to the target.
type restoreSink struct {
	r    *Restorer
	ctx  context.Context
	conn *pgx.Conn
	log  *slog.Logger
}

func (s *restoreSink) begin(m *meta) error {
	if !s.r.Clean {
		if err := s.checkEmpty(m.Schemas); err != nil {
			return err
		}
	}
	var version int
	if err := s.conn.QueryRow(s.ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		return fmt.Errorf("postgres: server version: %w", err)
	}
	if majorNum(version) < majorNum(m.ServerVersionNum) {
		s.log.Warn("postgres: the target server is older than the source: the schema may use what it lacks",
			"source_version", m.ServerVersion, "target_version", majorName(version))
	}
	s.log.Info("postgres: restore", "source_database", m.Database, "source_version", m.ServerVersion,
		"schemas", strings.Join(m.Schemas, ","), "tables", len(m.Tables))
	stmts := []string{"BEGIN"}
	if s.r.Parallel > 0 {
		stmts = append(stmts, "SET max_parallel_maintenance_workers = "+strconv.Itoa(s.r.Parallel))
	}
	if s.r.Clean {
		for _, schema := range m.Schemas {
			stmts = append(stmts, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
			if schema == "public" {
				stmts = append(stmts, "CREATE SCHEMA public")
			}
		}
	}
	for _, q := range stmts {
		if _, err := s.conn.Exec(s.ctx, q); err != nil {
			return fmt.Errorf("postgres: %s: %w", q, err)
		}
	}
	return nil
}

// checkEmpty refuses a target that has relations in the schemas, or has
// one of the schemas (but public), which pre-data creates.
func (s *restoreSink) checkEmpty(schemas []string) error {
	rows, err := s.conn.Query(s.ctx, `SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') ORDER BY 1, 2`, schemas)
	if err != nil {
		return fmt.Errorf("postgres: check the target: %w", err)
	}
	rels, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (string, error) {
		var schema, name string
		err := row.Scan(&schema, &name)
		return escapeName(schema) + "." + escapeName(name), err
	})
	if err != nil {
		return fmt.Errorf("postgres: check the target: %w", err)
	}
	if len(rels) > 0 {
		return fmt.Errorf("postgres: the target database already has %s: %w", list(rels, 10), snapshot.ErrTargetNotEmpty)
	}
	rows, err = s.conn.Query(s.ctx, `SELECT nspname FROM pg_namespace WHERE nspname = ANY($1) AND nspname <> 'public' ORDER BY 1`, schemas)
	if err != nil {
		return fmt.Errorf("postgres: check the target: %w", err)
	}
	existing, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("postgres: check the target: %w", err)
	}
	if len(existing) > 0 {
		return fmt.Errorf("postgres: the target database already has the schema %s: %w", list(existing, 10), snapshot.ErrTargetNotEmpty)
	}
	return nil
}

// list joins up to max names with commas, and says how many more there
// are.
func list(names []string, max int) string {
	if len(names) <= max {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:max], ", "), len(names)-max)
}

func (s *restoreSink) script(name string, sc *scanner) error {
	var missing []string
	var run, skipped int
	err := eachStatement(name, sc, func(st *statement) error {
		if st.words("COMMENT", "ON", "EXTENSION") || !s.r.KeepOwners && (st.isOwner() || st.isACL()) {
			skipped++
			return nil
		}
		if ext, ok := st.extension(); ok {
			var available bool
			err := s.conn.QueryRow(s.ctx, "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = $1)", ext).Scan(&available)
			if err != nil {
				return fmt.Errorf("postgres: check extension %s: %w", ext, err)
			}
			if !available {
				missing = append(missing, ext)
			}
		}
		if len(missing) > 0 {
			return nil // read on, to report every missing extension
		}
		if _, err := s.conn.Exec(s.ctx, st.text); err != nil {
			return fmt.Errorf("postgres: %s: %s: %w", name, st.summary(), err)
		}
		run++
		return nil
	})
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("postgres: the target database lacks the extension %s (not in pg_available_extensions); nothing was restored",
			strings.Join(missing, ", "))
	}
	s.log.Debug("postgres: script restored", "stream", name, "statements", run, "skipped", skipped)
	return nil
}

func (s *restoreSink) table(t *table, r *copyReader) error {
	tag, err := s.conn.PgConn().CopyFrom(s.ctx, r, "COPY "+t.ident()+" FROM STDIN")
	if r.err != nil {
		return r.err
	}
	if err != nil {
		return fmt.Errorf("postgres: restore table %s: %w", t.key(), err)
	}
	if tag.RowsAffected() != r.rows {
		return fmt.Errorf("postgres: restore table %s: the server loaded %d rows of %d", t.key(), tag.RowsAffected(), r.rows)
	}
	s.log.Debug("postgres: table restored", "table", t.key(), "rows", r.rows)
	return nil
}

func (s *restoreSink) end() error {
	tag, err := s.conn.Exec(s.ctx, "COMMIT")
	switch {
	case err != nil:
		return fmt.Errorf("postgres: commit: %w", err)
	case tag.String() != "COMMIT":
		return fmt.Errorf("postgres: commit: the server answered %s", tag)
	}
	s.log.Info("postgres: restored")
	return nil
}
