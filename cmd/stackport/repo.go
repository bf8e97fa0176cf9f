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
