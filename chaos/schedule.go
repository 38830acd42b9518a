package chaos

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// FaultKind names a fault.
type FaultKind string

// The faults.
const (
	// Node faults, run one after another.
	FaultKill  FaultKind = "kill"  // SIGKILL, hold, restart on the same flags and data
	FaultPause FaultKind = "pause" // SIGSTOP, hold, SIGCONT
	FaultTerm  FaultKind = "term"  // SIGTERM (graceful leave), hold, restart
	// Network faults (namespace mode only; skipped and reported in
	// loopback mode).
	FaultIsolate   FaultKind = "isolate"   // the node's link down: it reaches nobody, silently
	FaultPartition FaultKind = "partition" // a minority (the node, and for 5 nodes one more) cut off from the majority
	// A bridge node: the others split into two sides that cannot reach
	// each other, while the node (the target) still reaches both.
	FaultBridge FaultKind = "bridge"
	// A follower as the bridge node, the Raft leader on one side: the
	// others split in two halves (the leader in the first), neither of
	// which holds a majority on its own, so the bridge is the swing vote
	// (with 3 nodes: the leader and the third node on either side; with 5:
	// the leader and one more, and two more). The leader still reaches
	// the bridge, so it may keep its quorum; the far half cannot reach the
	// leader at all.
	FaultBridgeFollower FaultKind = "bridge-follower"
	// Clients on the far side of a partition: a minority (as partition)
	// cut off from the majority while the harness still reaches it, and
	// new SDK clients attached to the target node alone register
	// ephemeral instances and write persistent ones there; they stay on
	// after the heal.
	FaultFarClients FaultKind = "far-clients"
	// Client faults, each at its own offset, concurrently with node faults.
	FaultClientClose FaultKind = "client-close" // an SDK client closes mid-run: a dead client
	FaultClientKill  FaultKind = "client-kill"  // SIGKILL of a `regent register` process
	FaultClientCut   FaultKind = "client-cut"   // an SDK client's traffic is dropped silently, then it closes
)

// Target says which node a node fault hits; the node is resolved when the
// fault runs (the leader is only known then), choosing among the
// candidates with the fault's seeded Pick.
type Target string

// The targets.
const (
	TargetLeader   Target = "leader"
	TargetFollower Target = "follower"
	TargetAny      Target = "any"
)

// Fault is one scheduled fault.
type Fault struct {
	Kind FaultKind
	// Target (node faults).
	Target Target
	// Pick chooses among candidate nodes (node faults) or clients (client
	// faults), modulo their number.
	Pick int
	// Gap is the pause before a node fault (after the previous one healed);
	// At is a client fault's offset from the start of the faults.
	Gap, At time.Duration
	// Hold is how long a node fault lasts before it is undone.
	Hold time.Duration
}

func (f Fault) String() string {
	if f.Target != "" {
		return fmt.Sprintf("%s %s (hold %v, after %v)", f.Kind, f.Target, f.Hold, f.Gap)
	}
	return fmt.Sprintf("%s #%d at +%v", f.Kind, f.Pick, f.At)
}

// Schedule is the faults of one run, drawn from Seed.
type Schedule struct {
	Seed   uint64
	Node   []Fault
	Client []Fault
}

func (s Schedule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d: node faults:", s.Seed)
	for _, f := range s.Node {
		fmt.Fprintf(&b, "\n  %v", f)
	}
	b.WriteString("\n  client faults:")
	for _, f := range s.Client {
		fmt.Fprintf(&b, "\n  %v", f)
	}
	return b.String()
}

// Template is a node fault the schedule must contain; an empty Target is
// drawn from the seed.
type Template struct {
	Kind   FaultKind
	Target Target
}

// ScheduleSpec is what a schedule is drawn from.
type ScheduleSpec struct {
	// Required node faults, in an order drawn from the seed.
	Required []Template
	// Random more node faults, kind and target drawn from the seed.
	Random int
	// Partitions adds isolate, partition, bridge, bridge-follower and
	// far-clients to the kinds Random draws.
	Partitions bool
	// HoldMin..HoldMax bounds each node fault's hold, GapMin..GapMax the
	// pause before each.
	HoldMin, HoldMax, GapMin, GapMax time.Duration
	// Client faults: closes of SDK clients, kills of CLI clients and silent
	// cuts, each at an offset in [ClientFrom, ClientTo).
	ClientCloses, ClientKills, ClientCuts int
	ClientFrom, ClientTo                  time.Duration
}

// between draws a duration in [lo, hi], in whole milliseconds.
func between(r *rand.Rand, lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	ms := int64((hi - lo) / time.Millisecond)
	return lo + time.Duration(r.Int64N(ms+1))*time.Millisecond
}

// NewSchedule draws a schedule from seed (math/rand/v2, PCG): the same
// seed and spec give the same schedule.
func NewSchedule(seed uint64, spec ScheduleSpec) Schedule {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	s := Schedule{Seed: seed}
	templates := append([]Template(nil), spec.Required...)
	kinds := []FaultKind{FaultKill, FaultPause, FaultTerm}
	if spec.Partitions {
		kinds = append(kinds, FaultIsolate, FaultPartition, FaultBridge, FaultBridgeFollower, FaultFarClients)
	}
	targets := []Target{TargetLeader, TargetFollower, TargetAny}
	for range spec.Random {
		templates = append(templates, Template{Kind: kinds[r.IntN(len(kinds))]})
	}
	r.Shuffle(len(templates), func(i, j int) { templates[i], templates[j] = templates[j], templates[i] })
	for _, t := range templates {
		if t.Target == "" {
			t.Target = targets[r.IntN(len(targets))]
		}
		if t.Kind == FaultBridgeFollower {
			t.Target = TargetFollower // its bridge is a follower by definition
		}
		s.Node = append(s.Node, Fault{Kind: t.Kind, Target: t.Target, Pick: r.IntN(1 << 20),
			Gap: between(r, spec.GapMin, spec.GapMax), Hold: between(r, spec.HoldMin, spec.HoldMax)})
	}
	add := func(kind FaultKind, n int) {
		for i := range n {
			s.Client = append(s.Client, Fault{Kind: kind, Pick: i, At: between(r, spec.ClientFrom, spec.ClientTo)})
		}
	}
	add(FaultClientClose, spec.ClientCloses)
	add(FaultClientKill, spec.ClientKills)
	add(FaultClientCut, spec.ClientCuts)
	return s
}
