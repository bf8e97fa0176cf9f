package postgres

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/stackport/stackport/snapshot"
	"golang.org/x/sync/errgroup"
)

// Dumper writes schemas of a PostgreSQL database as the streams described
// in the package documentation.
type Dumper struct {
	// URL is a postgres:// URL or a key=value connection string.
	URL string
	// Schemas are the schemas to dump; empty: every schema but
	// information_schema and the pg_* schemas.
	Schemas []string
	// Parallel is the number of tables, or parts of tables, copied at
	// once (default 4).
	Parallel int
	// SplitBytes is the size (pg_relation_size) from which a table is
	// split into parts copied at once: min(Parallel, size/SplitBytes)
	// parts of equal block ranges. 0: DefaultSplitBytes; negative: tables
	// are not split. Tables are split only on PostgreSQL 14 or later
	// (TID range scans).
	SplitBytes int64
	// PgDump is the path of pg_dump; empty: pg_dump in PATH, else
	// /usr/lib/postgresql/<server major version>/bin/pg_dump, the first
	// that is not older than the server.
	PgDump string
	Log    *slog.Logger // nil: slog.Default()
}

// DefaultSplitBytes is the default of Dumper.SplitBytes.
const DefaultSplitBytes = 32 << 20

// Dump implements snapshot.Dumper. Its stats are tables, rows, bytes (of
// row data), sequences, and per table rows:<schema>.<table> and
// bytes:<schema>.<table> (names escaped as in stream names). On error the
// streams being written are aborted (snapshot.Abort).
func (d *Dumper) Dump(ctx context.Context, out snapshot.StreamWriter) (snapshot.Stats, error) {
	log := logger(d.Log)
	stats := snapshot.Stats{"tables": 0, "rows": 0, "bytes": 0, "sequences": 0}
	src, err := openSource(ctx, d.URL)
	if err != nil {
		return stats, err
	}
	defer src.close()
	pgDump, err := findPgDump(ctx, d.PgDump, src.versionNum, src.version)
	if err != nil {
		return stats, err
	}
	schemas, tables, err := src.tables(ctx, d.Schemas)
	if err != nil {
		return stats, err
	}
	parts, err := d.split(ctx, src, tables)
	if err != nil {
		return stats, err
	}
	args, err := d.pgDumpArgs(ctx, src, schemas)
	if err != nil {
		return stats, err
	}
	m := &meta{
		Version:          metaVersion,
		ServerVersion:    src.version,
		ServerVersionNum: src.versionNum,
		PgDumpVersion:    pgDump.version,
		Database:         src.database,
		Schemas:          schemas,
		Tables:           tables,
	}
	log.Info("postgres: snapshot", "database", src.database, "schemas", len(schemas), "tables", len(tables), "pg_dump", pgDump.path)
	if err := writeStream(out, metaStream, func(w io.Writer) error {
		return json.NewEncoder(w).Encode(m)
	}); err != nil {
		return stats, err
	}
	// pg_dump writes pre-data while the tables are copied.
	pre, err := out.Create(preDataStream)
	if err != nil {
		return stats, fmt.Errorf("postgres: create %s: %w", preDataStream, err)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return finishStream(pre, preDataStream, func(w io.Writer) error {
			return pgDump.run(gctx, d.URL, w, append([]string{"--section=pre-data"}, args...)...)
		})
	})
	// And post-data too, into memory (it grows with the schema, not the
	// data): its stream must follow the tables', but it need not wait for
	// them.
	var post bytes.Buffer
	g.Go(func() error {
		return pgDump.run(gctx, d.URL, &post, append([]string{"--section=post-data"}, args...)...)
	})
	var mu sync.Mutex
	g.Go(func() error {
		return eachTable(gctx, src, d.Parallel, parts, func(ctx context.Context, conn *pgx.Conn, p *part) error {
			rows, n, err := dumpPart(ctx, conn, out, p)
			if err != nil {
				return err
			}
			log.Debug("postgres: table copied", "table", p.t.key(), "stream", p.stream, "rows", rows, "bytes", n)
			mu.Lock()
			defer mu.Unlock()
			addTable(stats, p.t, p.stream, rows, n)
			return nil
		})
	})
	if err := g.Wait(); err != nil {
		return stats, err
	}

	if err := writeStream(out, postDataStream, func(w io.Writer) error {
		_, err := post.WriteTo(w)
		return err
	}); err != nil {
		return stats, err
	}
	if err := writeStream(out, sequencesStream, func(w io.Writer) error {
		n, err := writeSequences(ctx, src.conn, schemas, w)
		stats.Add("sequences", n)
		return err
	}); err != nil {
		return stats, err
	}
	return stats, nil
}

