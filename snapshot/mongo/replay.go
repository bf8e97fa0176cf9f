package mongo

// The replay of a captured oplog as ordinary writes.
//
// mongorestore --oplogReplay applies each entry with applyOps, which neither
// DocumentDB nor FerretDB has. A Restorer instead translates every operation
// into the ordinary write or command it describes, in a form that MongoDB,
// Atlas, DocumentDB and FerretDB all accept (update operators, never an
// aggregation-pipeline update, which DocumentDB refuses), and idempotent, so
// that an operation whose effect the dumped data already holds does no harm:
//
//	insert  → replace the document by _id, inserting it if it is missing
//	update  → the update it describes: $v 1 ($set/$unset; a $set that holds
//	          _id is FerretDB's whole new document, so a replacement), $v 2
//	          (the diff format: u, i, d, nested s<field>, arrays with a, u<n>,
//	          s<n>, l) as $set/$unset of dotted paths, and a shortened array
//	          as $push with an empty $each and $slice; the legacy form (a
//	          whole document) as a replacement
//	delete  → delete by _id
//	command → the matching command, through the compatibility rules of the
//	          restore's own metadata (oplogCommands lists every command)
//
// Indexes and views are built after the replay (what the oplog creates,
// drops or renames changes that plan), so a unique index never sees the
// transient states of a replay from a fuzzy dump.

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// errUnreplayable is wrapped by the error for an oplog entry that ordinary
// writes cannot express (a command that changes data in a way no write
// describes, an update of a field whose name no path can address).
var errUnreplayable = errors.New("cannot be replayed as ordinary writes")

// A commandRule says what a replay does with an oplog command.
type commandRule int

const (
	cmdApply  commandRule = iota // translated into the matching command
	cmdNoData                    // skipped with a warning: it changes no data
)

// oplogCommands is the table of oplog commands (the first key of a "c"
// entry's o). A command not listed is refused: the restore stops before
// writing anything when it can read the oplog first, and names it.
var oplogCommands = map[string]commandRule{
	"create":           cmdApply,
	"drop":             cmdApply,
	"renameCollection": cmdApply,
	"createIndexes":    cmdApply,
	"commitIndexBuild": cmdApply, // two-phase index builds (4.4+) log the specs here
	"dropIndexes":      cmdApply,
	"deleteIndexes":    cmdApply, // the old name of dropIndexes
	"collMod":          cmdApply,
	"dropDatabase":     cmdApply,
	// Internal entries that change no data.
	"startIndexBuild":      cmdNoData, // the index comes with commitIndexBuild
	"abortIndexBuild":      cmdNoData, // an index build that never committed
	"dropIdent":            cmdNoData, // storage-engine bookkeeping
	"setIndexCommitQuorum": cmdNoData,
	"createDatabase":       cmdNoData, // databases are created by their first collection
	// Refused (not listed): convertToCapped, emptycapped,
	// cloneCollectionAsCapped, importCollection, applyOps outside a
	// transaction, and anything unknown.
}

// Operation kinds of a replayOp.
const (
	opInsert  = "insert"
	opUpdate  = "update"
	opDelete  = "delete"
	opCommand = "command"
)

// A replayOp is what one oplog operation translates to: one or more writes
// of one collection (models), or a command (name and o), or nothing (skip
// says why).
type replayOp struct {
	off    int64     // byte offset of its entry in oplog.bson
	kind   string    // opInsert, opUpdate, opDelete or opCommand
	ns     namespace // the target namespace written or named by the command (coll "" for dropDatabase)
	models []mongo.WriteModel
	size   int      // bytes of the operation, for batching
	name   string   // the command's name
	o      bson.Raw // the command's document
	skip   string   // why the operation is skipped, when it is
	slices bool     // an update that shortens an array ($push with $slice)
}

// describe names the operation for messages: "update of appsmith.page".
func (op replayOp) describe() string {
	what := op.kind
	if op.kind == opCommand {
		what = "command " + op.name
	}
	if op.ns.coll == "" {
		return what + " on database " + op.ns.db
	}
	return what + " of " + op.ns.String()
}

