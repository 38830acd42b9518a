package persistent

// Harness of the Raft benchmarks (bench_test.go): Regent clusters of real
// Stores and bare hashicorp/raft clusters, both over raft's TCP transport
// on 127.0.0.1 with fsync on, each node in its own directory.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/storage"
)

// benchNode is one Regent node: its bbolt state and its Store.
type benchNode struct {
	id, dir, bind string // bind: BindAddr given to OpenRaft
	db            *storage.DB
	store         *Store
}

// benchCluster is n Regent nodes in this process. Writes on a follower
// are forwarded by benchForwarder, which calls the leader's
// Store.HandleApply directly (no peer transport).
type benchCluster struct {
	tb    testing.TB
	cfg   RaftConfig // timings; NodeID, Dir, BindAddr, Forwarder are set per node
	mu    sync.Mutex
	nodes []*benchNode
	up    []bool
}

// benchFreePorts returns n distinct loopback addresses that were free a
// moment ago (for nodes that must rebind the same address on restart).
func benchFreePorts(tb testing.TB, n int) []string {
	tb.Helper()
	var out []string
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

// startBenchCluster starts n nodes in dir with cfg's timings, fsync on,
// and bootstraps them from node 0. binds gives each node's BindAddr (nil:
// 127.0.0.1:0, a port of the kernel's choosing).
func startBenchCluster(tb testing.TB, dir string, n int, cfg RaftConfig, binds []string) *benchCluster {
	tb.Helper()
	c := &benchCluster{tb: tb, cfg: cfg}
	for i := range n {
		id := fmt.Sprintf("n%d", i+1)
		bind := "127.0.0.1:0"
		if binds != nil {
			bind = binds[i]
		}
		c.nodes = append(c.nodes, &benchNode{id: id, dir: filepath.Join(dir, id), bind: bind})
		c.up = append(c.up, false)
	}
	tb.Cleanup(c.stop)
	for i := range n {
		c.start(i)
	}
	servers := map[string]string{}
	for _, nd := range c.nodes {
		servers[nd.id] = nd.store.Addr()
		nd.bind = nd.store.Addr()
	}
	if err := c.nodes[0].store.Bootstrap(servers); err != nil {
		tb.Fatal(err)
	}
	c.waitLeader(30 * time.Second)
	return c
}

// start opens node i from its files (fresh, or left by kill).
func (c *benchCluster) start(i int) {
	c.tb.Helper()
	nd := c.nodes[i]
	if err := os.MkdirAll(nd.dir, 0o700); err != nil {
		c.tb.Fatal(err)
	}
	db, err := OpenState(filepath.Join(nd.dir, "state.db"), nil) // as the daemon opens it
	if err != nil {
		c.tb.Fatal(err)
	}
	cfg := c.cfg
	cfg.NodeID, cfg.Dir, cfg.BindAddr = nd.id, filepath.Join(nd.dir, "raft"), nd.bind
	cfg.Forwarder = benchForwarder{c}
	st, err := OpenRaft(cfg, db)
	if err != nil {
		db.Close()
		c.tb.Fatal(err)
	}
	c.mu.Lock()
	nd.db, nd.store, c.up[i] = db, st, true
	c.mu.Unlock()
}

// kill stops node i as a crash does: it is unreachable for forwarding from
// this moment, then raft is shut down (Store.Close: raft.Shutdown, no
// leadership transfer) and its files are closed.
func (c *benchCluster) kill(i int) {
	c.mu.Lock()
	up := c.up[i]
	c.up[i] = false
	nd := c.nodes[i]
	c.mu.Unlock()
	if !up {
		return
	}
	if err := nd.store.Close(); err != nil {
		c.tb.Logf("close %s: %v", nd.id, err)
	}
	if err := nd.db.Close(); err != nil {
		c.tb.Logf("close %s state: %v", nd.id, err)
	}
}

func (c *benchCluster) stop() {
	for i := range c.nodes {
		c.kill(i)
	}
}

func (c *benchCluster) isUp(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.up[i]
}

// leader returns the index of a live node that is leader, or -1.
func (c *benchCluster) leader() int {
	for i, nd := range c.nodes {
		if c.isUp(i) && nd.store.Raft().State() == raft.Leader {
			return i
		}
	}
	return -1
}

func (c *benchCluster) waitLeader(timeout time.Duration) int {
	c.tb.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if i := c.leader(); i >= 0 {
			return i
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.tb.Fatalf("no leader within %v", timeout)
	return -1
}

// waitCaughtUp waits until every live node knows the same leader and has
// applied the leader's applied index.
func (c *benchCluster) waitCaughtUp(timeout time.Duration) {
	c.tb.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if l := c.leader(); l >= 0 {
			want := c.nodes[l].store.FSM().AppliedIndex()
			lid := c.nodes[l].id
			ok := true
			for i, nd := range c.nodes {
				if c.isUp(i) && (nd.store.Leader() != lid || nd.store.FSM().AppliedIndex() < want) {
					ok = false
				}
			}
			if ok {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.tb.Fatalf("cluster not caught up within %v", timeout)
}

// benchForwarder reaches the leader's Store directly, if it is up.
type benchForwarder struct{ c *benchCluster }

func (f benchForwarder) target(id string) (*Store, error) {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	for i, nd := range f.c.nodes {
		if nd.id == id && f.c.up[i] {
			return nd.store, nil
		}
	}
	return nil, fmt.Errorf("%w: %s is down", ErrUnavailable, id)
}

func (f benchForwarder) Apply(ctx context.Context, leader string, cmd []byte) (Result, error) {
	s, err := f.target(leader)
	if err != nil {
		return Result{}, err
	}
	return s.HandleApply(ctx, append([]byte(nil), cmd...))
}

func (f benchForwarder) ReadIndex(ctx context.Context, leader string) (uint64, error) {
	s, err := f.target(leader)
	if err != nil {
		return 0, err
	}
	return s.HandleReadIndex(ctx)
}

// ---------------------------------------------------------------------------
// Bare hashicorp/raft: the same log store, snapshot store, transport and
// raft.Config as a Store, with a no-op FSM.

type benchNopFSM struct{}

func (benchNopFSM) Apply(*raft.Log) any                 { return nil }
func (benchNopFSM) Snapshot() (raft.FSMSnapshot, error) { return benchNopSnapshot{}, nil }
func (benchNopFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

type benchNopSnapshot struct{}

func (benchNopSnapshot) Persist(sink raft.SnapshotSink) error { return sink.Close() }
func (benchNopSnapshot) Release()                             {}

type benchBareNode struct {
	raft  *raft.Raft
	logs  logStore
	trans *raft.NetworkTransport
	state io.Closer // the FSM's, if not the no-op one
}

type benchBareCluster struct {
	tb    testing.TB
	nodes []*benchBareNode
	once  sync.Once
}

// benchRaftConfig is the raft.Config OpenRaft builds from cfg (timings,
// snapshot settings, MaxAppendEntries), for node id.
func benchRaftConfig(cfg RaftConfig, id string) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(id)
	rc.Logger = hclog.NewNullLogger()
	rc.HeartbeatTimeout, rc.ElectionTimeout = cfg.HeartbeatTimeout, cfg.ElectionTimeout
	rc.LeaderLeaseTimeout, rc.CommitTimeout = cfg.LeaderLeaseTimeout, cfg.CommitTimeout
	rc.SnapshotInterval, rc.SnapshotThreshold, rc.TrailingLogs = cfg.SnapshotInterval, cfg.SnapshotThreshold, cfg.TrailingLogs
	rc.MaxAppendEntries = 256
	return rc
}

// startBareCluster starts n bare raft nodes in dir (raft-boltdb/v2 log and
// stable store with fsync, file snapshot store, TCP transport on
// 127.0.0.1) and bootstraps them.
// newFSM, if not nil, replaces the no-op FSM of each node (given its
// directory); the io.Closer it returns is closed after raft shut down.
func startBareCluster(tb testing.TB, dir string, n int, cfg RaftConfig, newFSM func(dir string) (raft.FSM, io.Closer)) *benchBareCluster {
	tb.Helper()
	c := &benchBareCluster{tb: tb}
	tb.Cleanup(c.stop)
	var servers []raft.Server
	for i := range n {
		id := fmt.Sprintf("b%d", i+1)
		ndir := filepath.Join(dir, id)
		if err := os.MkdirAll(ndir, 0o700); err != nil {
			tb.Fatal(err)
		}
		// The same log store and cache as OpenRaft's.
		logs, err := openLogStore(ndir, LogStoreBoltDB, false, slog.New(slog.DiscardHandler))
		if err != nil {
			tb.Fatal(err)
		}
		cached, err := raft.NewLogCache(logCacheEntries, logs)
		if err != nil {
			tb.Fatal(err)
		}
		snaps, err := raft.NewFileSnapshotStoreWithLogger(ndir, 2, hclog.NewNullLogger())
		if err != nil {
			logs.Close()
			tb.Fatal(err)
		}
		trans, err := raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, 3, 10*time.Second, hclog.NewNullLogger())
		if err != nil {
			logs.Close()
			tb.Fatal(err)
		}
		var fsm raft.FSM = benchNopFSM{}
		var state io.Closer
		if newFSM != nil {
			fsm, state = newFSM(ndir)
		}
		r, err := raft.NewRaft(benchRaftConfig(cfg, id), fsm, cached, logs, snaps, trans)
		if err != nil {
			trans.Close()
			logs.Close()
			if state != nil {
				state.Close()
			}
			tb.Fatal(err)
		}
		c.nodes = append(c.nodes, &benchBareNode{raft: r, logs: logs, trans: trans, state: state})
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: trans.LocalAddr()})
	}
	if err := c.nodes[0].raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		tb.Fatal(err)
	}
	c.waitLeader(30 * time.Second)
	return c
}

