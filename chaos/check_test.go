package chaos

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// The checkers are tested on made-up histories: each must pass a correct
// history and catch the violation it is there for.

const s = time.Second

func w(kind OpKind, key int, start, end time.Duration, err string) Op {
	return Op{Kind: kind, Actor: 1, ActorName: "w", Key: key, Start: start, End: end, Err: err}
}

func rd(start, end time.Duration, listed ...int) Op {
	return Op{Kind: OpPRead, Actor: 2, ActorName: "r", Key: -1, Listed: listed, Start: start, End: end}
}

func TestCheckDurability(t *testing.T) {
	ops := []Op{
		w(OpPRegister, 0, 1*s, 2*s, ""),
		w(OpPRegister, 1, 1*s, 2*s, ""),
		w(OpPDeregister, 1, 3*s, 4*s, ""),
		w(OpPRegister, 2, 1*s, 2*s, ""),
		w(OpPDeregister, 2, 3*s, 4*s, "unavailable"), // may or may not have applied
	}
	keys := []int{0, 1, 2, 3}
	st, viol := CheckDurability(ops, map[string][]int{"node1": {0}, "node2": {0, 2}}, keys)
	if len(viol) != 0 || st.Checked != 2 || st.Ambiguous != 1 {
		t.Fatalf("correct history: %+v %v", st, viol)
	}
	// node2 lost the register of 0; node1 still lists the deregistered 1.
	_, viol = CheckDurability(ops, map[string][]int{"node1": {0, 1}, "node2": {}}, keys)
	if all := strings.Join(viol, "\n"); len(viol) != 2 || !strings.Contains(all, "lost acknowledged deregister of (still listed) "+PersIP(1)+" on node1") ||
		!strings.Contains(all, "lost acknowledged register of "+PersIP(0)+" on node2") {
		t.Fatalf("lost writes not caught: %v", viol)
	}
	// A deregister concurrent with the last register makes it ambiguous.
	ops = []Op{w(OpPRegister, 0, 1*s, 3*s, ""), w(OpPDeregister, 0, 2*s, 2500*time.Millisecond, "")}
	if st, viol := CheckDurability(ops, map[string][]int{"node1": {}}, []int{0}); len(viol) != 0 || st.Ambiguous != 1 {
		t.Fatalf("concurrent writes: %+v %v", st, viol)
	}
}

func TestCheckLinearizable(t *testing.T) {
	keys := []int{0}
	good := []Op{
		w(OpPRegister, 0, 1*s, 2*s, ""),
		rd(3*s, 4*s, 0),
		w(OpPDeregister, 0, 5*s, 6*s, ""),
		rd(5500*time.Millisecond, 7*s, 0), // concurrent with the deregister: either answer
		rd(8*s, 9*s),
		w(OpPRegister, 0, 10*s, 11*s, "timeout"), // failed: may apply any time later
		rd(12*s, 13*s),
		rd(14*s, 15*s, 0),
	}
	if res, viol := CheckLinearizable(good, keys, 10*s, ""); res != "ok" || viol != nil {
		t.Fatalf("linearizable history judged %s %v", res, viol)
	}
	// A stale read: absent after the acknowledged register.
	stale := []Op{w(OpPRegister, 0, 1*s, 2*s, ""), rd(3*s, 4*s)}
	if res, viol := CheckLinearizable(stale, keys, 10*s, ""); res != "illegal" || len(viol) != 1 || !strings.Contains(viol[0], PersIP(0)) {
		t.Fatalf("stale read judged %s %v", res, viol)
	}
	// A read that flips back: listed, then absent, then listed again with
	// no write in between.
	flip := []Op{w(OpPRegister, 0, 1*s, 2*s, ""), rd(3*s, 4*s, 0), w(OpPDeregister, 0, 5*s, 6*s, ""), rd(7*s, 8*s), rd(9*s, 10*s, 0)}
	if res, _ := CheckLinearizable(flip, keys, 10*s, ""); res != "illegal" {
		t.Fatalf("resurrected persistent instance judged %s", res)
	}
}

func round(start time.Duration, lists ...[]string) Round {
	r := Round{Start: start, End: start + 100*time.Millisecond}
	for _, l := range lists {
		nl := NodeList{OK: l != nil, IPs: map[string]bool{}}
		if l == nil {
			nl.Err = "unavailable"
		}
		for _, ip := range l {
			nl.IPs[ip] = true
		}
		r.Nodes = append(r.Nodes, nl)
	}
	return r
}

