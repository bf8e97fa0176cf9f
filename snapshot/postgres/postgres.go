// Package postgres snapshots the schemas of a PostgreSQL database as named
// streams and restores them into another database, such as Cloud SQL for
// PostgreSQL, where the restoring role is not a superuser.
//
// A snapshot is consistent: a REPEATABLE READ transaction exports its
// snapshot (pg_export_snapshot), pg_dump takes the schema in that snapshot,
// and parallel workers, each in a transaction set to the same snapshot, copy
// the tables out with COPY … TO STDOUT (text format).
//
// The streams, in the order they are created and restored:
//
//	meta.json                  format version, server and pg_dump versions, schemas, and
//	                           every table with its data stream and column count
//	pre-data.sql               pg_dump --section=pre-data (types, functions, tables, …)
//	data/<schema>.<table>.copy one per table, in no fixed order: the COPY text rows,
//	                           then the end-of-data line `\.`
//	data/<schema>.<table>.<n>.copy
//	                           n = 1, 2, …: the further parts of a large table, split
//	                           by block (ctid) ranges, each a data stream of its own
//	post-data.sql              pg_dump --section=post-data (indexes, constraints,
//	                           triggers, REFRESH MATERIALIZED VIEW)
//	sequences.sql              one pg_catalog.setval call per sequence
//
// In stream names every byte of a schema or table name other than ASCII
// letters, digits, '_' and '-' is written as %XX, so "a.b/c" becomes
// "a%2Eb%2Fc". Leaf tables are copied (a partitioned table's rows are in its
// partitions); tables that belong to an extension are not. Large objects are
// refused when the whole database is dumped (they belong to no schema).
// Sequences are not transactional: like pg_dump, Dump reads their values
// after the data, so they are at least those of the snapshot. When schemas
// are chosen, pre-data holds the extensions installed in them and those,
// installed elsewhere, that their objects depend on (as PostgreSQL records
// dependencies: a column's type, an index's operator class, a default's
// function; not the calls inside a PL/pgSQL body). Dump refuses chosen
// schemas whose objects depend, as PostgreSQL records it, on other objects
// of the schemas left out (a column's domain, enum, composite or range
// type, a function a default, constraint or trigger calls, a table a view
// reads or a foreign key references, …), naming each: pre-data would not
// hold them, and the snapshot could not be restored.
//
// A table whose pg_relation_size is at least Dumper.SplitBytes is split
// into up to Dumper.Parallel parts by block ranges (TID range scans,
// PostgreSQL 14 or later), copied at once by the parallel workers and
// loaded at once by the parallel loaders. meta.json lists a table's
// further parts in "parts"; a snapshot without them (from an older
// stackport) has one stream per table. An older stackport refuses a
// snapshot with parts: their streams are not tables it knows.
//
// Restore runs in one transaction on one connection, so that a failed or
// interrupted restore leaves the target as it was; or, with
// Restorer.Loaders, loads the tables on several connections at once and
// removes what it created when it fails. Data is loaded between pre-data
// and post-data, so indexes and constraints are built once, after the
// data, as pg_restore and pgcopydb do. Memory does not grow with the data:
// rows are streamed, and only one SQL statement at a time is held per
// connection.
package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stackport/stackport/snapshot"
)

// Stream names.
const (
	metaStream      = "meta.json"
	preDataStream   = "pre-data.sql"
	postDataStream  = "post-data.sql"
	sequencesStream = "sequences.sql"
	dataPrefix      = "data/"
	dataSuffix      = ".copy"
)

const (
	// metaVersion is the version of meta.json this package writes and
	// reads.
	metaVersion = 1
	// maxMetaSize bounds meta.json, which Restore reads into memory.
	maxMetaSize = 64 << 20
	// maxColumns is PostgreSQL's limit of columns in a table.
	maxColumns = 1600
	// defaultParallel is the number of tables copied at once by default.
	defaultParallel = 4
	// copyBufSize is the size of the buffers rows are streamed through.
	copyBufSize = 256 << 10
	// closeTimeout bounds closing a connection.
	closeTimeout = 10 * time.Second
)

// meta is the content of meta.json.
type meta struct {
	Version          int      `json:"version"`
	ServerVersion    string   `json:"server_version"`
	ServerVersionNum int      `json:"server_version_num"`
	PgDumpVersion    string   `json:"pg_dump_version"`
	Database         string   `json:"database"`
	Schemas          []string `json:"schemas"`
	Tables           []*table `json:"tables"`
}

// A table is one table whose rows a snapshot holds.
type table struct {
	Schema  string `json:"schema"`
	Name    string `json:"name"`
	Columns int    `json:"columns"` // columns in the COPY rows (without generated ones)
	Stream  string `json:"stream"`
	// Parts are the further data streams of the table, in order: its
	// rows are those of Stream and of every part.
	Parts []string `json:"parts,omitempty"`

	// Set by Dump only, not in meta.json.
	cols  []string // the COPY columns, in order
	bytes int64    // pg_relation_size
}

