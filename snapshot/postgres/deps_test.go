package postgres

import (
	"context"
	"strings"
	"testing"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/internal/streamtest"
)

// TestSchemaDependsOnOtherSchemas: a snapshot of schema appsmith whose
// table uses an enum and a domain of public, a composite and a range type
// of other, and functions of other in a default, a check constraint and a
// trigger, is refused before any stream is written, naming each; the
// extension type (citext in public) is not named. With every schema it
// depends on, the snapshot succeeds and restores.
func TestSchemaDependsOnOtherSchemas(t *testing.T) {
	var c cluster
	c.server, c.url = lab.Postgres(t)
	ctx := context.Background()
	c.newDB(t, "deps", "postgres")
	srcURL := c.dbURL(t, "deps", "postgres", "")
	execSQL(t, srcURL, `CREATE SCHEMA other; CREATE SCHEMA appsmith;
		CREATE EXTENSION citext SCHEMA public;
		CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy');
		CREATE DOMAIN public.posint AS int CHECK (VALUE > 0);
		CREATE TYPE other.pair AS (a int, b text);
		CREATE TYPE other.floatrange AS RANGE (subtype = float8);
		CREATE FUNCTION other.fn() RETURNS int LANGUAGE sql IMMUTABLE RETURN 7;
		CREATE FUNCTION other.positive(int) RETURNS bool LANGUAGE sql IMMUTABLE RETURN $1 > 0;
		CREATE FUNCTION other.touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
		CREATE TABLE appsmith.person (id int PRIMARY KEY, current_mood public.mood, moods public.mood[],
			n public.posint, p other.pair, r other.floatrange,
			x int DEFAULT other.fn() CONSTRAINT x_positive CHECK (other.positive(x)), email public.citext);
		CREATE TRIGGER person_touch BEFORE INSERT ON appsmith.person FOR EACH ROW EXECUTE FUNCTION other.touch();
		INSERT INTO appsmith.person (id, current_mood, moods, n, p, r, email)
			VALUES (1, 'happy', '{sad,ok}', 3, '(1,a)', '[1,2)', 'A@b'), (2, NULL, '{}', NULL, NULL, NULL, NULL);
		CREATE TABLE public.unrelated (x int)`)

	store := streamtest.New()
	_, err := (&Dumper{URL: srcURL, Schemas: []string{"appsmith"}}).Dump(ctx, store)
	if err == nil {
		t.Fatal("a snapshot of schema appsmith, which depends on schemas public and other, succeeded")
	}
	msg := err.Error()
	t.Log(msg)
	for _, want := range []string{
		"postgres: schema appsmith depends on ",
		"type public.mood (enum) used by column appsmith.person.current_mood",
		"type public.mood (enum) used by column appsmith.person.moods",
		"type public.posint (domain) used by column appsmith.person.n",
		"type other.pair (composite) used by column appsmith.person.p",
		"type other.floatrange (range) used by column appsmith.person.r",
		"function other.fn() used by the default of column appsmith.person.x",
		"function other.positive(integer) used by constraint x_positive on appsmith.person",
		"function other.touch() used by trigger person_touch on appsmith.person",
		", which the selected schemas leave out: add schemas other, public to the snapshot, or snapshot the whole database",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q", want)
		}
	}
	for _, bad := range []string{"citext", "unrelated", "--"} {
		if strings.Contains(msg, bad) {
			t.Errorf("error names %q", bad)
		}
	}
	if names := store.Names(); len(names) != 0 {
		t.Errorf("a refused snapshot wrote streams %v", names)
	}

	// One of the two missing schemas: the other is still named.
	_, err = (&Dumper{URL: srcURL, Schemas: []string{"appsmith", "public"}}).Dump(ctx, streamtest.New())
	if err == nil || !strings.Contains(err.Error(), "add schema other to the snapshot") || strings.Contains(err.Error(), "public.mood") {
		t.Errorf("snapshot of appsmith and public: %v", err)
	}

	// Other schemas may depend on the chosen ones, not the reverse.
	dump(t, &Dumper{URL: srcURL, Schemas: []string{"other"}})

	store, stats := dump(t, &Dumper{URL: srcURL, Schemas: []string{"appsmith", "other", "public"}})
	if stats["rows:appsmith.person"] != 2 {
		t.Errorf("stats: %v", stats)
	}
	c.newDB(t, "deps_restored", "postgres")
	dstURL := c.dbURL(t, "deps_restored", "postgres", "")
	if _, err := (&Restorer{URL: dstURL}).Restore(ctx, store.Reader()); err != nil {
		t.Fatalf("restore: %v", err)
	}
	const q = `SELECT id, current_mood::text, moods::text, n, p::text, r::text, x, email::text,
		(SELECT count(*) FROM pg_trigger WHERE tgname = 'person_touch') FROM appsmith.person ORDER BY id`
	want := queryStrings(t, srcURL, q)
	checkSame(t, want, queryStrings(t, dstURL, q), "restored rows")
	// Again over the restored schemas, public among them.
	if _, err := (&Restorer{URL: dstURL, Clean: true}).Restore(ctx, store.Reader()); err != nil {
		t.Fatalf("clean restore: %v", err)
	}
	checkSame(t, want, queryStrings(t, dstURL, q), "rows restored with Clean")
}

func TestForeignDepsError(t *testing.T) {
	var deps []foreignDep
	for i := 0; i < maxForeignDeps+2; i++ {
		deps = append(deps, foreignDep{Schema: "a", ObjType: "table column", ObjName: "a.t.c", RefType: "type", RefName: "public.mood", RefSchema: "public", RefTypType: "e"})
	}
	deps = append(deps, foreignDep{Schema: "b", ObjType: "view", ObjName: "b.v", RefType: "table", RefName: "z.t", RefSchema: "z"})
	msg := foreignDepsError(deps).Error()
	if !strings.HasPrefix(msg, "postgres: schema a depends on type public.mood (enum) used by column a.t.c, type public.mood") ||
		!strings.HasSuffix(msg, " and 3 more, which the selected schemas leave out: add schemas public, z to the snapshot, or snapshot the whole database") {
		t.Errorf("error: %s", msg)
	}
	msg = foreignDepsError(deps[len(deps)-1:]).Error()
	if want := "postgres: schema b depends on table z.t used by view b.v, which the selected schemas leave out: add schema z to the snapshot, or snapshot the whole database"; msg != want {
		t.Errorf("error:\n%s\nwant\n%s", msg, want)
	}
}
