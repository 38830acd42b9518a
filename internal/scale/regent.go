package scale

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
)

// Epoch is the virtual time a run starts at.
var Epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// repairCheckEvery is the resolution of the repair time.
const repairCheckEvery = 10 * time.Millisecond

// maxLoopIterations bounds the driver's event loop; a run needs a few per
// change and per verify round.
const maxLoopIterations = 1 << 30

type probe struct {
	client int32
	kind   Kind
	owner  int // -1: must be gone
	at     time.Duration
}

// regentRun drives N real Distro engines through a schedule.
type regentRun struct {
	s      *Schedule
	cfg    ephemeral.Config
	clock  *Clock
	net    *ephemeral.InmemNetwork
	meter  *meter
	names  []string
	nodes  []*ephemeral.Distro
	alive  []bool
	wake   []time.Duration // when each node's next sync or verify is due
	sweep  []time.Duration // when each node's next sweep is due
	keys   []naming.ServiceKey
	now    time.Duration
	probes map[int32]probe
	conv   [numKinds][]time.Duration
	lostP  int // probes dropped because their client changed again first

	// repair
	lostLeft   [][]int32 // per survivor: lost clients still present
	movedLeft  [][]int32 // per survivor: reconnected clients not yet re-owned
	movedOwner map[int32]int
	reconnects int // reconnect events not yet applied
	goneAt     time.Duration
	reownedAt  time.Duration

	heapPerNode float64
}

func nodeNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "node-" + strconv.Itoa(i+1)
	}
	return out
}

func (r *regentRun) instance(c int32) (naming.ServiceKey, naming.Instance) {
	key := r.keys[int(c)%len(r.keys)]
	ip := fmt.Sprintf("10.%d.%d.%d", (c>>16)&0xff, (c>>8)&0xff, c&0xff)
	return key, naming.Instance{IP: ip, Port: 8080, Cluster: naming.DefaultCluster, Weight: naming.DefaultWeight,
		Healthy: true, Enabled: true, Ephemeral: true}
}

func newRegentRun(s *Schedule, cfg ephemeral.Config) (*regentRun, error) {
	n := s.P.Nodes
	r := &regentRun{
		s: s, cfg: cfg, clock: NewClock(Epoch), net: ephemeral.NewInmemNetwork(s.P.Seed),
		names: nodeNames(n), alive: make([]bool, n), wake: make([]time.Duration, n),
		sweep: make([]time.Duration, n), probes: map[int32]probe{}, movedOwner: map[int32]int{},
		goneAt: -1, reownedAt: -1,
	}
	r.meter = newMeter(r.names)
	for i := range s.services {
		r.keys = append(r.keys, naming.ServiceKey{Namespace: naming.DefaultNamespace, Group: naming.DefaultGroup,
			Service: fmt.Sprintf("svc-%05d", i)})
	}
	for i, name := range r.names {
		c := cfg
		c.Node, c.Clock = name, r.clock
		d, err := ephemeral.New(c, ephemeral.NewStore(nil), &meteredTransport{inner: r.net.Transport(name), from: name, m: r.meter})
		if err != nil {
			return nil, err
		}
		r.net.Register(name, d)
		r.nodes = append(r.nodes, d)
		r.alive[i] = true
		// Sweepers start a little apart, as in nodes started by hand.
		r.sweep[i] = cfg.SweepInterval * time.Duration(i+1) / time.Duration(n+1)
	}
	for _, a := range r.nodes {
		for _, b := range r.names {
			a.PeerUp(b)
		}
	}
	for _, e := range s.Events {
		if e.Kind == Reconnect {
			r.movedOwner[e.Client] = int(e.Node)
			r.reconnects++
		}
	}
	return r, nil
}

func (r *regentRun) setNow(t time.Duration) {
	r.now = t
	r.clock.Set(Epoch.Add(t))
}

func (r *regentRun) apply(ctx context.Context, e *Event) {
	id := r.s.IDs[e.Client]
	if _, ok := r.probes[e.Client]; ok {
		delete(r.probes, e.Client)
		r.lostP++
	}
	switch e.Kind {
	case Register:
		d := r.nodes[e.Node]
		key, in := r.instance(e.Client)
		d.Connect(ctx, id, "")
		d.Register(id, key, []naming.Instance{in})
		r.wake[e.Node] = r.now
	case Move, Reconnect:
		d := r.nodes[e.Node]
		key, in := r.instance(e.Client)
		d.Connect(ctx, id, r.names[e.From])
		d.Replace(id, map[naming.ServiceKey][]naming.Instance{key: {in}})
		r.wake[e.Node] = r.now
	case Disconnect:
		r.nodes[e.From].Disconnect(id)
		r.wake[e.From] = r.now
	}
	if e.Probe {
		owner := int(e.Node)
		if e.Kind == Disconnect {
			owner = -1
		}
		r.probes[e.Client] = probe{client: e.Client, kind: e.Kind, owner: owner, at: r.now}
	}
	if e.Kind == Reconnect {
		r.reconnects--
		for i := range r.nodes {
			if r.alive[i] {
				r.movedLeft[i] = append(r.movedLeft[i], e.Client)
			}
		}
	}
}

// listed reports whether node i lists client c with owner (or, for owner
// -1, does not list it).
func (r *regentRun) listed(i int, c int32, owner int) bool {
	info, ok := r.nodes[i].Store().Client(r.s.IDs[c])
	if owner < 0 {
		return !ok
	}
	return ok && info.Owner == r.names[owner] && info.Instances > 0
}

