package persistent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/storage"
)

func ctxT(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// A write on any node reaches every node; a follower forwards it to the
// leader and answers with the leader's revision.
func TestRaftWritesFromAnyNodeReachEveryNode(t *testing.T) {
	for _, n := range []int{1, 3, 5} {
		t.Run(map[int]string{1: "1 node", 3: "3 nodes", 5: "5 nodes"}[n], func(t *testing.T) {
			c := newTestCluster(t, n, nil)
			ctx := ctxT(t)
			var last uint64
			for i := range n {
				rev, err := c.node(i).store.Register(ctx, tkey, []naming.Instance{tinst(i)})
				if err != nil {
					t.Fatalf("register on %s: %v", c.node(i).id, err)
				}
				if rev <= last {
					t.Fatalf("revision %d after %d", rev, last)
				}
				last = rev
			}
			leader := c.node(c.waitLeader()).store
			c.waitApplied(leader.FSM().AppliedIndex())
			for i := range n {
				got := listed(t, c.node(i).store, tkey)
				if len(got) != n {
					t.Fatalf("%s lists %v, want %d instances", c.node(i).id, got, n)
				}
				ps, _ := c.node(i).store.Service(tkey)
				if ps.Revision != last {
					t.Fatalf("%s at revision %d, want %d", c.node(i).id, ps.Revision, last)
				}
			}
			if _, err := c.node(n-1).store.Deregister(ctx, tkey, tid(0)); err != nil {
				t.Fatal(err)
			}
			c.waitApplied(leader.FSM().AppliedIndex())
			for i := range n {
				if listed(t, c.node(i).store, tkey)[tinst(0).IP] {
					t.Fatalf("%s still lists the deregistered instance", c.node(i).id)
				}
			}
		})
	}
}

// Bad input and oversized writes are refused before they reach the log.
func TestRaftRefusesBadInputBeforeTheLog(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	ctx := ctxT(t)
	follower := c.node((c.waitLeader() + 1) % 3).store
	leader := c.node(c.waitLeader()).store
	before := leader.Raft().LastIndex()
	big := tinst(1)
	big.Metadata = map[string]string{}
	for i := range 5000 {
		big.Metadata[strings.Repeat("k", 10)+string(rune('a'+i%26))+strings.Repeat("x", i%7)] = strings.Repeat("v", 200)
	}
	many := make([]naming.Instance, MaxInstancesPerCommand+1)
	for i := range many {
		many[i] = tinst(i)
	}
	cases := []struct {
		name string
		c    Command
	}{
		{"bad ip", Command{Op: OpRegister, Key: tkey, Instances: []naming.Instance{{IP: "not an ip!", Port: 80}}}},
		{"port 0", Command{Op: OpRegister, Key: tkey, Instances: []naming.Instance{{IP: "10.0.0.1"}}}},
		{"no instances", Command{Op: OpRegister, Key: tkey}},
		{"duplicate", Command{Op: OpRegister, Key: tkey, Instances: []naming.Instance{tinst(1), tinst(1)}}},
		{"too many", Command{Op: OpRegister, Key: tkey, Instances: many}},
		{"metadata too big", Command{Op: OpRegister, Key: tkey, Instances: []naming.Instance{big}}},
		{"bad service", Command{Op: OpRegister, Key: naming.ServiceKey{Service: "a/b"}, Instances: []naming.Instance{tinst(1)}}},
		{"bad threshold", Command{Op: OpMeta, Key: tkey, Meta: naming.ServiceMeta{ProtectThreshold: 2}}},
		{"unknown op", Command{Op: "drop-table", Key: tkey}},
	}
	for _, tc := range cases {
		for _, s := range []*Store{leader, follower} {
			_, err := s.Exec(ctx, tc.c)
			if !errors.Is(err, naming.ErrInvalid) {
				t.Fatalf("%s: err %v, want naming.ErrInvalid", tc.name, err)
			}
		}
	}
	// A forged forwarded command is refused by the leader too.
	if _, err := leader.HandleApply(ctx, encodeWire(Command{Op: OpRegister, Key: naming.ServiceKey{Service: "x"}, Instances: []naming.Instance{{IP: "1.2.3.4", Port: 99999}}})); !errors.Is(err, naming.ErrInvalid) {
		t.Fatalf("forged command: %v", err)
	}
	if _, err := leader.HandleApply(ctx, []byte(`{{{`)); !errors.Is(err, naming.ErrInvalid) {
		t.Fatalf("garbage command: %v", err)
	}
	if got := leader.Raft().LastIndex(); got != before {
		t.Fatalf("the log grew from %d to %d on refused writes", before, got)
	}
	if len(listed(t, leader, tkey)) != 0 {
		t.Fatal("a refused write left instances behind")
	}
}

// Kill the leader: a new one is elected, no acknowledged write is lost,
// writes continue on the majority; the old leader catches up on return.
func TestRaftLeaderKilled(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	ctx := ctxT(t)
	acked := map[string]bool{}
	for i := range 20 {
		if _, err := c.node(i%3).store.Register(ctx, tkey, []naming.Instance{tinst(i)}); err != nil {
			t.Fatal(err)
		}
		acked[tinst(i).IP] = true
	}
	old := c.waitLeader()
	c.crash(old)
	next := c.waitLeader()
	if next == old {
		t.Fatal("the crashed node is still the leader")
	}
	for i := 20; i < 40; i++ {
		nd := c.node((old + 1 + i%2) % 3)
		if _, err := nd.store.Register(ctx, tkey, []naming.Instance{tinst(i)}); err != nil {
			t.Fatalf("write on %s after the leader was killed: %v", nd.id, err)
		}
		acked[tinst(i).IP] = true
	}
	c.start(old)
	c.waitApplied(c.node(c.waitLeader()).store.FSM().AppliedIndex())
	for i := range 3 {
		got := listed(t, c.node(i).store, tkey)
		for ip := range acked {
			if !got[ip] {
				t.Fatalf("%s lost acknowledged write %s", c.node(i).id, ip)
			}
		}
	}
}

// Crash every node, restart them all: every acknowledged write is there,
// served from disk before any leader exists, and nothing bootstraps again.
func TestRaftFullRestartKeepsEveryWrite(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	ctx := ctxT(t)
	for i := range 30 {
		if _, err := c.node(i%3).store.Register(ctx, tkey, []naming.Instance{tinst(i)}); err != nil {
			t.Fatal(err)
		}
	}
	c.waitApplied(c.node(c.waitLeader()).store.FSM().AppliedIndex())
	for i := range 3 {
		c.crash(i)
	}
	// Restart one alone: no quorum, yet it serves its state from disk.
	c.start(0)
	if got := listed(t, c.node(0).store, tkey); len(got) != 30 {
		t.Fatalf("restarted node serves %d instances from disk, want 30", len(got))
	}
	if !c.node(0).store.HasState() {
		t.Fatal("restarted node does not know its Raft state")
	}
	if err := c.node(0).store.Bootstrap(map[string]string{"n1": "n1"}); !errors.Is(err, raft.ErrCantBootstrap) {
		t.Fatalf("bootstrap of a node with state: %v, want ErrCantBootstrap", err)
	}
	c.start(1)
	c.start(2)
	c.waitLeader()
	if _, err := c.node(2).store.Register(ctx, tkey, []naming.Instance{tinst(99)}); err != nil {
		t.Fatal(err)
	}
	c.waitApplied(c.node(c.waitLeader()).store.FSM().AppliedIndex())
	for i := range 3 {
		if got := listed(t, c.node(i).store, tkey); len(got) != 31 {
			t.Fatalf("%s lists %d instances after the restart, want 31", c.node(i).id, len(got))
		}
	}
}

// A node cut off from the others (a minority of one) fails writes with
// ErrUnavailable within the apply timeout and applies nothing; after the
// heal it catches up with what the majority wrote meanwhile.
func TestRaftMinorityCutOff(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *RaftConfig) { cfg.ApplyTimeout = 500 * time.Millisecond })
	ctx := ctxT(t)
	if _, err := c.node(0).store.Register(ctx, tkey, []naming.Instance{tinst(0)}); err != nil {
		t.Fatal(err)
	}
	minority := c.waitLeader() // cut off the leader itself: the hardest case
	c.isolate(minority)
	_, err := c.node(minority).store.Register(ctx, tkey, []naming.Instance{tinst(1)})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("write on the cut-off node: %v, want ErrUnavailable", err)
	}
	if err := c.node(minority).store.Barrier(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("linearizable read on the cut-off node: %v, want ErrUnavailable", err)
	}
	// The majority elects a leader and goes on.
	var majority []int
	for i := range 3 {
		if i != minority {
			majority = append(majority, i)
		}
	}
	for i := 2; i < 10; i++ {
		if _, err := c.node(majority[i%2]).store.Register(ctx, tkey, []naming.Instance{tinst(i)}); err != nil {
			t.Fatalf("majority write: %v", err)
		}
	}
	if listed(t, c.node(minority).store, tkey)[tinst(2).IP] {
		t.Fatal("the cut-off node applied a write of the majority")
	}
	c.heal()
	leader := c.node(c.waitLeader()).store
	c.waitApplied(leader.FSM().AppliedIndex())
	got := listed(t, c.node(minority).store, tkey)
	for i := 2; i < 10; i++ {
		if !got[tinst(i).IP] {
			t.Fatalf("after the heal the node lacks %s", tinst(i).IP)
		}
	}
	// The write that failed on the cut-off leader either never committed
	// or committed everywhere alike; nothing is half applied.
	has := listed(t, c.node(majority[0]).store, tkey)[tinst(1).IP]
	for i := range 3 {
		if listed(t, c.node(i).store, tkey)[tinst(1).IP] != has {
			t.Fatal("nodes disagree on the write made during the partition")
		}
	}
}