// translate returns what replaying op does: op is one operation of
// replayOps (renamed, without ui). The error wraps errUnreplayable when
// ordinary writes cannot express it, snapshot.ErrCorrupt when it is
// malformed.
func translate(op bson.Raw) (replayOp, error) {
	kind, _ := op.Lookup("op").StringValueOK()
	ns, _ := op.Lookup("ns").StringValueOK()
	db, coll, _ := strings.Cut(ns, ".")
	r := replayOp{ns: namespace{db, coll}, size: len(op)}
	o, ok := op.Lookup("o").DocumentOK()
	if !ok {
		return r, fmt.Errorf("%s entry on %s without a document o", kind, ns)
	}
	if kind == "c" {
		return translateCommand(r, o)
	}
	if strings.HasPrefix(coll, "system.") && !strings.HasPrefix(coll, "system.buckets.") {
		// System collections are never dumped nor restored; views come
		// with their create, collMod and drop commands.
		r.kind, r.skip = opCommand, "a write to a system collection"
		return r, nil
	}
	switch kind {
	case "i":
		r.kind = opInsert
		id := o.Lookup("_id")
		if id.Type == 0 {
			r.models = []mongo.WriteModel{mongo.NewInsertOneModel().SetDocument(o)}
			return r, nil
		}
		r.models = []mongo.WriteModel{mongo.NewReplaceOneModel().
			SetFilter(bson.D{{Key: "_id", Value: id}}).SetReplacement(o).SetUpsert(true)}
		return r, nil
	case "d":
		r.kind = opDelete
		if o.Lookup("_id").Type == 0 {
			return r, fmt.Errorf("delete entry on %s without _id", ns)
		}
		r.models = []mongo.WriteModel{mongo.NewDeleteOneModel().SetFilter(o)}
		return r, nil
	case "u":
		r.kind = opUpdate
		filter, ok := op.Lookup("o2").DocumentOK()
		if !ok || filter.Lookup("_id").Type == 0 {
			return r, fmt.Errorf("update entry on %s without o2._id", ns)
		}
		models, slices, err := updateModels(filter, o)
		if err != nil {
			return r, fmt.Errorf("update of %s: %w", ns, err)
		}
		r.models, r.slices = models, slices
		return r, nil
	}
	return r, fmt.Errorf("oplog entry with unknown op %q", kind)
}

// updateModels translates the o of an update entry into writes of the
// document filter names; slices reports a shortened array.
func updateModels(filter, o bson.Raw) (models []mongo.WriteModel, slices bool, err error) {
	elems, err := o.Elements()
	if err != nil {
		return nil, false, err
	}
	if len(elems) == 0 || !strings.HasPrefix(elems[0].Key(), "$") {
		// The legacy form: the whole new document.
		return []mongo.WriteModel{mongo.NewReplaceOneModel().SetFilter(filter).SetReplacement(o)}, false, nil
	}
	u := &update{}
	version := int32(1)
	if v := o.Lookup("$v"); v.Type != 0 {
		n, ok := v.AsInt64OK()
		if !ok {
			return nil, false, fmt.Errorf("$v is a %s", v.Type)
		}
		version = int32(n)
	}
	switch version {
	case 1:
		for _, e := range elems {
			switch e.Key() {
			case "$v":
			case "$set", "$unset":
				doc, ok := e.Value().DocumentOK()
				if !ok {
					return nil, false, fmt.Errorf("%s is a %s", e.Key(), e.Value().Type)
				}
				fields, err := doc.Elements()
				if err != nil {
					return nil, false, err
				}
				for _, f := range fields {
					if e.Key() == "$set" {
						u.set = append(u.set, bson.E{Key: f.Key(), Value: f.Value()})
					} else {
						u.unset = append(u.unset, bson.E{Key: f.Key(), Value: ""})
					}
				}
			default:
				return nil, false, fmt.Errorf("update operator %s in an oplog entry: %w", e.Key(), errUnreplayable)
			}
		}
		if set, ok := o.Lookup("$set").DocumentOK(); ok && len(u.unset) == 0 && set.Lookup("_id").Type != 0 {
			// FerretDB records an update as $set of the whole new
			// document, _id included (MongoDB never sets _id, which
			// cannot change): a replacement, so that removed fields go.
			return []mongo.WriteModel{mongo.NewReplaceOneModel().SetFilter(filter).SetReplacement(set)}, false, nil
		}
	case 2:
		diff, ok := o.Lookup("diff").DocumentOK()
		if !ok {
			return nil, false, errors.New("$v 2 update without a diff document")
		}
		if err := u.docDiff("", diff); err != nil {
			return nil, false, err
		}
	default:
		return nil, false, fmt.Errorf("update format $v %d: %w", version, errUnreplayable)
	}
	return u.models(filter), len(u.truncate) > 0, nil
}

