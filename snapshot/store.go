package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"slices"
	"strings"
)

// Store keeps the objects of a repository's snapshots. *storage.Repo
// implements it.
//
//   - NewWriter returns a writer for object key of snapshot id. The object
//     becomes visible only when Close returns nil; cancelling ctx before Close
//     aborts the upload so that nothing is committed.
//   - NewReader opens object key of snapshot id. A missing object gives an
//     error wrapping fs.ErrNotExist. The caller closes the reader.
//   - Delete removes every object of snapshot id, manifest first, so that a
//     half-deleted snapshot is invisible. A missing snapshot is not an error.
//   - List returns the IDs of all snapshots that have a manifest, sorted.
type Store interface {
	NewWriter(ctx context.Context, id, key string) (io.WriteCloser, error)
	NewReader(ctx context.Context, id, key string) (io.ReadCloser, error)
	Delete(ctx context.Context, id string) error
	List(ctx context.Context) ([]string, error)
}

// Latest is the snapshot reference that names the newest snapshot.
const Latest = "latest"

// Load reads and validates the manifest of the snapshot ref names: an ID or
// "latest" (the newest snapshot of any host; LoadFor chooses by host). An
// empty ref is an error, not "latest": it is usually a variable that was
// never set. A snapshot without a manifest does not exist: the error wraps
// ErrNotFound.
func Load(ctx context.Context, store Store, ref string) (*Manifest, error) {
	return loadRef(ctx, store, ref, nil)
}

// Selection says whose newest snapshot "latest" names in LoadFor.
type Selection struct {
	// Host, when set, is the host whose newest snapshot "latest" names.
	Host string
	// Local is the host whose newest snapshot "latest" names when Host is
	// empty and the repository holds snapshots of several hosts (the
	// caller's own host name, as it records it in the snapshots it takes).
	// When the repository holds snapshots of one host only, "latest" is
	// that host's newest, whatever Local is.
	Local string
}

// LoadFor is Load with "latest" chosen by host, as sel says. A ref that is an
// ID loads that snapshot, whatever its host. When no snapshot of the host
// exists but others do, the error is a *HostNotFoundError (wrapping
// ErrNotFound) that lists the hosts there are.
func LoadFor(ctx context.Context, store Store, ref string, sel Selection) (*Manifest, error) {
	return loadRef(ctx, store, ref, &sel)
}

// HostNotFoundError: the repository holds snapshots, but none of Host.
type HostNotFoundError struct {
	Host  string
	Hosts []string // the hosts of the snapshots there are, sorted
}

func (e *HostNotFoundError) Error() string {
	quoted := make([]string, len(e.Hosts))
	for i, h := range e.Hosts {
		quoted[i] = fmt.Sprintf("%q", h)
	}
	return fmt.Sprintf("snapshot: no snapshot of host %q; the repository holds snapshots of %s", e.Host, strings.Join(quoted, ", "))
}

func (e *HostNotFoundError) Unwrap() error { return ErrNotFound }

func loadRef(ctx context.Context, store Store, ref string, sel *Selection) (*Manifest, error) {
	switch {
	case ref == "":
		return nil, errors.New("snapshot: the snapshot ID is empty (want an ID such as 20261125T210000Z-3f9a1c, or latest)")
	case ref == Latest:
		return latest(ctx, store, sel)
	case !ValidID(ref):
		return nil, fmt.Errorf("snapshot: %q is not a snapshot ID (want an ID such as 20261125T210000Z-3f9a1c, or latest)", ref)
	}
	return load(ctx, store, ref)
}

// latest loads the newest snapshot (of the host sel chooses; nil: of any
// host). IDs sort by time to the second; among snapshots of the same second
// the manifests' creation times decide. Manifests are read newest first,
// until one of the host is found: a manifest that cannot be read before
// then is an error (it might be the newest of the host).
func latest(ctx context.Context, store Store, sel *Selection) (*Manifest, error) {
	all, err := store.List(ctx)
	if err != nil {
		return nil, err
	}
	ids := slices.DeleteFunc(all, func(id string) bool { return !ValidID(id) })
	if len(ids) == 0 {
		return nil, fmt.Errorf("snapshot: no snapshots in the repository: %w", ErrNotFound)
	}
	slices.Sort(ids)
	var want string // the host looked for
	if sel != nil {
		want = sel.Host
		if want == "" {
			want = sel.Local
		}
	}
	var newest *Manifest // of any host
	hosts := map[string]bool{}
	for end := len(ids); end > 0; {
		// ids[start:end] are the snapshots of one second.
		second, _, _ := strings.Cut(ids[end-1], "-")
		start := end - 1
		for start > 0 && strings.HasPrefix(ids[start-1], second+"-") {
			start--
		}
		ms := make([]*Manifest, 0, end-start)
		for _, id := range ids[start:end] {
			m, err := load(ctx, store, id)
			if err != nil {
				if sel != nil && newest != nil {
					return nil, fmt.Errorf("snapshot: looking for the newest snapshot of host %q: %w", want, err)
				}
				return nil, err
			}
			ms = append(ms, m)
		}
		end = start
		// Newest first; of the same time, the smaller ID (as before).
		slices.SortStableFunc(ms, func(a, b *Manifest) int {
			if c := b.Created.Compare(a.Created); c != 0 {
				return c
			}
			return strings.Compare(a.ID, b.ID)
		})
		for _, m := range ms {
			if newest == nil {
				newest = m
			}
			hosts[m.Host] = true
			switch {
			case sel == nil:
				return newest, nil
			case sel.Host != "" && m.Host == sel.Host:
				return m, nil
			case sel.Host == "" && m.Host == sel.Local:
				return m, nil
			}
		}
	}
	if sel.Host == "" && len(hosts) == 1 {
		return newest, nil // the only host
	}
	return nil, &HostNotFoundError{Host: want, Hosts: slices.Sorted(maps.Keys(hosts))}
}

func load(ctx context.Context, store Store, id string) (*Manifest, error) {
	r, err := store.NewReader(ctx, id, ManifestName)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("snapshot %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, maxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: read manifest: %w", id, err)
	}
	if len(data) > maxManifestSize {
		return nil, fmt.Errorf("snapshot %s: manifest larger than %d bytes: %w", id, maxManifestSize, ErrCorrupt)
	}
	m, err := DecodeManifest(data)
	if err != nil {
		return nil, err
	}
	if m.ID != id {
		return nil, fmt.Errorf("snapshot %s: manifest names snapshot %s: %w", id, m.ID, ErrCorrupt)
	}
	return m, nil
}

// maxManifestSize bounds what Load reads, so a hostile manifest cannot
// exhaust memory. A manifest of 100,000 objects is about 30 MB.
const maxManifestSize = 64 << 20
