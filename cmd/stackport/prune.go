package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/storage"
)

type pruneOptions struct {
	Policy storage.Policy
	Within string
	Tags   []string
	DryRun bool
	Grace  time.Duration
	// now is the current time (tests set it).
	now time.Time
}

func newPruneCommand(g *globalOptions) *cobra.Command {
	var opts pruneOptions
	cmd := &cobra.Command{
		Use:   "prune --keep-… [flags]",
		Short: "Delete snapshots that a retention policy does not keep",
		Long: `Delete the snapshots that no --keep rule keeps, with restic's semantics: a
snapshot is kept when any rule keeps it. --keep-daily 7 keeps the newest
snapshot of each of the last 7 days that have snapshots (likewise hourly,
weekly, monthly, yearly); --keep-last N the newest N; --keep-within 30d every
snapshot taken within 30 days of the newest one.

The newest complete snapshot is never deleted. With --tag only snapshots with
those tags are considered. Folders without a manifest are runs in progress or
leftovers of failed runs: they are removed once they are older than
--leftover-grace, and never touched before. Every decision is printed with
its reasons; --dry-run deletes nothing.`,
		Example: `  stackport prune --keep-daily 7 --keep-weekly 4 --keep-monthly 12
  stackport prune --keep-within 30d --tag env=prod --dry-run`,
		Args: wrapArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPrune(cmd.Context(), g, opts)
		},
	}
	opts.addFlags(cmd.Flags(), true)
	return cmd
}

// addFlags adds the --keep flags (and --tag unless the command has its own).
func (opts *pruneOptions) addFlags(f *pflag.FlagSet, tag bool) {
	f.IntVar(&opts.Policy.Last, "keep-last", 0, "keep the newest N snapshots")
	f.IntVar(&opts.Policy.Hourly, "keep-hourly", 0, "keep the newest snapshot of each of the last N hours that have one")
	f.IntVar(&opts.Policy.Daily, "keep-daily", 0, "keep the newest snapshot of each of the last N days that have one")
	f.IntVar(&opts.Policy.Weekly, "keep-weekly", 0, "keep the newest snapshot of each of the last N ISO weeks that have one")
	f.IntVar(&opts.Policy.Monthly, "keep-monthly", 0, "keep the newest snapshot of each of the last N months that have one")
	f.IntVar(&opts.Policy.Yearly, "keep-yearly", 0, "keep the newest snapshot of each of the last N years that have one")
	f.StringVar(&opts.Within, "keep-within", "", "keep snapshots taken within this long of the newest one (e.g. 36h, 30d, 8w)")
	if tag {
		f.StringArrayVar(&opts.Tags, "tag", nil, "consider only snapshots with this key=value tag (repeatable)")
		f.BoolVarP(&opts.DryRun, "dry-run", "n", false, "print what would be deleted, delete nothing")
	}
	f.DurationVar(&opts.Grace, "leftover-grace", 24*time.Hour, "remove folders without a manifest only when older than this")
}

// parseWithin parses a Go duration or a number of days (d) or weeks (w).
func parseWithin(s string) (time.Duration, error) {
	for suffix, unit := range map[string]time.Duration{"d": 24 * time.Hour, "w": 7 * 24 * time.Hour} {
		if n, ok := strings.CutSuffix(s, suffix); ok {
			v, err := strconv.Atoi(n)
			if err != nil || v < 0 {
				return 0, fmt.Errorf("invalid duration %q", s)
			}
			return time.Duration(v) * unit, nil
		}
	}
	return time.ParseDuration(s)
}

// pruneEntry is one decision of prune, printed as a table or JSON.
type pruneEntry struct {
	ID      string   `json:"id"`
	Action  string   `json:"action"` // keep, delete
	Reasons []string `json:"reasons"`
}

