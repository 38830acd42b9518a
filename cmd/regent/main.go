// Command regent is the Regent service registry: the server daemon and the
// command-line client in one static binary.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	// Signals first: every command runs under a context that SIGINT and
	// SIGTERM cancel.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRoot().ExecuteContext(ctx); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "regent",
		Short:         "Regent: a clustered service registry",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newServerCmd(),
		newRegisterCmd(),
		newDeregisterCmd(),
		newListCmd(),
		newServicesCmd(),
		newWatchCmd(),
		newMembersCmd(),
		newVersionCmd(),
		newBenchCmd(),
	)
	return root
}
