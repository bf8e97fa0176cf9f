package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// A foreignDep is an object of another schema that an object of the
// snapshotted schemas depends on.
type foreignDep struct {
	Schema     string // of the dependent object
	ObjType    string // pg_identify_object's type of the dependent object
	ObjName    string // and its identity
	RefType    string // of the object depended on
	RefName    string
	RefSchema  string
	RefTypType string // pg_type.typtype when a type, else ""
	RefRelKind string // of a composite type's relation, else ""
}

// maxForeignDeps bounds the dependencies named in an error.
const maxForeignDeps = 20

// checkForeignDeps refuses a snapshot of the schemas whose objects depend
// on objects of other schemas (but extension members, which the snapshot
// holds through CREATE EXTENSION, and system objects): a domain, enum,
// composite or range type, a function called by a default, a constraint
// or a trigger, a table, …; pg_dump --schema leaves those out, and the
// snapshot could not be restored.
func checkForeignDeps(ctx context.Context, conn *pgx.Conn, schemas []string) error {
	rows, err := conn.Query(ctx, foreignDepsQuery, schemas)
	if err != nil {
		return fmt.Errorf("postgres: list dependencies on other schemas: %w", err)
	}
	deps, err := pgx.CollectRows(rows, pgx.RowToStructByPos[foreignDep])
	if err != nil {
		return fmt.Errorf("postgres: list dependencies on other schemas: %w", err)
	}
	if len(deps) == 0 {
		return nil
	}
	return foreignDepsError(deps)
}

