package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	goredis "github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// globalOptions are the flags every command shares, and where output goes.
type globalOptions struct {
	Repo    string
	JSON    bool
	Quiet   bool
	Verbose bool

	stdout io.Writer // results only
	stderr io.Writer // logs and progress
	log    *slog.Logger
	tty    bool // stderr is a terminal: show progress bars

	// onProgress, when set, sees the running total of every progress
	// report (tests use it to interrupt work at a known point).
	onProgress func(done int64)
}

// usageError marks a mistake in the command line (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usageErrorf(format string, a ...any) error {
	return usageError{fmt.Errorf(format, a...)}
}

// wrapArgs turns a cobra argument check's error into a usage error.
func wrapArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

func newRootCommand() *cobra.Command {
	g := &globalOptions{stdout: os.Stdout, stderr: os.Stderr}
	root := &cobra.Command{
		Use:   "stackport",
		Short: "Back up, verify and move a modular-monolith container's data",
		Long: `stackport snapshots a container's persistent volume (and, as components land,
its embedded MongoDB, Redis and PostgreSQL) into a repository on local disk,
S3, GCS or Azure Blob, verifies and exports the snapshots, and restores them.

A repository is a URL, given with --repo or STACKPORT_REPO:
  file:///var/backups/stackport
  s3://bucket?region=eu-west-1&prefix=stackport/
  s3://bucket?endpoint=https://minio.example:9000&use_path_style=true&region=us-east-1
  gs://bucket?prefix=stackport/
  azblob://container?prefix=stackport/
Credentials come from each cloud's usual environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS,
AZURE_STORAGE_*) and are never printed.

Exit codes: 0 success, 1 failure, 2 usage error, 3 verification found corrupt or missing data.`,
		Example: `  export STACKPORT_REPO=file:///var/backups/stackport
  stackport snapshot --volume /appsmith-stacks
  stackport list
  stackport verify latest
  stackport restore latest --volume-to /mnt/filestore/appsmith-stacks`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf("unknown command %q (see stackport --help)", args[0])
			}
			return cmd.Help()
		},
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			g.setup()
			return nil
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	f := root.PersistentFlags()
	f.StringVarP(&g.Repo, "repo", "r", os.Getenv("STACKPORT_REPO"), "repository URL (env STACKPORT_REPO)")
	f.BoolVar(&g.JSON, "json", false, "print the result as one JSON object on stdout and log JSON lines on stderr")
	f.BoolVarP(&g.Quiet, "quiet", "q", false, "log warnings and errors only, no progress")
	f.BoolVarP(&g.Verbose, "verbose", "v", false, "log debug messages too (each table, collection, Redis database and retry), with their times")
	root.AddCommand(
		newSnapshotCommand(g),
		newListCommand(g),
		newVerifyCommand(g),
		newRestoreCommand(g),
		newExportCommand(g),
		newPruneCommand(g),
		newScheduleCommand(g),
		newMigrateCommand(g),
		newVersionCommand(g),
	)
	return root
}

// setup chooses the logger: JSON lines with --json, text otherwise.
func (g *globalOptions) setup() {
	level := slog.LevelInfo
	switch {
	case g.Quiet:
		level = slog.LevelWarn
	case g.Verbose:
		level = slog.LevelDebug
	}
	hopts := &slog.HandlerOptions{Level: level}
	if g.JSON {
		g.log = slog.New(slog.NewJSONHandler(g.stderr, hopts))
	} else {
		g.log = slog.New(slog.NewTextHandler(g.stderr, hopts))
	}
	// go-redis logs pool events with its own logger; route them through
	// ours at debug level so they neither clutter stderr nor break --json.
	goredis.SetLogger(redisLogger{g.log})
	if f, ok := g.stderr.(*os.File); ok && !g.JSON && !g.Quiet {
		g.tty = term.IsTerminal(int(f.Fd()))
	}
}

// redisLogger adapts slog to go-redis's logger.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, "redis client: "+fmt.Sprintf(format, v...))
}

// logger returns the logger, setting it up for callers that skipped cobra
// (tests call runX directly).
func (g *globalOptions) logger() *slog.Logger {
	if g.log == nil {
		g.setup()
	}
	return g.log
}

// parseTags parses repeated k=v flags.
func parseTags(tags []string) (map[string]string, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(tags))
	for _, t := range tags {
		k, v, ok := strings.Cut(t, "=")
		if !ok || k == "" {
			return nil, usageErrorf("invalid tag %q (want key=value)", t)
		}
		m[k] = v
	}
	return m, nil
}