// An update collects the update operators of one update entry.
type update struct {
	set, unset bson.D
	truncate   []bson.E // path → new length, for shortened arrays
}

// models returns the writes of u: one update with $set and $unset, then
// one per shortened array (an array diff sets elements below its new
// length only, so the order does not change the result).
func (u *update) models(filter bson.Raw) []mongo.WriteModel {
	var out []mongo.WriteModel
	if len(u.set)+len(u.unset) > 0 {
		var ops bson.D
		if len(u.set) > 0 {
			ops = append(ops, bson.E{Key: "$set", Value: u.set})
		}
		if len(u.unset) > 0 {
			ops = append(ops, bson.E{Key: "$unset", Value: u.unset})
		}
		out = append(out, mongo.NewUpdateOneModel().SetFilter(filter).SetUpdate(ops))
	}
	for _, t := range u.truncate {
		out = append(out, mongo.NewUpdateOneModel().SetFilter(filter).SetUpdate(bson.D{{Key: "$push", Value: bson.D{{Key: t.Key,
			Value: bson.D{{Key: "$each", Value: bson.A{}}, {Key: "$slice", Value: t.Value}}}}}}))
	}
	return out
}

// fieldPath joins a prefix and a field name into a dotted path. A name that a
// path cannot address (with a dot, starting with $, empty) is refused.
func fieldPath(prefix, name string) (string, error) {
	if name == "" || strings.Contains(name, ".") || strings.HasPrefix(name, "$") {
		return "", fmt.Errorf("the field name %q cannot be addressed by an update path: %w", name, errUnreplayable)
	}
	if prefix == "" {
		return name, nil
	}
	return prefix + "." + name, nil
}

// docDiff adds the operators of a $v 2 document diff at prefix: d (fields
// deleted), u (updated), i (inserted), s<field> (a sub-diff).
func (u *update) docDiff(prefix string, diff bson.Raw) error {
	elems, err := diff.Elements()
	if err != nil {
		return err
	}
	for _, e := range elems {
		key := e.Key()
		switch {
		case key == "d" || key == "u" || key == "i":
			doc, ok := e.Value().DocumentOK()
			if !ok {
				return fmt.Errorf("diff %q is a %s", key, e.Value().Type)
			}
			fields, err := doc.Elements()
			if err != nil {
				return err
			}
			for _, f := range fields {
				p, err := fieldPath(prefix, f.Key())
				if err != nil {
					return err
				}
				if key == "d" {
					u.unset = append(u.unset, bson.E{Key: p, Value: ""})
				} else {
					u.set = append(u.set, bson.E{Key: p, Value: f.Value()})
				}
			}
		case strings.HasPrefix(key, "s") && len(key) > 1:
			sub, ok := e.Value().DocumentOK()
			if !ok {
				return fmt.Errorf("diff %q is a %s", key, e.Value().Type)
			}
			p, err := fieldPath(prefix, key[1:])
			if err != nil {
				return err
			}
			if err := u.subDiff(p, sub); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown diff field %q: %w", key, errUnreplayable)
		}
	}
	return nil
}