// foreignDepsError describes deps (sorted by schema): "schema a depends on
// type public.mood (enum) used by column a.t.c, …, which the selected
// schemas leave out: add schema public to the snapshot, or snapshot the
// whole database".
func foreignDepsError(deps []foreignDep) error {
	var b strings.Builder
	b.WriteString("postgres: ")
	var missing []string
	for i, d := range deps {
		if !slices.Contains(missing, d.RefSchema) {
			missing = append(missing, d.RefSchema)
		}
		if i >= maxForeignDeps {
			continue
		}
		switch {
		case i == 0 || d.Schema != deps[i-1].Schema:
			if i > 0 {
				b.WriteString("; ")
			}
			fmt.Fprintf(&b, "schema %s depends on ", d.Schema)
		default:
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %s", d.RefType, d.RefName)
		if k := typeKind(d.RefTypType, d.RefRelKind); k != "" {
			fmt.Fprintf(&b, " (%s)", k)
		}
		b.WriteString(" used by " + describeObject(d.ObjType, d.ObjName))
	}
	if len(deps) > maxForeignDeps {
		fmt.Fprintf(&b, " and %d more", len(deps)-maxForeignDeps)
	}
	slices.Sort(missing)
	word := "schema"
	if len(missing) > 1 {
		word = "schemas"
	}
	fmt.Fprintf(&b, ", which the selected schemas leave out: add %s %s to the snapshot, or snapshot the whole database",
		word, strings.Join(missing, ", "))
	return fmt.Errorf("%s", b.String())
}

// typeKind names a pg_type.typtype.
func typeKind(typtype, relkind string) string {
	switch typtype {
	case "e":
		return "enum"
	case "d":
		return "domain"
	case "c":
		if relkind != "" && relkind != "c" {
			return "row type of a table"
		}
		return "composite"
	case "r":
		return "range"
	case "m":
		return "multirange"
	case "b":
		return "base type"
	case "p":
		return "pseudo-type"
	}
	return ""
}

// describeObject words a pg_identify_object type and identity.
func describeObject(typ, identity string) string {
	switch typ {
	case "table column":
		return "column " + identity
	case "default value":
		return "the default of column " + strings.TrimPrefix(identity, "for ")
	case "table constraint":
		return "constraint " + identity
	}
	return typ + " " + identity
}

// objectNamespace returns an SQL expression of the namespace of the object
// (class, id) of pg_depend, NULL for objects in no namespace.
func objectNamespace(class, id string) string {
	s := `CASE ` + class + `
		WHEN 'pg_class'::regclass THEN (SELECT relnamespace FROM pg_class WHERE oid = ` + id + `)
		WHEN 'pg_proc'::regclass THEN (SELECT pronamespace FROM pg_proc WHERE oid = ` + id + `)
		WHEN 'pg_type'::regclass THEN (SELECT typnamespace FROM pg_type WHERE oid = ` + id + `)
		WHEN 'pg_constraint'::regclass THEN (SELECT connamespace FROM pg_constraint WHERE oid = ` + id + `)
		WHEN 'pg_attrdef'::regclass THEN (SELECT c.relnamespace FROM pg_attrdef a JOIN pg_class c ON c.oid = a.adrelid WHERE a.oid = ` + id + `)
		WHEN 'pg_rewrite'::regclass THEN (SELECT c.relnamespace FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class WHERE r.oid = ` + id + `)
		WHEN 'pg_trigger'::regclass THEN (SELECT c.relnamespace FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE t.oid = ` + id + `)
		WHEN 'pg_policy'::regclass THEN (SELECT c.relnamespace FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE p.oid = ` + id + `)
		WHEN 'pg_operator'::regclass THEN (SELECT oprnamespace FROM pg_operator WHERE oid = ` + id + `)
		WHEN 'pg_opclass'::regclass THEN (SELECT opcnamespace FROM pg_opclass WHERE oid = ` + id + `)
		WHEN 'pg_opfamily'::regclass THEN (SELECT opfnamespace FROM pg_opfamily WHERE oid = ` + id + `)
		WHEN 'pg_collation'::regclass THEN (SELECT collnamespace FROM pg_collation WHERE oid = ` + id + `)
		WHEN 'pg_conversion'::regclass THEN (SELECT connamespace FROM pg_conversion WHERE oid = ` + id + `)
		WHEN 'pg_statistic_ext'::regclass THEN (SELECT stxnamespace FROM pg_statistic_ext WHERE oid = ` + id + `)
		WHEN 'pg_ts_config'::regclass THEN (SELECT cfgnamespace FROM pg_ts_config WHERE oid = ` + id + `)
		WHEN 'pg_ts_dict'::regclass THEN (SELECT dictnamespace FROM pg_ts_dict WHERE oid = ` + id + `)
		WHEN 'pg_ts_parser'::regclass THEN (SELECT prsnamespace FROM pg_ts_parser WHERE oid = ` + id + `)
		WHEN 'pg_ts_template'::regclass THEN (SELECT tmplnamespace FROM pg_ts_template WHERE oid = ` + id + `)
	END`
	return s
}

// foreignDepsQuery lists, for the schemas named by $1, the dependencies
// PostgreSQL records (pg_depend, normal and automatic) of their objects on
// objects of other schemas: a column's type (an array's element type), a
// function called by a default, a check constraint, a trigger, a view or
// an SQL-standard function body, a function's argument types, a foreign
// key's table, an operator class, …. Extension members (on either side)
// and the system schemas (pg_*, information_schema) are left out. Calls in
// the body of a PL/pgSQL function are not recorded, so not found.
var foreignDepsQuery = `
WITH wanted AS (
	SELECT oid FROM pg_namespace WHERE nspname = ANY($1)
), deps AS (
	SELECT d.classid, d.objid, d.objsubid, d.refclassid,
		CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN t.typelem ELSE d.refobjid END AS refobjid,
		CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN 0 ELSE d.refobjsubid END AS refobjsubid
	FROM pg_depend d
	LEFT JOIN pg_type t ON d.refclassid = 'pg_type'::regclass AND t.oid = d.refobjid
	WHERE d.deptype IN ('n', 'a')
), located AS (
	SELECT d.*, ` + objectNamespace("d.classid", "d.objid") + ` AS ns,
		` + objectNamespace("d.refclassid", "d.refobjid") + ` AS refns
	FROM deps d
), foreign_deps AS (
	SELECT DISTINCT l.classid, l.objid, l.objsubid, l.refclassid, l.refobjid, l.refobjsubid, n.nspname, rn.nspname AS refnspname
	FROM located l
	JOIN pg_namespace n ON n.oid = l.ns
	JOIN pg_namespace rn ON rn.oid = l.refns
	WHERE l.ns IN (SELECT oid FROM wanted) AND l.refns NOT IN (SELECT oid FROM wanted)
		AND rn.nspname NOT LIKE 'pg\_%' AND rn.nspname <> 'information_schema'
		AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = l.refclassid AND e.objid = l.refobjid AND e.deptype = 'e')
		AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = l.classid AND e.objid = l.objid AND e.deptype = 'e')
)
SELECT f.nspname, o.type, o.identity, r.type, r.identity, f.refnspname,
	coalesce(t.typtype::text, ''), coalesce((SELECT relkind::text FROM pg_class WHERE oid = t.typrelid), '')
FROM foreign_deps f
CROSS JOIN LATERAL pg_identify_object(f.classid, f.objid, f.objsubid) o
CROSS JOIN LATERAL pg_identify_object(f.refclassid, f.refobjid, f.refobjsubid) r
LEFT JOIN pg_type t ON f.refclassid = 'pg_type'::regclass AND t.oid = f.refobjid
ORDER BY 1, 5, 3`
