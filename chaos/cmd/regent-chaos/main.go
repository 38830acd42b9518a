// Command regent-chaos runs Regent's fault-injection scenarios outside
// `go test`: the fixed short scenario, or long random schedules (soak),
// printing the report table and, for a failing run, the seed to replay.
//
//	go run ./chaos/cmd/regent-chaos -short                  # the scenario TestChaosShort runs
//	go run ./chaos/cmd/regent-chaos -partition              # TestChaosPartitions' (namespaces, as root)
//	go run ./chaos/cmd/regent-chaos -runs 5 -faults 10      # random schedules, seeds printed
//	go run ./chaos/cmd/regent-chaos -seed 1234 -faults 10   # replay one
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/regent-registry/regent/chaos"
)

func main() {
	var (
		seed     = flag.Uint64("seed", 0, "seed of the first run (0: drawn from the clock and printed)")
		runs     = flag.Int("runs", 1, "number of runs; run i uses seed+i")
		nodes    = flag.Int("nodes", 3, "servers per cluster (3 or 5)")
		faults   = flag.Int("faults", 8, "random node faults per run (soak)")
		short    = flag.Bool("short", false, "run the fixed short scenario (TestChaosShort's) instead of a random schedule")
		part     = flag.Bool("partition", false, "run the fixed partition scenario (TestChaosPartitions') instead of a random schedule")
		mode     = flag.String("mode", "auto", "loopback, netns (network namespaces, as root) or auto (netns when possible)")
		nets     = flag.Bool("partitions", true, "random schedules also draw network faults (isolate, partition, bridge, bridge-follower, far-clients; netns mode only)")
		bin      = flag.String("bin", "", "prebuilt regent binary (default: go build it)")
		keep     = flag.Bool("keep", false, "keep every run's folder (logs and data), not only failing ones")
		verbose  = flag.Bool("v", false, "print progress lines")
		selfJoin = flag.Bool("seed-joins-itself", false, "give node1 --join its own gossip address like every other node (reproduces a finding, see chaos/README.md)")
		slack    = flag.Duration("slack", 10*time.Second, "added to every bound")
		srvArgs  = flag.String("server-args", "", "extra flags for every regent server, space-separated (e.g. --raft-log-store=wal)")
	)
	flag.Parse()
	if *seed == 0 {
		*seed = uint64(time.Now().UnixNano() % 1_000_000_000)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *bin == "" {
		dir, err := os.MkdirTemp("", "regent-chaos-bin-")
		if err != nil {
			fatal(err)
		}
		defer os.RemoveAll(dir)
		if *bin, err = chaos.Build(ctx, dir); err != nil {
			fatal(err)
		}
	}
	var reps []*chaos.Report
	failed := 0
	for i := range *runs {
		s := *seed + uint64(i)
		sc := chaos.SoakScenario(s, *nodes, *faults)
		sc.Spec.Partitions = *nets
		switch {
		case *short:
			sc = chaos.ShortScenario(s)
			sc.Nodes = *nodes
		case *part:
			sc = chaos.PartitionScenario(s)
			sc.Nodes = *nodes
		}
		sc.Mode = *mode
		sc.Bin, sc.Slack, sc.SeedJoinsItself = *bin, *slack, *selfJoin
		sc.ServerArgs = strings.Fields(*srvArgs)
		if *verbose {
			sc.Logf = func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
		}
		fmt.Printf("=== run %d/%d: %s seed %d\n", i+1, *runs, sc.Name, s)
		rctx, cancel := context.WithTimeout(ctx, 10*time.Minute+time.Duration(len(sc.Spec.Required)+sc.Spec.Random)*90*time.Second)
		rep, err := chaos.Run(rctx, sc)
		cancel()
		if rep != nil {
			fmt.Println(rep)
			reps = append(reps, rep)
		}
		bad := err != nil || rep.Failed()
		if err != nil {
			fmt.Printf("harness error: %v\n", err)
		}
		if bad {
			failed++
			fmt.Printf("FAILED: replay with: go run ./chaos/cmd/regent-chaos -seed %d -nodes %d -faults %d -mode %s -partitions=%v -short=%v -partition=%v\n",
				s, *nodes, *faults, *mode, *nets, *short, *part)
		}
		if rep != nil && !bad && !*keep {
			os.RemoveAll(rep.Dir)
		}
		if ctx.Err() != nil {
			break
		}
	}
	fmt.Printf("=== summary\n%s", chaos.Table(reps))
	if failed > 0 {
		fmt.Printf("%d of %d runs failed\n", failed, len(reps))
		os.Exit(1)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "regent-chaos:", err)
	os.Exit(2)
}
