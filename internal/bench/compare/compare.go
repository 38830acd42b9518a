// Package compare measures Regent beside etcd (and, optionally, ZooKeeper)
// on the same machine, in the same run: a 3-node Regent cluster and a 3-member etcd cluster of real
// processes on loopback, driven by the same Go load generator at each
// concurrency, the two systems alternating in rounds so that machine drift
// hits both alike. `make bench-compare` runs it through cmd/regent-compare.
//
// Workloads, each Regent's way beside the way etcd-based registries do it:
//   - ephemeral: a new instance with its liveness binding: a new Regent
//     session (stream + Hello) on the client's connection registering it,
//     kept open, beside lease grant + put with the lease + keep-alive;
//   - ephemeral-shared: one more instance on the client's one long-lived
//     binding: a register on its SDK session, beside a put with its one
//     lease (Distro syncs a client's whole state, so the cost grows with
//     the instances a session holds);
//   - persistent: a persistent register (through Raft), beside a put;
//   - noop: the cheapest round trip each system's client makes to its
//     node, which bounds what any request to a server can reach on this
//     machine: a Ping on the Regent SDK's session (the path of its
//     lookups), beside the standard gRPC health Check on an etcd member
//     (etcd's range is a unary call); no target, a baseline;
//   - lookup: list a service's 10 instances from the server, beside a
//     serializable range over the service's prefix;
//   - lookup-watched: the same list by a client subscribed to the service,
//     which the Regent SDK answers from its push-kept cache (as Nacos'
//     selectInstances with subscribe=true does), beside the same range
//     (etcd's client has no such cache);
//   - notify: a register on one node seen by a subscriber on another,
//     beside a put seen by a watch on another member (latency); each
//     client changes its own service at most every NotifyPace (a round
//     lasts long enough for NotifySamples changes), as
//     services change now and then (Regent merges a burst of changes to
//     one service into a push per merge window), and before each change,
//     untimed, removes its previous instance (key) and waits until the
//     subscriber saw it go, so that the service holds one instance
//     however long the run (else Regent's cost per change, which grows
//     with a client's and a service's instances, would grow with it);
//   - removal: a client process is killed; time until its instance is gone
//     for a subscriber on another node, beside lease expiry seen by a watch.
package compare

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/regent-registry/regent/internal/bench/load"
)

// Workload names, in the order they run.
const (
	Ephemeral  = "ephemeral"
	Shared     = "ephemeral-shared"
	Persistent = "persistent"
	Noop       = "noop"
	Lookup     = "lookup"
	Watched    = "lookup-watched"
	Notify     = "notify"
	Removal    = "removal"
)

// NotifyPace spaces each notify client's changes (both systems alike).
const NotifyPace = 50 * time.Millisecond

// NotifySamples is how many changes a notify round measures at least, for
// every system alike: at one client a 2 s round paced by NotifyPace holds
// 40, and the p99 of 40 samples is their maximum, one late push.
const NotifySamples = 100

// roundDuration is how long a round of workload w at clients runs: d, or
// for notify at least long enough for NotifySamples changes.
func roundDuration(w string, clients int, d time.Duration) time.Duration {
	if w == Notify && clients > 0 {
		d = max(d, NotifySamples*NotifyPace/time.Duration(clients))
	}
	return d
}

// Workloads lists every workload.
var Workloads = []string{Ephemeral, Shared, Persistent, Noop, Lookup, Watched, Notify, Removal}

// Options of Run.
type Options struct {
	RegentBin string // the regent binary
	EtcdBin   string // etcd (Debian's etcd-server: /usr/bin/etcd)
	// ZooKeeperJar, if set, adds a ZooKeeper ensemble as a third system:
	// the server's jar (Debian's zookeeperd: /usr/share/java/zookeeper.jar),
	// run with Java.
	ZooKeeperJar string
	Java         string // java for ZooKeeper (default: java on PATH)
	Self         string // this program, re-run as a client process for removal
	Dir          string // data and logs; kept for reading after the run
	Clients      []int  // concurrencies; each at most 64 (see DefaultConfig)
	Duration     time.Duration
	Rounds       int
	// EtcdTTL is the lease TTL, in seconds, of the etcd removal workload:
	// the shortest etcd grants with its default timings is 2 s (it
	// raises shorter ones to its minimum).
	EtcdTTL int64
	// EtcdKeepHistory leaves etcd's history alone: by default it is
	// compacted, untimed, before every etcd measurement, as a maintained
	// etcd compacts (see etcdSystem.compact).
	EtcdKeepHistory bool
	Workloads       []string
	Progress        io.Writer
	// RegentArgs are added to every `regent server` command line (say
	// --pprof, to profile a node during the run).
	RegentArgs []string
	// ProfileDir, if set, receives a CPU profile of every Regent node
	// taken over each Regent measurement
	// (<workload>-c<clients>-r<round>-<node>.pprof); it adds --pprof to
	// the nodes' command lines.
	ProfileDir string
}

