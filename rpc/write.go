package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/regent-registry/regent/internal/naming"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"
)

// Write serves a Write stream: each request is served on a goroutine of
// its own (at most Config.WriteInFlight at once; the stream is not read
// further until one is answered), and answered as it completes. When the
// node shuts down, the stream takes no more writes, answers those in
// flight and ends with UNAVAILABLE, so that the SDK goes elsewhere and the
// graceful stop does not wait on a stream its client keeps open. The
// handler returns once every write it took has been answered or has
// failed to be.
func (s *Server) Write(stream regentv1.Registry_WriteServer) error {
	ctx := stream.Context()
	var (
		sendMu sync.Mutex
		wg     sync.WaitGroup
	)
	defer wg.Wait()
	// The reader hands requests over, so that the handler can end the
	// stream at a shutdown while no request comes; it ends with the
	// stream, which the handler's return ends.
	reqs := make(chan *regentv1.WriteRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	slots := make(chan struct{}, s.cfg.WriteInFlight)
	for {
		var req *regentv1.WriteRequest
		select {
		case req = <-reqs:
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-s.draining:
			return errDraining
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case slots <- struct{}{}:
		case <-s.draining:
			return errDraining
		case <-ctx.Done():
			return ctx.Err()
		}
		wg.Go(func() {
			defer func() { <-slots }()
			wctx, cancel := writeContext(ctx, req.GetTimeoutMs())
			reply := s.serveWrite(wctx, req)
			cancel()
			sendMu.Lock()
			// A failed send means the stream is over; Recv says so too.
			_ = stream.Send(reply)
			sendMu.Unlock()
		})
	}
}

var errDraining = status.Error(codes.Unavailable, "node is shutting down: send writes to another node")

// maxWriteTimeout caps a write's own bound (a larger one is taken as
// this): nothing waits longer than a minute for one persistent write.
const maxWriteTimeout = time.Minute

// writeContext is the context of one stream write: the stream's, bounded
// by the write's timeout_ms when it has one, as a unary call is by its
// deadline.
func writeContext(ctx context.Context, ms uint64) (context.Context, context.CancelFunc) {
	if ms == 0 {
		return context.WithCancel(ctx)
	}
	d := maxWriteTimeout
	if ms < uint64(maxWriteTimeout/time.Millisecond) {
		d = time.Duration(ms) * time.Millisecond
	}
	return context.WithTimeout(ctx, d)
}

// serveWrite runs one write of a Write stream and builds its reply. Like
// the unary calls, a panic becomes INTERNAL, not a dead node.
func (s *Server) serveWrite(ctx context.Context, req *regentv1.WriteRequest) (reply *regentv1.WriteReply) {
	start := time.Now()
	method := "Write"
	reply = &regentv1.WriteReply{RequestId: req.GetRequestId()}
	var err error
	defer func() {
		if r := recover(); r != nil {
			s.logger.Error("panic in a stream write", "panic", r, "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "internal error")
		}
		st, _ := status.FromError(toStatus(err))
		reply.Code, reply.Message = int32(st.Code()), st.Message()
		if err != nil {
			reply.Revision = 0
		}
		if s.leader != nil {
			reply.Leader, _ = s.leader()
		}
		s.streamWrites.Add(1)
		if s.latency != nil {
			s.latency.WithLabelValues(method, st.Code().String()).Observe(time.Since(start).Seconds())
		}
	}()
	if req.GetRequestId() == 0 {
		err = fmt.Errorf("%w: a write needs a non-zero request_id", naming.ErrInvalid)
		return reply
	}
	switch b := req.GetBody().(type) {
	case *regentv1.WriteRequest_Register:
		method = "Write.Register"
		reply.Revision, err = s.registerPersistent(ctx, b.Register)
	case *regentv1.WriteRequest_Deregister:
		method = "Write.Deregister"
		reply.Revision, err = s.deregisterPersistent(ctx, b.Deregister)
	default:
		err = fmt.Errorf("%w: empty or unknown write", naming.ErrInvalid)
	}
	return reply
}

// StreamWrites counts the writes served on Write streams.
func (s *Server) StreamWrites() uint64 { return s.streamWrites.Load() }
