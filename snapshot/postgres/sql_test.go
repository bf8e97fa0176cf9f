package postgres

import (
	"context"
	"errors"
	"github.com/stackport/stackport/internal/streamtest"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stackport/stackport/snapshot"
)

// scriptSeeds holds pg_dump's pre-data and post-data output for the
// fixture, the seed corpus of FuzzScript.
const scriptSeeds = "../../testdata/postgres/fuzz/FuzzScript"

// split returns the statements of script.
func split(t testing.TB, script string) ([]*statement, error) {
	t.Helper()
	sc := newScanner(context.Background(), strings.NewReader(script), "test.sql")
	var out []*statement
	for {
		st, err := sc.next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		c := *st
		out = append(out, &c)
	}
}

func TestScannerSplits(t *testing.T) {
	for _, tc := range []struct {
		name, script string
		want         []string
	}{
		{"plain", "SELECT 1; SELECT 2;\n", []string{"SELECT 1;", "SELECT 2;"}},
		{"starting with punctuation", "-1; /1; (SELECT 1);", []string{"-1;", "/1;", "(SELECT 1);"}},
		{"comments between", "-- a; comment\n/* block; /* nested; */ still; */ SELECT 1;\n-- end", []string{"SELECT 1;"}},
		{"comments inside", "SELECT 1 -- x;\n + 2 /* ; */;", []string{"SELECT 1 -- x;\n + 2 /* ; */;"}},
		{"strings", `SELECT 'a;''b', E'c\';d', "q;""x";`, []string{`SELECT 'a;''b', E'c\';d', "q;""x";`}},
		{"backslash in a standard string", `SELECT 'a\'; SELECT 2;`, []string{`SELECT 'a\';`, `SELECT 2;`}},
		{"dollar quotes", "CREATE FUNCTION f() AS $$ a; $x$ $$; CREATE FUNCTION g() AS $body$ $$; $body$;",
			[]string{"CREATE FUNCTION f() AS $$ a; $x$ $$;", "CREATE FUNCTION g() AS $body$ $$; $body$;"}},
		{"dollar in names and parameters", "SELECT a$b, $1; SELECT 2;", []string{"SELECT a$b, $1;", "SELECT 2;"}},
		{"parentheses", "CREATE RULE r AS ON INSERT TO t DO INSTEAD (INSERT INTO u VALUES (1); DELETE FROM v); SELECT 1;",
			[]string{"CREATE RULE r AS ON INSERT TO t DO INSTEAD (INSERT INTO u VALUES (1); DELETE FROM v);", "SELECT 1;"}},
		{"begin atomic", "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END; SELECT 3;",
			[]string{"CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END;", "SELECT 3;"}},
		{"begin outside functions", "BEGIN; SELECT 1; END;", []string{"BEGIN;", "SELECT 1;", "END;"}},
		{"meta-commands", "\\restrict abc\nSELECT 1;\n\\unrestrict abc\n", []string{`\restrict abc`, "SELECT 1;", `\unrestrict abc`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sts, err := split(t, tc.script)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, st := range sts {
				got = append(got, st.text)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestScannerRejectsUnterminated(t *testing.T) {
	for _, script := range []string{"SELECT 1", "SELECT 'a;", `SELECT "a;`, "SELECT $$ a;", "/* a", "SELECT E'\\';", "CREATE FUNCTION f() BEGIN ATOMIC SELECT 1;"} {
		if _, err := split(t, script); !errors.Is(err, snapshot.ErrCorrupt) || !strings.Contains(err.Error(), "test.sql: script ends inside a statement") {
			t.Errorf("%q: %v", script, err)
		}
	}
}

func TestStatementKinds(t *testing.T) {
	for _, tc := range []struct {
		stmt        string
		owner, acl  bool
		ext         string
		extComment  bool
		restrictCmd bool
	}{
		{stmt: "ALTER TABLE appsmith.users OWNER TO fixture_owner;", owner: true},
		{stmt: `ALTER FUNCTION "a b".f(integer, text) OWNER TO "Role X";`, owner: true},
		{stmt: "ALTER TABLE ONLY t ALTER COLUMN id SET DEFAULT nextval('s'::regclass);"},
		{stmt: `ALTER TABLE "OWNER TO x" ADD COLUMN y int;`},
		{stmt: "GRANT SELECT ON TABLE t TO r;", acl: true},
		{stmt: "REVOKE ALL ON SCHEMA public FROM PUBLIC;", acl: true},
		{stmt: "ALTER DEFAULT PRIVILEGES FOR ROLE a GRANT SELECT ON TABLES TO b;", acl: true},
		{stmt: "CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA public;", ext: "citext"},
		{stmt: `CREATE EXTENSION "uuid-ossp";`, ext: "uuid-ossp"},
		{stmt: "create extension PGCRYPTO;", ext: "pgcrypto"},
		{stmt: "COMMENT ON EXTENSION citext IS 'x';", extComment: true},
		{stmt: "\\restrict KEY\n", restrictCmd: true},
		{stmt: "\\connect db\n"},
	} {
		sts, err := split(t, tc.stmt)
		if err != nil || len(sts) != 1 {
			t.Fatalf("%q: %v, %d statements", tc.stmt, err, len(sts))
		}
		st := sts[0]
		ext, _ := st.extension()
		if st.isOwner() != tc.owner || st.isACL() != tc.acl || ext != tc.ext ||
			st.words("COMMENT", "ON", "EXTENSION") != tc.extComment || st.restrictCommand() != tc.restrictCmd {
			t.Errorf("%q: owner %v, acl %v, extension %q, comment on extension %v, restrict %v", tc.stmt,
				st.isOwner(), st.isACL(), ext, st.words("COMMENT", "ON", "EXTENSION"), st.restrictCommand())
		}
	}
}

func TestSuperuserOnly(t *testing.T) {
	for _, tc := range []struct {
		stmt, want string // want "": a non-superuser may run it
	}{
		{"CREATE EVENT TRIGGER on_ddl ON ddl_command_end EXECUTE FUNCTION public.on_ddl();", "event trigger on_ddl"},
		{`ALTER EVENT TRIGGER "On DDL" ENABLE ALWAYS;`, "event trigger On DDL"},
		{"COMMENT ON EVENT TRIGGER on_ddl IS 'x';", "event trigger on_ddl"},
		{"CREATE PUBLICATION pub FOR ALL TABLES WITH (publish = 'insert');", "publication pub"},
		{"ALTER PUBLICATION pub ADD TABLE ONLY public.t;", "publication pub"},
		{"COMMENT ON PUBLICATION pub IS 'x';", "publication pub"},
		{"CREATE SUBSCRIPTION sub CONNECTION 'host=x' PUBLICATION pub WITH (connect = false);", "subscription sub"},
		{"ALTER SUBSCRIPTION sub OWNER TO x;", "subscription sub"},
		{"ALTER SYSTEM SET work_mem = '1GB';", "ALTER SYSTEM"},
		{"SECURITY LABEL FOR selinux ON TABLE t IS 'system_u:object_r:sepgsql_table_t:s0';", "security label"},
		{"CREATE ROLE admin SUPERUSER LOGIN;", "role admin"},
		{"ALTER ROLE app WITH REPLICATION;", "role app"},
		{"CREATE USER u BYPASSRLS;", "role u"},
		{"CREATE ROLE plain NOSUPERUSER LOGIN;", ""},
		{"CREATE OR REPLACE PROCEDURAL LANGUAGE plperlu;", "language plperlu"},
		{"CREATE LANGUAGE plsh HANDLER plsh_handler;", "language plsh"},
		{"COMMENT ON LANGUAGE plperlu IS 'x';", "language plperlu"},
		{"COMMENT ON LANGUAGE plpgsql IS 'x';", ""},
		{"CREATE TRUSTED PROCEDURAL LANGUAGE plmine HANDLER h;", ""},
		{"CREATE OR REPLACE TRUSTED LANGUAGE plmine HANDLER h;", ""},
		{"CREATE TABLE publication (id int);", ""},
		{"CREATE TRIGGER t BEFORE UPDATE ON x FOR EACH ROW EXECUTE FUNCTION f();", ""},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';", ""},
	} {
		sts, err := split(t, tc.stmt)
		if err != nil || len(sts) != 1 {
			t.Fatalf("%q: %v, %d statements", tc.stmt, err, len(sts))
		}
		got, ok := sts[0].superuserOnly([]string{"plperlu"})
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("%q: %q, %v; want %q", tc.stmt, got, ok, tc.want)
		}
	}
}

func TestExtensionSchema(t *testing.T) {
	for stmt, want := range map[string]string{
		"CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA ext;":           "ext",
		`CREATE EXTENSION IF NOT EXISTS "uuid-ossp" WITH SCHEMA "My Ext";`: "My Ext",
		"CREATE EXTENSION citext WITH SCHEMA PUBLIC;":                      "public",
		"CREATE EXTENSION citext;":                                         "",
		"CREATE SCHEMA ext;":                                               "",
	} {
		sts, err := split(t, stmt)
		if err != nil || len(sts) != 1 {
			t.Fatalf("%q: %v", stmt, err)
		}
		if got, ok := sts[0].extensionSchema(); got != want || ok != (want != "") {
			t.Errorf("%q: %q, %v; want %q", stmt, got, ok, want)
		}
	}
}

// TestScannerPgDump splits pg_dump's output for the fixture.
func TestScannerPgDump(t *testing.T) {
	counts := map[string][4]int{} // statements, owners, acls, meta-commands
	for _, name := range []string{"pre-data.sql", "post-data.sql"} {
		data, err := os.ReadFile(filepath.Join(scriptSeeds, name))
		if err != nil {
			t.Fatal(err)
		}
		sts, err := split(t, string(data))
		if err != nil {
			t.Fatal(err)
		}
		var c [4]int
		for _, st := range sts {
			c[0]++
			if st.isOwner() {
				c[1]++
			}
			if st.isACL() {
				c[2]++
			}
			if st.meta {
				c[3]++
			}
			if !st.meta && !strings.HasSuffix(st.text, ";") {
				t.Errorf("%s: statement without a semicolon: %q", name, st.text)
			}
		}
		counts[name] = c
	}
	if got := counts["pre-data.sql"]; got[1] != 26 || got[2] != 2 || got[3] != 2 {
		t.Errorf("pre-data.sql: %v", got)
	}
	if got := counts["post-data.sql"]; got[0] != 42 || got[1] != 0 || got[3] != 2 {
		t.Errorf("post-data.sql: %v", got)
	}
}

func FuzzScript(f *testing.F) {
	streamtest.AddSeeds(f, scriptSeeds)
	f.Add([]byte("CREATE FUNCTION f() BEGIN ATOMIC SELECT CASE WHEN $a$;$a$ THEN E'\\'' END; END;"))
	f.Fuzz(func(t *testing.T, data []byte) {
		sts, err := split(t, string(data))
		if err != nil && !errors.Is(err, snapshot.ErrCorrupt) {
			t.Fatalf("error does not wrap ErrCorrupt: %v", err)
		}
		for _, st := range sts {
			if !st.meta && !strings.HasSuffix(st.text, ";") {
				t.Fatalf("statement without a semicolon: %q", st.text)
			}
		}
	})
}