// DefaultOptions: 1, 16 and 64 clients, 2 s per measurement, 2 rounds.
func DefaultOptions() Options {
	return Options{Clients: []int{1, 16, 64}, Duration: 2 * time.Second, Rounds: 2, EtcdTTL: 2, Workloads: Workloads, Progress: io.Discard}
}

// Validate reports the first unusable option.
func (o Options) Validate() error {
	switch {
	case o.RegentBin == "" || o.EtcdBin == "" || o.Self == "" || o.Dir == "":
		return fmt.Errorf("compare: RegentBin, EtcdBin, Self and Dir are required")
	case len(o.Clients) == 0 || o.Duration <= 0 || o.Rounds < 1 || o.EtcdTTL < 1:
		return fmt.Errorf("compare: need clients, a positive duration, rounds and TTL")
	}
	for _, c := range o.Clients {
		// At 1,000 clients on 2 cores etcd loses its leader over and over
		// (peers.md §4.2), which would flatter Regent.
		if c < 1 || c > 64 {
			return fmt.Errorf("compare: %d clients: want 1..64", c)
		}
	}
	for _, w := range o.Workloads {
		if !slices.Contains(Workloads, w) {
			return fmt.Errorf("compare: unknown workload %q (want one of %v)", w, Workloads)
		}
	}
	return nil
}

// system is one side of the comparison. Each method sets up its clients
// (not timed), measures, and tears them down.
type system interface {
	name() string
	measure(ctx context.Context, workload string, clients, round int, d time.Duration) (load.Sample, error)
	// pids are the system's server processes.
	pids() []int
}

// Row is one workload at one concurrency.
type Row struct {
	Workload     string
	Clients      int
	Regent, Etcd load.Sample
	// ZooKeeper is measured only when Options.ZooKeeperJar is set.
	ZooKeeper load.Sample
	// RegentCPU, EtcdCPU and ZooKeeperCPU: CPU time over the timed
	// windows (not for removal, whose clients are processes of their own).
	RegentCPU, EtcdCPU, ZooKeeperCPU CPU
}

// ZooKeeperRatio is Regent/ZooKeeper, as Ratio is Regent/etcd (0 when
// ZooKeeper was not measured).
func (r Row) ZooKeeperRatio() float64 {
	return Row{Workload: r.Workload, Regent: r.Regent, Etcd: r.ZooKeeper}.Ratio()
}

// Ratio is Regent/etcd: of throughput for the throughput workloads, of p99
// latency for notify and removal.
func (r Row) Ratio() float64 {
	if latencyWorkload(r.Workload) {
		if r.Etcd.Pct(0.99) == 0 {
			return 0
		}
		return float64(r.Regent.Pct(0.99)) / float64(r.Etcd.Pct(0.99))
	}
	if r.Etcd.Rate() == 0 {
		return 0
	}
	return r.Regent.Rate() / r.Etcd.Rate()
}

func latencyWorkload(w string) bool { return w == Notify || w == Removal }

// Targets of issue 6, as Regent/etcd ratios.
var targets = map[string]struct {
	ratio  float64
	atMost bool
}{
	Ephemeral:  {5, false},
	Persistent: {1.2, false},
	Lookup:     {5, false},
	Watched:    {5, false},
	Notify:     {0.5, true},
	Removal:    {0.2, true},
}

// Met reports whether the row's ratio meets its target (false for a
// workload without one).
func (r Row) Met() bool {
	t, ok := targets[r.Workload]
	if !ok || r.Regent.Ops == 0 || r.Etcd.Ops == 0 {
		return false
	}
	if t.atMost {
		return r.Ratio() <= t.ratio
	}
	return r.Ratio() >= t.ratio
}

// Result is a whole run.
type Result struct {
	Rows []Row
	// EtcdTerms: each member's Raft term before the first and after the
	// last measurement; a rise means etcd changed leader during the run.
	EtcdTermsBefore, EtcdTermsAfter []uint64
	// ZooKeeperEpochs: each server's epoch (its last zxid's high half)
	// before and after; a rise means a new ZooKeeper leader.
	ZooKeeperEpochsBefore, ZooKeeperEpochsAfter []uint64
	// EtcdKeptHistory: etcd's history was not compacted between
	// measurements (Options.EtcdKeepHistory).
	EtcdKeptHistory bool
	// RegentMemory, EtcdMemory and ZooKeeperMemory: the servers' resident
	// memory at the end of the run, and its peak over the run.
	RegentMemory, EtcdMemory, ZooKeeperMemory Memory
	Started                                   time.Time
	Elapsed                                   time.Duration
}

