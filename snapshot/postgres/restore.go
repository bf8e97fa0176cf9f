package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stackport/stackport/snapshot"
)

// Restorer restores a snapshot into a database: pre-data, the rows of every
// table with COPY … FROM STDIN, post-data, then the sequences' values.
// Indexes, constraints and triggers (post-data) are built once, after the
// data.
//
// With Loaders 0 or 1 everything runs in one transaction on one connection:
// a failed or interrupted restore leaves the target as it was. With Loaders
// above 1 the restore runs in three steps: pre-data (after Clean's drops) is
// committed in one transaction; then up to Loaders connections load the
// tables at once, each table's COPY in a transaction of its own; then
// post-data and the sequences' values are committed in one transaction.
// When anything fails after pre-data was committed, what the restore created
// is dropped again on a connection of its own (the schemas it created, and in
// the schemas that were there before, such as public, the objects that were
// not), so that the same restore can run again. Should that cleanup fail too,
// the error says that the target holds a partial restore, which Clean
// replaces. With Clean the restore is always one transaction.
//
// The restoring role need not be a superuser (Cloud SQL's
// cloudsqlsuperuser is not): by default owners and privileges are left out
// and the restoring role owns every object, and so are the statements only
// a superuser may run (event triggers, publications, subscriptions,
// ALTER SYSTEM, SECURITY LABEL, roles with superuser attributes, untrusted
// languages), with a warning naming them. COMMENT ON EXTENSION is always
// left out, and every CREATE EXTENSION is checked against the target's
// pg_available_extensions: the missing ones are all reported, and nothing
// is committed. An extension the snapshot installs in a schema it does not
// hold (see Dumper.Schemas) gets that schema created when the target has
// neither.
type Restorer struct {
	// URL is a postgres:// URL or a key=value connection string.
	URL string
	// KeepOwners keeps ALTER … OWNER TO, GRANT, REVOKE and ALTER DEFAULT
	// PRIVILEGES, which need the roles in the target, and the statements
	// only a superuser may run. Without it they are left out, as by
	// pg_restore --no-owner --no-acl.
	KeepOwners bool
	// Clean drops the snapshot's schemas (DROP SCHEMA … CASCADE, public
	// is created again) before restoring. Without it a target that has
	// tables, views or sequences in those schemas, or has one of them but
	// public, is refused with an error wrapping snapshot.ErrTargetNotEmpty
	// that names them. A Clean restore is always one transaction (Loaders
	// is ignored): the data it replaces stays until the new data is
	// committed, so a failed restore over a database in use loses nothing.
	Clean bool
	// Loaders is the number of tables loaded at once, each on a connection
	// of its own and in a transaction of its own. 0 or 1: the whole
	// restore is one transaction on one connection.
	Loaders int
	// Parallel, when positive, is the number of parallel workers each
	// index build may use (max_parallel_maintenance_workers).
	Parallel int
	Log      *slog.Logger // nil: slog.Default()
}

// Restore implements snapshot.Restorer. Its stats are those of Dump but
// sequences.
func (r *Restorer) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	if r.Clean && r.Loaders > 1 {
		one := *r
		one.Loaders = 1
		logger(r.Log).Info("postgres: a restore that replaces the target's schemas loads its tables one after the other, in one transaction, so that a failure leaves the replaced data in place")
		r = &one
	}
	conn, err := connect(ctx, r.URL)
	if err != nil {
		return nil, err
	}
	s := &restoreSink{r: r, ctx: ctx, conn: conn, log: logger(r.Log), parallel: r.Loaders > 1}
	stats, err := readSnapshot(ctx, in, s, r.Loaders)
	s.close() // rolls back what is not committed, releasing its locks
	if err != nil && s.committed {
		err = s.cleanup(ctx, err)
	}
	return stats, err
}

// restoreSink applies the streams to the target.
type restoreSink struct {
	r        *Restorer
	ctx      context.Context
	conn     *pgx.Conn // the scripts; and the tables, unless parallel
	log      *slog.Logger
	parallel bool // tables on loader connections, in transactions of their own
	m        *meta

	// Set when parallel: the objects of the target before pre-data (after
	// Clean's drops), and whether pre-data was (or may have been)
	// committed.
	before    objectSet
	committed bool
	// extSchemas are the schemas outside the snapshot's that extensions
	// are created in.
	extSchemas []string

	mu   sync.Mutex
	idle []*pgx.Conn // loader connections not in use
}

