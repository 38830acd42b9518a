package scale

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"
)

// Params describes one run of the model.
type Params struct {
	// Nodes and Clients size the cluster; Clients are registered at the
	// start, spread evenly over the nodes, one instance each.
	Nodes, Clients int
	// Services is the number of services the instances are spread over
	// (0: Clients/100, at least 1).
	Services int
	// Seed makes the schedule, and so the run, repeatable.
	Seed uint64
	// Churn, per second, each as a fraction of Clients: new clients that
	// register, clients whose session moves to another node, and sessions
	// that end for good.
	RegPerSec, MovePerSec, DiscPerSec float64
	// Warm is the time given to the initial load; Quiet a window without
	// churn (verify rounds only); Churn the window with churn. Figures per
	// second are taken over Quiet and Churn.
	Warm, Quiet, Churn time.Duration
	// Detect is the time from the failure of a node to gossip's verdict
	// (PeerDown) on every survivor.
	Detect time.Duration
	// ReconnectFrac of the failed node's clients reconnect to a survivor,
	// each at a uniformly random time within ReconnectWindow after the
	// failure; the others never come back.
	ReconnectFrac   float64
	ReconnectWindow time.Duration
	// RepairLimit bounds the run after the failure.
	RepairLimit time.Duration
	// Probes is how many changes of each kind (register, move, disconnect)
	// in the churn window have their convergence measured.
	Probes int
}

// DefaultParams returns the settings of the sweep for a cluster size.
func DefaultParams(nodes, clients int) Params {
	return Params{
		Nodes: nodes, Clients: clients, Seed: 1,
		RegPerSec: 0.0005, MovePerSec: 0.0002, DiscPerSec: 0.0005,
		Warm: 6 * time.Second, Quiet: 10 * time.Second, Churn: 60 * time.Second,
		Detect: time.Second, ReconnectFrac: 0.9, ReconnectWindow: 2 * time.Second,
		RepairLimit: 20 * time.Second, Probes: 100,
	}
}

// Validate checks the ranges.
func (p *Params) Validate() error {
	var errs []error
	if p.Nodes < 2 || p.Nodes > math.MaxInt16 {
		errs = append(errs, fmt.Errorf("nodes must be in [2, %d], got %d", math.MaxInt16, p.Nodes))
	}
	if p.Clients < 1 || p.Clients > 1<<24 {
		errs = append(errs, fmt.Errorf("clients must be in [1, 2^24], got %d", p.Clients))
	}
	for _, r := range []float64{p.RegPerSec, p.MovePerSec, p.DiscPerSec, p.ReconnectFrac} {
		if r < 0 || r > 1 || math.IsNaN(r) {
			errs = append(errs, fmt.Errorf("rates and fractions must be in [0, 1], got %v", r))
		}
	}
	if p.Warm <= 0 || p.Quiet <= 0 || p.Churn <= 0 || p.RepairLimit <= 0 || p.Detect < 0 || p.ReconnectWindow < 0 {
		errs = append(errs, errors.New("windows must be positive"))
	}
	if p.Probes < 0 {
		errs = append(errs, errors.New("probes must not be negative"))
	}
	return errors.Join(errs...)
}

func (p *Params) services() int {
	if p.Services > 0 {
		return p.Services
	}
	return max(1, p.Clients/100)
}

// Kind is what happens to a client in the schedule.
type Kind uint8

const (
	// Register: a new client connects to Node and registers its instance.
	Register Kind = iota
	// Move: a client's session moves from From to Node (the SDK switched
	// servers); Regent's new node takes it over, Nacos sees the old
	// connection end and a new one register.
	Move
	// Disconnect: a client's session on From ends for good.
	Disconnect
	// Reconnect: a client of the failed node reconnects to Node.
	Reconnect
	numKinds
)

func (k Kind) String() string {
	return [...]string{"register", "move", "disconnect", "reconnect"}[k]
}

// Event is one change in the schedule.
type Event struct {
	At     time.Duration // since the start of the run
	Client int32
	Node   int16 // the session's node after the event (-1 after a disconnect)
	From   int16 // its node before (-1 for a new client)
	Kind   Kind
	Probe  bool // convergence is measured for this change
}

// Schedule is the load both models are fed: the initial registrations,
// the churn and one node failure, generated from Params.Seed.
type Schedule struct {
	P   Params
	IDs []string // client ids by index
	// Events are sorted by At.
	Events []Event
	// FailNode dies at FailAt; survivors hear of it at DetectAt. End is
	// when the run stops.
	FailNode               int
	FailAt, DetectAt, End  time.Duration
	QuietStart, ChurnStart time.Duration
	Lost, Moved            []int32 // the failed node's clients: never back / reconnecting
	ChurnCounts            [numKinds]int
	ChurnPerSec            float64 // changes per second over the cluster in the churn window
	services               int
}

// loadAt is when the initial clients register.
const loadAt = time.Millisecond

