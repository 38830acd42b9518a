package persistent

// An in-process Raft cluster for tests: n Stores on raft's in-memory
// transport, each with its own bbolt state and raft-boltdb log in a temp
// dir, forwarding to the leader through an in-memory Forwarder. Nodes can
// be crashed (raft shut down without a leave, files kept), restarted from
// their files, and cut off from the others in both Raft and forwarding.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/storage"
)

// testLogStore is the Raft log store of every test cluster (make test
// runs the package once with each).
var testLogStore = flag.String("raft.logstore", LogStoreBoltDB, `Raft log store of the test clusters: "boltdb" or "wal"`)

type tnode struct {
	id    string
	dir   string
	db    *storage.DB
	store *Store
	trans *raft.InmemTransport
}

type tcluster struct {
	t     testing.TB
	cfg   func(*RaftConfig)
	mu    sync.Mutex
	nodes []*tnode
	up    []bool
	cut   map[string]bool // nodes cut off from every other
}

func testLogger(tb testing.TB) *slog.Logger {
	if os.Getenv("REGENT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// newTestCluster starts n nodes and bootstraps them together from node 0.
func newTestCluster(tb testing.TB, n int, mut func(*RaftConfig)) *tcluster {
	tb.Helper()
	c := &tcluster{t: tb, cfg: mut, cut: map[string]bool{}}
	dir := tb.TempDir()
	for i := range n {
		id := fmt.Sprintf("n%d", i+1)
		c.nodes = append(c.nodes, &tnode{id: id, dir: filepath.Join(dir, id)})
		c.up = append(c.up, false)
	}
	for i := range n {
		c.start(i)
	}
	servers := map[string]string{}
	for _, nd := range c.nodes {
		servers[nd.id] = nd.id
	}
	if err := c.nodes[0].store.Bootstrap(servers); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.stopAll)
	c.waitLeader()
	return c
}

func (c *tcluster) config(nd *tnode) RaftConfig {
	cfg := DefaultLocalRaftConfig()
	cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 50*time.Millisecond, 50*time.Millisecond, 50*time.Millisecond
	cfg.CommitTimeout = 5 * time.Millisecond
	cfg.ApplyTimeout = 2 * time.Second
	cfg.NodeID, cfg.Dir, cfg.NoSync = nd.id, filepath.Join(nd.dir, "raft"), true
	cfg.LogStore = *testLogStore
	cfg.Transport = nd.trans
	cfg.Forwarder = forwarder{c: c, from: nd.id}
	cfg.Logger = testLogger(c.t).With("node", nd.id)
	if c.cfg != nil {
		c.cfg(&cfg)
	}
	return cfg
}

// start opens node i from its files (fresh or left by a crash).
func (c *tcluster) start(i int) {
	c.t.Helper()
	nd := c.nodes[i]
	if err := os.MkdirAll(nd.dir, 0o700); err != nil {
		c.t.Fatal(err)
	}
	db, err := OpenStateWith(filepath.Join(nd.dir, "state.db"), testLogger(c.t), c.config(nd).StateCommitDelay)
	if err != nil {
		c.t.Fatal(err)
	}
	_, nd.trans = raft.NewInmemTransport(raft.ServerAddress(nd.id))
	st, err := OpenRaft(c.config(nd), db)
	if err != nil {
		db.Close()
		c.t.Fatal(err)
	}
	c.mu.Lock()
	nd.db, nd.store = db, st
	c.up[i] = true
	c.mu.Unlock()
	c.rewire()
}

// rewire connects every pair of live transports not cut apart.
func (c *tcluster) rewire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, a := range c.nodes {
		if !c.up[i] {
			continue
		}
		a.trans.DisconnectAll()
		for j, b := range c.nodes {
			if i == j || !c.up[j] || c.cut[a.id] || c.cut[b.id] {
				continue
			}
			a.trans.Connect(raft.ServerAddress(b.id), b.trans)
		}
	}
}

// crash stops node i without leaving: raft shuts down, files stay.
func (c *tcluster) crash(i int) {
	c.t.Helper()
	nd := c.down(i)
	_ = nd.store.Close()
	if err := nd.db.Close(); err != nil {
		c.t.Fatal(err)
	}
	c.rewire()
}