func TestCheckLive(t *testing.T) {
	live := map[string]bool{"a": true, "b": true, "c": true}
	want := []string{"a", "b"}
	rounds := []Round{
		round(1*s, []string{"a"}, []string{"a", "b"}),            // before the heal: ignored
		round(11*s, []string{"a", "b", "c"}, []string{"a", "b"}), // c deregistered but still listed
		round(12*s, nil, []string{"a", "b"}),                     // a node not answering
		round(13*s, []string{"a", "b", "x"}, []string{"b", "a"}), // converged (x is not a live client's)
		round(14*s, []string{"a", "b"}, []string{"a", "b"}),
	}
	res, viol := CheckLive(rounds, 10*s, want, live, 20*s)
	if len(viol) != 0 || !res.Converged || res.Time != 3100*time.Millisecond {
		t.Fatalf("converging rounds: %+v %v", res, viol)
	}
	if _, viol := CheckLive(rounds, 10*s, want, live, 2*s); len(viol) != 1 || !strings.Contains(viol[0], "past the bound") {
		t.Fatalf("late convergence not caught: %v", viol)
	}
	flap := append(rounds, round(15*s, []string{"a"}, []string{"a", "b"}))
	if _, viol := CheckLive(flap, 10*s, want, live, 20*s); len(viol) != 1 || !strings.Contains(viol[0], "flapped") {
		t.Fatalf("flap not caught: %v", viol)
	}
	if _, viol := CheckLive(rounds[:3], 10*s, want, live, 20*s); len(viol) != 1 || !strings.Contains(viol[0], "never") {
		t.Fatalf("missing instance not caught: %v", viol)
	}
}

func TestCheckDead(t *testing.T) {
	d := Dead{Name: "d", Kind: "client-close", IPs: []string{"z"}, DiedAt: 10 * s, Bound: 5 * s}
	rounds := []Round{
		round(9*s, []string{"z"}, []string{"z"}),
		round(11*s, []string{"z"}, nil), // a node not answering: no verdict
		round(12*s, []string{}, []string{"z"}),
		round(13*s, []string{}, []string{}), // gone everywhere
		round(14*s, []string{}, nil),
	}
	rms, viol := CheckDead(rounds, []Dead{d}, nil)
	if len(viol) != 0 || !rms[0].Removed || rms[0].Time != 3100*time.Millisecond {
		t.Fatalf("timely removal: %+v %v", rms, viol)
	}
	// Back on a node after it was gone from every node.
	back := append(rounds, round(15*s, []string{"z"}, nil))
	if _, viol := CheckDead(back, []Dead{d}, nil); len(viol) != 1 || !strings.Contains(viol[0], "resurrection") {
		t.Fatalf("resurrection not caught: %v", viol)
	}
	// Never gone: a zombie.
	if _, viol := CheckDead(rounds[:3], []Dead{d}, nil); len(viol) != 1 || !strings.Contains(viol[0], "zombie") {
		t.Fatalf("zombie not caught: %v", viol)
	}
	// Gone, but past the bound.
	d.Bound = 2 * s
	if _, viol := CheckDead(rounds, []Dead{d}, nil); len(viol) != 1 || !strings.Contains(viol[0], "past its deadline") {
		t.Fatalf("late removal not caught: %v", viol)
	}
	// ... unless a node fault overlapped: the bound counts from its end.
	if _, viol := CheckDead(rounds, []Dead{d}, []Interval{{From: 11 * s, To: 12 * s}}); len(viol) != 0 {
		t.Fatalf("overlapping fault not taken into account: %v", viol)
	}
}

func TestAgreement(t *testing.T) {
	names := []string{"node1", "node2", "node3"}
	view := func(node, leader string, statuses ...string) View {
		v := View{Node: node}
		for i, n := range names {
			m := Member{Name: n, Status: "alive", Raft: "follower"}
			if n == leader {
				m.Raft = "leader"
			}
			if i < len(statuses) {
				m.Status = statuses[i]
			}
			v.Members = append(v.Members, m)
		}
		return v
	}
	if l, why := agreement([]View{view("node1", "node2"), view("node2", "node2"), view("node3", "node2")}, names); l != "node2" || why != "" {
		t.Fatalf("agreeing views: %q %q", l, why)
	}
	for name, views := range map[string][]View{
		"two leaders":    {view("node1", "node1"), view("node2", "node2"), view("node3", "node2")},
		"no leader":      {view("node1", ""), view("node2", ""), view("node3", "")},
		"a dead member":  {view("node1", "node1", "alive", "dead"), view("node2", "node1"), view("node3", "node1")},
		"a missing node": {{Node: "node1", Members: view("node1", "node1").Members[:2]}, view("node2", "node1"), view("node3", "node1")},
	} {
		if _, why := agreement(views, names); why == "" {
			t.Errorf("%s: not caught", name)
		}
	}
}

func TestScheduleIsDrawnFromTheSeed(t *testing.T) {
	spec := ShortScenario(1).Spec
	a, b := NewSchedule(42, spec), NewSchedule(42, spec)
	if a.String() != b.String() {
		t.Fatalf("same seed, different schedules:\n%v\n%v", a, b)
	}
	if c := NewSchedule(43, spec); c.String() == a.String() {
		t.Fatal("another seed gave the same schedule")
	}
	kinds := map[FaultKind]int{}
	for _, f := range append(a.Node, a.Client...) {
		kinds[f.Kind]++
	}
	if kinds[FaultKill] < 1 || kinds[FaultPause] < 2 || kinds[FaultTerm] < 1 || kinds[FaultClientClose] != 2 || kinds[FaultClientKill] != 1 || kinds[FaultClientCut] != 1 {
		t.Fatalf("schedule lacks required faults: %v", kinds)
	}
}