// NewSchedule generates the load of a run.
func NewSchedule(p Params) (*Schedule, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(p.Seed, p.Seed^0x5ca1e))
	s := &Schedule{P: p, FailNode: p.Nodes - 1, services: p.services()}
	s.QuietStart = p.Warm
	s.ChurnStart = p.Warm + p.Quiet
	s.FailAt = s.ChurnStart + p.Churn
	s.DetectAt = s.FailAt + p.Detect
	s.End = s.FailAt + p.RepairLimit

	owner := make([]int16, 0, p.Clients)
	live := make([]int32, 0, p.Clients)
	pos := make([]int32, 0, p.Clients)
	newClient := func(node int) int32 {
		c := int32(len(s.IDs))
		s.IDs = append(s.IDs, fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", rng.Uint32(), rng.Uint32()&0xffff,
			rng.Uint32()&0xffff, rng.Uint32()&0xffff, rng.Uint64()&0xffffffffffff))
		owner = append(owner, int16(node))
		pos = append(pos, int32(len(live)))
		live = append(live, c)
		return c
	}
	drop := func(c int32) {
		i := pos[c]
		last := live[len(live)-1]
		live[i], pos[last] = last, i
		live = live[:len(live)-1]
		pos[c] = -1
	}
	for i := range p.Clients {
		node := i % p.Nodes
		c := newClient(node)
		s.Events = append(s.Events, Event{At: loadAt, Client: c, Node: int16(node), From: -1, Kind: Register})
	}

	// Churn: one Poisson process split by kind, plus the reconnects of
	// the failed node's clients merged in by time.
	rates := [3]float64{p.RegPerSec, p.MovePerSec, p.DiscPerSec}
	total := (rates[0] + rates[1] + rates[2]) * float64(p.Clients)
	s.ChurnPerSec = total
	var every [3]int
	for k, r := range rates {
		expect := r * float64(p.Clients) * p.Churn.Seconds()
		every[k] = max(1, int(expect/float64(max(p.Probes, 1))))
	}
	var seen [3]int
	var probes [3]int
	type rec struct {
		at   time.Duration
		c    int32
		node int16
	}
	var reconnects []rec
	failed := false
	randNode := func(not int) int {
		for range 1000 {
			n := rng.IntN(p.Nodes)
			if n != not && (!failed || n != s.FailNode) {
				return n
			}
		}
		return -1
	}
	t := s.ChurnStart
	for step := 0; step < 1<<26; step++ {
		if total > 0 {
			t += time.Duration(rng.ExpFloat64() / total * float64(time.Second))
		} else {
			t = s.End
		}
		if !failed && t >= s.FailAt {
			failed = true
			for _, c := range append([]int32(nil), live...) {
				if int(owner[c]) != s.FailNode {
					continue
				}
				drop(c)
				if rng.Float64() < p.ReconnectFrac {
					at := s.FailAt + time.Duration(rng.Float64()*float64(p.ReconnectWindow))
					reconnects = append(reconnects, rec{at: at, c: c, node: int16(randNode(s.FailNode))})
					s.Moved = append(s.Moved, c)
				} else {
					s.Lost = append(s.Lost, c)
				}
			}
			slices.SortStableFunc(reconnects, func(a, b rec) int { return cmp.Compare(a.at, b.at) })
		}
		for len(reconnects) > 0 && (reconnects[0].at <= t || t >= s.End) {
			r := reconnects[0]
			reconnects = reconnects[1:]
			// Reconnected clients stay out of the churn until the run
			// ends, so that the repair check knows where each must be.
			owner[r.c] = r.node
			s.Events = append(s.Events, Event{At: r.at, Client: r.c, Node: r.node, From: int16(s.FailNode), Kind: Reconnect})
		}
		if t >= s.End {
			break
		}
		x := rng.Float64() * (rates[0] + rates[1] + rates[2])
		k := Register
		if x >= rates[0] {
			k = Move
			if x >= rates[0]+rates[1] {
				k = Disconnect
			}
		}
		e := Event{At: t, Kind: k}
		switch k {
		case Register:
			n := randNode(-1)
			e.Client, e.Node, e.From = newClient(n), int16(n), -1
		case Move, Disconnect:
			if len(live) == 0 {
				continue
			}
			c := live[rng.IntN(len(live))]
			e.Client, e.From = c, owner[c]
			if k == Move {
				n := randNode(int(owner[c]))
				if n < 0 {
					continue
				}
				e.Node, owner[c] = int16(n), int16(n)
			} else {
				e.Node = -1
				drop(c)
			}
		}
		if t < s.FailAt {
			s.ChurnCounts[k]++
			if seen[k]%every[k] == 0 && probes[k] < p.Probes {
				e.Probe = true
				probes[k]++
			}
			seen[k]++
		}
		s.Events = append(s.Events, e)
	}
	return s, nil
}
