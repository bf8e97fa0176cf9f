package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/snapshot/mongo"
	"github.com/stackport/stackport/snapshot/postgres"
	"github.com/stackport/stackport/snapshot/redis"
	"github.com/stackport/stackport/snapshot/volume"
)

type exportOptions struct {
	// Host chooses whose newest snapshot "latest" is.
	Host      string
	Component string
	Out       string
	Crypto    cryptoOptions
}

func newExportCommand(g *globalOptions) *cobra.Command {
	var opts exportOptions
	cmd := &cobra.Command{
		Use:   "export [ID|latest] --component volume|mongo|redis|postgres --out FILE|DIR",
		Short: "Write a component of a snapshot in its stock format",
		Long: `Write one component of a snapshot as a file that the stock tools read, checking
every checksum on the way: for the volume, a plain tar that GNU tar extracts;
for mongo, a directory that mongorestore --dir reads (with oplog.bson for
--oplogReplay when the snapshot has one); for redis, an RDB file that
redis-server loads at start-up and Memorystore imports from a bucket; for
postgres, one plain SQL file that psql -f restores into an empty database.

The file appears under its name only when it is complete; "-" writes to stdout.

latest is the newest snapshot of --host; without --host, of this host when
the repository holds snapshots of several hosts, or of the only host there
is (the host chosen is logged). An empty ID ("$ID" unset) is refused, never
taken as latest.`,
		Example: `  stackport export latest --component volume --out appsmith-stacks.tar
  tar -tvf appsmith-stacks.tar | head
  stackport export latest --component volume --out - | tar -x -C /tmp/restore
  stackport export latest --component mongo --out dump/ && mongorestore --dir dump/
  stackport export latest --component redis --out dump.rdb
  stackport export latest --host appsmith-0 --component volume --out appsmith-0.tar
  stackport export latest --component postgres --out appsmith.sql && psql -f appsmith.sql`,
		Args: wrapArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runExport(cmd.Context(), g, opts, snapshotRef(args))
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Component, "component", "volume", "component to export (volume, mongo, redis, postgres)")
	f.StringVarP(&opts.Out, "out", "o", "", "output file, or - for stdout")
	f.StringVar(&opts.Host, "host", "", "latest is the newest snapshot of this host (default: this host's, or the only host's); an ID must be of it")
	opts.Crypto.addDecryptFlags(f)
	return cmd
}

func runExport(ctx context.Context, g *globalOptions, opts exportOptions, ref string) error {
	if err := checkSnapshotRef("export", ref); err != nil {
		return err
	}
	if opts.Out == "" {
		return usageErrorf("export: give --out FILE (or - for stdout)")
	}
	export, ok := exporters[opts.Component]
	if !ok {
		return usageErrorf("export: unknown component %q (this build exports: %s)", opts.Component, strings.Join(slices.Sorted(maps.Keys(exporters)), ", "))
	}
	repo, m, ropts, err := loadSnapshotOf(ctx, g, "export", opts.Crypto, ref, opts.Host)
	if err != nil {
		return err
	}
	defer repo.Close()
	bar := startProgress(g, "export", m.RawSize())
	defer bar.Stop()
	ropts.Progress = bar.Add
	in, err := snapshot.OpenComponent(ctx, repo, m, opts.Component, ropts)
	if err != nil {
		return err
	}
	if err := export(ctx, g, in, opts.Out); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	bar.Stop()
	g.logger().Info("exported", "id", m.ID, "host", m.Host, "component", opts.Component, "out", opts.Out)
	return nil
}

// exporters write a component of a snapshot to out in its stock format.
var exporters = map[string]func(ctx context.Context, g *globalOptions, in snapshot.StreamReader, out string) error{
	"volume":   toFile(volume.Export),
	"redis":    toFile(redis.Export),
	"postgres": toFile(postgres.ExportSQL),
	"mongo": func(ctx context.Context, g *globalOptions, in snapshot.StreamReader, out string) error {
		if out == "-" {
			return usageErrorf("the mongo component is a directory: give --out DIR")
		}
		_, err := mongo.Export(ctx, in, out)
		return err
	},
}

// toFile adapts a function that writes one stream into an exporter to a
// file (renamed into place when complete) or, for "-", to stdout.
func toFile(export func(context.Context, snapshot.StreamReader, io.Writer) (snapshot.Stats, error)) func(context.Context, *globalOptions, snapshot.StreamReader, string) error {
	return func(ctx context.Context, g *globalOptions, in snapshot.StreamReader, out string) error {
		write := func(w io.Writer) error {
			_, err := export(ctx, in, w)
			return err
		}
		if out == "-" {
			return write(g.stdout)
		}
		return writeFileAtomic(out, write)
	}
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