// TestRandomSchedulesDrawEveryNetworkFault: with Partitions, random
// schedules draw the five network faults (isolate, partition, bridge,
// bridge-follower, far clients); without, none of them. A bridge-follower
// always targets a follower.
func TestRandomSchedulesDrawEveryNetworkFault(t *testing.T) {
	network := []FaultKind{FaultIsolate, FaultPartition, FaultBridge, FaultBridgeFollower, FaultFarClients}
	for _, parts := range []bool{true, false} {
		spec := SoakScenario(1, 3, 40).Spec
		spec.Partitions = parts
		kinds := map[FaultKind]int{}
		for seed := range uint64(5) {
			for _, f := range NewSchedule(seed, spec).Node {
				kinds[f.Kind]++
				if f.Kind == FaultBridgeFollower && f.Target != TargetFollower {
					t.Errorf("seed %d: bridge-follower with target %s", seed, f.Target)
				}
			}
		}
		for _, k := range network {
			if parts && kinds[k] == 0 {
				t.Errorf("Partitions: %s never drawn in 200 faults: %v", k, kinds)
			}
			if !parts && kinds[k] != 0 {
				t.Errorf("no Partitions: %s drawn: %v", k, kinds)
			}
		}
	}
	req := map[FaultKind]bool{}
	for _, tp := range PartitionScenario(1).Spec.Required {
		req[tp.Kind] = true
	}
	for _, k := range network {
		if !req[k] {
			t.Errorf("PartitionScenario does not run %s", k)
		}
	}
}

// TestFarClientsJudge: the far-clients judge passes writes refused as
// unavailable and catches an acknowledged write, one without an answer,
// one failed with an unclear error, and instances never listed on their
// side or dropped before the heal.
func TestFarClientsJudge(t *testing.T) {
	mk := func(writes []Op, first, flap time.Duration) *farRun {
		return &farRun{fc: &farClient{}, stop: make(chan struct{}), writes: writes, firstListed: first, flap: flap,
			res: FarResult{Client: "far-0@node2", Node: "node2", Side: []string{"node2"}, Registered: time.Second, Listed: -1}}
	}
	w := func(err string, end time.Duration) Op {
		return Op{Kind: OpPRegister, Key: 9, Start: end - 5*time.Second, End: end, Err: err}
	}
	heal := 20 * time.Second
	good := mk([]Op{w("unavailable: regent: Unavailable: no quorum", 10*time.Second), w("", 25*time.Second)}, 2*time.Second, -1).Stop(heal)
	if len(good.Violations) != 0 || good.Writes != 1 || good.WritesUnavailable != 1 || good.Listed != time.Second {
		t.Fatalf("a correct run judged %+v", good)
	}
	for name, fr := range map[string]*farRun{
		"acknowledged": mk([]Op{w("", 10*time.Second)}, 2*time.Second, -1),
		"no answer":    mk([]Op{w("deadline: context deadline exceeded", 10*time.Second)}, 2*time.Second, -1),
		"unclear":      mk([]Op{w("regent: Internal: boom", 10*time.Second)}, 2*time.Second, -1),
		"never listed": mk([]Op{w("unavailable: x", 10*time.Second)}, -1, -1),
		"flapped":      mk([]Op{w("unavailable: x", 10*time.Second)}, 2*time.Second, 5*time.Second),
	} {
		if r := fr.Stop(heal); len(r.Violations) == 0 {
			t.Errorf("%s: not caught: %+v", name, r)
		}
	}
}

// TestBridgeFollowerSides: the bridge is on neither side, the leader is on
// the first, every other node on exactly one, and neither side holds a
// majority without the bridge.
func TestBridgeFollowerSides(t *testing.T) {
	for _, size := range []int{3, 5} {
		cl := &Cluster{}
		for i := range size {
			cl.Nodes = append(cl.Nodes, &Node{Index: i, Name: fmt.Sprintf("node%d", i+1)})
		}
		for leader := range size {
			for bridge := range size {
				if bridge == leader {
					continue
				}
				for pick := range 50 {
					a, b := bridgeFollowerSides(cl, cl.Nodes[bridge], cl.Nodes[leader].Name, pick)
					if !slices.Contains(a, leader) {
						t.Errorf("%d nodes, leader %d, bridge %d, pick %d: leader not on side A: %v|%v", size, leader, bridge, pick, a, b)
					}
					all := append(slices.Clone(a), b...)
					slices.Sort(all)
					var want []int
					for i := range size {
						if i != bridge {
							want = append(want, i)
						}
					}
					if !slices.Equal(all, want) {
						t.Errorf("%d nodes, bridge %d: sides %v|%v, want each of %v once", size, bridge, a, b, want)
					}
					if 2*len(a) > size || 2*len(b) > size {
						t.Errorf("%d nodes: a side holds a majority alone: %v|%v", size, a, b)
					}
				}
			}
		}
	}
}
