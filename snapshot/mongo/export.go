package mongo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"

	"github.com/stackport/stackport/snapshot"
)

// Export writes the snapshot as the directory dir in mongodump's layout,
// which `mongorestore --dir DIR` reads (with `--oplogReplay` when it holds
// oplog.bson): DIR/<db>/<coll>.bson, DIR/<db>/<coll>.metadata.json and
// DIR/oplog.bson. Every stream is checked as by Verifier while it is
// copied. The directory is written under a temporary name next to dir and
// renamed to dir only when complete; dir must not exist or be empty.
func Export(ctx context.Context, in snapshot.StreamReader, dir string) (stats snapshot.Stats, err error) {
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return nil, fmt.Errorf("mongo: export to %s: %w", dir, snapshot.ErrTargetNotEmpty)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("mongo: export: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "."+filepath.Base(dir)+".partial-")
	if err != nil {
		return nil, fmt.Errorf("mongo: export: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	root, err := os.OpenRoot(tmp)
	if err != nil {
		return nil, fmt.Errorf("mongo: export: %w", err)
	}
	defer root.Close()
	stats, err = decode(ctx, in, discard{}, func(name string) (io.WriteCloser, error) {
		if d := path.Dir(name); d != "." {
			if err := root.MkdirAll(d, 0o755); err != nil {
				return nil, fmt.Errorf("mongo: export: %w", err)
			}
		}
		f, err := root.Create(name)
		if err != nil {
			return nil, fmt.Errorf("mongo: export: %w", err)
		}
		return f, nil
	})
	if err != nil {
		return stats, err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return stats, fmt.Errorf("mongo: export: %w", err)
	}
	_ = os.Remove(dir) // an empty directory in the way
	if err := os.Rename(tmp, dir); err != nil {
		return stats, fmt.Errorf("mongo: export: %w", err)
	}
	return stats, nil
}