// A part is one data stream of a table: the rows in the blocks [from, to)
// of the table, or every row when whole. to < 0 is the end of the table.
type part struct {
	t        *table
	stream   string
	whole    bool
	from, to int64
}

// split sets the Parts of the tables large enough to be split and returns
// every data stream to write, the largest tables' first. Only plain tables
// are listed (partitioned parents have no rows of their own).
func (d *Dumper) split(ctx context.Context, src *source, tables []*table) ([]*part, error) {
	threshold := d.SplitBytes
	if threshold == 0 {
		threshold = DefaultSplitBytes
	}
	parallel := d.Parallel
	if parallel <= 0 {
		parallel = defaultParallel
	}
	var blockSize int64
	if threshold > 0 && parallel > 1 && src.versionNum >= 140000 {
		if err := src.conn.QueryRow(ctx, "SELECT current_setting('block_size')::bigint").Scan(&blockSize); err != nil {
			return nil, fmt.Errorf("postgres: block size: %w", err)
		}
	}
	var parts []*part
	for _, t := range tables {
		n := int64(1)
		if blockSize > 0 && t.Columns > 0 {
			n = min(int64(parallel), t.bytes/threshold)
		}
		blocks := t.bytes / max(blockSize, 1)
		if n <= 1 || blocks < n {
			parts = append(parts, &part{t: t, stream: t.Stream, whole: true})
			continue
		}
		per := (blocks + n - 1) / n
		for i := range n {
			p := &part{t: t, stream: t.Stream, from: i * per, to: (i + 1) * per}
			if i > 0 {
				p.stream = partStream(t.Schema, t.Name, int(i))
				t.Parts = append(t.Parts, p.stream)
			}
			if i == n-1 {
				p.to = -1 // open-ended, whatever the table's size
			}
			parts = append(parts, p)
		}
	}
	return parts, nil
}

// query returns the COPY … TO STDOUT statement of the part: that of the
// whole table, or a SELECT of the table's COPY columns in its block range.
func (p *part) query() string {
	if p.whole {
		return "COPY " + p.t.ident() + " TO STDOUT"
	}
	cols := make([]string, len(p.t.cols))
	for i, c := range p.t.cols {
		cols[i] = pgx.Identifier{c}.Sanitize()
	}
	var where []string
	if p.from > 0 {
		where = append(where, fmt.Sprintf("ctid >= '(%d,0)'::tid", p.from))
	}
	if p.to >= 0 {
		where = append(where, fmt.Sprintf("ctid < '(%d,0)'::tid", p.to))
	}
	q := "SELECT " + strings.Join(cols, ", ") + " FROM ONLY " + p.t.ident()
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	return "COPY (" + q + ") TO STDOUT"
}

// dumpPart writes a data stream: the part's rows in COPY text format, then
// the end-of-data line. It returns the number of rows and their bytes.
func dumpPart(ctx context.Context, conn *pgx.Conn, out snapshot.StreamWriter, p *part) (rows, n int64, err error) {
	err = writeStream(out, p.stream, func(w io.Writer) error {
		cw := &countWriter{w: w}
		if rows, err = copyQuery(ctx, conn, p.t.key(), p.query(), cw); err != nil {
			return err
		}
		n = cw.n
		_, err = io.WriteString(w, endOfData)
		return err
	})
	return rows, n, err
}

// addTable adds the counts of a table's data stream to stats; the table is
// counted with its first stream.
func addTable(stats snapshot.Stats, t *table, stream string, rows, bytes int64) {
	if stream == t.Stream {
		stats.Add("tables", 1)
	}
	stats.Add("rows", rows)
	stats.Add("bytes", bytes)
	stats.Add("rows:"+t.key(), rows)
	stats.Add("bytes:"+t.key(), bytes)
}

