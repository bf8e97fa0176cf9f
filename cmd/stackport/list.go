package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/storage"
)

type listOptions struct {
	// Hosts lists only the snapshots of these hosts (none: every host).
	Hosts []string
}

func newListCommand(g *globalOptions) *cobra.Command {
	var opts listOptions
	cmd := &cobra.Command{
		Use:   "list [--host NAME]",
		Short: "List the snapshots in the repository",
		Long: `List the snapshots in the repository, oldest first, with the host each was
taken on. Only complete snapshots (those with a manifest) are listed;
leftovers of failed or running snapshots are not.

--host lists only the snapshots of that host (repeatable). A snapshot whose
manifest cannot be read is listed as DAMAGED whatever --host says (its host
is unknown).`,
		Example: `  stackport list --repo file:///var/backups/stackport
  stackport list --host appsmith-0
  stackport list --json | jq -r '.[-1].id'`,
		Args: wrapArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runListOf(cmd.Context(), g, opts)
		},
	}
	cmd.Flags().StringArrayVar(&opts.Hosts, "host", nil, "list only the snapshots of this host (repeatable)")
	return cmd
}

// listEntry is one snapshot in list's --json output.
type listEntry struct {
	ID          string            `json:"id"`
	Created     time.Time         `json:"created"`
	Host        string            `json:"host"`
	Tags        map[string]string `json:"tags,omitempty"`
	Components  []string          `json:"components"`
	StoredBytes int64             `json:"stored_bytes"`
	RawBytes    int64             `json:"raw_bytes"`
	Error       string            `json:"error,omitempty"`
}

func runList(ctx context.Context, g *globalOptions) error {
	return runListOf(ctx, g, listOptions{})
}

