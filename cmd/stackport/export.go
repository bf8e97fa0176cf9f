package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/snapshot/volume"
)

type exportOptions struct {
	Component string
	Out       string
	Crypto    cryptoOptions
}

func newExportCommand(g *globalOptions) *cobra.Command {
	var opts exportOptions
	cmd := &cobra.Command{
		Use:   "export [ID|latest] --component volume --out FILE",
		Short: "Write a component of a snapshot in its stock format",
		Long: `Write one component of a snapshot as a file that the stock tools read, checking
every checksum on the way: for the volume, a plain tar that GNU tar extracts.

The file appears under its name only when it is complete; "-" writes to stdout.`,
		Example: `  stackport export latest --component volume --out appsmith-stacks.tar
  tar -tvf appsmith-stacks.tar | head
  stackport export latest --component volume --out - | tar -x -C /tmp/restore`,
		Args: wrapArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runExport(cmd.Context(), g, opts, snapshotRef(args))
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Component, "component", "volume", "component to export (volume)")
	f.StringVarP(&opts.Out, "out", "o", "", "output file, or - for stdout")
	opts.Crypto.addDecryptFlags(f)
	return cmd
}

func runExport(ctx context.Context, g *globalOptions, opts exportOptions, ref string) error {
	if opts.Out == "" {
		return usageErrorf("export: give --out FILE (or - for stdout)")
	}
	if opts.Component != "volume" {
		return usageErrorf("export: unknown component %q (this build exports: volume)", opts.Component)
	}
	ids, err := opts.Crypto.identities()
	if err != nil {
		return err
	}
	repo, m, err := loadSnapshot(ctx, g, ref)
	if err != nil {
		return err
	}
	defer repo.Close()
	bar := startProgress(g, "export", m.RawSize())
	defer bar.Stop()
	in, err := snapshot.OpenComponent(ctx, repo, m, opts.Component, snapshot.ReadOptions{Progress: bar.Add, Identities: ids})
	if err != nil {
		return err
	}
	write := func(w io.Writer) error {
		_, err := volume.Export(ctx, in, w)
		return err
	}
	if opts.Out == "-" {
		err = write(g.stdout)
	} else {
		err = writeFileAtomic(opts.Out, write)
	}
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	bar.Stop()
	g.logger().Info("exported", "id", m.ID, "component", opts.Component, "out", opts.Out)
	return nil
}

// writeFileAtomic writes a file through write into a temporary file beside
// path and renames it into place only when write and the sync succeeded.
func writeFileAtomic(path string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".partial-*")
	if err != nil {
		return err
	}
	err = write(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}