func (s *restoreSink) begin(m *meta) error {
	s.m = m
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
		"schemas", strings.Join(m.Schemas, ","), "tables", len(m.Tables), "loaders", max(s.r.Loaders, 1))
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
	if s.parallel {
		var err error
		if s.before, err = listObjects(s.ctx, s.conn, m.Schemas); err != nil {
			return err
		}
	}
	return nil
}

// checkEmpty refuses a target that has relations in the schemas, or has
// one of the schemas (but public), which pre-data creates.
func (s *restoreSink) checkEmpty(schemas []string) error {
	rels, existing, err := Occupied(s.ctx, s.conn, schemas)
	switch {
	case err != nil:
		return err
	case len(rels) > 0:
		return fmt.Errorf("postgres: the target database already has %s: %w", list(rels, 10), snapshot.ErrTargetNotEmpty)
	case len(existing) > 0:
		return fmt.Errorf("postgres: the target database already has the schema %s: %w", list(existing, 10), snapshot.ErrTargetNotEmpty)
	}
	return nil
}

// Occupied returns what keeps the database on conn from taking a restore
// of the schemas without Clean: the tables, views and sequences in them
// (as schema.name, escaped as in stream names), and those of the schemas
// but public that exist (pre-data creates them).
func Occupied(ctx context.Context, conn *pgx.Conn, schemas []string) (rels, existing []string, err error) {
	rows, err := conn.Query(ctx, `SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') ORDER BY 1, 2`, schemas)
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: check the target: %w", err)
	}
	rels, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (string, error) {
		var schema, name string
		err := row.Scan(&schema, &name)
		return escapeName(schema) + "." + escapeName(name), err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: check the target: %w", err)
	}
	rows, err = conn.Query(ctx, `SELECT nspname FROM pg_namespace WHERE nspname = ANY($1) AND nspname <> 'public' ORDER BY 1`, schemas)
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: check the target: %w", err)
	}
	existing, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: check the target: %w", err)
	}
	return rels, existing, nil
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
	if s.parallel && name == postDataStream {
		if _, err := s.conn.Exec(s.ctx, "BEGIN"); err != nil {
			return fmt.Errorf("postgres: %s: BEGIN: %w", name, err)
		}
	}
	var missing, superuserOnly, skippedLanguages []string
	var run, skipped, superuserSkipped int
	err := eachStatement(name, sc, func(st *statement) error {
		if st.words("COMMENT", "ON", "EXTENSION") || !s.r.KeepOwners && (st.isOwner() || st.isACL()) {
			skipped++
			return nil
		}
		if !s.r.KeepOwners {
			what, ok := st.superuserOnly(skippedLanguages)
			if ok {
				superuserSkipped++
				if !slices.Contains(superuserOnly, what) {
					superuserOnly = append(superuserOnly, what)
				}
				if lang, ok := strings.CutPrefix(what, "language "); ok {
					skippedLanguages = append(skippedLanguages, lang)
				}
				return nil
			}
		}
		if ext, ok := st.extension(); ok {
			available, err := s.extension(ext, st, len(missing) > 0)
			if err != nil {
				return err
			}
			if !available {
				missing = append(missing, ext)
			}
		}
		if len(missing) > 0 {
			return nil // read on, to report every missing extension
		}
		text := st.text
		if st.isCreatePublic() {
			text = "CREATE SCHEMA IF NOT EXISTS public"
		}
		if _, err := s.conn.Exec(s.ctx, text); err != nil {
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
	if superuserSkipped > 0 {
		s.log.Warn("postgres: left out statements that only a superuser may run (restore with owners kept, as a superuser, to have them)",
			"stream", name, "statements", superuserSkipped, "objects", list(superuserOnly, 20))
	}
	s.log.Debug("postgres: script restored", "stream", name, "statements", run, "skipped", skipped+superuserSkipped)
	if s.parallel && name == preDataStream {
		return s.commitPreData()
	}
	return nil
}

// extension reports whether the target offers the extension ext, which st
// creates. Unless checkOnly (a missing extension was found: nothing more
// is written), it creates the schema st puts the extension in when the
// snapshot does not hold that schema and the target has neither the
// extension nor the schema.
func (s *restoreSink) extension(ext string, st *statement, checkOnly bool) (bool, error) {
	var available, installed bool
	err := s.conn.QueryRow(s.ctx, `SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = $1),
		EXISTS (SELECT 1 FROM pg_extension WHERE extname = $1)`, ext).Scan(&available, &installed)
	if err != nil {
		return false, fmt.Errorf("postgres: check extension %s: %w", ext, err)
	}
	schema, ok := st.extensionSchema()
	if !available || checkOnly || installed || !ok || slices.Contains(s.m.Schemas, schema) {
		return available, nil
	}
	q := "CREATE SCHEMA IF NOT EXISTS " + pgx.Identifier{schema}.Sanitize()
	if _, err := s.conn.Exec(s.ctx, q); err != nil {
		return false, fmt.Errorf("postgres: extension %s: %s: %w", ext, q, err)
	}
	s.extSchemas = append(s.extSchemas, schema)
	return true, nil
}

// commitPreData commits pre-data, when the tables are loaded in parallel.
// committed is set unless the server answered that it did not commit.
func (s *restoreSink) commitPreData() error {
	err := commit(s.ctx, s.conn)
	var pgErr *pgconn.PgError
	s.committed = err == nil || !errors.As(err, &pgErr)
	if err != nil {
		return fmt.Errorf("postgres: %s: %w", preDataStream, err)
	}
	s.log.Debug("postgres: pre-data committed")
	return nil
}

func (s *restoreSink) table(ctx context.Context, t *table, r *copyReader) error {
	if !s.parallel {
		if err := copyIn(ctx, s.conn, t, r, false); err != nil {
			return err
		}
	} else {
		conn, err := s.loader(ctx)
		if err != nil {
			return err
		}
		if err := copyIn(ctx, conn, t, r, true); err != nil {
			closeConn(conn)
			return err
		}
		s.mu.Lock()
		s.idle = append(s.idle, conn)
		s.mu.Unlock()
	}
	s.log.Debug("postgres: table restored", "table", t.key(), "rows", r.rows)
	return nil
}

// copyIn loads the rows of r into t on conn, in a transaction of its own
// when own.
func copyIn(ctx context.Context, conn *pgx.Conn, t *table, r *copyReader, own bool) error {
	if own {
		if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
			return fmt.Errorf("postgres: restore table %s: BEGIN: %w", t.key(), err)
		}
	}
	gr := &guardedReader{r: r}
	tag, err := conn.PgConn().CopyFrom(ctx, gr, "COPY "+t.ident()+" FROM STDIN")
	gr.detach()
	switch {
	case r.err != nil:
		return r.err
	case err != nil && ctx.Err() != nil:
		// pgx closes the connection when ctx is done: say why.
		return fmt.Errorf("postgres: restore table %s: %w", t.key(), ctx.Err())
	case err != nil:
		return fmt.Errorf("postgres: restore table %s: %w", t.key(), err)
	}
	if tag.RowsAffected() != r.rows {
		return fmt.Errorf("postgres: restore table %s: the server loaded %d rows of %d", t.key(), tag.RowsAffected(), r.rows)
	}
	if own {
		if err := commit(ctx, conn); err != nil {
			return fmt.Errorf("postgres: restore table %s: %w", t.key(), err)
		}
	}
	return nil
}

// loader returns an idle loader connection, or opens one.
func (s *restoreSink) loader(ctx context.Context) (*pgx.Conn, error) {
	s.mu.Lock()
	if n := len(s.idle); n > 0 {
		conn := s.idle[n-1]
		s.idle = s.idle[:n-1]
		s.mu.Unlock()
		return conn, nil
	}
	s.mu.Unlock()
	return connect(ctx, s.r.URL)
}

// close closes every connection; what they did not commit is rolled back.
func (s *restoreSink) close() {
	closeConn(s.conn)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.idle {
		closeConn(c)
	}
	s.idle = nil
}

func (s *restoreSink) end() error {
	if err := commit(s.ctx, s.conn); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	s.log.Info("postgres: restored")
	return nil
}

// commit commits the transaction open on conn.
func commit(ctx context.Context, conn *pgx.Conn) error {
	tag, err := conn.Exec(ctx, "COMMIT")
	switch {
	case err != nil:
		return fmt.Errorf("commit: %w", err)
	case tag.String() != "COMMIT":
		return fmt.Errorf("commit: the server answered %s", tag)
	}
	return nil
}

// A guardedReader passes reads on to r until detach, which waits for a
// read in progress: pgx's CopyFrom reads on a goroutine of its own, which
// it does not always wait for before it returns (on an error of the
// server or the connection).
type guardedReader struct {
	mu       sync.Mutex
	r        io.Reader
	detached bool
}

func (g *guardedReader) Read(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.detached {
		return 0, errors.New("postgres: read after the copy ended")
	}
	return g.r.Read(p)
}

// detach waits for a read in progress to end and fails the later ones.
func (g *guardedReader) detach() {
	g.mu.Lock()
	g.detached = true
	g.mu.Unlock()
}