// subDiff adds a sub-diff at p: an array diff (a: true) or a document diff.
func (u *update) subDiff(p string, sub bson.Raw) error {
	if isArray, _ := sub.Lookup("a").BooleanOK(); isArray {
		return u.arrayDiff(p, sub)
	}
	return u.docDiff(p, sub)
}

// arrayDiff adds the operators of a $v 2 array diff at p: l (the new
// length), u<n> (element n set), s<n> (a sub-diff of element n).
func (u *update) arrayDiff(p string, diff bson.Raw) error {
	elems, err := diff.Elements()
	if err != nil {
		return err
	}
	for _, e := range elems {
		key := e.Key()
		switch {
		case key == "a":
		case key == "l":
			n, ok := e.Value().AsInt64OK()
			if !ok || n < 0 {
				return fmt.Errorf("array diff length %v", e.Value())
			}
			u.truncate = append(u.truncate, bson.E{Key: p, Value: n})
		case len(key) > 1 && (key[0] == 'u' || key[0] == 's'):
			idx, err := strconv.ParseUint(key[1:], 10, 31)
			if err != nil {
				return fmt.Errorf("array diff field %q", key)
			}
			ep := p + "." + strconv.FormatUint(idx, 10)
			if key[0] == 'u' {
				u.set = append(u.set, bson.E{Key: ep, Value: e.Value()})
				continue
			}
			sub, ok := e.Value().DocumentOK()
			if !ok {
				return fmt.Errorf("array diff %q is a %s", key, e.Value().Type)
			}
			if err := u.subDiff(ep, sub); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown array diff field %q: %w", key, errUnreplayable)
		}
	}
	return nil
}

// translateCommand translates a command entry (o is its document).
func translateCommand(r replayOp, o bson.Raw) (replayOp, error) {
	r.kind, r.o = opCommand, o
	elems, err := o.Elements()
	if err != nil || len(elems) == 0 {
		return r, errors.New("command entry with an empty o")
	}
	r.name = elems[0].Key()
	r.ns.coll = ""
	if s, ok := elems[0].Value().StringValueOK(); ok {
		r.ns.coll = s
	}
	if r.name == "renameCollection" {
		// Its value is the whole source namespace.
		_, r.ns.coll, _ = strings.Cut(r.ns.coll, ".")
	}
	rule, ok := oplogCommands[r.name]
	switch {
	case !ok:
		return r, fmt.Errorf("command %s on %s: %w", r.name, r.ns, errUnreplayable)
	case rule == cmdNoData:
		r.skip = "changes no data"
	case strings.HasPrefix(r.ns.coll, "system.") && r.name != "dropDatabase":
		r.skip = "a system collection"
	}
	return r, nil
}

// renameTarget returns the namespace "to" of a renameCollection command.
func renameTarget(o bson.Raw) (namespace, error) {
	to, _ := o.Lookup("to").StringValueOK()
	db, coll, ok := strings.Cut(to, ".")
	if !ok || coll == "" {
		return namespace{}, fmt.Errorf("renameCollection to %q", to)
	}
	return namespace{db, coll}, nil
}

// withoutKeys returns doc without the named top-level fields.
func withoutKeys(doc bson.Raw, keys ...string) bson.Raw {
	return rewrite(doc, func(key string, _ bson.RawValue) (bson.RawValue, bool) {
		for _, k := range keys {
			if key == k {
				return bson.RawValue{}, false
			}
		}
		return bson.RawValue{}, true
	})
}

// sameIndex reports whether spec is the index named by sel: a name, or a
// key pattern document.
func sameIndex(spec bson.Raw, sel bson.RawValue) bool {
	if name, ok := sel.StringValueOK(); ok {
		n, _ := spec.Lookup("name").StringValueOK()
		return n == name || name == "*"
	}
	if key, ok := sel.DocumentOK(); ok {
		k, _ := spec.Lookup("key").DocumentOK()
		return bytes.Equal(k, key)
	}
	return false
}
