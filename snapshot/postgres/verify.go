package postgres

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/stackport/stackport/snapshot"
)

// Verifier decodes every stream of a snapshot without writing anything:
// meta.json is checked, the SQL scripts are split into statements and the
// rows of every data stream are counted and checked as Restore checks them
// (fields per row, the end-of-data line), errors naming the table.
type Verifier struct {
	// Digests, when not nil, receives the TableDigest of every table,
	// keyed by schema.table (escaped as in stream names), to compare with
	// Digest of the source or the target.
	Digests map[string]TableDigest
}

// Restore implements snapshot.Restorer.
func (v Verifier) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	return readSnapshot(ctx, in, &verifySink{digests: v.Digests, rows: map[string]*rowDigest{}}, 1)
}

type verifySink struct {
	digests map[string]TableDigest
	rows    map[string]*rowDigest // by table key: a table's parts add to one digest
}

func (s *verifySink) begin(*meta) error { return nil }

func (s *verifySink) script(name string, sc *scanner) error {
	return eachStatement(name, sc, func(*statement) error { return nil })
}

func (s *verifySink) table(_ context.Context, t *table, r *copyReader) error {
	if s.digests == nil {
		_, err := io.Copy(io.Discard, r)
		return err
	}
	d := s.rows[t.key()]
	if d == nil {
		d = newRowDigest()
		s.rows[t.key()] = d
	}
	if _, err := io.Copy(d, r); err != nil {
		return err
	}
	s.digests[t.key()] = d.result()
	return nil
}

func (s *verifySink) end() error { return nil }

// eachStatement passes the statements of a script to fn, leaving out
// pg_dump's \restrict and \unrestrict; other psql meta-commands are
// refused.
func eachStatement(name string, sc *scanner, fn func(*statement) error) error {
	for {
		st, err := sc.next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if st.meta {
			if !st.restrictCommand() {
				return corrupt(name, "unexpected psql meta-command %q", st.summary())
			}
			continue
		}
		if err := fn(st); err != nil {
			return err
		}
	}
}

// ExportSQL writes a snapshot as one plain SQL script, as pg_dump's plain
// format does, that `psql -f FILE` restores into an empty database:
// pre-data, a COPY … FROM stdin block per data stream (one per table, or
// per part of a split table), post-data, then the
// sequences' values. Owners and privileges are those of the source. The
// script runs under psql's \restrict (PostgreSQL 15.14 or later), so that
// nothing in it can run psql meta-commands. The snapshot is checked as by
// Verifier while it is written: an error may come after part of the script
// was written.
func ExportSQL(ctx context.Context, in snapshot.StreamReader, w io.Writer) (snapshot.Stats, error) {
	return readSnapshot(ctx, in, &exportSink{w: bufio.NewWriterSize(w, copyBufSize)}, 1)
}

type exportSink struct {
	w   *bufio.Writer
	key string
}

func (s *exportSink) begin(m *meta) error {
	s.key = rand.Text()
	oneLine := func(v string) string { return strings.Join(strings.Fields(v), " ") }
	_, err := fmt.Fprintf(s.w, "\\restrict %s\n\n--\n-- PostgreSQL database dump, exported by stackport\n"+
		"-- Dumped from database %s, version %s, by pg_dump %s\n--\n\n",
		s.key, oneLine(m.Database), oneLine(m.ServerVersion), oneLine(m.PgDumpVersion))
	return err
}

func (s *exportSink) script(name string, sc *scanner) error {
	return eachStatement(name, sc, func(st *statement) error {
		_, err := fmt.Fprintf(s.w, "%s\n\n", st.text)
		return err
	})
}

func (s *exportSink) table(_ context.Context, t *table, r *copyReader) error {
	if _, err := fmt.Fprintf(s.w, "COPY %s FROM stdin;\n", t.ident()); err != nil {
		return err
	}
	if _, err := io.Copy(s.w, r); err != nil {
		return err
	}
	_, err := io.WriteString(s.w, endOfData+"\n")
	return err
}

func (s *exportSink) end() error {
	if _, err := fmt.Fprintf(s.w, "\\unrestrict %s\n", s.key); err != nil {
		return err
	}
	return s.w.Flush()
}

// Digest returns the TableDigest of every table in the schemas (all but
// information_schema and the pg_* schemas when empty) of the database at
// url, keyed as by Verifier. The tables are read in one snapshot, four at a
// time.
func Digest(ctx context.Context, url string, schemas []string) (map[string]TableDigest, error) {
	src, err := openSource(ctx, url)
	if err != nil {
		return nil, err
	}
	defer src.close()
	_, tables, err := src.tables(ctx, schemas)
	if err != nil {
		return nil, err
	}
	digests := make(map[string]TableDigest, len(tables))
	var mu sync.Mutex
	err = eachTable(ctx, src, defaultParallel, tables, func(ctx context.Context, conn *pgx.Conn, t *table) error {
		d := newRowDigest()
		if _, err := copyOut(ctx, conn, t, d); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		digests[t.key()] = d.result()
		return nil
	})
	return digests, err
}

// Compare returns an error wrapping snapshot.ErrCorrupt that names every
// table whose row count or digest in got (a database's, from Digest)
// differs from want (a snapshot's, from Verifier, or another database's),
// and every table that only one of them has.
func Compare(want, got map[string]TableDigest) error {
	var diffs []string
	for _, k := range slices.Sorted(mapsKeys(want, got)) {
		w, inWant := want[k]
		g, inGot := got[k]
		switch {
		case !inGot:
			diffs = append(diffs, k+": missing")
		case !inWant:
			diffs = append(diffs, k+": unexpected table")
		case w.Rows != g.Rows:
			diffs = append(diffs, fmt.Sprintf("%s: %d rows, want %d", k, g.Rows, w.Rows))
		case w.Digest != g.Digest:
			diffs = append(diffs, fmt.Sprintf("%s: the rows differ (%d rows, digest %.16s…, want %.16s…)", k, g.Rows, g.Digest, w.Digest))
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("postgres: %d tables differ: %s: %w", len(diffs), strings.Join(diffs, "; "), snapshot.ErrCorrupt)
	}
	return nil
}

// mapsKeys returns an iterator over the keys of a and b (b's keys that are
// also in a once).
func mapsKeys(a, b map[string]TableDigest) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range a {
			if !yield(k) {
				return
			}
		}
		for k := range b {
			if _, ok := a[k]; !ok && !yield(k) {
				return
			}
		}
	}
}
