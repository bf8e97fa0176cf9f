// Command stackport snapshots a modular-monolith container (its persistent
// volume and embedded databases) into object storage, verifies and exports
// the snapshots, and restores them into plain directories or managed
// services.
//
// Exit codes: 0 success, 1 failure, 2 usage error, 3 verification found
// corrupt or missing data.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/stackport/stackport/snapshot"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	interrupted := ctx.Err() != nil
	stop()
	if err != nil {
		if interrupted {
			err = fmt.Errorf("interrupted: %w", err)
		}
		fmt.Fprintln(os.Stderr, "stackport:", err)
	}
	os.Exit(exitCode(err))
}

// exitCode maps an error to the documented exit codes.
func exitCode(err error) int {
	var uerr usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &uerr):
		return 2
	case errors.Is(err, snapshot.ErrCorrupt), errors.Is(err, snapshot.ErrDiffers):
		return 3
	}
	return 1
}
