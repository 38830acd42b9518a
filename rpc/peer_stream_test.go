package rpc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
	clusterv1 "github.com/regent-registry/regent/proto/cluster/v1"
)

// syncCalls counts, on a peer server, the SyncStream streams opened and
// the unary Sync calls, and keeps what each stream's handler returned.
type syncCalls struct {
	streams, unary atomic.Int32
	mu             sync.Mutex
	ended          []error
}

func (c *syncCalls) options() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if info.FullMethod == clusterv1.Distro_SyncStream_FullMethodName {
				c.streams.Add(1)
			}
			err := h(srv, ss)
			c.mu.Lock()
			c.ended = append(c.ended, err)
			c.mu.Unlock()
			return err
		}),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if info.FullMethod == clusterv1.Distro_Sync_FullMethodName {
				c.unary.Add(1)
			}
			return h(ctx, req)
		}),
	}
}

func (c *syncCalls) endings() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]error(nil), c.ended...)
}

func countingServer(t *testing.T, n *peerNet, node string, h ephemeral.Handler) (*PeerServer, *syncCalls) {
	t.Helper()
	calls := &syncCalls{}
	cfg := DefaultPeerServerConfig()
	cfg.ServerOptions = calls.options()
	return n.serveWith(t, node, h, cfg), calls
}

func oneClient(id string) *ephemeral.SyncRequest {
	return &ephemeral.SyncRequest{From: "a", Changes: []ephemeral.ClientState{{ID: id, Owner: "a", Version: ephemeral.Version{Epoch: 1, Seq: 1},
		Services: []ephemeral.ServiceInstances{{Key: peerKey("svc"), Instances: []naming.Instance{peerInst("10.0.0.1", 80, nil)}}}}}}
}

// Batches to a peer go on one stream, each answered with its own reply,
// and no unary call is made.
func TestPeerSyncStreamCarriesEveryBatchOnOneStream(t *testing.T) {
	n := newPeerNet()
	var got atomic.Int32
	_, calls := countingServer(t, n, "b", &peerStub{sync: func(_ context.Context, r *ephemeral.SyncRequest) (*ephemeral.SyncReply, error) {
		got.Add(1)
		return &ephemeral.SyncReply{Applied: uint32(len(r.Changes)), Deltas: true}, nil
	}})
	tr := n.transport(t, PeerTransportConfig{})
	for i := range 20 {
		req := oneClient(fmt.Sprintf("c%d", i))
		req.Changes = append(req.Changes, req.Changes[0])
		req.Changes[1].ID += "x"
		rep, err := tr.Sync(context.Background(), "b", req)
		if err != nil || rep.Applied != 2 || !rep.Deltas {
			t.Fatalf("sync %d: %+v, %v", i, rep, err)
		}
	}
	if got.Load() != 20 || calls.streams.Load() != 1 || calls.unary.Load() != 0 {
		t.Fatalf("20 syncs: %d handled, %d streams, %d unary calls", got.Load(), calls.streams.Load(), calls.unary.Load())
	}
	if s := tr.Sent()[PeerKindSync]; s.Messages != 20 {
		t.Fatalf("counted %d sync messages, want 20", s.Messages)
	}
}

// A batch that outlives the call's timeout fails as unreachable and ends
// its stream; the next batch goes on a new stream and is answered.
func TestPeerSyncStreamTimeoutOpensANewStream(t *testing.T) {
	n := newPeerNet()
	_, calls := countingServer(t, n, "b", &peerStub{sync: func(ctx context.Context, r *ephemeral.SyncRequest) (*ephemeral.SyncReply, error) {
		if strings.HasPrefix(r.Changes[0].ID, "slow") {
			<-ctx.Done() // the stream's end cancels it
			return nil, ctx.Err()
		}
		return &ephemeral.SyncReply{Applied: 1}, nil
	}})
	tr := n.transport(t, PeerTransportConfig{CallTimeout: 200 * time.Millisecond})
	_, err := tr.Sync(context.Background(), "b", oneClient("slow1"))
	if !errors.Is(err, ephemeral.ErrUnreachable) || status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("timed-out sync: %v (code %v)", err, status.Code(err))
	}
	rep, err := tr.Sync(context.Background(), "b", oneClient("c2"))
	if err != nil || rep.Applied != 1 {
		t.Fatalf("sync after a timeout: %+v, %v", rep, err)
	}
	if calls.streams.Load() != 2 {
		t.Fatalf("%d streams opened, want 2", calls.streams.Load())
	}

	// The caller's own deadline ends the stream the same way, and says so.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := tr.Sync(ctx, "b", oneClient("slow3")); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ephemeral.ErrUnreachable) {
		t.Fatalf("sync whose caller gave up: %v", err)
	}
	if _, err := tr.Sync(context.Background(), "b", oneClient("c4")); err != nil {
		t.Fatalf("sync after the caller gave up: %v", err)
	}
}

