package persistent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/regent-registry/regent/internal/naming"
)

// silentPeer accepts Raft connections and never reads nor answers: a
// peer process that is paused (SIGSTOP), or behind a partition that drops
// packets.
func silentPeer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// A leader whose heartbeats to one voter go unanswered (that voter is
// paused) closes in about raftShutdownWait, not after the transport's
// timeout: Close cuts the connection raft's heartbeat waits on. Before,
// `regent server` took the whole timeout to exit after SIGTERM, once per
// blocked RPC (chaos finding 5: more than 30 s). The timeout here is a
// minute, so that the two cannot be mistaken.
func TestCloseDoesNotWaitOnAPausedPeer(t *testing.T) {
	silent := silentPeer(t)
	dir := t.TempDir()
	cfg := DefaultLocalRaftConfig()
	cfg.TransportTimeout = time.Minute
	c := &benchCluster{tb: t, cfg: cfg}
	for _, id := range []string{"n1", "n2"} {
		c.nodes = append(c.nodes, &benchNode{id: id, dir: filepath.Join(dir, id), bind: "127.0.0.1:0"})
		c.up = append(c.up, false)
	}
	t.Cleanup(c.stop)
	c.start(0)
	c.start(1)
	servers := map[string]string{"n1": c.nodes[0].store.Addr(), "n2": c.nodes[1].store.Addr(), "n3": silent}
	if err := c.nodes[0].store.Bootstrap(servers); err != nil {
		t.Fatal(err)
	}
	li := c.waitLeader(30 * time.Second)
	leader := c.nodes[li].store
	// A write commits on the two live voters; the leader's heartbeat and
	// replication to n3 then wait on their connections to it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := leader.Register(ctx, tkey, []naming.Instance{tinst(1)}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !dialed(leader.stream, silent) {
		if time.Now().After(deadline) {
			t.Fatal("the leader never dialed n3")
		}
		time.Sleep(5 * time.Millisecond)
	}
	done := make(chan struct{})
	start := time.Now()
	go func() { c.kill(li); close(done) }()
	select {
	case <-done:
		t.Logf("leader closed in %v", time.Since(start).Round(time.Millisecond))
	case <-time.After(30 * time.Second):
		t.Fatal("the leader's Close waited on the paused peer for 30 s (its transport timeout is a minute)")
	}
}

// dialed reports whether s holds a connection to addr.
func dialed(s *streamLayer, addr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.RemoteAddr().String() == addr {
			return true
		}
	}
	return false
}

// The TCP transport offers raft no pipeline, so raft replicates one
// AppendEntries call at a time and never enters hashicorp/raft's pipelined
// send loop, which can park forever after a follower answers
// Success=false (chaos finding 7). Replication and shutdown still work:
// the other tests of this package run over it.
func TestRaftTransportOffersNoPipeline(t *testing.T) {
	dir := t.TempDir()
	c := &benchCluster{tb: t, cfg: DefaultLocalRaftConfig()}
	c.nodes = append(c.nodes, &benchNode{id: "n1", dir: filepath.Join(dir, "n1"), bind: "127.0.0.1:0"})
	c.up = append(c.up, false)
	t.Cleanup(c.stop)
	c.start(0)
	s := c.nodes[0].store
	if _, err := s.trans.AppendEntriesPipeline("n2", "127.0.0.1:1"); !errors.Is(err, raft.ErrPipelineReplicationNotSupported) {
		t.Fatalf("AppendEntriesPipeline: %v, want ErrPipelineReplicationNotSupported", err)
	}
	if _, ok := s.trans.(raft.WithPreVote); !ok {
		t.Fatal("the transport lost pre-vote")
	}
}

// warnings counts the WARN and ERROR records a store logs.
type warnings struct{ n *atomic.Int64 }

func (w warnings) Enabled(context.Context, slog.Level) bool { return true }
func (w warnings) WithAttrs([]slog.Attr) slog.Handler       { return w }
func (w warnings) WithGroup(string) slog.Handler            { return w }
func (w warnings) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		w.n.Add(1)
	}
	return nil
}

// A lone node that leaves has nobody to hand leadership to: Leave does not
// try (it used to, and logged "leadership transfer failed" on every stop
// of a one-node cluster), and the node is still its own leader.
func TestLoneLeaderLeavesWithoutATransfer(t *testing.T) {
	var n atomic.Int64
	cfg := DefaultLocalRaftConfig()
	cfg.Logger = slog.New(warnings{n: &n})
	c := &benchCluster{tb: t, cfg: cfg}
	c.nodes = append(c.nodes, &benchNode{id: "n1", dir: filepath.Join(t.TempDir(), "n1"), bind: "127.0.0.1:0"})
	c.up = append(c.up, false)
	t.Cleanup(c.stop)
	c.start(0)
	s := c.nodes[0].store
	if err := s.Bootstrap(map[string]string{"n1": s.Addr()}); err != nil {
		t.Fatal(err)
	}
	c.waitLeader(30 * time.Second)
	before := n.Load()
	s.Leave()
	if got := n.Load() - before; got != 0 {
		t.Fatalf("Leave on a lone leader logged %d warnings", got)
	}
	if s.Role() != "leader" {
		t.Fatalf("role after Leave: %s", s.Role())
	}
}
