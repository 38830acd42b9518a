package client

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/regent-registry/regent/internal/wire"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"
)

// olderNode is a node from before the Write stream: it serves the unary
// persistent writes and answers Write with UNIMPLEMENTED, counting both.
type olderNode struct {
	regentv1.UnimplementedRegistryServer
	unary, streams atomic.Int64
}

func (o *olderNode) RegisterInstance(context.Context, *regentv1.RegisterInstanceRequest) (*regentv1.RegisterInstanceResponse, error) {
	o.unary.Add(1)
	return &regentv1.RegisterInstanceResponse{Revision: uint64(o.unary.Load())}, nil
}

func (o *olderNode) DeregisterInstance(context.Context, *regentv1.DeregisterInstanceRequest) (*regentv1.DeregisterInstanceResponse, error) {
	o.unary.Add(1)
	return &regentv1.DeregisterInstanceResponse{Revision: uint64(o.unary.Load())}, nil
}

func (o *olderNode) Write(regentv1.Registry_WriteServer) error {
	o.streams.Add(1)
	return status.Error(codes.Unimplemented, "method Write not implemented")
}

// clientOfFake serves impl as a node on loopback and returns an SDK client
// of it (not waiting for a session: the fakes have none); both end with
// the test.
func clientOfFake(t *testing.T, impl regentv1.RegistryServer) *Client {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(wire.ServerOption())
	regentv1.RegisterRegistryServer(srv, impl)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	c, err := New(testConfig(lis.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Against a node without the Write stream the SDK's persistent writes go
// unary: the first after one refused stream, and every later one without
// trying a stream again.
func TestPersistentWritesFallBackToUnary(t *testing.T) {
	old := &olderNode{}
	// No session either (the old node here lacks Session too): writes do
	// not need one.
	c := clientOfFake(t, old)
	ctx := ctxT(t, 20*time.Second)
	svc := Service{Name: "older"}
	if rev, err := c.RegisterPersistent(ctx, svc, inst("10.7.0.1", 80)); err != nil || rev != 1 {
		t.Fatalf("first write: revision %d, %v", rev, err)
	}
	for i := range 5 {
		if _, err := c.DeregisterPersistent(ctx, svc, inst("10.7.0.1", 80)); err != nil {
			t.Fatalf("write %d: %v", i+2, err)
		}
	}
	if u, s := old.unary.Load(), old.streams.Load(); u != 6 || s != 1 {
		t.Fatalf("%d unary writes and %d Write streams, want 6 and 1", u, s)
	}
}

// streamNode answers every stream write OK and notes each one's timeout_ms.
type streamNode struct {
	regentv1.UnimplementedRegistryServer
	timeouts chan uint64
}

func (s *streamNode) Write(st regentv1.Registry_WriteServer) error {
	for {
		r, err := st.Recv()
		if err != nil {
			return nil
		}
		s.timeouts <- r.GetTimeoutMs()
		if err := st.Send(&regentv1.WriteReply{RequestId: r.GetRequestId(), Revision: 7}); err != nil {
			return err
		}
	}
}

// A stream write carries the time its caller still waits, as a unary call
// carries its deadline, so that the node can give it up in time.
func TestStreamWritesCarryTheirBound(t *testing.T) {
	node := &streamNode{timeouts: make(chan uint64, 4)}
	c := clientOfFake(t, node)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if rev, err := c.RegisterPersistent(ctx, Service{Name: "bound"}, inst("10.7.1.1", 80)); err != nil || rev != 7 {
		t.Fatalf("write: revision %d, %v", rev, err)
	}
	if ms := <-node.timeouts; ms <= 2000 || ms > 3000 {
		t.Fatalf("timeout_ms %d for a caller with 3 s left, want (2000, 3000]", ms)
	}
	// Without a deadline of the caller's, the SDK's RequestTimeout bounds it.
	if _, err := c.DeregisterPersistent(context.Background(), Service{Name: "bound"}, inst("10.7.1.1", 80)); err != nil {
		t.Fatal(err)
	}
	if ms, want := <-node.timeouts, uint64(testConfig().RequestTimeout/time.Millisecond); ms == 0 || ms > want {
		t.Fatalf("timeout_ms %d without a caller's deadline, want (0, %d]", ms, want)
	}
}