// pgDumpArgs returns the arguments of both pg_dump runs but --section, and
// refuses large objects, which the snapshot would not hold.
func (d *Dumper) pgDumpArgs(ctx context.Context, src *source, schemas []string) ([]string, error) {
	args := []string{"--snapshot=" + src.snapshot, "--encoding=UTF8", "--no-password"}
	var blobs int64
	if err := src.conn.QueryRow(ctx, "SELECT count(*) FROM pg_largeobject_metadata").Scan(&blobs); err != nil {
		return nil, fmt.Errorf("postgres: count large objects: %w", err)
	}
	if len(d.Schemas) == 0 {
		if blobs > 0 {
			return nil, fmt.Errorf("postgres: database %s has %d large objects, which stackport does not snapshot: "+
				"move them into bytea columns (or dump them with pg_dump) and remove them, or choose the schemas to snapshot", src.database, blobs)
		}
		return args, nil
	}
	if blobs > 0 {
		logger(d.Log).Warn("postgres: large objects belong to no schema and are not in the snapshot", "database", src.database, "count", blobs)
	}
	// pg_dump dumps the extensions of the chosen schemas only when asked,
	// and those elsewhere that the schemas' objects use too.
	exts, err := UsedExtensions(ctx, src.conn, schemas)
	if err != nil {
		return nil, err
	}
	// Nothing else of the other schemas is dumped: refuse schemas that
	// depend on it, whose snapshot could not be restored.
	if err := checkForeignDeps(ctx, src.conn, schemas); err != nil {
		return nil, err
	}
	for _, e := range exts {
		if e.Elsewhere {
			logger(d.Log).Info("postgres: the chosen schemas use an extension installed in another schema: its CREATE EXTENSION is in the snapshot",
				"extension", e.Name, "schema", e.Schema)
		}
	}
	for _, s := range schemas {
		args = append(args, "--schema="+pgDumpPattern(s))
	}
	for _, e := range exts {
		args = append(args, "--extension="+pgDumpPattern(e.Name))
	}
	return args, nil
}

// An Extension is one whose CREATE EXTENSION a snapshot holds.
type Extension struct {
	Name, Schema string
	Elsewhere    bool // installed in a schema that is not snapshotted
}

// UsedExtensions returns the extensions that a snapshot of the schemas
// (chosen with Dumper.Schemas) holds: see usedExtensionsQuery. A snapshot
// of every schema holds every extension.
func UsedExtensions(ctx context.Context, conn *pgx.Conn, schemas []string) ([]Extension, error) {
	rows, err := conn.Query(ctx, usedExtensionsQuery, schemas)
	if err != nil {
		return nil, fmt.Errorf("postgres: list extensions: %w", err)
	}
	exts, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Extension])
	if err != nil {
		return nil, fmt.Errorf("postgres: list extensions: %w", err)
	}
	return exts, nil
}

