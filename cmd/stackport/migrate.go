package main

import (
	"github.com/spf13/cobra"
)

// newMigrateCommand is a placeholder until the migrate command lands.
func newMigrateCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:     "migrate",
		Short:   "Move the monolith's data into managed services (not yet available)",
		Example: "  stackport migrate --help",
		Hidden:  true,
		Args:    wrapArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return usageErrorf("migrate is not available in this build yet")
		},
	}
}
