package persistent

// Membership-driven formation and clean-up: nodes started without any
// explicit Bootstrap, fed by a fake gossip (Membership), on a fake clock for
// dead-server clean-up.

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/regent-registry/regent/internal/naming"
)

// fakeGossip is the membership every test node sees: a mutable list of
// servers; SetHasState marks the caller's entry.
type fakeGossip struct {
	mu       sync.Mutex
	servers  map[string]Server
	hasState map[string]int // SetHasState calls per node
}

func newFakeGossip() *fakeGossip {
	return &fakeGossip{servers: map[string]Server{}, hasState: map[string]int{}}
}

// set adds or replaces a server (RaftAddr is the node ID: the in-memory
// transport's address). HasState keeps its value unless reset.
func (g *fakeGossip) set(id string, st ServerStatus) {
	g.mu.Lock()
	defer g.mu.Unlock()
	srv := g.servers[id]
	srv.ID, srv.RaftAddr, srv.Status = id, id, st
	g.servers[id] = srv
}

// resetHasState forgets every node's announcement (fresh processes).
func (g *fakeGossip) resetHasState() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for id, srv := range g.servers {
		srv.HasState = false
		g.servers[id] = srv
	}
}

func (g *fakeGossip) announced(id string) (bool, int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.servers[id].HasState, g.hasState[id]
}

type gossipView struct {
	g  *fakeGossip
	id string
}

// Servers lists every server, in reverse ID order: the bootstrapper must
// not depend on gossip's order.
func (v gossipView) Servers() []Server {
	v.g.mu.Lock()
	defer v.g.mu.Unlock()
	out := make([]Server, 0, len(v.g.servers))
	for _, srv := range v.g.servers {
		out = append(out, srv)
	}
	slices.SortFunc(out, func(a, b Server) int { return strings.Compare(b.ID, a.ID) })
	return out
}

func (v gossipView) SetHasState() {
	v.g.mu.Lock()
	defer v.g.mu.Unlock()
	v.g.hasState[v.id]++
	srv := v.g.servers[v.id]
	srv.ID, srv.HasState = v.id, true
	if srv.RaftAddr == "" {
		srv.RaftAddr = v.id
	}
	v.g.servers[v.id] = srv
}

// fakeClock is the clock of dead-server clean-up; it moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

const deadCleanup = 300 * time.Millisecond

// mcluster is a tcluster whose nodes form by membership alone.
type mcluster struct {
	*tcluster
	g      *fakeGossip
	clock  *fakeClock
	mu     sync.Mutex
	expect map[string]int // BootstrapExpect per node
}

// newMemberCluster prepares nodes ids (none started, none in gossip) with
// BootstrapExpect expect.
func newMemberCluster(t *testing.T, expect int, ids ...string) *mcluster {
	t.Helper()
	m := &mcluster{g: newFakeGossip(), clock: &fakeClock{now: time.Unix(1_700_000_000, 0)}, expect: map[string]int{}}
	c := &tcluster{t: t, cut: map[string]bool{}}
	c.cfg = func(cfg *RaftConfig) {
		cfg.Membership = gossipView{m.g, cfg.NodeID}
		m.mu.Lock()
		cfg.BootstrapExpect = expect
		if e, ok := m.expect[cfg.NodeID]; ok {
			cfg.BootstrapExpect = e
		}
		m.mu.Unlock()
		cfg.ReconcileInterval = 20 * time.Millisecond
		cfg.DeadServerCleanup = deadCleanup
		cfg.Now = m.clock.Now
	}
	m.tcluster = c
	dir := t.TempDir() // before the stop, so the nodes stop before it goes
	t.Cleanup(c.stopAll)
	for _, id := range ids {
		c.nodes = append(c.nodes, &tnode{id: id, dir: filepath.Join(dir, id)})
		c.up = append(c.up, false)
	}
	return m
}

// addNode adds a node (not started) and returns its index.
func (m *mcluster) addNode(id string) int {
	m.tcluster.mu.Lock()
	defer m.tcluster.mu.Unlock()
	m.nodes = append(m.nodes, &tnode{id: id, dir: filepath.Join(filepath.Dir(m.nodes[0].dir), id)})
	m.up = append(m.up, false)
	return len(m.nodes) - 1
}

func (m *mcluster) idx(id string) int {
	for i, nd := range m.nodes {
		if nd.id == id {
			return i
		}
	}
	m.t.Fatalf("no node %s", id)
	return -1
}

