package scale

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/regent-registry/regent/ephemeral"
)

// Meta is what a report says about the run that made it.
type Meta struct {
	Command string
	Date    time.Time
	Machine string // e.g. "linux/amd64, 2 CPUs, go1.26.8"
}

func kib(b float64) string {
	switch {
	case b >= 100*1024:
		return fmt.Sprintf("%.0f", b/1024)
	case b >= 1024:
		return fmt.Sprintf("%.1f", b/1024)
	default:
		return fmt.Sprintf("%.2f", b/1024)
	}
}

func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func dur(d time.Duration) string {
	switch {
	case d < 0:
		return "n/a"
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	default:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
}

func clientsLabel(c int) string {
	switch {
	case c >= 1000000 && c%1000000 == 0:
		return fmt.Sprintf("%dM", c/1000000)
	case c >= 1000 && c%1000 == 0:
		return fmt.Sprintf("%dk", c/1000)
	}
	return fmt.Sprint(c)
}

// SortResults orders results by clients, then nodes.
func SortResults(rs []Result) {
	slices.SortFunc(rs, func(a, b Result) int {
		if a.P.Clients != b.P.Clients {
			return a.P.Clients - b.P.Clients
		}
		return a.P.Nodes - b.P.Nodes
	})
}

// WriteMarkdown writes the tables of a sweep.
func WriteMarkdown(w io.Writer, meta Meta, rs []Result) error {
	var b strings.Builder
	cfg := ephemeral.DefaultConfig()
	fmt.Fprintf(&b, "Command: `%s`  \nDate: %s  \nMachine: %s\n\n", meta.Command, meta.Date.UTC().Format("2006-01-02 15:04 MST"), meta.Machine)
	if len(rs) > 0 {
		p := rs[0].P
		fmt.Fprintf(&b, "Regent: the real `ephemeral` engine with `DefaultConfig` (sync delay %v, verify every %v, verify chunk %d, expiry %v, owner grace %v, sweep every %v), "+
			"%d-node to %d-node clusters in one process on `InmemNetwork` and a virtual clock. "+
			"Nacos: a counting model of Nacos 2.x Distro (sync %v after the first change, merged per client and peer, scanned every %v; one verify request per client per peer every %v; a synced client expires %v after its last verify, cleaner every %v).  \n",
			cfg.SyncDelay, cfg.VerifyInterval, cfg.VerifyChunk, cfg.Expiry, cfg.OwnerGrace, cfg.SweepInterval,
			minNodes(rs), maxNodes(rs), NacosSyncDelay, NacosTick, NacosVerifyInterval, NacosExpiry, NacosCleanerPeriod)
		fmt.Fprintf(&b, "Load: every client holds one instance (services = clients/100); churn per second, as a share of the clients: %.2f%% new clients register, %.2f%% move to another node, %.2f%% disconnect. "+
			"Windows (virtual time): %v load, %v quiet (verify only), %v churn. Then the last node dies; gossip tells the survivors after %v; %.0f%% of its clients reconnect to a survivor within %v, the rest never come back.  \n",
			100*p.RegPerSec, 100*p.MovePerSec, 100*p.DiscPerSec, p.Warm, p.Quiet, p.Churn, p.Detect, 100*p.ReconnectFrac, p.ReconnectWindow)
		fmt.Fprintf(&b, "Per node: requests sent per second, and bytes sent per second (its requests and its replies to others' requests: protobuf bodies for Regent as `rpc/peer.go` sends them, JSON-in-protobuf for Nacos, plus %d bytes of gRPC/HTTP2 framing per message for both), mean over the nodes. "+
			"The network is instant, so convergence is the protocols' own delay (add one network hop to both). Memory is Regent's heap after the load: the growth of `runtime.MemStats.HeapAlloc` after a GC, divided by the nodes.  \n", Framing)
		ns := NewNacosSizes()
		fmt.Fprintf(&b, "Nacos message sizes used (bytes, framing included): CHANGE of a one-instance client %d, DELETE %d, VERIFY %d, response %d.\n\n", ns.Change, ns.Delete, ns.Verify, ns.Response)
	}

	b.WriteString("Traffic per node with churn (churn window):\n\n")
	b.WriteString("| nodes | clients | changes/s (cluster) | Regent req/s | Regent KiB/s | of which verify | Nacos req/s | Nacos KiB/s | of which verify | Nacos/Regent bytes |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rs {
		ratio := "n/a"
		if r.Regent.BytesPerSec > 0 {
			ratio = fmt.Sprintf("%.0f×", r.Nacos.BytesPerSec/r.Regent.BytesPerSec)
		}
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.P.Nodes, clientsLabel(r.P.Clients), num(r.ChurnPerSec),
			num(r.Regent.MsgsPerSec), kib(r.Regent.BytesPerSec), kib(r.Regent.VerifyBytesPerSec),
			num(r.Nacos.MsgsPerSec), kib(r.Nacos.BytesPerSec), kib(r.Nacos.VerifyBytesPerSec), ratio)
	}

	b.WriteString("\nVerify rounds per node without churn (quiet window), and Regent's digest mismatches with churn:\n\n")
	b.WriteString("| nodes | clients | Regent req/s | Regent B/s | Nacos req/s | Nacos KiB/s | Regent list msgs (quiet) | Regent list msgs (churn) | digest rounds (churn) |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rs {
		rounds := r.P.Nodes * (r.P.Nodes - 1) * int(r.P.Churn/ephemeral.DefaultConfig().VerifyInterval)
		fmt.Fprintf(&b, "| %d | %s | %s | %.0f | %s | %s | %d | %d | %d |\n", r.P.Nodes, clientsLabel(r.P.Clients),
			num(r.Regent.QuietMsgsPerSec), r.Regent.QuietBytesPerSec, num(r.Nacos.QuietMsgsPerSec), kib(r.Nacos.QuietBytesPerSec),
			r.QuietListMsgs, r.ChurnListMsgs, rounds)
	}

	b.WriteString("\nConvergence, repair and memory:\n\n")
	b.WriteString("| nodes | clients | Regent conv. p50 / max | Nacos conv. p50 / max | Regent repair: re-owned / gone | Nacos repair: re-owned / gone | Regent heap MiB/node | B per client copy | Nacos peak queued tasks/node | wall s |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %d | %s | %s / %s | %s / %s | %s / %s | %s / %s | %.1f | %.0f | %d | %.1f |\n", r.P.Nodes, clientsLabel(r.P.Clients),
			dur(r.Regent.ConvP50), dur(r.Regent.ConvMax), dur(r.Nacos.ConvP50), dur(r.Nacos.ConvMax),
			dur(r.Regent.Reowned), dur(r.Regent.Gone), dur(r.Nacos.Reowned), dur(r.Nacos.Gone),
			r.Regent.HeapPerNode/(1<<20), r.Regent.HeapPerNode/float64(r.P.Clients), r.Nacos.PeakTasks, r.Wall.Seconds())
	}
	conv := 0
	for _, r := range rs {
		conv += r.Unconverged
	}
	fmt.Fprintf(&b, "\nConvergence is over %d registrations per run (max over every kind of change: Regent %s, Nacos %s); %d probes were dropped in all because their client changed again before converging.\n",
		maxProbes(rs), dur(maxOf(rs, func(f Figures) time.Duration { return f.ConvAllMax }, true)), dur(maxOf(rs, func(f Figures) time.Duration { return f.ConvAllMax }, false)), conv)

	fits := Fits(rs)
	if len(fits) > 0 {
		b.WriteString("\nGrowth exponents, from least-squares fits of log(figure) on log(nodes) at a fixed client count, and on log(clients) at a fixed node count (y ∝ x^k):\n\n")
		b.WriteString("| figure (per node) | system | k vs nodes | k vs clients |\n|---|---|---|---|\n")
		for _, f := range fits {
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", f.Figure, f.System, f.VsNodes, f.VsClients)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func minNodes(rs []Result) int {
	n := math.MaxInt
	for _, r := range rs {
		n = min(n, r.P.Nodes)
	}
	return n
}

func maxNodes(rs []Result) int {
	n := 0
	for _, r := range rs {
		n = max(n, r.P.Nodes)
	}
	return n
}

func maxProbes(rs []Result) int {
	n := 0
	for _, r := range rs {
		n = max(n, r.P.Probes)
	}
	return n
}

func maxOf(rs []Result, f func(Figures) time.Duration, regent bool) time.Duration {
	var m time.Duration
	for _, r := range rs {
		fig := r.Nacos
		if regent {
			fig = r.Regent
		}
		m = max(m, f(fig))
	}
	return m
}

// Fit is one row of growth exponents.
type Fit struct {
	Figure, System     string
	VsNodes, VsClients string
}

// slope fits log y = a + k log x and returns k, or NaN with fewer than two
// distinct points or a non-positive value.
func slope(xs, ys []float64) float64 {
	if len(xs) < 2 {
		return math.NaN()
	}
	var sx, sy, sxx, sxy float64
	for i := range xs {
		if xs[i] <= 0 || ys[i] <= 0 {
			return math.NaN()
		}
		x, y := math.Log(xs[i]), math.Log(ys[i])
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	n := float64(len(xs))
	d := n*sxx - sx*sx
	if d == 0 {
		return math.NaN()
	}
	return (n*sxy - sx*sy) / d
}

type figureFn struct {
	name string
	get  func(Figures) float64
	both bool
}

var fitFigures = []figureFn{
	{"bytes/s, churn window", func(f Figures) float64 { return f.BytesPerSec }, true},
	{"sync bytes/s, churn window", func(f Figures) float64 { return f.SyncBytesPerSec }, true},
	{"verify bytes/s, churn window", func(f Figures) float64 { return f.VerifyBytesPerSec }, true},
	{"verify bytes/s, quiet window", func(f Figures) float64 { return f.QuietBytesPerSec }, true},
	{"heap", func(f Figures) float64 { return f.HeapPerNode }, false},
}

// Fits computes growth exponents of the main figures.
func Fits(rs []Result) []Fit {
	var clients, nodes []int
	for _, r := range rs {
		if !slices.Contains(clients, r.P.Clients) {
			clients = append(clients, r.P.Clients)
		}
		if !slices.Contains(nodes, r.P.Nodes) {
			nodes = append(nodes, r.P.Nodes)
		}
	}
	slices.Sort(clients)
	slices.Sort(nodes)
	var out []Fit
	for _, ff := range fitFigures {
		for _, sys := range []string{"Regent", "Nacos"} {
			if sys == "Nacos" && !ff.both {
				continue
			}
			get := func(r Result) float64 {
				if sys == "Nacos" {
					return ff.get(r.Nacos)
				}
				return ff.get(r.Regent)
			}
			var vsN, vsC []string
			for _, c := range clients {
				var xs, ys []float64
				for _, r := range rs {
					if r.P.Clients == c {
						xs, ys = append(xs, float64(r.P.Nodes)), append(ys, get(r))
					}
				}
				if k := slope(xs, ys); !math.IsNaN(k) {
					vsN = append(vsN, fmt.Sprintf("%.2f (%s, N=%s)", k, clientsLabel(c), span(xs)))
				}
			}
			for _, n := range nodes {
				var xs, ys []float64
				for _, r := range rs {
					if r.P.Nodes == n {
						xs, ys = append(xs, float64(r.P.Clients)), append(ys, get(r))
					}
				}
				if k := slope(xs, ys); !math.IsNaN(k) {
					vsC = append(vsC, fmt.Sprintf("%.2f (N=%d)", k, n))
				}
			}
			if len(vsN)+len(vsC) > 0 {
				out = append(out, Fit{Figure: ff.name, System: sys, VsNodes: strings.Join(vsN, "; "), VsClients: strings.Join(vsC, "; ")})
			}
		}
	}
	return out
}

func span(xs []float64) string {
	lo, hi := slices.Min(xs), slices.Max(xs)
	return fmt.Sprintf("%.0f–%.0f", lo, hi)
}
