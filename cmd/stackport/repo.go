package main

import (
	"context"
	"encoding/json"

	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/snapshot/mongo"
	"github.com/stackport/stackport/snapshot/postgres"
	"github.com/stackport/stackport/snapshot/redis"
	"github.com/stackport/stackport/snapshot/volume"
	"github.com/stackport/stackport/storage"
)

// openRepo opens the repository named by --repo. create makes a missing
// file:// directory (only snapshot writes).
func openRepo(ctx context.Context, g *globalOptions, create bool) (*storage.Repo, error) {
	if g.Repo == "" {
		return nil, usageErrorf("no repository: use --repo URL or set STACKPORT_REPO")
	}
	return storage.Open(ctx, g.Repo, storage.Options{Create: create})
}

// decoder returns the Restorer that decodes a component fully without
// writing anything (for verify), or nil for kinds this build does not know.
func decoder(kind string) snapshot.Restorer {
	switch kind {
	case "volume":
		return volume.Verifier{}
	case "mongo":
		return mongo.Verifier{}
	case "redis":
		return redis.Verifier{}
	case "postgres":
		return postgres.Verifier{}
	}
	return nil
}

// printJSON writes v as one JSON object on stdout.
func printJSON(g *globalOptions, v any) error {
	enc := json.NewEncoder(g.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// snapshotRef is the ID|latest argument of verify, restore and export.
func snapshotRef(args []string) string {
	if len(args) == 0 {
		return snapshot.Latest
	}
	return args[0]
}

// loadSnapshot reads the identities of the decryption flags, opens the
// repository and reads the manifest ref names. The read options carry the
// identities; callers add progress.
func loadSnapshot(ctx context.Context, g *globalOptions, crypto cryptoOptions, ref string) (*storage.Repo, *snapshot.Manifest, snapshot.ReadOptions, error) {
	ids, err := crypto.identities()
	if err != nil {
		return nil, nil, snapshot.ReadOptions{}, err
	}
	repo, err := openRepo(ctx, g, false)
	if err != nil {
		return nil, nil, snapshot.ReadOptions{}, err
	}
	m, err := snapshot.Load(ctx, repo, ref)
	if err != nil {
		repo.Close()
		return nil, nil, snapshot.ReadOptions{}, err
	}
	return repo, m, snapshot.ReadOptions{Identities: ids}, nil
}
