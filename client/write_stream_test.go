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

// Against a node without the Write stream the SDK's persistent writes go
// unary: the first after one refused stream, and every later one without
// trying a stream again.
func TestPersistentWritesFallBackToUnary(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	old := &olderNode{}
	srv := grpc.NewServer(wire.ServerOption())
	regentv1.RegisterRegistryServer(srv, old)
	go srv.Serve(lis)
	defer srv.Stop()
	// No session either (the old node here lacks Session too): writes do
	// not need one.
	c, err := New(testConfig(lis.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
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