func (m *mcluster) st(id string) *Store { return m.node(m.idx(id)).store }

// startAlive marks id alive in gossip and starts it.
func (m *mcluster) startAlive(id string) {
	m.t.Helper()
	m.g.set(id, ServerAlive)
	m.start(m.idx(id))
}

// voters returns the voters of s's latest configuration.
func voters(s *Store) []string {
	f := s.Raft().GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	var out []string
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage == raft.Voter {
			out = append(out, string(srv.ID))
		}
	}
	slices.Sort(out)
	return out
}

// waitVoters waits until the leader's committed view and every live
// node's configuration list exactly want as voters.
func (m *mcluster) waitVoters(want ...string) {
	m.t.Helper()
	slices.Sort(want)
	eventually(m.t, 10*time.Second, fmt.Sprintf("every live node has voters %v", want), func() bool {
		for i, nd := range m.nodes {
			if m.isUp(i) && !slices.Equal(voters(nd.store), want) {
				return false
			}
		}
		return true
	})
}

// waitRounds waits until s's reconciler made n more passes.
func waitRounds(tb testing.TB, s *Store, n int64) {
	tb.Helper()
	target := s.rounds.Load() + n
	eventually(tb, 10*time.Second, fmt.Sprintf("the reconciler made %d passes", n), func() bool { return s.rounds.Load() >= target })
}

func (m *mcluster) leaderStore() *Store { return m.node(m.waitLeader()).store }

// checkData writes through one node and reads linearizably on every live
// node: the cluster serves and all nodes share one state.
func (m *mcluster) checkData(ctx context.Context, i int, want int) {
	m.t.Helper()
	if _, err := m.node(m.waitLeader()).store.Register(ctx, tkey, []naming.Instance{tinst(i)}); err != nil {
		m.t.Fatal(err)
	}
	for j, nd := range m.nodes {
		if !m.isUp(j) {
			continue
		}
		if err := nd.store.Barrier(ctx); err != nil {
			m.t.Fatalf("read on %s: %v", nd.id, err)
		}
		if got := listed(m.t, nd.store, tkey); len(got) != want || !got[tinst(i).IP] {
			m.t.Fatalf("%s lists %d instances (%v), want %d with %s", nd.id, len(got), got, want, tinst(i).IP)
		}
	}
}

// Three alive servers without state and BootstrapExpect 3: exactly one
// bootstraps, the one whose ID sorts first (started last here, and listed
// last by gossip); all three become voters of one cluster with one leader
// and announce their state once.
func TestReconcileBootstrapsOnceFromTheFirstID(t *testing.T) {
	m := newMemberCluster(t, 3, "node-c", "node-b", "node-a")
	for _, id := range []string{"node-c", "node-b", "node-a"} {
		m.g.set(id, ServerAlive)
	}
	for _, id := range []string{"node-c", "node-b", "node-a"} {
		m.start(m.idx(id))
	}
	m.waitVoters("node-a", "node-b", "node-c")
	li := m.waitLeader()
	for i, nd := range m.nodes {
		eventually(t, 10*time.Second, fmt.Sprintf("%s knows the leader %s", nd.id, m.node(li).id), func() bool {
			return nd.store.Leader() == m.node(li).id
		})
		if i != li && nd.store.Raft().State() == raft.Leader {
			t.Fatalf("two leaders: %s and %s", m.node(li).id, nd.id)
		}
	}
	for _, id := range []string{"node-a", "node-b", "node-c"} {
		eventually(t, 10*time.Second, id+" announces its state", func() bool { has, _ := m.g.announced(id); return has })
	}
	ctx := ctxT(t)
	m.checkData(ctx, 0, 1)
	for _, nd := range m.nodes {
		want := int32(0)
		if nd.id == "node-a" {
			want = 1
		}
		if got := nd.store.bootstraps.Load(); got != want {
			t.Errorf("%s called Bootstrap %d times, want %d", nd.id, got, want)
		}
		if _, calls := m.g.announced(nd.id); calls != 1 {
			t.Errorf("%s called SetHasState %d times, want 1", nd.id, calls)
		}
	}
}

