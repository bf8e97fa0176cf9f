package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/stackport/stackport/snapshot"
)

func newVerifyCommand(g *globalOptions) *cobra.Command {
	var crypto cryptoOptions
	cmd := &cobra.Command{
		Use:   "verify [ID|latest]",
		Short: "Re-read a snapshot and check every object",
		Long: `Re-read every object of a snapshot from the repository, check its size and
SHA-256 against the manifest, and decode it fully (for the volume: every tar
entry, with the same path checks a restore makes). Nothing is written.

Exits 0 when the snapshot is intact and 3 when data is corrupt or missing,
naming every damaged object.`,
		Example: `  stackport verify latest
  stackport verify 20261125T210000Z-3f9a1c --json`,
		Args: wrapArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVerify(cmd.Context(), g, crypto, snapshotRef(args))
		},
	}
	crypto.addDecryptFlags(cmd.Flags())
	return cmd
}

type verifyResult struct {
	ID      string `json:"id"`
	OK      bool   `json:"ok"`
	Objects int    `json:"objects"`
	Bytes   int64  `json:"stored_bytes"`
	Error   string `json:"error,omitempty"`
}

func runVerify(ctx context.Context, g *globalOptions, crypto cryptoOptions, ref string) error {
	repo, m, ropts, err := loadSnapshot(ctx, g, crypto, ref)
	if err != nil {
		return err
	}
	defer repo.Close()
	bar := startProgress(g, "verify", m.RawSize())
	ropts.Progress = bar.Add
	err = snapshot.Verify(ctx, repo, m, decoder, ropts)
	bar.Stop()
	res := verifyResult{ID: m.ID, OK: err == nil, Bytes: m.StoredSize()}
	for _, c := range m.Components {
		res.Objects += len(c.Objects)
	}
	if err != nil {
		res.Error = err.Error()
	}
	if g.JSON {
		if perr := printJSON(g, res); perr != nil {
			return perr
		}
	} else if err == nil {
		fmt.Fprintf(g.stdout, "snapshot %s is intact: %d objects, %s checked\n", m.ID, res.Objects, humanBytes(res.Bytes))
	}
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	return nil
}