// kill stops node i as kill -9 does: the state's pending transaction never
// reaches its file (the state is closed first, so that the store's own
// Close cannot commit it), then raft shuts down. Call it while the node
// applies nothing.
func (c *tcluster) kill(i int) {
	c.t.Helper()
	nd := c.down(i)
	if err := storage.CrashForTest(nd.db); err != nil {
		c.t.Fatal(err)
	}
	_ = nd.store.Close()
	c.rewire()
}

func (c *tcluster) down(i int) *tnode {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.up[i] = false
	return c.nodes[i]
}

// isolate cuts node i off from every other node; heal undoes every cut.
func (c *tcluster) isolate(i int) {
	c.mu.Lock()
	c.cut[c.nodes[i].id] = true
	c.mu.Unlock()
	c.rewire()
}

func (c *tcluster) heal() {
	c.mu.Lock()
	clear(c.cut)
	c.mu.Unlock()
	c.rewire()
}

func (c *tcluster) stopAll() {
	for i := range c.nodes {
		c.mu.Lock()
		up := c.up[i]
		c.mu.Unlock()
		if up {
			c.crash(i)
		}
	}
}

func (c *tcluster) node(i int) *tnode { return c.nodes[i] }

func (c *tcluster) isUp(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.up[i]
}

// waitLeader waits until the live, connected nodes agree on one leader and
// returns its index.
func (c *tcluster) waitLeader() int {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for i, nd := range c.nodes {
			if c.isUp(i) && !c.isCut(nd.id) && nd.store.Raft().State() == raft.Leader && leaderSettled(nd.store) {
				return i
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.t.Fatal("no leader within 10 s")
	return -1
}

// leaderSettled: the leader has appended the first entry of its term (the
// no-op raft writes on election, just after the node turns leader), so its
// log no longer grows by itself.
func leaderSettled(s *Store) bool {
	var l raft.Log
	return s.logs.GetLog(s.Raft().LastIndex(), &l) == nil && l.Term == s.Raft().CurrentTerm()
}

func (c *tcluster) isCut(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cut[id]
}

// waitApplied waits until every live node has applied index idx.
func (c *tcluster) waitApplied(idx uint64) {
	c.t.Helper()
	for i, nd := range c.nodes {
		if !c.isUp(i) {
			continue
		}
		select {
		case <-nd.store.FSM().WaitApplied(idx):
		case <-time.After(10 * time.Second):
			c.t.Fatalf("%s applied %d, want %d", nd.id, nd.store.FSM().AppliedIndex(), idx)
		}
	}
}

// forwarder is the in-memory Forwarder: it calls the leader's store
// directly, unless either side is down or cut off.
type forwarder struct {
	c    *tcluster
	from string
}

var errCut = errors.New("test network: unreachable")

func (f forwarder) target(to string) (*Store, error) {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	if f.c.cut[f.from] || f.c.cut[to] {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, errCut)
	}
	for i, nd := range f.c.nodes {
		if nd.id == to && f.c.up[i] {
			return nd.store, nil
		}
	}
	return nil, fmt.Errorf("%w: %w", ErrUnavailable, errCut)
}

func (f forwarder) Apply(ctx context.Context, leader string, cmd []byte) (Result, error) {
	s, err := f.target(leader)
	if err != nil {
		return Result{}, err
	}
	// Round trip through the wire encoding, as the peer transport does.
	res, err := s.HandleApply(ctx, append([]byte(nil), cmd...))
	if err != nil {
		return Result{}, err
	}
	b, err := EncodeResult(res)
	if err != nil {
		return Result{}, err
	}
	return DecodeResult(b)
}

func (f forwarder) ReadIndex(ctx context.Context, leader string) (uint64, error) {
	s, err := f.target(leader)
	if err != nil {
		return 0, err
	}
	return s.HandleReadIndex(ctx)
}

// Helpers over one store.

var tkey = naming.ServiceKey{Namespace: naming.DefaultNamespace, Group: naming.DefaultGroup, Service: "orders"}

func tinst(i int) naming.Instance {
	return naming.Instance{IP: fmt.Sprintf("10.1.%d.%d", i/250, 1+i%250), Port: 8080, Cluster: naming.DefaultCluster,
		Weight: 1, Healthy: true, Enabled: true}
}

func tid(i int) naming.InstanceID { in := tinst(i); return in.ID() }

func listed(tb testing.TB, s *Store, key naming.ServiceKey) map[string]bool {
	tb.Helper()
	ps, err := s.Service(key)
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]bool{}
	for _, in := range ps.Instances {
		out[in.IP] = true
	}
	return out
}

func removeFile(p string) error { return os.Remove(p) }