func (r *regentRun) checkProbes() {
	for c, p := range r.probes {
		done := true
		for i := range r.nodes {
			if r.alive[i] && !r.listed(i, c, p.owner) {
				done = false
				break
			}
		}
		if done {
			r.conv[p.kind] = append(r.conv[p.kind], r.now-p.at)
			delete(r.probes, c)
		}
	}
}

// checkRepair shrinks the lists of what survivors still have to repair; a
// list is scanned only up to its first entry not yet repaired, since one
// is enough to know the repair is not done.
func (r *regentRun) checkRepair() {
	shrink := func(list []int32, i int, owner func(int32) int) []int32 {
		for len(list) > 0 && r.listed(i, list[0], owner(list[0])) {
			list = list[1:]
		}
		return list
	}
	gone, reowned := true, r.reconnects == 0
	for i := range r.nodes {
		if !r.alive[i] {
			continue
		}
		r.lostLeft[i] = shrink(r.lostLeft[i], i, func(int32) int { return -1 })
		r.movedLeft[i] = shrink(r.movedLeft[i], i, func(c int32) int { return r.movedOwner[c] })
		gone = gone && len(r.lostLeft[i]) == 0
		reowned = reowned && len(r.movedLeft[i]) == 0
	}
	if gone && r.goneAt < 0 {
		r.goneAt = r.now - r.s.FailAt
	}
	if reowned && r.reownedAt < 0 {
		r.reownedAt = r.now - r.s.FailAt
	}
}

func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// run plays the schedule. Time moves from one due instant to the next:
// the next event, the next sync or verify any node has due, its next sweep,
// a phase boundary or a repair check.
func (r *regentRun) run(ctx context.Context) error {
	s := r.s
	base := heapAlloc()
	bounds := []time.Duration{s.QuietStart, s.ChurnStart, s.FailAt, s.DetectAt}
	ei := 0
	failed, detected := false, false
	nextCheck := time.Duration(-1)
	phase := phaseLoad
	r.setNow(0)
	for iter := 0; ; iter++ {
		if iter >= maxLoopIterations {
			return fmt.Errorf("scale: event loop did not finish in %d iterations", maxLoopIterations)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		// Everything due now.
		for phase < phaseRepair && r.now >= bounds[phase] {
			phase++
			if phase == phaseQuiet {
				// The load is over: measure memory before counting.
				for i, d := range r.nodes {
					if got := d.Stats().Clients; got != s.P.Clients {
						return fmt.Errorf("scale: %s holds %d clients after the load, want %d", r.names[i], got, s.P.Clients)
					}
				}
				r.heapPerNode = float64(int64(heapAlloc())-int64(base)) / float64(s.P.Nodes)
			}
			r.meter.setPhase(phase, true)
		}
		if !failed && r.now >= s.FailAt {
			failed = true
			f := s.FailNode
			r.net.Unregister(r.names[f])
			r.alive[f] = false
			r.lostLeft = make([][]int32, len(r.nodes))
			r.movedLeft = make([][]int32, len(r.nodes))
			for i := range r.nodes {
				if r.alive[i] {
					r.lostLeft[i] = slices.Clone(s.Lost)
				}
			}
			for c := range r.probes {
				delete(r.probes, c) // convergence is measured before the failure
			}
			nextCheck = r.now
		}
		if !detected && r.now >= s.DetectAt {
			detected = true
			for i, d := range r.nodes {
				if r.alive[i] {
					d.PeerDown(r.names[s.FailNode])
					r.wake[i] = r.now
				}
			}
		}
		for ei < len(s.Events) && s.Events[ei].At <= r.now {
			r.apply(ctx, &s.Events[ei])
			ei++
		}
		for i, d := range r.nodes {
			if r.alive[i] && r.sweep[i] <= r.now {
				d.Sweep()
				r.sweep[i] += r.cfg.SweepInterval
				r.wake[i] = r.now // and a Step: a safety net for wakes not tracked
			}
		}
		for i, d := range r.nodes {
			if r.alive[i] && r.wake[i] <= r.now {
				r.wake[i] = r.now + d.Step(ctx)
			}
		}
		if len(r.probes) > 0 {
			r.checkProbes()
		}
		if failed && nextCheck >= 0 && r.now >= nextCheck {
			r.checkRepair()
			nextCheck = r.now + repairCheckEvery
			if r.goneAt >= 0 && r.reownedAt >= 0 {
				nextCheck = -1
			}
		}
		// The next due instant.
		next := s.End
		if ei < len(s.Events) {
			next = min(next, s.Events[ei].At)
		}
		for i := range r.nodes {
			if r.alive[i] {
				next = min(next, r.wake[i], r.sweep[i])
			}
		}
		if phase < phaseRepair {
			next = min(next, bounds[phase])
		}
		if !failed {
			next = min(next, s.FailAt)
		} else if !detected {
			next = min(next, s.DetectAt)
		}
		if nextCheck >= 0 {
			next = min(next, nextCheck)
		}
		if r.now >= s.End || (failed && nextCheck < 0 && ei == len(s.Events)) {
			break
		}
		if failed && nextCheck < 0 && r.now > s.DetectAt+r.cfg.OwnerGrace+2*r.cfg.SweepInterval {
			break // repaired, and nothing measured comes after
		}
		r.setNow(max(next, r.now))
	}
	r.net.Wait()
	return nil
}
