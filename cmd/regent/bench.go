package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/regent-registry/regent/internal/bench"
	"github.com/regent-registry/regent/internal/daemon"
)

func newBenchCmd() *cobra.Command {
	var (
		server   string
		clients  []int
		duration time.Duration
		rounds   int
		output   string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure ephemeral registration and query throughput beside the no-op gRPC ceiling",
		Long: `Measure a node over real gRPC connections: ephemeral registration over
sessions beside a no-op session round trip, and service queries beside the
standard health Check, at each --clients concurrency, alternating operation
and baseline in rounds. Without --server it starts a throwaway node in this
process on a loopback port. Prints progress lines, then a Markdown table (or
JSON with -o json).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output %q: want table or json", output)
			}
			ctx := cmd.Context()
			if server == "" {
				dir, err := os.MkdirTemp("", "regent-bench-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(dir)
				// fsync stays on, as on a real node.
				cfg := daemon.DefaultLocalConfig("bench", dir)
				cfg.NoSync = false
				d, err := daemon.Start(ctx, cfg)
				if err != nil {
					return err
				}
				defer func() {
					sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					d.Shutdown(sctx)
				}()
				server = d.GRPCAddr()
				fmt.Fprintf(cmd.ErrOrStderr(), "started a throwaway node on %s\n", server)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "benchmarking %s at %v clients, %v per measurement\n", server, clients, duration)
			rs, err := bench.Run(ctx, bench.Options{Server: server, Concurrency: clients, Duration: duration, Rounds: rounds, Progress: cmd.ErrOrStderr()})
			if err != nil {
				return err
			}
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), rs)
			}
			bench.Table(cmd.OutOrStdout(), rs)
			return nil
		},
	}
	cmd.Flags().StringVar(&server, "server", "", "node to measure; default a throwaway node in this process")
	cmd.Flags().IntSliceVar(&clients, "clients", []int{1, 16, 64}, "concurrent clients, each with its own connection and session")
	cmd.Flags().DurationVar(&duration, "duration", 4*time.Second, "time per operation and per baseline at each concurrency")
	cmd.Flags().IntVar(&rounds, "rounds", 2, "alternate operation and baseline this many times")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}