// Run starts both clusters, measures every workload at every concurrency
// in alternating rounds, and stops them.
func Run(ctx context.Context, o Options) (*Result, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	res := &Result{Started: time.Now(), EtcdKeptHistory: o.EtcdKeepHistory}
	logf := func(format string, args ...any) {
		fmt.Fprintf(o.Progress, "[%6.1fs] %s\n", time.Since(res.Started).Seconds(), fmt.Sprintf(format, args...))
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, err
	}
	reg, err := startRegent(ctx, o, logf)
	if err != nil {
		return nil, err
	}
	defer reg.stop()
	etcdDir := o.Dir + "/etcd"
	if err := os.MkdirAll(etcdDir, 0o700); err != nil {
		return nil, err
	}
	ec, err := startEtcd(ctx, o.EtcdBin, etcdDir, 3)
	if err != nil {
		return nil, err
	}
	defer ec.stop()
	logf("etcd up at %v", ec.Endpoints)
	et := &etcdSystem{endpoints: ec.Endpoints, self: o.Self, ttl: o.EtcdTTL, procs: ec.pids(), keepHistory: o.EtcdKeepHistory}
	if res.EtcdTermsBefore, _, err = ec.terms(ctx); err != nil {
		return nil, err
	}
	systems := []system{reg, et}
	var zs *zkSystem
	var zc *zkCluster
	if o.ZooKeeperJar != "" {
		zkDir := o.Dir + "/zookeeper"
		if err := os.MkdirAll(zkDir, 0o700); err != nil {
			return nil, err
		}
		java := o.Java
		if java == "" {
			java = "java"
		}
		if zc, err = startZooKeeper(ctx, java, o.ZooKeeperJar, zkDir, 3); err != nil {
			return nil, err
		}
		defer zc.stop()
		logf("zookeeper up at %v", zc.Servers)
		zs = &zkSystem{servers: zc.Servers, self: o.Self, procs: zc.pids()}
		// The JVM runs cold at first (peers.md §4.4): an untimed warm-up
		// of its write and read paths.
		for _, w := range []string{Shared, Lookup} {
			if _, err := zs.measure(ctx, w, 16, -1, 2*time.Second); err != nil {
				return nil, fmt.Errorf("zookeeper warm-up: %w", err)
			}
		}
		if res.ZooKeeperEpochsBefore, _, err = zc.epochs(); err != nil {
			return nil, err
		}
		systems = append(systems, zs)
	}
	for _, w := range o.Workloads {
		for _, c := range o.Clients {
			row := Row{Workload: w, Clients: c}
			for r := range o.Rounds {
				order := roundOrder(systems, r)
				for _, sys := range order {
					meter := &cpuMeter{pids: sys.pids()}
					s, err := sys.measure(load.WithWindow(ctx, meter.window), w, c, r, roundDuration(w, c, o.Duration))
					if err != nil {
						return nil, fmt.Errorf("%s %s at %d clients, round %d: %w", sys.name(), w, c, r, err)
					}
					logf("%-10s %2d clients round %d %-6s %s", w, c, r, sys.name(), summary(w, s))
					switch sys {
					case system(reg):
						row.Regent.Add(s)
						meter.add(&row.RegentCPU, s.Ops)
					case system(et):
						row.Etcd.Add(s)
						meter.add(&row.EtcdCPU, s.Ops)
					default:
						row.ZooKeeper.Add(s)
						meter.add(&row.ZooKeeperCPU, s.Ops)
					}
				}
			}
			res.Rows = append(res.Rows, row)
		}
		terms, _, err := ec.terms(ctx)
		if err != nil {
			return nil, err
		}
		logf("etcd Raft terms after %s: %v", w, terms)
		res.EtcdTermsAfter = terms
		if zc != nil {
			epochs, _, err := zc.epochs()
			if err != nil {
				return nil, err
			}
			logf("zookeeper epochs after %s: %v", w, epochs)
			res.ZooKeeperEpochsAfter = epochs
		}
	}
	res.RegentMemory, res.EtcdMemory = procMemory(reg.pids()), procMemory(et.pids())
	if zs != nil {
		res.ZooKeeperMemory = procMemory(zs.pids())
	}
	res.Elapsed = time.Since(res.Started)
	return res, nil
}

func summary(w string, s load.Sample) string {
	out := fmt.Sprintf("p50 %-9v p99 %-9v", s.Pct(0.5).Round(10*time.Microsecond), s.Pct(0.99).Round(10*time.Microsecond))
	if !latencyWorkload(w) {
		out = fmt.Sprintf("%7.0f ops/s ", s.Rate()) + out
	} else {
		out = fmt.Sprintf("%5d samples  ", s.Ops) + out
	}
	if s.Errors > 0 {
		out += fmt.Sprintf(" %d errors (first: %s)", s.Errors, s.FirstErr)
	}
	return out
}

// roundOrder is the order the systems run in round r: with two, they
// alternate which goes first; with more, the order rotates by one each
// round, so that each system runs in every position alike.
func roundOrder(systems []system, r int) []system {
	if len(systems) == 2 {
		order := slices.Clone(systems)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		return order
	}
	return rotated(systems, r)
}

// rotated returns list starting at index k (mod its length).
func rotated[T any](list []T, k int) []T {
	k %= len(list)
	return append(slices.Clone(list[k:]), list[:k]...)
}
