package postgres

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// cleanupTimeout bounds the removal of a failed parallel restore, which
// may wait for the locks of the loaders' sessions to go.
const cleanupTimeout = 2 * time.Minute

// An objectKey names a database object: its catalog's OID and its own.
type objectKey struct{ class, oid uint32 }

// An objectSet holds the objects of a database that a restore may create
// and that are not dropped with another object, with the schema of each
// (0 for those outside schemas).
type objectSet map[objectKey]uint32

// objectsQuery lists what objectSet holds: the schemas; in the schemas
// named by $1, the relations, functions, types, collations, conversions,
// operators and their classes and families, text search objects and
// extended statistics; and the extensions, casts, languages, foreign-data
// wrappers, foreign servers, event triggers and publications not built in.
// Objects that belong to an extension, or are dropped with another one
// (indexes, owned sequences, array and row types, partitions, …), are
// left out.
const objectsQuery = `
SELECT o.classid::oid, o.objid, o.nsp FROM (
	SELECT 'pg_class'::regclass, oid, relnamespace FROM pg_class
	UNION ALL SELECT 'pg_proc'::regclass, oid, pronamespace FROM pg_proc
	UNION ALL SELECT 'pg_type'::regclass, oid, typnamespace FROM pg_type
	UNION ALL SELECT 'pg_collation'::regclass, oid, collnamespace FROM pg_collation
	UNION ALL SELECT 'pg_conversion'::regclass, oid, connamespace FROM pg_conversion
	UNION ALL SELECT 'pg_operator'::regclass, oid, oprnamespace FROM pg_operator
	UNION ALL SELECT 'pg_opfamily'::regclass, oid, opfnamespace FROM pg_opfamily
	UNION ALL SELECT 'pg_opclass'::regclass, oid, opcnamespace FROM pg_opclass
	UNION ALL SELECT 'pg_ts_config'::regclass, oid, cfgnamespace FROM pg_ts_config
	UNION ALL SELECT 'pg_ts_dict'::regclass, oid, dictnamespace FROM pg_ts_dict
	UNION ALL SELECT 'pg_ts_parser'::regclass, oid, prsnamespace FROM pg_ts_parser
	UNION ALL SELECT 'pg_ts_template'::regclass, oid, tmplnamespace FROM pg_ts_template
	UNION ALL SELECT 'pg_statistic_ext'::regclass, oid, stxnamespace FROM pg_statistic_ext
) AS o(classid, objid, nsp)
WHERE o.nsp IN (SELECT oid FROM pg_namespace WHERE nspname = ANY($1))
	AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = o.classid AND d.objid = o.objid AND d.deptype IN ('i', 'a', 'e'))
UNION ALL
SELECT g.classid::oid, g.objid, 0::oid FROM (
	SELECT 'pg_namespace'::regclass, oid FROM pg_namespace
	UNION ALL SELECT 'pg_extension'::regclass, oid FROM pg_extension
	UNION ALL SELECT 'pg_cast'::regclass, oid FROM pg_cast
	UNION ALL SELECT 'pg_language'::regclass, oid FROM pg_language
	UNION ALL SELECT 'pg_foreign_data_wrapper'::regclass, oid FROM pg_foreign_data_wrapper
	UNION ALL SELECT 'pg_foreign_server'::regclass, oid FROM pg_foreign_server
	UNION ALL SELECT 'pg_event_trigger'::regclass, oid FROM pg_event_trigger
	UNION ALL SELECT 'pg_publication'::regclass, oid FROM pg_publication
) AS g(classid, objid)
WHERE g.objid >= 16384
	AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = g.classid AND d.objid = g.objid AND d.deptype IN ('i', 'a', 'e'))`

