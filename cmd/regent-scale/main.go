// Command regent-scale runs the scale model of Distro (package
// internal/scale) over a sweep of cluster sizes and client counts, prints
// Markdown tables with the command line, date and machine, and draws the
// curves as SVG.
//
//	go run ./cmd/regent-scale            # the full sweep (~10 minutes on 2 cores)
//	go run ./cmd/regent-scale -quick     # a small sweep, under a minute
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/regent-registry/regent/internal/scale"
)

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		mult := 1
		switch {
		case strings.HasSuffix(f, "k"):
			mult, f = 1000, strings.TrimSuffix(f, "k")
		case strings.HasSuffix(f, "M"):
			mult, f = 1000000, strings.TrimSuffix(f, "M")
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad count %q", f)
		}
		out = append(out, n*mult)
	}
	if len(out) == 0 {
		return nil, errors.New("empty list")
	}
	return out, nil
}

// saved is results.json: a run's results with what the tables say of it.
type saved struct {
	Meta      scale.Meta
	MaxCopies int
	Skipped   []string
	Results   []scale.Result
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "regent-scale:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("regent-scale", flag.ContinueOnError)
	fs.SetOutput(stderr)
	nodesF := fs.String("nodes", "3,5,9,17,33,65", "node counts, comma-separated")
	clientsF := fs.String("clients", "10k,100k,1M", "client counts in total, comma-separated (k and M suffixes)")
	maxCopies := fs.Int("max-copies", 3_400_000, "skip sizes where nodes × clients (the client copies held in memory) exceeds this; about 1.5 KB each")
	quick := fs.Bool("quick", false, "a small sweep for a quick look: nodes 3,5,9,17 and 2k,10k clients")
	seed := fs.Uint64("seed", 1, "seed of the schedule")
	out := fs.String("out", "docs/scale", "directory for results.md and the SVG plots (empty: print only)")
	reg := fs.Float64("reg", 0.0005, "new clients registering per second, as a share of the clients")
	move := fs.Float64("move", 0.0002, "clients moving to another node per second, as a share of the clients")
	disc := fs.Float64("disc", 0.0005, "clients disconnecting per second, as a share of the clients")
	probes := fs.Int("probes", 100, "changes of each kind whose convergence is measured per run")
	format := fs.String("format", "svg", "plot format: svg or png")
	from := fs.String("from", "", "redraw tables and plots from a results.json of an earlier run instead of running")
	timeout := fs.Duration("timeout", 30*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *quick {
		*nodesF, *clientsF = "3,5,9,17", "2k,10k"
	}
	nodes, err := parseInts(*nodesF)
	if err != nil {
		return fmt.Errorf("-nodes: %w", err)
	}
	clients, err := parseInts(*clientsF)
	if err != nil {
		return fmt.Errorf("-clients: %w", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	// The big runs hold millions of client copies: collect earlier than
	// the default so that the heap stays near what is live.
	debug.SetGCPercent(50)

	var results []scale.Result
	var skipped []string
	if *from != "" {
		b, err := os.ReadFile(*from)
		if err != nil {
			return err
		}
		var sv saved
		if err := json.Unmarshal(b, &sv); err != nil {
			return fmt.Errorf("%s: %w", *from, err)
		}
		results, skipped, *maxCopies = sv.Results, sv.Skipped, sv.MaxCopies
		clients = nil // nothing to run
	}
	for _, c := range clients {
		for _, n := range nodes {
			if n*c > *maxCopies {
				skipped = append(skipped, fmt.Sprintf("%d×%d", n, c))
				continue
			}
			p := scale.DefaultParams(n, c)
			p.Seed, p.RegPerSec, p.MovePerSec, p.DiscPerSec, p.Probes = *seed, *reg, *move, *disc, *probes
			fmt.Fprintf(stderr, "running %d nodes, %d clients ... ", n, c)
			r, err := scale.Run(ctx, p)
			if err != nil {
				fmt.Fprintln(stderr)
				return err
			}
			fmt.Fprintf(stderr, "%.1f s\n", r.Wall.Seconds())
			results = append(results, r)
		}
	}
	scale.SortResults(results)
	meta := scale.Meta{
		Command: strings.TrimSpace("regent-scale " + strings.Join(args, " ")),
		Date:    time.Now(),
		Machine: fmt.Sprintf("%s/%s, %d CPUs, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version()),
	}
	if *from != "" {
		var sv saved
		b, _ := os.ReadFile(*from)
		if err := json.Unmarshal(b, &sv); err == nil {
			meta = sv.Meta // the tables tell what run made them
		}
	}
	var md strings.Builder
	if err := scale.WriteMarkdown(&md, meta, results); err != nil {
		return err
	}
	if len(skipped) > 0 {
		fmt.Fprintf(&md, "\nNot run (nodes×clients above -max-copies=%d): %s.\n", *maxCopies, strings.Join(skipped, ", "))
	}
	if _, err := io.WriteString(stdout, md.String()); err != nil {
		return err
	}
	if *out == "" {
		return nil
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*out, "results.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	if *from == "" {
		b, err := json.MarshalIndent(saved{Meta: meta, MaxCopies: *maxCopies, Skipped: skipped, Results: results}, "", " ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(*out, "results.json"), append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	files, err := scale.WritePlots(*out, *format, results)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s and %s\n", filepath.Join(*out, "results.md"), strings.Join(files, ", "))
	return nil
}