// With 2 of the 3 expected servers alive nobody bootstraps, however long
// the reconcilers run; the third arriving completes the cluster.
func TestReconcileWaitsForTheExpectedServers(t *testing.T) {
	m := newMemberCluster(t, 3, "node-a", "node-b", "node-c")
	m.g.set("node-c", ServerSuspect) // known, not alive
	m.startAlive("node-a")
	m.startAlive("node-b")
	for _, id := range []string{"node-a", "node-b"} {
		waitRounds(t, m.st(id), 10)
	}
	for _, id := range []string{"node-a", "node-b"} {
		s := m.st(id)
		if n := s.bootstraps.Load(); n != 0 {
			t.Fatalf("%s bootstrapped (%d calls) with 2 of 3 servers alive", id, n)
		}
		if s.HasState() || s.Leader() != "" || s.Raft().State() == raft.Leader {
			t.Fatalf("%s has state %v, leader %q, state %v with 2 of 3 servers alive", id, s.HasState(), s.Leader(), s.Raft().State())
		}
		if has, calls := m.g.announced(id); has || calls != 0 {
			t.Fatalf("%s announced state with 2 of 3 servers alive", id)
		}
	}
	m.startAlive("node-c")
	m.waitVoters("node-a", "node-b", "node-c")
	m.checkData(ctxT(t), 0, 1)
	for _, nd := range m.nodes {
		want := int32(0)
		if nd.id == "node-a" {
			want = 1
		}
		if got := nd.store.bootstraps.Load(); got != want {
			t.Errorf("%s called Bootstrap %d times, want %d", nd.id, got, want)
		}
	}
}

// A node that sorts first but sees peers with Raft state never
// bootstraps, even with BootstrapExpect 1; the leader adds it as a voter
// and it catches up with the cluster's data.
func TestReconcileJoinsInsteadOfBootstrapping(t *testing.T) {
	m := newMemberCluster(t, 3, "node-b", "node-c", "node-d")
	for _, id := range []string{"node-b", "node-c", "node-d"} {
		m.startAlive(id)
	}
	m.waitVoters("node-b", "node-c", "node-d")
	for _, id := range []string{"node-b", "node-c", "node-d"} {
		eventually(t, 10*time.Second, id+" announces its state", func() bool { has, _ := m.g.announced(id); return has })
	}
	ctx := ctxT(t)
	for i := range 5 {
		if _, err := m.st("node-c").Register(ctx, tkey, []naming.Instance{tinst(i)}); err != nil {
			t.Fatal(err)
		}
	}
	m.mu.Lock()
	m.expect["node-a"] = 1
	m.mu.Unlock()
	m.addNode("node-a")
	m.startAlive("node-a")
	m.waitVoters("node-a", "node-b", "node-c", "node-d")
	eventually(t, 10*time.Second, "node-a announces its state", func() bool { has, _ := m.g.announced("node-a"); return has })
	m.checkData(ctx, 5, 6)
	if n := m.st("node-a").bootstraps.Load(); n != 0 {
		t.Fatalf("node-a called Bootstrap %d times although its peers have state", n)
	}
	if n := m.st("node-b").bootstraps.Load(); n != 1 {
		t.Fatalf("node-b, first of the three, called Bootstrap %d times, want 1", n)
	}
	if _, calls := m.g.announced("node-a"); calls != 1 {
		t.Fatalf("node-a called SetHasState %d times, want 1", calls)
	}
}

// The leader follows membership: a late fourth alive server becomes a
// voter; a server that left is removed at once (the clean-up clock stands
// still); a dead one only once DeadServerCleanup has passed on that clock.
func TestReconcileAddsAndRemovesServers(t *testing.T) {
	m := newMemberCluster(t, 3, "node-a", "node-b", "node-c")
	for _, id := range []string{"node-a", "node-b", "node-c"} {
		m.startAlive(id)
	}
	m.waitVoters("node-a", "node-b", "node-c")
	ctx := ctxT(t)
	m.checkData(ctx, 0, 1)

	// A late fourth.
	m.addNode("node-d")
	m.startAlive("node-d")
	m.waitVoters("node-a", "node-b", "node-c", "node-d")
	m.checkData(ctx, 1, 2)
	if n := m.st("node-d").bootstraps.Load(); n != 0 {
		t.Fatalf("the late node called Bootstrap %d times", n)
	}

	// It leaves gracefully: removed with the clock standing still.
	d := m.idx("node-d")
	m.node(d).store.Leave()
	m.crash(d)
	m.g.set("node-d", ServerLeft)
	m.waitVoters("node-a", "node-b", "node-c")

	// A follower dies: kept until DeadServerCleanup has passed.
	li := m.waitLeader()
	leader := m.node(li).store
	fi := (li + 1) % 3
	dead := m.node(fi).id
	m.crash(fi)
	m.g.set(dead, ServerDead)
	waitRounds(t, leader, 10)
	if l := m.waitLeader(); l != li {
		t.Fatalf("leadership moved from %s to %s meanwhile", m.node(li).id, m.node(l).id)
	}
	if !slices.Contains(voters(leader), dead) {
		t.Fatalf("dead %s removed before DeadServerCleanup passed: voters %v", dead, voters(leader))
	}
	m.clock.advance(deadCleanup + time.Millisecond)
	var rest []string
	for i := range 3 {
		if i != fi {
			rest = append(rest, m.node(i).id)
		}
	}
	m.waitVoters(rest...)
	m.checkData(ctx, 2, 3)
}