// listObjects returns the objects of the database on conn that a restore
// into the schemas may create (see objectsQuery).
func listObjects(ctx context.Context, conn *pgx.Conn, schemas []string) (objectSet, error) {
	rows, err := conn.Query(ctx, objectsQuery, schemas)
	if err != nil {
		return nil, fmt.Errorf("postgres: list the target's objects: %w", err)
	}
	set := objectSet{}
	var k objectKey
	var nsp uint32
	_, err = pgx.ForEachRow(rows, []any{&k.class, &k.oid, &nsp}, func() error {
		set[k] = nsp
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: list the target's objects: %w", err)
	}
	return set, nil
}

// cleanup removes what a failed parallel restore created, after cause, and
// returns cause, or an error saying that the target holds a partial
// restore when that fails too. It runs on a connection of its own, even
// when ctx is done.
func (s *restoreSink) cleanup(ctx context.Context, cause error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	n, err := dropCreated(ctx, s.r.URL, s.before, s.m.Schemas, append(slices.Clone(s.m.Schemas), s.extSchemas...))
	if err != nil {
		return fmt.Errorf("%w; the target database holds a partial restore, which could not be removed (%v): "+
			"restore again with --postgres-clean to replace it", cause, err)
	}
	s.log.Warn("postgres: the failed restore was removed from the target", "objects", n)
	return cause
}

// dropCreated drops, in one transaction, the objects of the database at
// url (in schemas, see objectsQuery) that before does not hold: the
// schemas among dropSchemas that were created, and the other objects
// outside them. It returns how many objects it dropped.
func dropCreated(ctx context.Context, url string, before objectSet, schemas, dropSchemas []string) (int, error) {
	conn, err := connect(ctx, url)
	if err != nil {
		return 0, err
	}
	defer closeConn(conn)
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		return 0, fmt.Errorf("postgres: BEGIN: %w", err)
	}
	after, err := listObjects(ctx, conn, schemas)
	if err != nil {
		return 0, err
	}
	var classes, oids []uint32
	for k := range after {
		if _, ok := before[k]; !ok {
			classes, oids = append(classes, k.class), append(oids, k.oid)
		}
	}
	rows, err := conn.Query(ctx, `SELECT x.c, x.o, i.type, i.identity,
			x.c = 'pg_namespace'::regclass AND (SELECT nspname FROM pg_namespace WHERE oid = x.o) = ANY($3)
		FROM unnest($1::oid[], $2::oid[]) AS x(c, o), LATERAL pg_identify_object(x.c, x.o, 0) AS i
		WHERE i.identity IS NOT NULL`, classes, oids, dropSchemas)
	if err != nil {
		return 0, fmt.Errorf("postgres: describe the restored objects: %w", err)
	}
	type object struct {
		key           objectKey
		typ, identity string
		droppedSchema bool
		rank          int
	}
	var objs []object
	var o object
	_, err = pgx.ForEachRow(rows, []any{&o.key.class, &o.key.oid, &o.typ, &o.identity, &o.droppedSchema}, func() error {
		objs = append(objs, o)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("postgres: describe the restored objects: %w", err)
	}
	// The schemas the restore created go with all they hold; other
	// schemas that appeared meanwhile are not the restore's.
	dropped := map[uint32]bool{}
	for _, o := range objs {
		if o.droppedSchema {
			dropped[o.key.oid] = true
		}
	}
	var stmts []string
	slices.SortFunc(objs, func(a, b object) int {
		return cmp.Or(cmp.Compare(dropRank(a.typ), dropRank(b.typ)), cmp.Compare(a.identity, b.identity))
	})
	for _, o := range objs {
		if o.typ == "schema" && !o.droppedSchema || dropped[after[o.key]] {
			continue
		}
		kw, ok := dropKeyword(o.typ)
		if !ok {
			return 0, fmt.Errorf("postgres: cannot drop %s %s", o.typ, o.identity)
		}
		stmts = append(stmts, "DROP "+kw+" IF EXISTS "+o.identity+" CASCADE")
	}
	for _, q := range stmts {
		if _, err := conn.Exec(ctx, q); err != nil {
			return 0, fmt.Errorf("postgres: %s: %w", q, err)
		}
	}
	if err := commit(ctx, conn); err != nil {
		return 0, fmt.Errorf("postgres: %w", err)
	}
	return len(stmts), nil
}

// dropRank orders the drops: schemas, relations, then the rest, the
// extensions last.
func dropRank(typ string) int {
	switch typ {
	case "schema":
		return 0
	case "table", "view", "materialized view", "foreign table", "sequence":
		return 1
	case "extension":
		return 3
	}
	return 2
}

// dropKeyword returns the DROP statement's keyword for an object type as
// pg_identify_object names it.
func dropKeyword(typ string) (string, bool) {
	switch typ {
	case "schema", "table", "view", "materialized view", "sequence", "foreign table", "index", "type",
		"function", "procedure", "aggregate", "collation", "conversion", "operator", "operator class",
		"operator family", "text search configuration", "text search dictionary", "text search parser",
		"text search template", "extension", "cast", "language", "server", "event trigger", "publication":
		return strings.ToUpper(typ), true
	case "composite type", "domain":
		return "TYPE", true
	case "statistics object":
		return "STATISTICS", true
	case "foreign-data wrapper":
		return "FOREIGN DATA WRAPPER", true
	}
	return "", false
}