// A linearizable read on a follower sees a write acknowledged just before
// on another node.
func TestRaftBarrierSeesAcknowledgedWrites(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *RaftConfig) { cfg.CommitTimeout = 50 * time.Millisecond })
	ctx := ctxT(t)
	leader := c.waitLeader()
	for i := range 50 {
		w := c.node(leader).store
		r := c.node((leader + 1 + i%2) % 3).store
		if _, err := w.Register(ctx, tkey, []naming.Instance{tinst(i)}); err != nil {
			t.Fatal(err)
		}
		if err := r.Barrier(ctx); err != nil {
			t.Fatal(err)
		}
		if !listed(t, r, tkey)[tinst(i).IP] {
			t.Fatalf("read %d after the barrier misses the acknowledged write", i)
		}
	}
}

// Snapshots compact the log; a node added later (fresh disk) gets the data
// through a snapshot install, and a node whose state file was lost catches
// up from its own snapshot on start.
func TestRaftSnapshotCompactionAndRestore(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *RaftConfig) {
		cfg.SnapshotThreshold, cfg.TrailingLogs, cfg.SnapshotInterval = 20, 5, time.Hour
	})
	ctx := ctxT(t)
	for i := range 100 {
		if _, err := c.node(i%3).store.Register(ctx, tkey, []naming.Instance{tinst(i)}); err != nil {
			t.Fatal(err)
		}
	}
	li := c.waitLeader()
	leader := c.node(li).store
	if err := leader.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	first, err := leader.logs.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	if first <= 1 {
		t.Fatalf("log not compacted: first index %d", first)
	}
	// A fresh node joins: it must get everything by snapshot.
	// Beside the others, in the directory the cluster's stop outlives.
	nd := &tnode{id: "n4", dir: filepath.Join(filepath.Dir(c.nodes[0].dir), "n4")}
	c.nodes = append(c.nodes, nd)
	c.up = append(c.up, false)
	c.start(3)
	if err := leader.Raft().AddVoter("n4", "n4", 0, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	c.waitApplied(leader.FSM().AppliedIndex())
	if got := listed(t, nd.store, tkey); len(got) != 100 {
		t.Fatalf("the new node lists %d instances, want 100", len(got))
	}
	// A follower loses its state file: on restart it restores its own
	// newest snapshot, then Raft replays the rest.
	fi := (li + 1) % 3
	f := c.node(fi)
	if err := f.store.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	c.crash(fi)
	if err := removeFile(f.dir + "/state.db"); err != nil {
		t.Fatal(err)
	}
	c.start(fi)
	if got := listed(t, f.store, tkey); len(got) < 90 {
		t.Fatalf("after losing its state file the node serves %d instances from its snapshot", len(got))
	}
	c.waitApplied(leader.FSM().AppliedIndex())
	if got := listed(t, f.store, tkey); len(got) != 100 {
		t.Fatalf("after catching up the node lists %d instances, want 100", len(got))
	}
}

