package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
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
// "latest". A snapshot without a manifest does not exist: the error wraps
// ErrNotFound.
func Load(ctx context.Context, store Store, ref string) (*Manifest, error) {
	if ref == Latest || ref == "" {
		return latest(ctx, store)
	}
	if !ValidID(ref) {
		return nil, fmt.Errorf("snapshot: %q is not a snapshot ID (want an ID such as 20261125T210000Z-3f9a1c, or latest)", ref)
	}
	return load(ctx, store, ref)
}

// latest loads the newest snapshot. IDs sort by time to the second; among
// snapshots of the same second the manifests' creation times decide.
func latest(ctx context.Context, store Store) (*Manifest, error) {
	all, err := store.List(ctx)
	if err != nil {
		return nil, err
	}
	ids := slices.DeleteFunc(all, func(id string) bool { return !ValidID(id) })
	if len(ids) == 0 {
		return nil, fmt.Errorf("snapshot: no snapshots in the repository: %w", ErrNotFound)
	}
	newest := slices.Max(ids)
	second, _, _ := strings.Cut(newest, "-")
	var best *Manifest
	for _, id := range ids {
		if !strings.HasPrefix(id, second+"-") {
			continue
		}
		m, err := load(ctx, store, id)
		if err != nil {
			return nil, err
		}
		if best == nil || m.Created.After(best.Created) {
			best = m
		}
	}
	return best, nil
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
