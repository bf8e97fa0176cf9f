package main

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
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
	// Hosts limits prune to the snapshots of these hosts (none: every
	// host).
	Hosts []string
	// GroupBy is how the policy groups snapshots: host (also ""), tags,
	// host,tags or none.
	GroupBy string
	DryRun  bool
	Grace   time.Duration
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
snapshot taken within 30 days of the newest one. At least one rule is needed.
A count of -1 keeps all (--keep-daily -1: the newest snapshot of every day);
other negative counts and negative durations are refused.

The policy applies to each group of snapshots on its own: by default each
host's (--group-by host), so that one host's snapshots never make another's
be deleted; --group-by tags groups by the whole set of tags, host,tags by
both, none applies the policy to all snapshots at once. --host limits prune
to the snapshots of that host (repeatable), --tag to those with the tags.

The newest snapshot of each group is never deleted. Folders without a
manifest are runs in progress or leftovers of failed runs: they are removed
once they are older than --leftover-grace, and never touched before. Every
decision is printed with its host and reasons; --dry-run deletes nothing.`,
		Example: `  stackport prune --keep-daily 7 --keep-weekly 4 --keep-monthly 12
  stackport prune --keep-within 30d --tag env=prod --dry-run
  # one host's snapshots only; every daily snapshot of it kept
  stackport prune --host appsmith-0 --keep-daily -1 --keep-last 3`,
		Args: wrapArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPrune(cmd.Context(), g, opts)
		},
	}
	opts.addFlags(cmd.Flags(), true)
	return cmd
}

// addFlags adds the --keep flags and --group-by, and with standalone also
// --tag, --host and --dry-run (schedule has its own --tag and --host, which
// both label the snapshots it takes and limit pruning to them).
func (opts *pruneOptions) addFlags(f *pflag.FlagSet, standalone bool) {
	f.IntVar(&opts.Policy.Last, "keep-last", 0, "keep the newest N snapshots (-1: all)")
	f.IntVar(&opts.Policy.Hourly, "keep-hourly", 0, "keep the newest snapshot of each of the last N hours that have one (-1: of every hour)")
	f.IntVar(&opts.Policy.Daily, "keep-daily", 0, "keep the newest snapshot of each of the last N days that have one (-1: of every day)")
	f.IntVar(&opts.Policy.Weekly, "keep-weekly", 0, "keep the newest snapshot of each of the last N ISO weeks that have one (-1: of every week)")
	f.IntVar(&opts.Policy.Monthly, "keep-monthly", 0, "keep the newest snapshot of each of the last N months that have one (-1: of every month)")
	f.IntVar(&opts.Policy.Yearly, "keep-yearly", 0, "keep the newest snapshot of each of the last N years that have one (-1: of every year)")
	f.StringVar(&opts.Within, "keep-within", "", "keep snapshots taken within this long of the newest one (e.g. 36h, 30d, 8w)")
	f.StringVar(&opts.GroupBy, "group-by", "host", "apply the policy to each group of snapshots on its own: host, tags, host,tags or none")
	if standalone {
		f.StringArrayVar(&opts.Tags, "tag", nil, "consider only snapshots with this key=value tag (repeatable)")
		f.StringArrayVar(&opts.Hosts, "host", nil, "consider only snapshots of this host (repeatable; default: every host, each on its own)")
		f.BoolVarP(&opts.DryRun, "dry-run", "n", false, "print what would be deleted, delete nothing")
	}
	f.DurationVar(&opts.Grace, "leftover-grace", 24*time.Hour, "remove folders without a manifest only when older than this")
}

// keepAll is what a count of -1 becomes: more periods than any repository
// has snapshots.
const keepAll = math.MaxInt

// pruneRules are the checked flags of prune (and schedule's pruning).
type pruneRules struct {
	policy       storage.Policy
	tags         map[string]string
	byHost       bool
	byTags       bool
	hosts        map[string]bool // nil: every host
	grace        time.Duration
	dryRun       bool
	groupByLabel string
}

// check validates the retention flags and returns the rules they make.
// command names the command in errors (prune, schedule). Every mistake is
// a usage error, found before anything is read or deleted.
func (opts pruneOptions) check(command string) (pruneRules, error) {
	r := pruneRules{policy: opts.Policy, grace: opts.Grace, dryRun: opts.DryRun}
	for _, c := range []struct {
		flag string
		n    *int
	}{
		{"keep-last", &r.policy.Last}, {"keep-hourly", &r.policy.Hourly}, {"keep-daily", &r.policy.Daily},
		{"keep-weekly", &r.policy.Weekly}, {"keep-monthly", &r.policy.Monthly}, {"keep-yearly", &r.policy.Yearly},
	} {
		switch {
		case *c.n == -1 || *c.n == keepAll:
			*c.n = keepAll // restic's "keep all"
		case *c.n < 0:
			return r, usageErrorf("%s: --%s %d: a count cannot be negative (give 0 or more, or -1 to keep all)", command, c.flag, *c.n)
		}
	}
	if opts.Within != "" {
		d, err := parseWithin(opts.Within)
		if err != nil {
			return r, usageErrorf("%s: --keep-within: %v", command, err)
		}
		r.policy.Within = d
	}
	if r.policy.Within < 0 {
		return r, usageErrorf("%s: --keep-within %s: a negative duration keeps nothing (give e.g. 36h, 30d, 8w)", command, withinString(opts))
	}
	if r.policy.Empty() {
		return r, usageErrorf("%s: no --keep-… rule given: nothing would be kept, so nothing is deleted", command)
	}
	if opts.Grace < 0 {
		return r, usageErrorf("%s: --leftover-grace %s: negative (runs in progress would be removed)", command, opts.Grace)
	}
	switch strings.ReplaceAll(opts.GroupBy, " ", "") {
	case "", "host":
		r.byHost = true
	case "tags":
		r.byTags = true
	case "host,tags", "tags,host":
		r.byHost, r.byTags = true, true
	case "none":
	default:
		return r, usageErrorf("%s: --group-by %q: want host, tags, host,tags or none", command, opts.GroupBy)
	}
	r.groupByLabel = opts.GroupBy
	if r.groupByLabel == "" {
		r.groupByLabel = "host"
	}
	tags, err := parseTags(opts.Tags)
	if err != nil {
		return r, err
	}
	r.tags = tags
	if len(opts.Hosts) > 0 {
		r.hosts = map[string]bool{}
		for _, h := range opts.Hosts {
			if h == "" {
				return r, usageErrorf("%s: --host is empty", command)
			}
			r.hosts[h] = true
		}
	}
	return r, nil
}

// withinString is --keep-within as given (or the policy's duration).
func withinString(opts pruneOptions) string {
	if opts.Within != "" {
		return opts.Within
	}
	return opts.Policy.Within.String()
}

// group is the key of m's group under the rules, and how it is shown.
func (r pruneRules) group(m *snapshot.Manifest) string {
	var parts []string
	if r.byHost {
		parts = append(parts, fmt.Sprintf("host %q", m.Host))
	}
	if r.byTags {
		tags := make([]string, 0, len(m.Tags))
		for k, v := range m.Tags {
			tags = append(tags, k+"="+v)
		}
		slices.Sort(tags)
		parts = append(parts, fmt.Sprintf("tags %q", strings.Join(tags, ",")))
	}
	if len(parts) == 0 {
		return "all"
	}
	return strings.Join(parts, ", ")
}

// parseWithin parses a Go duration or a number of days (d) or weeks (w).
func parseWithin(s string) (time.Duration, error) {
	for suffix, unit := range map[string]time.Duration{"d": 24 * time.Hour, "w": 7 * 24 * time.Hour} {
		if n, ok := strings.CutSuffix(s, suffix); ok {
			v, err := strconv.Atoi(n)
			if err != nil || v < 0 || v > math.MaxInt64/int(unit) {
				return 0, fmt.Errorf("invalid duration %q (want e.g. 36h, 30d, 8w; not negative)", s)
			}
			return time.Duration(v) * unit, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d < 0 {
		return 0, fmt.Errorf("%q is negative: it would keep nothing (want e.g. 36h, 30d, 8w)", s)
	}
	return d, nil
}

// pruneEntry is one decision of prune, printed as a table or JSON.
type pruneEntry struct {
	ID     string `json:"id"`
	Action string `json:"action"` // keep, delete
	// Host is the snapshot's host ("" for folders without a readable
	// manifest); Group the group the policy was applied to.
	Host    string   `json:"host"`
	Group   string   `json:"group,omitempty"`
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
	fmt.Fprintln(tw, "ACTION\tID\tHOST\tWHY")
	for _, e := range entries {
		action := e.Action
		if opts.DryRun && action == "delete" {
			action = "would delete"
		}
		host := hostLabel(e.Host)
		if e.Group == "" {
			host = "-" // no manifest: unknown
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", action, e.ID, host, strings.Join(e.Reasons, ", "))
	}
	return tw.Flush()
}

// prune applies the policy and deletes (unless DryRun) what it does not keep.
func prune(ctx context.Context, g *globalOptions, opts pruneOptions) ([]pruneEntry, error) {
	log := g.logger()
	rules, err := opts.check("prune")
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
	groups := map[string][]storage.Item{}
	hostOf := map[string]string{}
	hosts := map[string]bool{} // of every readable snapshot
	for i, f := range folders {
		m := manifests[i]
		switch {
		case !f.Complete:
			created, err := time.Parse("20060102T150405Z", strings.SplitN(f.ID, "-", 2)[0])
			if err == nil && opts.now.Sub(created) > rules.grace {
				entries = append(entries, pruneEntry{ID: f.ID, Action: "delete", Reasons: []string{"leftover of a failed run (no manifest)"}})
			} else {
				entries = append(entries, pruneEntry{ID: f.ID, Action: "keep", Reasons: []string{"no manifest yet: run in progress or within --leftover-grace"}})
			}
		case m == nil:
			entries = append(entries, pruneEntry{ID: f.ID, Action: "keep", Reasons: []string{"manifest unreadable"}})
		default:
			hosts[m.Host] = true
			if hasTags(m, rules.tags) && (rules.hosts == nil || rules.hosts[m.Host]) {
				key := rules.group(m)
				groups[key] = append(groups[key], storage.Item{ID: m.ID, Time: m.Created})
				hostOf[m.ID] = m.Host
			}
		}
	}
	// A --host of which there is no snapshot is likely a typo: say which
	// hosts there are rather than prune nothing in silence.
	for _, h := range slices.Sorted(maps.Keys(rules.hosts)) {
		if !hosts[h] && len(hosts) > 0 {
			return nil, fmt.Errorf("prune: no snapshot of host %q; the repository holds snapshots of %s: %w", h, quoteHosts(hosts), snapshot.ErrNotFound)
		}
	}
	// Each group on its own, so that one group's snapshots never make
	// another's be deleted; the newest of each group is always kept.
	for _, key := range slices.Sorted(maps.Keys(groups)) {
		decisions := rules.policy.Apply(groups[key])
		kept := 0
		for i, d := range decisions {
			e := pruneEntry{ID: d.ID, Action: "delete", Host: hostOf[d.ID], Group: key, Reasons: d.Reasons}
			if d.Keep {
				e.Action = "keep"
			}
			if i == 0 && !d.Keep { // Apply sorts newest first
				e.Action, e.Reasons = "keep", []string{"newest snapshot of " + key}
			}
			if e.Reasons == nil {
				e.Reasons = []string{"no rule keeps it"}
			}
			if e.Action == "keep" {
				kept++
			}
			entries = append(entries, e)
		}
		log.Info("retention applied", "group", key, "snapshots", len(decisions), "keep", kept, "delete", len(decisions)-kept)
	}
	if len(groups) == 0 && (rules.hosts != nil || rules.tags != nil) {
		log.Warn("no snapshot matches the --host and --tag filters: none is deleted", "hosts", slices.Sorted(maps.Keys(rules.hosts)), "tags", opts.Tags)
	}

	deleted := 0
	for _, e := range entries {
		if e.Action != "delete" || rules.dryRun {
			continue
		}
		if err := repo.Delete(ctx, e.ID); err != nil {
			return nil, fmt.Errorf("prune: %w", err)
		}
		deleted++
	}
	// Multipart uploads that a killed run left (S3): their parts are
	// stored out of sight of every listing.
	uploads, err := repo.StaleUploads(ctx, opts.now.Add(-rules.grace), rules.dryRun)
	for _, u := range uploads {
		action := "abort"
		if rules.dryRun {
			action = "would abort"
		} else if !u.Aborted {
			continue
		}
		entries = append(entries, pruneEntry{ID: u.Key, Action: action,
			Reasons: []string{"incomplete multipart upload begun " + u.Initiated.UTC().Format(time.RFC3339) + ", older than --leftover-grace"}})
	}
	if err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	log.Info("prune finished", "deleted", deleted, "dry_run", rules.dryRun, "group_by", rules.groupByLabel, "repo", repo.Name())
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
