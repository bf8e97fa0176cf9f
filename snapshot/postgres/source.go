package postgres

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// A source is a consistent view of a database: a REPEATABLE READ
// transaction whose snapshot parallel workers share.
type source struct {
	url        string
	conn       *pgx.Conn
	snapshot   string // pg_export_snapshot()
	version    string // server_version
	versionNum int    // server_version_num
	database   string
}

// openSource connects to url and exports a snapshot.
func openSource(ctx context.Context, url string) (*source, error) {
	conn, err := connect(ctx, url)
	if err != nil {
		return nil, err
	}
	s := &source{url: url, conn: conn}
	if _, err := conn.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
		closeConn(conn)
		return nil, fmt.Errorf("postgres: begin: %w", err)
	}
	err = conn.QueryRow(ctx, `SELECT pg_export_snapshot(), current_setting('server_version'),
		current_setting('server_version_num')::int, current_database()`).
		Scan(&s.snapshot, &s.version, &s.versionNum, &s.database)
	if err != nil {
		closeConn(conn)
		return nil, fmt.Errorf("postgres: export snapshot: %w", err)
	}
	return s, nil
}

func (s *source) close() { closeConn(s.conn) }

// extensionMember is the condition that a pg_class row c belongs to an
// extension.
const extensionMember = `EXISTS (SELECT 1 FROM pg_depend d
	WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')`

// tables returns the schemas named in want (all but the system schemas
// when want is empty) and their tables, the largest first, and locks the
// tables against schema changes until the snapshot ends, as pg_dump does.
func (s *source) tables(ctx context.Context, want []string) ([]string, []*table, error) {
	var rows pgx.Rows
	var err error
	if len(want) == 0 {
		rows, err = s.conn.Query(ctx, `SELECT nspname FROM pg_namespace
			WHERE nspname <> 'information_schema' AND nspname NOT LIKE 'pg\_%' ORDER BY nspname`)
	} else {
		rows, err = s.conn.Query(ctx, `SELECT nspname FROM pg_namespace WHERE nspname = ANY($1) ORDER BY nspname`, want)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: list schemas: %w", err)
	}
	schemas, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: list schemas: %w", err)
	}
	var missing []string
	for _, w := range want {
		if !slices.Contains(schemas, w) && !slices.Contains(missing, w) {
			missing = append(missing, w)
		}
	}
	if len(missing) > 0 {
		return nil, nil, fmt.Errorf("postgres: database %s has no schema %s", s.database, strings.Join(missing, ", "))
	}

	rows, err = s.conn.Query(ctx, `SELECT n.nspname, c.relname,
			array(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
				AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum),
			pg_relation_size(c.oid)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'r' AND n.nspname = ANY($1) AND NOT `+extensionMember+`
		ORDER BY pg_relation_size(c.oid) DESC, n.nspname, c.relname`, schemas)
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: list tables: %w", err)
	}
	tables, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*table, error) {
		t := &table{}
		err := row.Scan(&t.Schema, &t.Name, &t.cols, &t.bytes)
		t.Columns = len(t.cols)
		t.Stream = dataStream(t.Schema, t.Name)
		return t, err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: list tables: %w", err)
	}
	if len(tables) > 0 {
		idents := make([]string, len(tables))
		for i, t := range tables {
			idents[i] = t.ident()
		}
		if _, err := s.conn.Exec(ctx, "LOCK TABLE "+strings.Join(idents, ", ")+" IN ACCESS SHARE MODE"); err != nil {
			return nil, nil, fmt.Errorf("postgres: lock tables: %w", err)
		}
	}
	return schemas, tables, nil
}

// eachTable calls fn for every item (a table, or a part of one), on up to
// parallel connections of s at once, each in a transaction that uses the
// source's snapshot.
func eachTable[T any](ctx context.Context, s *source, parallel int, tables []T, fn func(context.Context, *pgx.Conn, T) error) error {
	if parallel <= 0 {
		parallel = defaultParallel
	}
	idle := make(chan *pgx.Conn, parallel)
	defer func() {
		close(idle)
		for c := range idle {
			closeConn(c)
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	for _, t := range tables {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			conn, err := s.worker(gctx, idle)
			if err != nil {
				return err
			}
			if err := fn(gctx, conn, t); err != nil {
				closeConn(conn)
				return err
			}
			idle <- conn
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// worker returns an idle worker connection or opens one in the source's
// snapshot.
func (s *source) worker(ctx context.Context, idle chan *pgx.Conn) (*pgx.Conn, error) {
	select {
	case c := <-idle:
		return c, nil
	default:
	}
	conn, err := connect(ctx, s.url)
	if err != nil {
		return nil, err
	}
	for _, q := range []string{
		"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
		"SET TRANSACTION SNAPSHOT " + quoteLiteral(s.snapshot),
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			closeConn(conn)
			return nil, fmt.Errorf("postgres: worker: %s: %w", q, err)
		}
	}
	return conn, nil
}

// copyOut copies a table's rows in COPY text format to w.
func copyOut(ctx context.Context, conn *pgx.Conn, t *table, w io.Writer) (rows int64, err error) {
	return copyQuery(ctx, conn, t.key(), "COPY "+t.ident()+" TO STDOUT", w)
}

// copyQuery runs the COPY … TO STDOUT statement q, of the table named key,
// and writes its rows to w.
func copyQuery(ctx context.Context, conn *pgx.Conn, key, q string, w io.Writer) (rows int64, err error) {
	tag, err := conn.PgConn().CopyTo(ctx, w, q)
	if err != nil {
		return 0, fmt.Errorf("postgres: copy table %s: %w", key, err)
	}
	return tag.RowsAffected(), nil
}

// quoteLiteral returns s as an SQL string constant (with
// standard_conforming_strings).
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
