package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
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
	// Up before the first write: writes open a stream only on a
	// connection that is.
	c.conns[0].Connect()
	waitFor(t, waitLimit, "the connection to the fake node", func() bool { return c.conns[0].GetState() == connectivity.Ready })
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

// stuckNode takes Write streams and never reads them (a node that stopped
// reading, as a paused one does), counting them.
type stuckNode struct {
	regentv1.UnimplementedRegistryServer
	streams atomic.Int64
}

func (s *stuckNode) Write(st regentv1.Registry_WriteServer) error {
	s.streams.Add(1)
	<-st.Context().Done()
	return nil
}

// A stream write whose send is held up by flow control (its node stopped
// reading) still ends within its caller's time: the stream is given up,
// and the next writes open another.
func TestStreamWriteStuckInSendEndsInTime(t *testing.T) {
	node := &stuckNode{}
	c := clientOfFake(t, node)
	big := map[string]string{}
	for i := range 7 {
		big[fmt.Sprintf("k%d", i)] = strings.Repeat("x", 1000)
	}
	// Rounds of 64 concurrent writes fill the stream's flow-control window
	// quickly; then sends block.
	for round := 0; node.streams.Load() < 2; round++ {
		if round == 50 {
			t.Fatal("50 rounds of writes filled no stream's window: the test did not reach a blocked send")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		done := make(chan error, 64)
		for range 64 {
			go func() {
				_, err := c.RegisterPersistent(ctx, Service{Name: "stuck"}, Instance{IP: "10.7.2.1", Port: 80, Metadata: big})
				done <- err
			}()
		}
		watchdog := time.After(10 * time.Second)
		for range 64 {
			select {
			case err := <-done:
				if err != nil && !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("round %d: %v", round, err)
				}
			case <-watchdog:
				t.Fatalf("round %d: a write still blocked 10 s after its 300 ms ran out", round)
			}
		}
		cancel()
	}
}
