package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/stackport/stackport/snapshot"
	mongosnap "github.com/stackport/stackport/snapshot/mongo"
	"github.com/stackport/stackport/snapshot/postgres"
	"github.com/stackport/stackport/snapshot/redis"
	"github.com/stackport/stackport/snapshot/volume"
)

// A resumption is what Run does with one pair of a journaled migration.
type resumption struct {
	// skip: the target holds the whole component, moved by an earlier
	// run; nothing is moved (with a Tee, the source is still read into
	// the snapshot, and nothing is written to the target).
	skip bool
	// units are the parts left out of the move.
	units []string
	notes []string
	// own: the target is the migration's from this run on (it was empty,
	// or the operator asked to replace its content), recorded as
	// ComponentState.Writing before anything is moved.
	own bool
}

func (r *resumption) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

// prepare returns the pair to move for a journaled migration: with the
// hooks that record its progress, and, when an earlier run left a state,
// without what that run finished (after a check) and with what it left
// half done removed from the target.
//
// Run knows the components of this module by their Dumpers and
// Restorers: volume and PostgreSQL move whole or not at all (their
// restores are atomic), MongoDB collection by collection, Redis database
// by database. Other pairs move again in full.
func prepare(ctx context.Context, p Pair, j *Journal, tee bool) (Pair, resumption, error) {
	cs := j.component(p.Kind)
	switch r := p.Restorer.(type) {
	case *volume.Restorer:
		if d, ok := p.Dumper.(*volume.Dumper); ok {
			return prepareVolume(ctx, p, d, r, cs, j.Resumed())
		}
	case *postgres.Restorer:
		if d, ok := p.Dumper.(*postgres.Dumper); ok && j.Resumed() {
			return preparePostgres(ctx, p, d, r, cs)
		}
	case *mongosnap.Restorer:
		if d, ok := p.Dumper.(*mongosnap.Dumper); ok {
			return prepareMongo(ctx, p, d, r, j, cs, tee)
		}
	case *redis.Restorer:
		if d, ok := p.Dumper.(*redis.Dumper); ok {
			return prepareRedis(ctx, p, d, r, j, cs, tee)
		}
	}
	var res resumption
	if j.Resumed() && cs.Moved && !cs.Differs {
		res.note("moved by an earlier run, but this kind cannot be checked without moving it: moving it again")
	}
	return p, res, nil
}

// prepareVolume skips a volume whose target matches the source by names,
// types and sizes (the move is atomic: the target holds the whole tree or
// what it held before), after removing what an interrupted run may have
// left in the target: its staging folder, and the folder a replace
// (Force) moves the old content into, when the target is the migration's
// or is replaced anyway. A target the migration wrote that no longer
// matches is replaced (Force). A target that is missing or empty (or
// replaced with Force) is the migration's from this run on.
func prepareVolume(ctx context.Context, p Pair, d *volume.Dumper, r *volume.Restorer, cs ComponentState, resumed bool) (Pair, resumption, error) {
	var res resumption
	entries, err := os.ReadDir(r.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		res.own = true
		return p, res, nil
	}
	if err != nil {
		return p, res, fmt.Errorf("volume: %w", err)
	}
	n := 0
	for _, e := range entries {
		name := e.Name()
		switch {
		case !isLeftover(name):
			n++
			continue
		case !resumed && !r.Force:
			n++ // not this migration's: the restore refuses the target
			continue
		case strings.HasPrefix(name, trashPrefix) && !cs.Writing && !r.Force:
			n++ // the old content of a replace the migration did not ask for
			continue
		}
		if err := removeAll(filepath.Join(r.Dir, name)); err != nil {
			return p, res, fmt.Errorf("volume: remove %s, left by an interrupted run: %w", name, err)
		}
		if strings.HasPrefix(name, trashPrefix) {
			res.note("removed %s, the replaced content the interrupted run had not removed yet", name)
		} else {
			res.note("removed %s, the staging folder of the interrupted run", name)
		}
	}
	res.own = n == 0 || r.Force || cs.Writing
	force := func(format string, args ...any) {
		res.note(format, args...)
		rr := *r
		rr.Force = true
		p.Restorer = &rr
	}
	switch {
	case n == 0 || !resumed:
		return p, res, nil
	case cs.Differs && cs.Writing:
		force("the earlier run's check found the target different from the source: moving it again, replacing the target's content")
		return p, res, nil
	}
	v := Volume{Source: d.Dir, Target: r.Dir, Exclude: d.Exclude, SkipUnreadable: d.SkipUnreadable}
	q, err := v.quick(ctx)
	switch {
	case err != nil:
		return p, res, err
	case q.diff == "" && cs.Moved:
		res.skip, res.units = true, []string{"volume"}
		res.note("moved by an earlier run: the target's %d entries (%s) match the source by name, type and size: skipped", q.entries, snapshot.HumanBytes(q.bytes))
	case q.diff == "":
		res.skip, res.units = true, []string{"volume"}
		res.note("the target's %d entries (%s) match the source by name, type and size (the earlier run moved them, but stopped before recording it): skipped", q.entries, snapshot.HumanBytes(q.bytes))
	case cs.Moved:
		force("the target moved by an earlier run no longer matches the source (%s): moving it again, replacing the target's content", q.diff)
	case cs.Writing:
		force("the target, this migration's since an earlier run that did not finish it, does not match the source (%s): moving it again, replacing the target's content", q.diff)
	}
	return p, res, nil
}