func (c *benchBareCluster) waitLeader(timeout time.Duration) *raft.Raft {
	c.tb.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, nd := range c.nodes {
			if nd.raft.State() == raft.Leader {
				return nd.raft
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.tb.Fatalf("bare raft: no leader within %v", timeout)
	return nil
}

func (c *benchBareCluster) stop() {
	c.once.Do(func() {
		for _, nd := range c.nodes {
			_ = nd.raft.Shutdown().Error()
			_ = nd.trans.Close()
			_ = nd.logs.Close()
			if nd.state != nil {
				_ = nd.state.Close()
			}
		}
	})
}

// ---------------------------------------------------------------------------
// Instances.

// benchKey is the service of writer w.
func benchKey(w int) naming.ServiceKey {
	return naming.ServiceKey{Namespace: naming.DefaultNamespace, Group: naming.DefaultGroup, Service: fmt.Sprintf("bench-%04d", w)}
}

// benchInstance is the n-th instance of a service: unique IP per n (up to
// 16M), port 8080, one metadata entry.
func benchInstance(n int) naming.Instance {
	return naming.Instance{
		IP: fmt.Sprintf("10.%d.%d.%d", (n>>16)&0xff, (n>>8)&0xff, n&0xff), Port: 8080, Cluster: naming.DefaultCluster,
		Weight: 1, Healthy: true, Enabled: true, Metadata: map[string]string{"version": "1.0.0"},
	}
}
