package rpc

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	clusterv1 "github.com/regent-registry/regent/proto/cluster/v1"

	"github.com/regent-registry/regent/persistent"
)

// heldConn is a client connection whose writes can be held back (kept, in
// order, with the time each was written) and delivered later: a TCP
// connection across a partition, whose segments are retransmitted once
// the partition heals.
type heldConn struct {
	net.Conn
	mu     sync.Mutex
	hold   bool
	chunks []heldChunk
}

type heldChunk struct {
	at time.Time
	b  []byte
}

func (c *heldConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hold {
		c.chunks = append(c.chunks, heldChunk{time.Now(), bytes.Clone(b)})
		return len(b), nil
	}
	return c.Conn.Write(b)
}

func (c *heldConn) setHold() {
	c.mu.Lock()
	c.hold = true
	c.mu.Unlock()
}

// release delivers the held writes made before t, in order, and keeps
// holding the rest (all of them, and stops holding, when t is zero).
func (c *heldConn) release(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.chunks) > 0 && (t.IsZero() || c.chunks[0].at.Before(t)) {
		if _, err := c.Conn.Write(c.chunks[0].b); err != nil {
			return err
		}
		c.chunks = c.chunks[1:]
	}
	if t.IsZero() {
		c.hold = false
	}
	return nil
}

type countingRaft struct{ applied atomic.Int64 }

func (h *countingRaft) HandleApply(context.Context, []byte) (persistent.Result, error) {
	return persistent.Result{Revision: uint64(h.applied.Add(1))}, nil
}

func (h *countingRaft) HandleReadIndex(context.Context) (uint64, error) { return 0, nil }

// A forwarded write delivered to the leader only after its sender gave up
// (it was held up in the network: chaos soak seed 279001576, a follower
// cut off from the leader by a partition, its request's TCP segments
// retransmitted when the partition healed) is refused, not applied: its
// sender has told its client the write failed, and that client's next
// write may already be applied. Before, gRPC gave the late request a fresh
// relative deadline on arrival and the leader applied it, after the same
// client's next write: an acknowledged deregister was undone by the
// register that had failed before it.
func TestForwardedWriteDeliveredAfterItsDeadlineIsRefused(t *testing.T) {
	h := &countingRaft{}
	answered := make(chan error, 4)
	gs := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		rep, err := next(ctx, req)
		answered <- err
		return rep, err
	}))
	clusterv1.RegisterRaftServer(gs, raftServer{h: h})
	l := bufconn.Listen(1 << 20)
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(l) }()
	var conn atomic.Pointer[heldConn]
	tr, err := NewPeerTransport(PeerTransportConfig{
		Resolve: func(string) (string, bool) { return "passthrough:///leader", true },
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			c, err := l.DialContext(ctx)
			if err != nil {
				return nil, err
			}
			hc := &heldConn{Conn: c}
			conn.Store(hc)
			return hc, nil
		})},
		CallTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = tr.Close()
		gs.Stop()
		<-done
	})
	waitAnswer := func() error {
		select {
		case err := <-answered:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("the leader never answered the forwarded write")
			return nil
		}
	}

	// The connection is up (as between cluster nodes) and a write in time
	// is applied.
	if _, err := tr.Apply(t.Context(), "leader", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if err := waitAnswer(); err != nil || h.applied.Load() != 1 {
		t.Fatalf("a write in time: %v, applied %d", err, h.applied.Load())
	}

	// The partition: what the sender writes is held. Its caller gives up
	// after 300 ms (the sender's ApplyTimeout, shortened).
	hc := conn.Load()
	hc.setHold()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	deadline, _ := ctx.Deadline()
	_, err = tr.Apply(ctx, "leader", []byte(`{}`))
	cancel()
	if !errors.Is(err, persistent.ErrOutcomeUnknown) {
		t.Fatalf("a forwarded write without an answer by its deadline: %v, want outcome unknown", err)
	}
	// The heal: the request (written at once, well before the deadline)
	// arrives now, after the deadline; the cancellation the sender wrote
	// when it gave up is held a while longer (TCP delivers in order, but
	// the leader may start a handler before it reads the cancellation).
	if err := hc.release(deadline.Add(-200 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	err = waitAnswer()
	if err := hc.release(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if n := h.applied.Load(); n != 1 {
		t.Fatalf("the write delivered after its sender's deadline was applied (answer %v)", err)
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("the late write was answered %v, want Unavailable (not applied)", err)
	}
}