// removeAll removes path; read-only directories in it (as restored from an
// archive) are made writable first when that is what stops it.
func removeAll(path string) error {
	err := os.RemoveAll(path)
	if !errors.Is(err, fs.ErrPermission) {
		return err
	}
	filepath.WalkDir(path, func(p string, de fs.DirEntry, err error) error {
		if err == nil && de.IsDir() {
			os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(path)
}

// stagingPrefix and trashPrefix start the names of the folders
// volume.Restorer makes inside its target: the staging folder the archive
// is unpacked into, and the folder a replace (Force) moves the old content
// into before removing it.
const (
	stagingPrefix = ".stackport-restore-"
	trashPrefix   = ".stackport-trash-"
)

// isLeftover reports whether name, at the top of a volume target, is a
// folder volume.Restorer makes and removes (left by an interrupted one).
func isLeftover(name string) bool {
	return strings.HasPrefix(name, stagingPrefix) || strings.HasPrefix(name, trashPrefix)
}

// quickTree is what Volume.quick found.
type quickTree struct {
	entries int
	bytes   int64
	diff    string // the first difference, "" when none
}

// quickEntry is what Volume.quick compares of an entry.
type quickEntry struct {
	typ  fs.FileMode
	size int64
}

// quick compares the target with the source by names, types and sizes of
// regular files, without reading any content: the check of a volume moved
// by an earlier run. The source is seen as by Check.
func (c Volume) quick(ctx context.Context) (quickTree, error) {
	var q quickTree
	src, err := filepath.EvalSymlinks(c.Source)
	if err != nil {
		return q, fmt.Errorf("volume: %w", err)
	}
	want := map[string]quickEntry{}
	err = filepath.WalkDir(src, func(p string, de fs.DirEntry, err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		rel, _ := filepath.Rel(src, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return err
		}
		if c.excluded(rel) {
			return skip(de)
		}
		var fi fs.FileInfo
		if err == nil {
			fi, err = de.Info()
		}
		switch {
		case err != nil && c.SkipUnreadable:
			return skip(de)
		case err != nil:
			return fmt.Errorf("volume: source: %w", err)
		case !fi.Mode().IsRegular() && fi.Mode()&(fs.ModeSymlink|fs.ModeDir) == 0:
			return nil
		}
		e := quickEntry{typ: fi.Mode().Type()}
		if fi.Mode().IsRegular() {
			e.size = fi.Size()
		}
		want[rel] = e
		return nil
	})
	if err != nil {
		return q, err
	}
	err = filepath.WalkDir(c.Target, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("volume: target: %w", err)
		}
		rel, _ := filepath.Rel(c.Target, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		w, ok := want[rel]
		if !ok {
			q.diff = rel + " is only in the target"
			return filepath.SkipAll
		}
		delete(want, rel)
		fi, err := de.Info()
		if err != nil {
			return fmt.Errorf("volume: target: %w", err)
		}
		switch {
		case fi.Mode().Type() != w.typ:
			q.diff = rel + " is of another type"
			return filepath.SkipAll
		case fi.Mode().IsRegular() && fi.Size() != w.size:
			q.diff = fmt.Sprintf("%s has %d bytes, the source %d", rel, fi.Size(), w.size)
			return filepath.SkipAll
		}
		q.entries++
		q.bytes += w.size
		return nil
	})
	if err != nil || q.diff != "" {
		return q, err
	}
	if len(want) > 0 {
		q.diff = fmt.Sprintf("%d entries are missing in the target, such as %s", len(want), slices.Min(slices.Collect(maps.Keys(want))))
	}
	return q, nil
}

// preparePostgres skips a database whose target tables hold as many rows
// as the source's (the restore is one transaction: the target holds
// everything or what it held before). A target the migration wrote that
// no longer matches is replaced (Clean).
func preparePostgres(ctx context.Context, p Pair, d *postgres.Dumper, r *postgres.Restorer, cs ComponentState) (Pair, resumption, error) {
	var res resumption
	clean := func(format string, args ...any) {
		res.note(format, args...)
		rr := *r
		rr.Clean = true
		p.Restorer = &rr
	}
	if cs.Differs && cs.Writing {
		clean("the earlier run's check found the target different from the source: moving it again, replacing its schemas")
		return p, res, nil
	}
	got, err := rowCounts(ctx, r.URL, d.Schemas)
	if err != nil {
		return p, res, fmt.Errorf("target: %w", err)
	}
	if len(got) == 0 {
		return p, res, nil
	}
	want, err := rowCounts(ctx, d.URL, d.Schemas)
	if err != nil {
		return p, res, fmt.Errorf("source: %w", err)
	}
	diff, rows := "", int64(0)
	for _, t := range slices.Sorted(maps.Keys(want)) {
		g, ok := got[t]
		switch {
		case !ok:
			diff = t + " is missing in the target"
		case g != want[t]:
			diff = fmt.Sprintf("%s has %d rows, the source %d", t, g, want[t])
		}
		if diff != "" {
			break
		}
		rows += g
	}
	if diff == "" && len(got) > len(want) {
		diff = "the target has more tables"
	}
	switch {
	case diff == "" && cs.Moved:
		res.skip, res.units = true, []string{"database"}
		res.note("moved by an earlier run: the target's %d tables hold as many rows as the source's (%d): skipped", len(got), rows)
	case diff == "":
		res.skip, res.units = true, []string{"database"}
		res.note("the target's %d tables hold as many rows as the source's (%d; the earlier run moved them, but stopped before recording it): skipped", len(got), rows)
	case cs.Writing:
		clean("the target moved by an earlier run no longer matches the source (%s): moving it again, replacing its schemas", diff)
	}
	return p, res, nil
}

// rowCounts returns the number of rows of every table in the schemas (all
// but information_schema and pg_* when empty) of the database at url, by
// "schema"."table".
func rowCounts(ctx context.Context, url string, schemas []string) (map[string]int64, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if schemas == nil {
		schemas = []string{} // not NULL
	}
	rows, err := conn.Query(ctx, `SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'r' AND (n.nspname = ANY($1) OR cardinality($1::text[]) = 0
			AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%')`, schemas)
	if err != nil {
		return nil, fmt.Errorf("postgres: list tables: %w", err)
	}
	tables, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (pgx.Identifier, error) {
		var id pgx.Identifier = make([]string, 2)
		err := row.Scan(&id[0], &id[1])
		return id, err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: list tables: %w", err)
	}
	counts := make(map[string]int64, len(tables))
	for _, t := range tables {
		var n int64
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+t.Sanitize()).Scan(&n); err != nil {
			return nil, fmt.Errorf("postgres: count the rows of %s: %w", t.Sanitize(), err)
		}
		counts[t.Sanitize()] = n
	}
	return counts, nil
}

// prepareMongo adds the hooks that record the progress of a MongoDB move:
// the restorer's checks passed (the target's collections of the migration
// are its own from then on), and each collection loaded. When an earlier
// run wrote to the target, the collections it loaded are skipped if the
// source and the target hold as many documents as it loaded, and every
// other collection and view of the migration is dropped from the target,
// to be loaded again: nothing is duplicated.
func prepareMongo(ctx context.Context, p Pair, d *mongosnap.Dumper, r *mongosnap.Restorer, j *Journal, cs ComponentState, tee bool) (Pair, resumption, error) {
	var res resumption
	rr := *r
	starting, loaded := r.Starting, r.Loaded
	rr.Starting = func(ctx context.Context) error {
		if starting != nil {
			if err := starting(ctx); err != nil {
				return err
			}
		}
		return j.updateComponent(ctx, p.Kind, func(c *ComponentState) { c.Writing = true })
	}
	rr.Loaded = func(db, coll string, docs int64) {
		if loaded != nil {
			loaded(db, coll, docs)
		}
		j.unit(ctx, p.Kind, db+"."+coll, docs)
	}
	p.Restorer = &rr
	if !j.Resumed() || !cs.Writing {
		return p, res, nil
	}

	m := Mongo{Source: d.URI, SourceTLSCAFile: d.TLSCAFile, Target: r.URI, TargetTLSCAFile: r.TLSCAFile, DBs: d.DBs, NSFrom: r.NSFrom, NSTo: r.NSTo}
	src, err := mongosnap.Connect(ctx, m.Source, m.SourceTLSCAFile)
	if err != nil {
		return p, res, fmt.Errorf("source: %w", err)
	}
	defer mongosnap.Disconnect(ctx, src)
	dst, err := mongosnap.Connect(ctx, m.Target, m.TargetTLSCAFile)
	if err != nil {
		return p, res, fmt.Errorf("target: %w", err)
	}
	defer mongosnap.Disconnect(ctx, dst)
	dbs, err := m.databases(ctx, src)
	if err != nil {
		return p, res, err
	}

	type drop struct{ db, name string }
	var drops, views []drop
	var forget []string // units to load again
	skipped := map[string]bool{}
	var colls, docs int64
	for _, db := range dbs {
		specs, err := src.Database(db).ListCollectionSpecifications(ctx, bson.D{})
		if err != nil {
			return p, res, fmt.Errorf("mongo: source: list collections of %s: %w", db, err)
		}
		tdb := m.targetDB(db)
		tspecs, err := dst.Database(tdb).ListCollectionSpecifications(ctx, bson.D{})
		if err != nil {
			return p, res, fmt.Errorf("mongo: target: list collections of %s: %w", tdb, err)
		}
		inTarget := map[string]bool{}
		for _, s := range tspecs {
			inTarget[s.Name] = true
		}
		for _, s := range specs {
			if strings.HasPrefix(s.Name, "system.") {
				continue
			}
			unit, tns := db+"."+s.Name, tdb+"."+s.Name
			if s.Type == "view" {
				if inTarget[s.Name] {
					views = append(views, drop{tdb, s.Name})
				}
				continue
			}
			colls++
			n, finished := cs.Units[unit]
			why := ""
			switch {
			case !finished && inTarget[s.Name]:
				why = "partly loaded by the interrupted run"
			case !finished:
				continue // to be loaded
			case cs.Differs:
				why = "the earlier run's check found differences"
			case !inTarget[s.Name]:
				why = "loaded by an earlier run, but missing in the target"
			default:
				have, err := dst.Database(tdb).Collection(s.Name).CountDocuments(ctx, bson.D{})
				if err != nil {
					return p, res, fmt.Errorf("mongo: target: count %s: %w", tns, err)
				}
				want, err := src.Database(db).Collection(s.Name).CountDocuments(ctx, bson.D{})
				if err != nil {
					return p, res, fmt.Errorf("mongo: source: count %s: %w", unit, err)
				}
				switch {
				case have != n:
					why = fmt.Sprintf("loaded by an earlier run, but the target holds %d documents, it loaded %d", have, n)
				case want != n:
					why = fmt.Sprintf("loaded by an earlier run, but the source holds %d documents now, it loaded %d", want, n)
				}
			}
			if why == "" {
				skipped[unit] = true
				docs += n
				continue
			}
			forget = append(forget, unit)
			if !inTarget[s.Name] {
				res.note("%s: %s: loaded again", tns, why)
				continue
			}
			left, err := dst.Database(tdb).Collection(s.Name).CountDocuments(ctx, bson.D{})
			if err != nil {
				return p, res, fmt.Errorf("mongo: target: count %s: %w", tns, err)
			}
			drops = append(drops, drop{tdb, s.Name})
			res.note("%s: %s: dropped (%d documents), loaded again", tns, why, left)
		}
	}
	res.units = slices.Sorted(maps.Keys(skipped))
	if cs.Moved && len(forget) == 0 && int64(len(skipped)) == colls {
		res.skip = true
		res.note("moved by an earlier run: its %d collections hold as many documents as it loaded (%d), in the source and the target: skipped", colls, docs)
		return p, res, nil
	}
	// The views are created again after the collections.
	for _, dr := range append(drops, views...) {
		if err := dst.Database(dr.db).Collection(dr.name).Drop(ctx); err != nil {
			return p, res, fmt.Errorf("mongo: target: drop %s.%s: %w", dr.db, dr.name, err)
		}
	}
	err = j.updateComponent(ctx, p.Kind, func(c *ComponentState) {
		for _, u := range forget {
			delete(c.Units, u)
		}
	})
	if err != nil {
		return p, res, err
	}
	if len(skipped) > 0 {
		res.note("%d of %d collections (%d documents) loaded by an earlier run, with as many documents in the source and the target: skipped", len(skipped), colls, docs)
	}
	rr.Skip = func(db, coll string) bool { return skipped[db+"."+coll] }
	if !tee {
		// The same Dumper, not a copy: its Position serves the check.
		d.SkipData = rr.Skip
	}
	return p, res, nil
}

// prepareRedis adds the hooks that record the progress of a Redis move:
// each database begun and each database written completely. When an
// earlier run wrote to the target, the databases it wrote completely are
// skipped if the target holds at least as many keys as the source (give
// or take keys with an expiry, which RESTORE … ABSTTL gives the same
// expiry time in both), the others it began are written again with their
// keys replacing those it wrote, and nothing is duplicated. When the
// earlier run stopped at a key of the target's own, its keys are not
// replaced unless the restorer replaces or flushes anyway.
func prepareRedis(ctx context.Context, p Pair, d *redis.Dumper, r *redis.Restorer, j *Journal, cs ComponentState, tee bool) (Pair, resumption, error) {
	var res resumption
	rr := *r
	starting, loaded := r.Starting, r.Loaded
	rr.Starting = func(ctx context.Context, db int) error {
		if starting != nil {
			if err := starting(ctx, db); err != nil {
				return err
			}
		}
		return j.updateComponent(ctx, p.Kind, func(c *ComponentState) {
			c.Writing = true
			if u := redisUnit(db); !slices.Contains(c.Begun, u) {
				c.Begun = append(c.Begun, u)
			}
		})
	}
	rr.Loaded = func(db int, keys int64) {
		if loaded != nil {
			loaded(db, keys)
		}
		j.unit(ctx, p.Kind, redisUnit(db), keys)
	}
	p.Restorer = &rr
	if !j.Resumed() || !cs.Writing {
		return p, res, nil
	}
	src, err := redis.Keyspace(ctx, d.URL, d.TLSCAFile)
	if err != nil {
		return p, res, fmt.Errorf("source: %w", err)
	}
	dst, err := redis.Keyspace(ctx, r.URL, r.TLSCAFile)
	if err != nil {
		return p, res, fmt.Errorf("target: %w", err)
	}
	skipped, replace := map[int]bool{}, map[int]bool{}
	var forget []string
	var keys int64
	for _, db := range slices.Sorted(maps.Keys(src)) {
		unit, tdb := redisUnit(db), db
		if m, ok := r.DBMap[db]; ok {
			tdb = m
		}
		want, got := src[db], dst[tdb]
		n, finished := cs.Units[unit]
		switch {
		case finished && got.Keys+max(want.Expires, got.Expires) >= want.Keys:
			skipped[db] = true
			keys += got.Keys
		case finished:
			res.note("database %d: written by an earlier run, but the target's database %d holds %d keys, the source's %d (the run wrote %d): written again, its keys replacing those in the target",
				db, tdb, got.Keys, want.Keys, n)
			replace[db] = true
			forget = append(forget, unit)
		case !slices.Contains(cs.Begun, unit):
		case cs.Refused && !r.Replace && !r.Flush:
			res.note("database %d: partly written by the interrupted run, which stopped at a key of the target's own: its keys are not replaced (give --redis-replace or --redis-flush)", db)
		default:
			res.note("database %d: partly written by the interrupted run (the target's database %d holds %d keys): written again, its keys replacing those the run wrote", db, tdb, got.Keys)
			replace[db] = true
		}
	}
	res.units = nil
	for _, db := range slices.Sorted(maps.Keys(skipped)) {
		res.units = append(res.units, redisUnit(db))
	}
	if cs.Moved && len(skipped) == len(src) {
		res.skip = true
		res.note("moved by an earlier run: the target holds the %d keys of its %d databases: skipped", keys, len(src))
		return p, res, nil
	}
	if len(forget) > 0 {
		err := j.updateComponent(ctx, p.Kind, func(c *ComponentState) {
			for _, u := range forget {
				delete(c.Units, u)
			}
		})
		if err != nil {
			return p, res, err
		}
	}
	if len(skipped) > 0 {
		res.note("%d of %d databases (%d keys) written by an earlier run, the target holding as many keys as the source: skipped", len(skipped), len(src), keys)
	}
	rr.Skip = func(db int) bool { return skipped[db] }
	rr.ReplaceDB = func(db int) bool { return replace[db] }
	if !tee {
		dd := *d
		dd.SkipDB = rr.Skip
		p.Dumper = &dd
	}
	return p, res, nil
}

// redisUnit names database db of a Redis component in a State.
func redisUnit(db int) string { return fmt.Sprintf("db%d", db) }

// drain is the Restorer of a component skipped while a Tee keeps a
// snapshot: it reads every stream and writes nothing.
type drain struct{}

func (drain) Restore(ctx context.Context, in snapshot.StreamReader) (snapshot.Stats, error) {
	for {
		_, rc, err := in.Next()
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return nil, err
		}
	}
}
