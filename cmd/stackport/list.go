package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/stackport/stackport/snapshot"
)

func newListCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the snapshots in the repository",
		Long: `List the snapshots in the repository, oldest first. Only complete snapshots
(those with a manifest) are listed; leftovers of failed or running snapshots
are not.`,
		Example: `  stackport list --repo file:///var/backups/stackport
  stackport list --json | jq -r '.[-1].id'`,
		Args: wrapArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runList(cmd.Context(), g)
		},
	}
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
	g.logger().Info("listed snapshots", "count", len(entries), "repo", repo.Name())
	return nil
}
