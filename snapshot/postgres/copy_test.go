package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/stackport/stackport/internal/streamtest"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stackport/stackport/snapshot"
)

// copySeeds is the seed corpus of FuzzCopyStream: data streams named
// NAME-cCOLUMNS.copy.
const copySeeds = "../../testdata/postgres/fuzz/FuzzCopyStream"

// copySeedCases are the seeds, with the error each one gives ("" when
// valid).
var copySeedCases = []struct {
	name    string
	columns int
	data    string
	err     string
}{
	{"valid", 3, "1\tone\t\\N\n2\ttab\\there\tnewline\\nthere\n3\t\\\\.\t\\\\N\n" + endOfData, ""},
	{"empty-table", 2, endOfData, ""},
	{"no-columns", 0, "\n\n\n" + endOfData, ""},
	{"no-columns-with-data", 0, "\n\nx\n" + endOfData, "row 3: 1 fields, want 0"},
	{"missing-field", 3, "1\ta\tb\n2\tb\n" + endOfData, "row 2: 2 fields, want 3"},
	{"extra-field", 1, "1\n2\t3\n" + endOfData, "row 2: 2 fields, want 1"},
	{"truncated", 2, "1\ta\n2\tb\n", "without the end-of-data line"},
	{"cut-in-row", 2, "1\ta\n2\t", "ends inside a row"},
	{"cut-in-end-line", 2, "1\ta\n\\.", "ends inside a row"},
	{"empty", 2, "", "without the end-of-data line"},
	{"data-after-end", 2, "1\ta\n" + endOfData + "2\tb\n", "data after the end-of-data line"},
	{"end-line-in-the-middle", 2, "1\ta\n\\.\n\\.\n", "data after the end-of-data line"},
	{"end-marker-with-text", 2, "1\ta\n\\.x\n" + endOfData, "not the end-of-data line"},
	{"carriage-return", 2, "1\ta\r\n" + endOfData, "raw carriage return"},
	{"nul", 2, "1\ta\x00\n" + endOfData, "NUL byte"},
	{"long-row", 2, "1\t" + strings.Repeat("x", 3*copyBufSize/2) + "\n2\t\\N\n" + endOfData, ""},
	{"long-row-missing-field", 3, "1\t" + strings.Repeat("x", 3*copyBufSize/2) + "\n" + endOfData, "row 1: 2 fields, want 3"},
}

// decodeCopy runs a copyReader over data and returns what it read.
func decodeCopy(data []byte, columns int) ([]byte, *copyReader, error) {
	t := &table{Schema: "s", Name: "t", Columns: columns, Stream: dataStream("s", "t")}
	cr := newCopyReader(context.Background(), bytes.NewReader(data), t, t.Stream)
	var out bytes.Buffer
	_, err := io.Copy(&out, cr)
	return out.Bytes(), cr, err
}

func TestCopyReader(t *testing.T) {
	for _, tc := range copySeedCases {
		t.Run(tc.name, func(t *testing.T) {
			out, cr, err := decodeCopy([]byte(tc.data), tc.columns)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				want := strings.TrimSuffix(tc.data, endOfData)
				if string(out) != want || cr.rows != int64(strings.Count(want, "\n")) || cr.bytes != int64(len(want)) || !cr.done {
					t.Errorf("read %d bytes, %d rows, done %v", len(out), cr.rows, cr.done)
				}
				return
			}
			if !errors.Is(err, snapshot.ErrCorrupt) || !strings.Contains(err.Error(), tc.err) ||
				!strings.Contains(err.Error(), "data/s.t.copy: table s.t") {
				t.Errorf("error %v, want one with %q", err, tc.err)
			}
		})
	}
}