// usedExtensionsQuery lists the extensions that the schemas named by $1
// need (name, schema, whether that schema is not one of them): those
// installed in the schemas, those that own an object which an object of
// the schemas depends on (a column's type, a function called by a default,
// a view or an SQL-standard function body, an index's operator class, …),
// and the extensions those require. Dependencies that PostgreSQL does not
// record, such as calls in the body of a PL/pgSQL function, are not found.
const usedExtensionsQuery = `
WITH RECURSIVE wanted AS (
	SELECT oid FROM pg_namespace WHERE nspname = ANY($1)
), direct AS (
	SELECT e.oid FROM pg_extension e WHERE e.extnamespace IN (SELECT oid FROM wanted)
	UNION
	SELECT m.refobjid FROM pg_depend d
	JOIN pg_depend m ON m.classid = d.refclassid AND m.objid = d.refobjid
		AND m.refclassid = 'pg_extension'::regclass AND m.deptype = 'e'
	WHERE d.deptype IN ('n', 'a') AND CASE d.classid
		WHEN 'pg_class'::regclass THEN (SELECT relnamespace FROM pg_class WHERE oid = d.objid)
		WHEN 'pg_proc'::regclass THEN (SELECT pronamespace FROM pg_proc WHERE oid = d.objid)
		WHEN 'pg_type'::regclass THEN (SELECT typnamespace FROM pg_type WHERE oid = d.objid)
		WHEN 'pg_constraint'::regclass THEN (SELECT connamespace FROM pg_constraint WHERE oid = d.objid)
		WHEN 'pg_attrdef'::regclass THEN (SELECT c.relnamespace FROM pg_attrdef a JOIN pg_class c ON c.oid = a.adrelid WHERE a.oid = d.objid)
		WHEN 'pg_rewrite'::regclass THEN (SELECT c.relnamespace FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class WHERE r.oid = d.objid)
		WHEN 'pg_trigger'::regclass THEN (SELECT c.relnamespace FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE t.oid = d.objid)
		WHEN 'pg_policy'::regclass THEN (SELECT c.relnamespace FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE p.oid = d.objid)
		WHEN 'pg_operator'::regclass THEN (SELECT oprnamespace FROM pg_operator WHERE oid = d.objid)
		WHEN 'pg_opclass'::regclass THEN (SELECT opcnamespace FROM pg_opclass WHERE oid = d.objid)
		WHEN 'pg_opfamily'::regclass THEN (SELECT opfnamespace FROM pg_opfamily WHERE oid = d.objid)
		WHEN 'pg_collation'::regclass THEN (SELECT collnamespace FROM pg_collation WHERE oid = d.objid)
		WHEN 'pg_statistic_ext'::regclass THEN (SELECT stxnamespace FROM pg_statistic_ext WHERE oid = d.objid)
		WHEN 'pg_ts_config'::regclass THEN (SELECT cfgnamespace FROM pg_ts_config WHERE oid = d.objid)
		WHEN 'pg_ts_dict'::regclass THEN (SELECT dictnamespace FROM pg_ts_dict WHERE oid = d.objid)
	END IN (SELECT oid FROM wanted)
), used(oid) AS (
	SELECT oid FROM direct
	UNION
	SELECT d.refobjid FROM pg_depend d JOIN used u ON d.objid = u.oid
	WHERE d.classid = 'pg_extension'::regclass AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'n'
)
SELECT e.extname, n.nspname, e.extnamespace NOT IN (SELECT oid FROM wanted)
FROM pg_extension e JOIN used u ON u.oid = e.oid JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.oid >= 16384 -- not those of initdb (plpgsql), which pg_dump never dumps
ORDER BY 1`

// pgDumpPattern returns a pg_dump pattern that matches exactly name.
func pgDumpPattern(name string) string { return pgx.Identifier{name}.Sanitize() }

// writeSequences writes a pg_catalog.setval call for every sequence of the
// schemas, with the values of the source's snapshot, and returns their
// number.
func writeSequences(ctx context.Context, conn *pgx.Conn, schemas []string, w io.Writer) (int64, error) {
	rows, err := conn.Query(ctx, `SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'S' AND n.nspname = ANY($1) AND NOT `+extensionMember+` ORDER BY 1, 2`, schemas)
	if err != nil {
		return 0, fmt.Errorf("postgres: list sequences: %w", err)
	}
	seqs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (string, error) {
		var schema, name string
		err := row.Scan(&schema, &name)
		return pgx.Identifier{schema, name}.Sanitize(), err
	})
	if err != nil {
		return 0, fmt.Errorf("postgres: list sequences: %w", err)
	}
	bw := bufio.NewWriter(w)
	for _, seq := range seqs {
		var last int64
		var called bool
		if err := conn.QueryRow(ctx, "SELECT last_value, is_called FROM "+seq).Scan(&last, &called); err != nil {
			return 0, fmt.Errorf("postgres: read sequence %s: %w", seq, err)
		}
		fmt.Fprintf(bw, "SELECT pg_catalog.setval(%s, %d, %s);\n", quoteLiteral(seq), last, strconv.FormatBool(called))
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	return int64(len(seqs)), nil
}

// writeStream creates the stream name and finishes it with finishStream.
func writeStream(out snapshot.StreamWriter, name string, fn func(io.Writer) error) error {
	w, err := out.Create(name)
	if err != nil {
		return fmt.Errorf("postgres: create %s: %w", name, err)
	}
	return finishStream(w, name, fn)
}

// finishStream writes the stream w, called name, with fn through a buffer
// and closes it. On error the stream is aborted (snapshot.Abort).
func finishStream(w io.WriteCloser, name string, fn func(io.Writer) error) error {
	bw := bufio.NewWriterSize(w, copyBufSize)
	err := fn(bw)
	if err == nil {
		if err = bw.Flush(); err != nil {
			err = fmt.Errorf("postgres: write %s: %w", name, err)
		}
	}
	if err != nil {
		snapshot.Abort(w, err)
		return err
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("postgres: close %s: %w", name, err)
	}
	return nil
}

// countWriter counts the bytes written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