// Gossip reports 2 of 3 voters dead (they still serve Raft, so there is a
// leader to decide): removing either would leave a configuration without a
// healthy quorum, so neither is removed, however long they stay dead. Once
// one is alive again, the other (crashed now) is removed.
func TestReconcileKeepsDeadServersWithoutHealthyQuorum(t *testing.T) {
	m := newMemberCluster(t, 3, "node-a", "node-b", "node-c")
	for _, id := range []string{"node-a", "node-b", "node-c"} {
		m.startAlive(id)
	}
	m.waitVoters("node-a", "node-b", "node-c")
	li := m.waitLeader()
	leader := m.node(li).store
	f1, f2 := (li+1)%3, (li+2)%3
	m.g.set(m.node(f1).id, ServerDead)
	m.g.set(m.node(f2).id, ServerDead)
	waitRounds(t, leader, 2) // both seen dead
	m.clock.advance(10 * deadCleanup)
	waitRounds(t, leader, 10)
	if l := m.waitLeader(); l != li {
		t.Fatalf("leadership moved from %s to %s meanwhile", m.node(li).id, m.node(l).id)
	}
	if got := voters(leader); len(got) != 3 {
		t.Fatalf("a dead server was removed although no healthy quorum would remain: voters %v", got)
	}
	// One comes back; the other really dies: now it may go.
	m.g.set(m.node(f1).id, ServerAlive)
	m.crash(f2)
	m.clock.advance(deadCleanup + time.Millisecond)
	waitRounds(t, leader, 2)
	m.clock.advance(deadCleanup + time.Millisecond)
	m.waitVoters(m.node(li).id, m.node(f1).id)
	m.checkData(ctxT(t), 0, 1)
}

// Crash every node and restart them all from their files, gossip having
// forgotten who had state (fresh processes): nobody bootstraps again; the
// cluster re-forms with its data and every node announces its state anew.
func TestReconcileFullRestartDoesNotBootstrapAgain(t *testing.T) {
	m := newMemberCluster(t, 3, "node-a", "node-b", "node-c")
	for _, id := range []string{"node-a", "node-b", "node-c"} {
		m.startAlive(id)
	}
	m.waitVoters("node-a", "node-b", "node-c")
	ctx := ctxT(t)
	for i := range 10 {
		if _, err := m.node(i%3).store.Register(ctx, tkey, []naming.Instance{tinst(i)}); err != nil {
			t.Fatal(err)
		}
	}
	m.waitApplied(m.leaderStore().FSM().AppliedIndex())
	for _, id := range []string{"node-a", "node-b", "node-c"} {
		eventually(t, 10*time.Second, id+" announces its state", func() bool { has, _ := m.g.announced(id); return has })
	}
	for i := range 3 {
		m.crash(i)
	}
	// The worst case: the node that sorts first restarts first, and gossip
	// shows every server alive and none with state.
	m.g.resetHasState()
	for _, id := range []string{"node-a", "node-b", "node-c"} {
		m.start(m.idx(id))
	}
	m.waitVoters("node-a", "node-b", "node-c")
	for _, id := range []string{"node-a", "node-b", "node-c"} {
		eventually(t, 10*time.Second, id+" announces its state again", func() bool { has, _ := m.g.announced(id); return has })
	}
	m.checkData(ctx, 10, 11)
	for _, nd := range m.nodes {
		if n := nd.store.bootstraps.Load(); n != 0 {
			t.Errorf("%s called Bootstrap %d times after the restart", nd.id, n)
		}
		if _, calls := m.g.announced(nd.id); calls != 2 {
			t.Errorf("%s called SetHasState %d times over two lives, want 2", nd.id, calls)
		}
	}
}