func TestCopyReaderPassesStreamErrors(t *testing.T) {
	tb := &table{Schema: "s", Name: "t", Columns: 1, Stream: dataStream("s", "t")}
	sum := fmt.Errorf("sha256 mismatch: %w", snapshot.ErrCorrupt)
	_, r, _ := streamtest.One("x", []byte("1\n"+endOfData), sum).Next()
	_, err := io.Copy(io.Discard, newCopyReader(context.Background(), r, tb, tb.Stream))
	if !errors.Is(err, snapshot.ErrCorrupt) || !strings.Contains(err.Error(), "sha256 mismatch") {
		t.Errorf("error %v", err)
	}
	other := errors.New("connection reset")
	_, r, _ = streamtest.One("x", []byte("1\n"), other).Next()
	_, err = io.Copy(io.Discard, newCopyReader(context.Background(), r, tb, tb.Stream))
	if !errors.Is(err, other) || errors.Is(err, snapshot.ErrCorrupt) {
		t.Errorf("error %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = io.Copy(io.Discard, newCopyReader(ctx, strings.NewReader("1\n"+endOfData), tb, tb.Stream))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

func TestRowDigest(t *testing.T) {
	digest := func(chunks ...string) TableDigest {
		d := newRowDigest()
		for _, c := range chunks {
			d.Write([]byte(c))
		}
		return d.result()
	}
	a := digest("1\tx\n2\ty\n3\tz\n")
	if b := digest("3\tz\n1\t", "x\n2\ty", "\n"); a != b || a.Rows != 3 {
		t.Errorf("order or chunking changes the digest: %v %v", a, b)
	}
	if c := digest("1\tx\n2\ty\n3\tZ\n"); c == a || c.Rows != 3 {
		t.Errorf("a changed row keeps the digest: %v", c)
	}
	if e := digest(); e.Rows != 0 || e.Digest != strings.Repeat("0", 64) {
		t.Errorf("empty: %v", e)
	}
}

func TestEscapeName(t *testing.T) {
	for in, want := range map[string]string{
		"users":            "users",
		"Odd Name.with/sl": "Odd%20Name%2Ewith%2Fsl",
		"ünï%":             "%C3%BCn%C3%AF%25",
		"a-b_C9":           "a-b_C9",
	} {
		if got := escapeName(in); got != want {
			t.Errorf("escapeName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMetaCheck(t *testing.T) {
	valid := func() *meta {
		return &meta{Version: 1, Schemas: []string{"public", "a.b"}, Tables: []*table{
			{Schema: "public", Name: "t", Columns: 2, Stream: "data/public.t.copy", Parts: []string{"data/public.t.1.copy", "data/public.t.2.copy"}},
			{Schema: "a.b", Name: "c/d", Columns: 0, Stream: "data/a%2Eb.c%2Fd.copy"},
		}}
	}
	if err := valid().check(); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(m *meta){
		"newer version":      func(m *meta) { m.Version = 2 },
		"duplicate schema":   func(m *meta) { m.Schemas = append(m.Schemas, "public") },
		"unlisted schema":    func(m *meta) { m.Tables[0].Schema = "other" },
		"renamed stream":     func(m *meta) { m.Tables[0].Stream = "data/../x.copy" },
		"duplicate table":    func(m *meta) { m.Tables = append(m.Tables, m.Tables[0]) },
		"negative columns":   func(m *meta) { m.Tables[0].Columns = -1 },
		"too many columns":   func(m *meta) { m.Tables[0].Columns = maxColumns + 1 },
		"empty table name":   func(m *meta) { m.Tables[0].Name, m.Tables[0].Stream = "", "data/public..copy" },
		"null table":         func(m *meta) { m.Tables[1] = nil },
		"parts out of order": func(m *meta) { m.Tables[0].Parts[0], m.Tables[0].Parts[1] = m.Tables[0].Parts[1], m.Tables[0].Parts[0] },
		"part of another":    func(m *meta) { m.Tables[0].Parts[1] = "data/a%2Eb.c%2Fd.copy" },
		"duplicate part":     func(m *meta) { m.Tables[0].Parts[1] = m.Tables[0].Parts[0] },
		"part 0":             func(m *meta) { m.Tables[0].Parts = []string{"data/public.t.0.copy"} },
		"NUL in schema name": func(m *meta) { m.Schemas[0] = "a\x00" },
	} {
		m := valid()
		edit(m)
		if err := m.check(); !errors.Is(err, snapshot.ErrCorrupt) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestWriteFuzzSeeds rewrites the seed corpus of FuzzCopyStream when
// POSTGRES_WRITE_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("POSTGRES_WRITE_SEEDS") != "1" {
		t.Skip("set POSTGRES_WRITE_SEEDS=1 to rewrite the fuzz seeds")
	}
	if err := os.MkdirAll(copySeeds, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range copySeedCases {
		if len(tc.data) > 64<<10 {
			continue // too big to be a useful seed
		}
		name := filepath.Join(copySeeds, fmt.Sprintf("%s-c%d.copy", tc.name, tc.columns))
		if err := os.WriteFile(name, []byte(tc.data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzCopyStream decodes arbitrary data streams: a stream is accepted only
// when it is rows of the right number of fields followed by the
// end-of-data line, and then the rows are passed on unchanged.
func FuzzCopyStream(f *testing.F) {
	entries, err := os.ReadDir(copySeeds)
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(copySeeds, e.Name()))
		if err != nil {
			f.Fatal(err)
		}
		base := strings.TrimSuffix(e.Name(), ".copy")
		columns, err := strconv.Atoi(base[strings.LastIndex(base, "-c")+2:])
		if err != nil {
			f.Fatalf("seed %s: no column count in the name", e.Name())
		}
		f.Add(data, uint8(columns))
	}
	f.Fuzz(func(t *testing.T, data []byte, columns uint8) {
		out, cr, err := decodeCopy(data, int(columns%8))
		if err != nil {
			if !errors.Is(err, snapshot.ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		rows, ok := bytes.CutSuffix(data, []byte(endOfData))
		switch {
		case !ok || !bytes.Equal(out, rows):
			t.Fatalf("accepted %q, passed on %q", data, out)
		case cr.rows != int64(bytes.Count(rows, []byte("\n"))):
			t.Fatalf("%d rows counted in %q", cr.rows, rows)
		case len(rows) > 0 && rows[len(rows)-1] != '\n':
			t.Fatalf("accepted an unterminated row: %q", rows)
		case bytes.HasPrefix(rows, []byte(`\.`)) || bytes.Contains(rows, []byte("\n\\.")):
			t.Fatalf("accepted an end-of-data line among the rows: %q", rows)
		}
	})
}