// Health verdicts go through the log: the flag flips on every node, and a
// verdict for a missing instance changes nothing.
func TestRaftSetHealthy(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	ctx := ctxT(t)
	if _, err := c.node(0).store.Register(ctx, tkey, []naming.Instance{tinst(1)}); err != nil {
		t.Fatal(err)
	}
	if err := c.node(1).store.SetHealthy(ctx, tkey, tid(1), false); err != nil {
		t.Fatal(err)
	}
	ps0, _ := c.node(0).store.Service(tkey)
	if err := c.node(2).store.SetHealthy(ctx, tkey, tid(7), false); err != nil {
		t.Fatal(err)
	}
	c.waitApplied(c.node(c.waitLeader()).store.FSM().AppliedIndex())
	for i := range 3 {
		ps, _ := c.node(i).store.Service(tkey)
		if len(ps.Instances) != 1 || ps.Instances[0].Healthy {
			t.Fatalf("%s: %+v, want the one instance unhealthy", c.node(i).id, ps.Instances)
		}
		if ps.Revision != ps0.Revision && i == 0 {
			t.Fatalf("a verdict on a missing instance bumped the revision")
		}
	}
}

// A state file that no longer opens (a power loss with reordered writes)
// is moved aside and rebuilt from the snapshot and the log; nothing
// acknowledged is lost.
func TestRaftRebuildsAnUnreadableState(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *RaftConfig) { cfg.SnapshotThreshold, cfg.TrailingLogs = 20, 10 })
	ctx := ctxT(t)
	for i := range 40 {
		if _, err := c.node(i%3).store.Register(ctx, tkey, []naming.Instance{tinst(i)}); err != nil {
			t.Fatal(err)
		}
	}
	li := c.waitLeader()
	fi := (li + 1) % 3
	f := c.node(fi)
	if err := f.store.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	for i := 40; i < 50; i++ {
		if _, err := c.node(li).store.Register(ctx, tkey, []naming.Instance{tinst(i)}); err != nil {
			t.Fatal(err)
		}
	}
	c.waitApplied(c.node(li).store.FSM().AppliedIndex())
	c.crash(fi)
	if err := os.WriteFile(f.dir+"/state.db", []byte(strings.Repeat("torn page ", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	c.start(fi)
	aside, _ := filepath.Glob(f.dir + "/state.db.broken-*")
	if len(aside) != 1 {
		t.Fatalf("broken state not moved aside: %v", aside)
	}
	if _, err := c.node(li).store.Register(ctx, tkey, []naming.Instance{tinst(50)}); err != nil {
		t.Fatal(err)
	}
	c.waitApplied(c.node(li).store.FSM().AppliedIndex())
	if got := listed(t, f.store, tkey); len(got) != 51 {
		t.Fatalf("rebuilt node lists %d instances, want 51", len(got))
	}
}

func TestRaftConfigValidateStateCommitDelay(t *testing.T) {
	base := DefaultRaftConfig()
	base.NodeID, base.Dir, base.BindAddr = "n1", t.TempDir(), "127.0.0.1:0"
	for _, tc := range []struct {
		delay time.Duration
		ok    bool
	}{
		{DefaultStateCommitDelay, true},
		{0, true},
		{base.StateSyncInterval, true},
		{-time.Millisecond, false},
		{base.StateSyncInterval + time.Millisecond, false},
	} {
		c := base
		c.StateCommitDelay = tc.delay
		if err := c.Validate(); (err == nil) != tc.ok {
			t.Errorf("StateCommitDelay %v: Validate = %v, want ok %v", tc.delay, err, tc.ok)
		}
	}
}

// kill -9 of every node while their states hold applied writes only in the
// pending transaction (a long StateCommitDelay, no read): the states come
// back without them, and raft replays them from the log, so every
// acknowledged write is there again on every node.
func TestRaftKillLosesOnlyPendingStateWhichTheLogReplays(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *RaftConfig) {
		cfg.StateCommitDelay, cfg.StateSyncInterval = time.Hour, time.Hour
	})
	ctx := ctxT(t)
	const writes = 20
	for i := range writes {
		if _, err := c.node(i%3).store.Register(ctx, tkey, []naming.Instance{tinst(i)}); err != nil {
			t.Fatal(err)
		}
	}
	last := c.node(c.waitLeader()).store.FSM().AppliedIndex()
	c.waitApplied(last)
	for i := range 3 {
		c.kill(i)
	}
	// The kill took the writes from the states on disk.
	for i := range 3 {
		db, err := OpenStateWith(filepath.Join(c.node(i).dir, "state.db"), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		var applied uint64
		if err := db.View(func(tx *storage.Tx) error { applied = tx.AppliedIndex(); return nil }); err != nil {
			t.Fatal(err)
		}
		db.Close()
		if applied >= last {
			t.Fatalf("%s's state on disk holds index %d after the kill, want below %d: nothing was pending", c.node(i).id, applied, last)
		}
	}
	for i := range 3 {
		c.start(i)
	}
	c.waitApplied(last)
	for i := range 3 {
		if got := listed(t, c.node(i).store, tkey); len(got) != writes {
			t.Fatalf("%s lists %d instances after the kill and restart, want %d", c.node(i).id, len(got), writes)
		}
	}
}