func runPrune(ctx context.Context, g *globalOptions, opts pruneOptions) error {
	entries, err := prune(ctx, g, opts)
	if err != nil {
		return err
	}
	if g.JSON {
		return printJSON(g, entries)
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ACTION\tID\tWHY")
	for _, e := range entries {
		action := e.Action
		if opts.DryRun && action == "delete" {
			action = "would delete"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", action, e.ID, strings.Join(e.Reasons, ", "))
	}
	return tw.Flush()
}

// prune applies the policy and deletes (unless DryRun) what it does not keep.
func prune(ctx context.Context, g *globalOptions, opts pruneOptions) ([]pruneEntry, error) {
	log := g.logger()
	if opts.Within != "" {
		d, err := parseWithin(opts.Within)
		if err != nil {
			return nil, usageErrorf("prune: --keep-within: %v", err)
		}
		opts.Policy.Within = d
	}
	if opts.Policy.Empty() {
		return nil, usageErrorf("prune: no --keep-… rule given: nothing would be kept, so nothing is deleted")
	}
	tags, err := parseTags(opts.Tags)
	if err != nil {
		return nil, err
	}
	if opts.now.IsZero() {
		opts.now = time.Now()
	}
	repo, err := openRepo(ctx, g, false)
	if err != nil {
		return nil, err
	}
	defer repo.Close()
	folders, err := repo.Folders(ctx)
	if err != nil {
		return nil, err
	}

	// Read every complete snapshot's manifest; one that cannot be read is
	// kept (never delete what cannot be examined).
	manifests := make([]*snapshot.Manifest, len(folders))
	grp, gctx := errgroup.WithContext(ctx)
	grp.SetLimit(8)
	for i, f := range folders {
		if !f.Complete {
			continue
		}
		grp.Go(func() error {
			m, err := snapshot.Load(gctx, repo, f.ID)
			if err != nil && gctx.Err() != nil {
				return err
			}
			if err != nil {
				log.Warn("unreadable manifest: snapshot kept", "id", f.ID, "err", err)
			}
			manifests[i] = m
			return nil
		})
	}
	if err := grp.Wait(); err != nil {
		return nil, err
	}

	var entries []pruneEntry
	var items []storage.Item
	var newest *snapshot.Manifest
	for i, f := range folders {
		m := manifests[i]
		switch {
		case !f.Complete:
			created, err := time.Parse("20060102T150405Z", strings.SplitN(f.ID, "-", 2)[0])
			if err == nil && opts.now.Sub(created) > opts.Grace {
				entries = append(entries, pruneEntry{f.ID, "delete", []string{"leftover of a failed run (no manifest)"}})
			} else {
				entries = append(entries, pruneEntry{f.ID, "keep", []string{"no manifest yet: run in progress or within --leftover-grace"}})
			}
		case m == nil:
			entries = append(entries, pruneEntry{f.ID, "keep", []string{"manifest unreadable"}})
		default:
			if newest == nil || m.Created.After(newest.Created) {
				newest = m
			}
			if hasTags(m, tags) {
				items = append(items, storage.Item{ID: m.ID, Time: m.Created})
			}
		}
	}
	for _, d := range opts.Policy.Apply(items) {
		e := pruneEntry{ID: d.ID, Action: "delete", Reasons: d.Reasons}
		if d.Keep {
			e.Action = "keep"
		}
		if newest != nil && d.ID == newest.ID && !d.Keep {
			e.Action, e.Reasons = "keep", []string{"newest snapshot"}
		}
		if e.Reasons == nil {
			e.Reasons = []string{"no rule keeps it"}
		}
		entries = append(entries, e)
	}

	deleted := 0
	for _, e := range entries {
		if e.Action != "delete" || opts.DryRun {
			continue
		}
		if err := repo.Delete(ctx, e.ID); err != nil {
			return nil, fmt.Errorf("prune: %w", err)
		}
		deleted++
	}
	log.Info("prune finished", "deleted", deleted, "dry_run", opts.DryRun, "repo", repo.Name())
	return entries, nil
}

// hasTags reports whether m carries every tag in want.
func hasTags(m *snapshot.Manifest, want map[string]string) bool {
	for k, v := range want {
		if m.Tags[k] != v {
			return false
		}
	}
	return true
}