func runListOf(ctx context.Context, g *globalOptions, opts listOptions) error {
	for _, h := range opts.Hosts {
		if h == "" {
			return usageErrorf("list: --host is empty")
		}
	}
	repo, err := openRepo(ctx, g, false)
	if err != nil {
		return err
	}
	defer repo.Close()
	ids, err := repo.List(ctx)
	if err != nil {
		return err
	}
	entries := make([]listEntry, len(ids))
	grp, gctx := errgroup.WithContext(ctx)
	grp.SetLimit(8)
	for i, id := range ids {
		grp.Go(func() error {
			m, err := snapshot.Load(gctx, repo, id)
			if err != nil {
				if gctx.Err() != nil {
					return err
				}
				g.logger().Warn("unreadable manifest", "id", id, "err", err)
				entries[i] = listEntry{ID: id, Error: err.Error(), Components: []string{}}
				return nil
			}
			e := listEntry{ID: m.ID, Created: m.Created, Host: m.Host, Tags: m.Tags,
				StoredBytes: m.StoredSize(), RawBytes: m.RawSize(), Components: []string{}}
			for _, c := range m.Components {
				e.Components = append(e.Components, c.Kind)
			}
			entries[i] = e
			return nil
		})
	}
	if err := grp.Wait(); err != nil {
		return err
	}
	hosts := map[string]bool{}
	for _, e := range entries {
		if e.Error == "" {
			hosts[e.Host] = true
		}
	}
	if len(opts.Hosts) > 0 {
		for _, h := range opts.Hosts {
			if !hosts[h] && len(hosts) > 0 {
				g.logger().Warn("no snapshot of this host", "host", h, "hosts", slices.Sorted(maps.Keys(hosts)))
			}
		}
		entries = slices.DeleteFunc(entries, func(e listEntry) bool { return e.Error == "" && !slices.Contains(opts.Hosts, e.Host) })
	}
	// Oldest first; snapshots of the same second by their creation time.
	slices.SortStableFunc(entries, func(a, b listEntry) int {
		as, _, _ := strings.Cut(a.ID, "-")
		bs, _, _ := strings.Cut(b.ID, "-")
		if c := strings.Compare(as, bs); c != 0 {
			return c
		}
		return a.Created.Compare(b.Created)
	})
	if g.JSON {
		return printJSON(g, entries)
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCREATED\tHOST\tCOMPONENTS\tSTORED\tRAW\tTAGS")
	for _, e := range entries {
		if e.Error != "" {
			fmt.Fprintf(tw, "%s\t-\t-\tDAMAGED\t-\t-\t%s\n", e.ID, e.Error)
			continue
		}
		var tags []string
		for k, v := range e.Tags {
			tags = append(tags, k+"="+v)
		}
		slices.Sort(tags)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.Created.Local().Format(time.DateTime), e.Host,
			strings.Join(e.Components, ","), snapshot.HumanBytes(e.StoredBytes), snapshot.HumanBytes(e.RawBytes), strings.Join(tags, ","))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	g.logger().Info("listed snapshots", "count", len(entries), "hosts", slices.Sorted(maps.Keys(hosts)), "repo", repo.Name())
	return nil
}

// quoteHosts is a set of host names for messages: sorted and quoted.
func quoteHosts(hosts map[string]bool) string {
	var q []string
	for _, h := range slices.Sorted(maps.Keys(hosts)) {
		q = append(q, fmt.Sprintf("%q", h))
	}
	return strings.Join(q, ", ")
}

// localHost is the host name snapshot records by default: this machine's.
func localHost() string {
	h, _ := os.Hostname()
	return h
}

// checkSnapshotRef refuses an empty ID|latest argument: it is usually a
// variable that was never set (restore "$ID"), and must not mean latest.
func checkSnapshotRef(command, ref string) error {
	if ref == "" {
		return usageErrorf("%s: snapshot ID is empty (use \"latest\" for the newest)", command)
	}
	return nil
}

// loadSnapshotOf is loadSnapshot for restore, verify and export: the
// ID|latest argument is checked first, and latest is the newest snapshot of
// host (--host), or, without it, of this machine when the repository holds
// snapshots of several hosts, or of the only host there is. An ID of another
// host than --host is refused. The chosen snapshot and its host are logged.
func loadSnapshotOf(ctx context.Context, g *globalOptions, command string, crypto cryptoOptions, ref, host string) (*storage.Repo, *snapshot.Manifest, snapshot.ReadOptions, error) {
	fail := func(err error) (*storage.Repo, *snapshot.Manifest, snapshot.ReadOptions, error) {
		return nil, nil, snapshot.ReadOptions{}, err
	}
	if err := checkSnapshotRef(command, ref); err != nil {
		return fail(err)
	}
	ids, err := crypto.identities()
	if err != nil {
		return fail(err)
	}
	repo, err := openRepo(ctx, g, false)
	if err != nil {
		return fail(err)
	}
	local := localHost()
	m, err := snapshot.LoadFor(ctx, repo, ref, snapshot.Selection{Host: host, Local: local})
	var herr *snapshot.HostNotFoundError
	switch {
	case errors.As(err, &herr) && host != "":
		err = fmt.Errorf("%s: no snapshot of host %q; the repository holds snapshots of %s: %w",
			command, host, quoteHosts(setOf(herr.Hosts)), snapshot.ErrNotFound)
	case errors.As(err, &herr):
		err = fmt.Errorf("%s: latest: the repository holds snapshots of several hosts and none of this one (%q): choose one of %s with --host: %w",
			command, local, quoteHosts(setOf(herr.Hosts)), snapshot.ErrNotFound)
	case err == nil && host != "" && m.Host != host:
		err = usageErrorf("%s: snapshot %s was taken on host %q, not %q (--host)", command, m.ID, m.Host, host)
	}
	if err != nil {
		repo.Close()
		return fail(err)
	}
	why := "by ID"
	switch {
	case ref != snapshot.Latest:
	case host != "":
		why = "the newest of --host"
	case m.Host == local:
		why = "the newest of this host"
	default:
		why = "the newest of the only host in the repository"
	}
	g.logger().Info("snapshot chosen", "id", m.ID, "host", m.Host, "as", why)
	return repo, m, snapshot.ReadOptions{Identities: ids}, nil
}

func setOf(hosts []string) map[string]bool {
	m := make(map[string]bool, len(hosts))
	for _, h := range hosts {
		m[h] = true
	}
	return m
}

// hostLabel is a host name for a message: as is, or "" quoted when empty.
func hostLabel(h string) string {
	if h == "" {
		return `""`
	}
	return h
}
