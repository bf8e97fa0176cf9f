package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/snapshot/volume"
)

type restoreOptions struct {
	VolumeTo string
	Force    bool
	Chown    string
}

func newRestoreCommand(g *globalOptions) *cobra.Command {
	var opts restoreOptions
	cmd := &cobra.Command{
		Use:   "restore [ID|latest] --volume-to DIR [flags]",
		Short: "Restore a snapshot's components into targets",
		Long: `Restore a snapshot (the newest when no ID is given) into the targets named by
the --*-to flags.

The volume is unpacked into a staging folder inside the target and moved into
place only after every byte was read and every checksum matched: a damaged
snapshot or an interruption leaves the target exactly as it was. A target that
is not empty is refused unless --force, which replaces its content. Owners are
restored when running as root; --chown gives every file one owner instead (for
NFS shares such as Filestore). Archive entries that would write outside the
target (../ or absolute paths, writes through symlinks, device files) are
rejected by name.`,
		Example: `  stackport restore latest --volume-to /appsmith-stacks
  stackport restore 20261125T210000Z-3f9a1c --volume-to /mnt/filestore/stacks --chown 1000:1000 --force`,
		Args: wrapArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRestore(cmd.Context(), g, opts, snapshotRef(args))
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.VolumeTo, "volume-to", "", "restore the volume into this directory")
	f.BoolVar(&opts.Force, "force", false, "replace the content of a non-empty target")
	f.StringVar(&opts.Chown, "chown", "", "give every restored file this owner, UID:GID")
	return cmd
}

type restoreResult struct {
	ID     string         `json:"id"`
	Target string         `json:"volume_to"`
	Stats  snapshot.Stats `json:"stats"`
}

func runRestore(ctx context.Context, g *globalOptions, opts restoreOptions, ref string) error {
	if opts.VolumeTo == "" {
		return usageErrorf("restore: nothing to restore to: give --volume-to DIR")
	}
	var owner *volume.Owner
	if opts.Chown != "" {
		var err error
		if owner, err = volume.ParseOwner(opts.Chown); err != nil {
			return usageError{fmt.Errorf("restore: --chown: %w", err)}
		}
	}
	repo, m, err := loadSnapshot(ctx, g, ref)
	if err != nil {
		return err
	}
	defer repo.Close()
	c := m.Component("volume")
	if c == nil {
		return fmt.Errorf("restore: snapshot %s has no volume component", m.ID)
	}
	log := g.logger()
	log.Info("restore started", "id", m.ID, "volume_to", opts.VolumeTo)
	bar := startProgress(g, "restore", m.RawSize())
	defer bar.Stop()
	in, err := snapshot.OpenComponent(ctx, repo, m, "volume", snapshot.ReadOptions{Progress: bar.Add})
	if err != nil {
		return err
	}
	r := &volume.Restorer{Dir: opts.VolumeTo, Force: opts.Force, Chown: owner, Log: log}
	stats, err := r.Restore(ctx, in)
	bar.Stop()
	if err != nil {
		return fmt.Errorf("restore: %w (the target was left as it was)", err)
	}
	log.Info("restore finished", "id", m.ID, "volume_to", opts.VolumeTo, "files", stats["files"], "bytes", stats["bytes"])
	if g.JSON {
		return printJSON(g, restoreResult{ID: m.ID, Target: opts.VolumeTo, Stats: stats})
	}
	_, err = fmt.Fprintf(g.stdout, "restored snapshot %s to %s: %d files, %s\n", m.ID, opts.VolumeTo, stats["files"], humanBytes(stats["bytes"]))
	return err
}
