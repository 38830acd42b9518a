package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	regentv1 "github.com/regent-registry/regent/proto/regent/v1"
)

// writeStream carries the client's persistent writes to one server on a
// Write stream, each tagged with a request id: many writes in flight pay
// gRPC's per-call cost once, not each.
type writeStream struct {
	idx    int
	stream regentv1.Registry_WriteClient
	cancel context.CancelFunc
	sendMu sync.Mutex // one Send at a time

	mu      sync.Mutex // guards the fields below
	pending map[uint64]chan *regentv1.WriteReply
	broken  bool
}

// errNoStream says a write did not get its answer on a stream (there was
// no usable one, or it broke first); the caller sends it as a unary call,
// which retries over the servers as any write does. Persistent register
// and deregister are idempotent, so a write the broken stream had carried
// may safely go again.
var errNoStream = errors.New("no write stream")

// streamWrite sends the write req on the stream to the server
// that writes go to first (the Raft leader once a write has named it), and
// waits for its reply. A reply with UNAVAILABLE (a node with no quorum, or
// draining) counts as no answer: the unary path then tries the other
// servers.
func (c *Client) streamWrite(ctx context.Context, req *regentv1.WriteRequest) (*regentv1.WriteReply, error) {
	if c.noWriteStream.Load() {
		return nil, errNoStream
	}
	idx := c.writeTarget()
	if !c.awaitReady(ctx, idx) {
		return nil, errNoStream
	}
	ws, err := c.writeStreamTo(idx)
	if err != nil {
		return nil, errNoStream
	}
	id := c.nextReq.Add(1)
	ch := make(chan *regentv1.WriteReply, 1)
	ws.mu.Lock()
	if ws.broken {
		ws.mu.Unlock()
		return nil, errNoStream
	}
	ws.pending[id] = ch
	ws.mu.Unlock()
	req.RequestId = id
	if dl, ok := ctx.Deadline(); ok {
		// The node's bound on the write, as a unary call's deadline.
		req.TimeoutMs = uint64(max(time.Until(dl).Milliseconds(), 1))
	}
	ws.sendMu.Lock()
	// Send can block on flow control (a node that stopped reading, say
	// paused); the caller's time bounds it by breaking the stream, whose
	// writes then go unary.
	stop := context.AfterFunc(ctx, ws.cancel)
	err = ws.stream.Send(req)
	stop()
	ws.sendMu.Unlock()
	if err != nil {
		ws.forget(id)
		return nil, errNoStream
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return nil, errNoStream
		}
		if codes.Code(r.GetCode()) == codes.Unavailable {
			c.leader.CompareAndSwap(int64(ws.idx), -1)
			return nil, errNoStream
		}
		if r.GetLeader() != "" {
			c.leader.Store(int64(c.serverIndex(r.GetLeader())))
		}
		return r, nil
	case <-ctx.Done():
		ws.forget(id)
		// As a unary call that ran out of time reports it.
		return nil, fromStatus(status.FromContextError(ctx.Err()).Err())
	}
}

// writeReplyErr is a reply's outcome as the SDK's errors.
func writeReplyErr(r *regentv1.WriteReply) error {
	if r.GetCode() == 0 {
		return nil
	}
	return fromStatus(status.Error(codes.Code(r.GetCode()), r.GetMessage()))
}

func (ws *writeStream) forget(id uint64) {
	ws.mu.Lock()
	delete(ws.pending, id)
	ws.mu.Unlock()
}

// awaitReady waits, within ctx, until the connection to server idx is up,
// starting it if it is idle (as a unary call would); false if it fails or
// ctx ends first.
func (c *Client) awaitReady(ctx context.Context, idx int) bool {
	conn := c.conns[idx]
	for {
		switch st := conn.GetState(); st {
		case connectivity.Ready:
			return true
		case connectivity.TransientFailure, connectivity.Shutdown:
			return false
		case connectivity.Idle:
			conn.Connect()
			fallthrough
		default:
			if !conn.WaitForStateChange(ctx, st) {
				return false
			}
		}
	}
}

// writeTarget is the server writes go to first: the learnt leader, else
// the session's server.
func (c *Client) writeTarget() int {
	if i := int(c.leader.Load()); i >= 0 {
		return i
	}
	return int(c.current.Load())
}

// writeStreamTo returns the open stream to server idx, opening it if there
// is none. A stream to another server is closed for sending: the server
// answers what it holds and ends it.
func (c *Client) writeStreamTo(idx int) (*writeStream, error) {
	c.wsMu.Lock()
	defer c.wsMu.Unlock()
	if ws := c.ws; ws != nil {
		ws.mu.Lock()
		usable := ws.idx == idx && !ws.broken
		ws.mu.Unlock()
		if usable {
			return ws, nil
		}
		ws.sendMu.Lock()
		_ = ws.stream.CloseSend()
		ws.sendMu.Unlock()
		c.ws = nil
	}
	if c.ctx.Err() != nil {
		return nil, c.ctx.Err()
	}
	// Opening a stream on a connection that is not up would wait for it
	// without the caller's deadline (streamWrite waits with it first).
	if st := c.conns[idx].GetState(); st != connectivity.Ready {
		return nil, fmt.Errorf("connection to %s is %v", c.cfg.Servers[idx], st)
	}
	sctx, cancel := context.WithCancel(c.ctx)
	st, err := regentv1.NewRegistryClient(c.conns[idx]).Write(sctx)
	if err != nil {
		cancel()
		return nil, err
	}
	ws := &writeStream{idx: idx, stream: st, cancel: cancel, pending: make(map[uint64]chan *regentv1.WriteReply)}
	c.ws = ws
	c.wg.Go(func() { c.receiveWrites(ws) })
	return ws, nil
}

// receiveWrites hands each reply to its waiting write until the stream
// ends; then every write still waiting is told (its channel closes) and
// goes unary. A server without Write (an older node) turns the streams off
// for this client.
func (c *Client) receiveWrites(ws *writeStream) {
	defer ws.cancel()
	for {
		r, err := ws.stream.Recv()
		if err != nil {
			if status.Code(err) == codes.Unimplemented {
				c.noWriteStream.Store(true)
			}
			ws.mu.Lock()
			ws.broken = true
			for id, ch := range ws.pending {
				close(ch)
				delete(ws.pending, id)
			}
			ws.mu.Unlock()
			return
		}
		ws.mu.Lock()
		ch := ws.pending[r.GetRequestId()]
		delete(ws.pending, r.GetRequestId())
		ws.mu.Unlock()
		if ch != nil {
			ch <- r
		}
	}
}
