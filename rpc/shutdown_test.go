package rpc

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// frozenConn is a client's connection that can be frozen, as a client
// process that is paused (SIGSTOP) or cut off leaves it: nothing it would
// read or write moves any more, and nothing fails either.
type frozenConn struct {
	net.Conn
	once   sync.Once
	frozen chan struct{}
	closed chan struct{}
	cOnce  sync.Once
}

func newFrozenConn(c net.Conn) *frozenConn {
	return &frozenConn{Conn: c, frozen: make(chan struct{}), closed: make(chan struct{})}
}

func (c *frozenConn) freeze() { c.once.Do(func() { close(c.frozen) }) }

func (c *frozenConn) stall() {
	select {
	case <-c.frozen:
		<-c.closed
	default:
	}
}

func (c *frozenConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.stall() // what arrived is never handed over
	if c.isClosed() {
		return 0, net.ErrClosed
	}
	return n, err
}

func (c *frozenConn) Write(b []byte) (int, error) {
	c.stall()
	return c.Conn.Write(b)
}

func (c *frozenConn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

func (c *frozenConn) Close() error {
	c.cOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// A client that stops answering (its connection frozen) must not hold
// the node's shutdown past the drain grace: gRPC's graceful stop would
// wait 5 s more for the client to acknowledge its GOAWAY ping.
func TestShutdownDoesNotWaitOnAFrozenClient(t *testing.T) {
	var mu sync.Mutex
	var conns []*frozenConn
	e := newEnv(t, envOptions{wrapConn: func(c net.Conn) net.Conn {
		fc := newFrozenConn(c)
		mu.Lock()
		conns = append(conns, fc)
		mu.Unlock()
		return fc
	}})
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	c, _ := e.open(t, "frozen", nil)
	c.requestOK(registerMsg("svc-f", inst("10.0.0.1", 80)))
	mu.Lock()
	for _, fc := range conns {
		fc.freeze()
	}
	mu.Unlock()

	// The deadline is grpc-go's own wait for a GOAWAY ping's ack: a
	// Shutdown that waits for the frozen client's ack can only end at it,
	// by the hard stop (6.3 s in all before the fix).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e.srv.Shutdown(ctx)
	if ctx.Err() != nil {
		t.Fatal("Shutdown ended only at its deadline: it waited for the frozen client's GOAWAY ack")
	}
}

// A client watching the node's health learns it stops serving, and its
// Watch stream does not hold the shutdown: gRPC's graceful stop would wait
// for it until Shutdown's deadline.
func TestShutdownTellsHealthWatchersAndDoesNotWaitForThem(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.srv.SetServing(true)
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	w, err := healthpb.NewHealthClient(e.conn).Watch(wctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first health status %v (%v), want SERVING", r.GetStatus(), err)
	}
	statuses := make(chan healthpb.HealthCheckResponse_ServingStatus, 8)
	go func() {
		defer close(statuses)
		for {
			r, err := w.Recv()
			if err != nil {
				return
			}
			statuses <- r.GetStatus()
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e.srv.Shutdown(ctx)
	if ctx.Err() != nil {
		t.Fatal("Shutdown ended only at its deadline: it waited for the health Watch stream")
	}
	var seen []healthpb.HealthCheckResponse_ServingStatus
	for st := range statuses {
		seen = append(seen, st)
	}
	if len(seen) == 0 || seen[len(seen)-1] != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("the watcher saw %v before its stream ended, want NOT_SERVING last", seen)
	}
}