// Opening a stream waits for the connection; the call's timeout, or its
// caller giving up, ends that wait too, with the call's own error.
func TestPeerSyncStreamOpenEndsWithTheCall(t *testing.T) {
	hang := grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		<-ctx.Done() // a peer whose packets are dropped
		return nil, ctx.Err()
	})
	tr, err := NewPeerTransport(PeerTransportConfig{Resolve: func(string) (string, bool) { return "passthrough:///dropped", true },
		DialOptions: []grpc.DialOption{hang}, CallTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	_, err = tr.Sync(context.Background(), "b", oneClient("c1"))
	if !errors.Is(err, ephemeral.ErrUnreachable) || status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("sync to a peer that never connects: %v (code %v)", err, status.Code(err))
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err = tr.Sync(ctx, "b", oneClient("c2"))
	if !errors.Is(err, context.Canceled) || status.Code(err) != codes.Canceled {
		t.Fatalf("sync whose caller gave up while connecting: %v (code %v)", err, status.Code(err))
	}
}

// A batch the peer refuses fails as invalid (the engine drops it), ends
// the stream with INVALID_ARGUMENT, and leaves the next batch unharmed.
func TestPeerSyncStreamRefusedBatch(t *testing.T) {
	n := newPeerNet()
	var got atomic.Int32
	_, calls := countingServer(t, n, "b", &peerStub{sync: func(context.Context, *ephemeral.SyncRequest) (*ephemeral.SyncReply, error) {
		got.Add(1)
		return &ephemeral.SyncReply{Applied: 1}, nil
	}})
	tr := n.transport(t, PeerTransportConfig{})
	_, err := tr.Sync(context.Background(), "b", &ephemeral.SyncRequest{From: ""})
	if !errors.Is(err, naming.ErrInvalid) || status.Code(err) != codes.InvalidArgument {
		t.Fatalf("invalid batch: %v (code %v)", err, status.Code(err))
	}
	if rep, err := tr.Sync(context.Background(), "b", oneClient("c1")); err != nil || rep.Applied != 1 {
		t.Fatalf("sync after a refused batch: %+v, %v", rep, err)
	}
	if got.Load() != 1 || calls.streams.Load() != 2 {
		t.Fatalf("handled %d, streams %d; want 1 and 2", got.Load(), calls.streams.Load())
	}
}

// oldDistro is a peer from before SyncStream: it serves unary Sync only.
type oldDistro struct {
	clusterv1.UnimplementedDistroServer
	calls atomic.Int32
}

func (o *oldDistro) Sync(_ context.Context, p *clusterv1.SyncRequest) (*clusterv1.SyncResponse, error) {
	o.calls.Add(1)
	return &clusterv1.SyncResponse{Applied: uint32(len(p.GetChanges()))}, nil
}

// serveOld serves a peer from before SyncStream at addr, as node.
func serveOld(t *testing.T, n *peerNet, node, addr string) (*oldDistro, *grpc.Server) {
	old := &oldDistro{}
	gs := grpc.NewServer()
	clusterv1.RegisterDistroServer(gs, old)
	l := bufconn.Listen(1 << 20)
	n.mu.Lock()
	n.lis[addr], n.addrs[node] = l, addr
	n.mu.Unlock()
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	return old, gs
}

// A peer without SyncStream gets every batch, the first included, as a
// unary call; once it is upgraded, batches go on a stream again after the
// fallback time.
func TestPeerSyncFallsBackToUnaryForAnOlderPeer(t *testing.T) {
	n := newPeerNet()
	old, gs := serveOld(t, n, "b", "same")
	tr := n.transport(t, PeerTransportConfig{UnaryFallback: 100 * time.Millisecond})
	for i := range 3 {
		rep, err := tr.Sync(context.Background(), "b", oneClient(fmt.Sprintf("c%d", i)))
		if err != nil || rep.Applied != 1 {
			t.Fatalf("sync %d to an older peer: %+v, %v", i, rep, err)
		}
	}
	if old.calls.Load() != 3 {
		t.Fatalf("older peer got %d unary syncs, want 3", old.calls.Load())
	}

	// The peer restarts, upgraded, at the same address.
	gs.Stop()
	calls := &syncCalls{}
	cfg := DefaultPeerServerConfig()
	cfg.ServerOptions = calls.options()
	srv, err := NewPeerServer(&peerStub{}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	l := bufconn.Listen(1 << 20)
	n.mu.Lock()
	n.lis["same"] = l
	n.mu.Unlock()
	go srv.Serve(l)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	peerWait(t, "a batch on a stream to the upgraded peer", func() bool {
		_, _ = tr.Sync(context.Background(), "b", oneClient("c9"))
		return calls.streams.Load() > 0
	})
}

// Shutdown ends an idle sync stream itself (UNAVAILABLE, which its sender
// retries), instead of waiting out PeerStopGrace for the sender to close
// it; a batch in hand when Shutdown starts is answered first.
func TestPeerSyncStreamShutdown(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		n := newPeerNet()
		srv, calls := countingServer(t, n, "b", &peerStub{})
		tr := n.transport(t, PeerTransportConfig{})
		if _, err := tr.Sync(context.Background(), "b", oneClient("c1")); err != nil {
			t.Fatal(err)
		}
		srv.Shutdown(context.Background())
		peerWait(t, "the stream's handler to return", func() bool { return len(calls.endings()) == 1 })
		if err := calls.endings()[0]; !errors.Is(err, errPeerStopping) {
			t.Fatalf("the idle stream ended with %v, want %v", err, errPeerStopping)
		}
		if _, err := tr.Sync(context.Background(), "b", oneClient("c2")); !errors.Is(err, ephemeral.ErrUnreachable) {
			t.Fatalf("sync to a stopped peer: %v", err)
		}
	})
	// Shutdown finds the batch in hand and waits for it: answered, or
	// failed with its own error (a refused batch stays refused).
	for _, c := range []struct {
		name    string
		err     error
		applied uint32
	}{{name: "batch in hand", applied: 1}, {name: "refused batch in hand", err: fmt.Errorf("bad: %w", naming.ErrInvalid)}} {
		t.Run(c.name, func(t *testing.T) {
			n := newPeerNet()
			entered, release := make(chan struct{}), make(chan struct{})
			srv, calls := countingServer(t, n, "b", &peerStub{sync: func(context.Context, *ephemeral.SyncRequest) (*ephemeral.SyncReply, error) {
				close(entered)
				<-release
				if c.err != nil {
					return nil, c.err
				}
				return &ephemeral.SyncReply{Applied: 1}, nil
			}})
			srv.testHookBusyAtStop = func() { close(release) }
			tr := n.transport(t, PeerTransportConfig{})
			type result struct {
				rep *ephemeral.SyncReply
				err error
			}
			res := make(chan result, 1)
			go func() {
				rep, err := tr.Sync(context.Background(), "b", oneClient("c1"))
				res <- result{rep, err}
			}()
			select {
			case <-entered:
			case r := <-res:
				t.Fatalf("sync ended before reaching the handler: %+v, %v", r.rep, r.err)
			}
			stopped := make(chan struct{})
			go func() { srv.Shutdown(context.Background()); close(stopped) }()
			r := <-res // bounded by the transport's call timeout
			switch {
			case c.err == nil && (r.err != nil || r.rep.Applied != 1):
				t.Fatalf("the batch in hand at Shutdown: %+v, %v", r.rep, r.err)
			case c.err != nil && (!errors.Is(r.err, naming.ErrInvalid) || errors.Is(r.err, ephemeral.ErrUnreachable)):
				t.Fatalf("the refused batch in hand at Shutdown: %v", r.err)
			}
			select {
			case <-stopped:
			case <-time.After(30 * time.Second):
				t.Fatal("Shutdown did not return")
			}
			peerWait(t, "the stream's handler to return", func() bool { return len(calls.endings()) == 1 })
		})
	}
}