// streams returns the table's data streams: Stream, then the parts.
func (t *table) streams() []string { return append([]string{t.Stream}, t.Parts...) }

// key names the table in stats, digests and messages: the escaped schema
// and table names joined by a dot, as in its stream name.
func (t *table) key() string { return escapeName(t.Schema) + "." + escapeName(t.Name) }

// ident is the table's quoted, schema-qualified name for SQL.
func (t *table) ident() string { return pgx.Identifier{t.Schema, t.Name}.Sanitize() }

// dataStream returns the name of a table's data stream.
func dataStream(schema, name string) string {
	return dataPrefix + escapeName(schema) + "." + escapeName(name) + dataSuffix
}

// partStream returns the name of the data stream of part n (1, 2, …) of a
// table, which does not clash with any table's: names escape '.'.
func partStream(schema, name string, n int) string {
	return dataPrefix + escapeName(schema) + "." + escapeName(name) + "." + strconv.Itoa(n) + dataSuffix
}

// escapeName writes every byte of an SQL name but ASCII letters, digits,
// '_' and '-' as %XX, so that names are safe and unambiguous in stream and
// object names.
func escapeName(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// check validates a decoded meta.json.
func (m *meta) check() error {
	if m.Version != metaVersion {
		return corrupt(metaStream, "format version %d; this stackport reads version %d (upgrade stackport)", m.Version, metaVersion)
	}
	schemas := map[string]bool{}
	for _, s := range m.Schemas {
		if s == "" || strings.IndexByte(s, 0) >= 0 || schemas[s] {
			return corrupt(metaStream, "bad or duplicate schema name %q", s)
		}
		schemas[s] = true
	}
	streams := map[string]bool{}
	for _, t := range m.Tables {
		switch {
		case t == nil:
			return corrupt(metaStream, "null table")
		case !schemas[t.Schema]:
			return corrupt(metaStream, "table %q in unlisted schema %q", t.Name, t.Schema)
		case t.Name == "" || strings.IndexByte(t.Name, 0) >= 0:
			return corrupt(metaStream, "bad table name %q", t.Name)
		case t.Columns < 0 || t.Columns > maxColumns:
			return corrupt(metaStream, "table %s: bad column count %d", t.key(), t.Columns)
		case t.Stream != dataStream(t.Schema, t.Name) || streams[t.Stream]:
			return corrupt(metaStream, "table %s: bad or duplicate stream name %q", t.key(), t.Stream)
		}
		streams[t.Stream] = true
		for i, p := range t.Parts {
			if p != partStream(t.Schema, t.Name, i+1) || streams[p] {
				return corrupt(metaStream, "table %s: bad or duplicate part stream name %q", t.key(), p)
			}
			streams[p] = true
		}
	}
	return nil
}

// readMeta decodes meta.json from r.
func readMeta(r io.Reader) (*meta, error) {
	var m meta
	dec := json.NewDecoder(io.LimitReader(r, maxMetaSize))
	if err := dec.Decode(&m); err != nil {
		return nil, streamErr(metaStream, err)
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, streamErr(metaStream, err)
	}
	return &m, m.check()
}

// corrupt returns the error for undecodable data in a stream.
func corrupt(stream, format string, args ...any) error {
	return fmt.Errorf("postgres: %s: %s: %w", stream, fmt.Sprintf(format, args...), snapshot.ErrCorrupt)
}

// streamErr returns the error for err, met while reading a stream: errors
// of the stream itself (which wrap ErrCorrupt on a checksum mismatch) are
// passed on, anything else means the content cannot be decoded.
func streamErr(stream string, err error) error {
	var se *sourceError
	switch {
	case errors.As(err, &se):
		return fmt.Errorf("postgres: %s: %w", stream, se.err)
	case errors.Is(err, snapshot.ErrCorrupt), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("postgres: %s: %w", stream, err)
	}
	return corrupt(stream, "%v", err)
}

// A sourceReader marks the errors of the stream it reads as sourceErrors,
// so that decoders can tell them from undecodable data.
type sourceReader struct{ r io.Reader }

func (s sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		err = &sourceError{err}
	}
	return n, err
}

// A sourceError is an error of the stream under a decoder.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}

// connect opens a connection with the session settings that make COPY text
// output the same on every server: ISO dates, UTC, every float digit.
func connect(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres: connection string: %w", err)
	}
	for k, v := range map[string]string{
		"application_name":   "stackport",
		"DateStyle":          "ISO",
		"IntervalStyle":      "postgres",
		"TimeZone":           "UTC",
		"extra_float_digits": "3",
		"bytea_output":       "hex",
	} {
		cfg.RuntimeParams[k] = v
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect: %w", err)
	}
	return conn, nil
}

// closeConn closes conn, rolling back any open transaction.
func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	_ = conn.Close(ctx)
}
