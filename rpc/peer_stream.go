package rpc

import (
	"context"
	"errors"
	"io"
	"runtime/debug"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	clusterv1 "github.com/regent-registry/regent/proto/cluster/v1"
)

// errPeerStopping ends the sync streams of a peer server that shuts down.
var errPeerStopping = status.Error(codes.Unavailable, "peer server shutting down")

// SyncStream serves Sync's batches on one stream (see the proto): a
// worker receives, applies and answers them one at a time, as the unary
// handler does, while this handler waits for the worker to end or for
// Shutdown. At Shutdown it ends the stream with UNAVAILABLE at once if the
// worker waits for a batch, or after the batch in hand is answered: a
// batch is applied and answered, or neither, and the sender retries what
// was not answered.
func (s *PeerServer) SyncStream(st grpc.BidiStreamingServer[clusterv1.SyncRequest, clusterv1.SyncResponse]) error {
	w := &syncWorker{done: make(chan error, 1)}
	go w.run(s, st)
	select {
	case err := <-w.done:
		return err
	case <-s.stopping:
	}
	w.mu.Lock()
	w.closed = true
	busy := w.busy
	w.mu.Unlock()
	if busy {
		if s.testHookBusyAtStop != nil {
			s.testHookBusyAtStop()
		}
		// The batch in hand is answered, or fails with its own error; the
		// worker then stops.
		if err := <-w.done; err != nil {
			return err
		}
	}
	// Returning ends the stream; a worker still in Recv gets an error and
	// sends nothing more.
	return errPeerStopping
}

// syncWorker is the goroutine of one sync stream.
type syncWorker struct {
	mu     sync.Mutex
	closed bool // the handler has returned or is about to
	busy   bool // a batch is being applied and answered
	done   chan error
}

func (w *syncWorker) run(s *PeerServer, st grpc.BidiStreamingServer[clusterv1.SyncRequest, clusterv1.SyncResponse]) {
	var err error
	defer func() {
		if r := recover(); r != nil {
			s.logger.Error("panic in peer handler", "method", clusterv1.Distro_SyncStream_FullMethodName, "panic", r, "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "internal error")
		}
		w.done <- err
	}()
	for {
		var p *clusterv1.SyncRequest
		if p, err = st.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				err = nil // the sender closed its side
			}
			return
		}
		w.mu.Lock()
		if w.closed {
			w.mu.Unlock()
			err = errPeerStopping
			return
		}
		w.busy = true
		w.mu.Unlock()
		var rep *clusterv1.SyncResponse
		if rep, err = s.Sync(st.Context(), p); err == nil {
			err = st.Send(rep)
		}
		w.mu.Lock()
		w.busy = false
		closed := w.closed
		w.mu.Unlock()
		if err != nil || closed {
			return
		}
	}
}

// syncStream is a sender's open SyncStream to one peer.
type syncStream struct {
	st     grpc.BidiStreamingClient[clusterv1.SyncRequest, clusterv1.SyncResponse]
	cancel context.CancelFunc
}

// sync sends one batch to the peer and returns its answer: on the peer's
// sync stream, opened on first use and again after any failure, or by
// unary Sync while the peer is marked as having no SyncStream (for
// fallback after it said so). The call's timeout (or the caller's ctx
// ending) cancels the stream, also while it opens. One batch is in flight
// per peer: the engine's peer worker is the only caller, and the lock
// keeps it so. A stream that had served earlier batches and turns out to
// be broken (the peer restarted or shut it down) is replaced once within
// the call: a batch is idempotent, so sending it again is safe. sent is
// called before each send, for the transport's counts.
func (pc *peerConn) sync(ctx context.Context, timeout, fallback time.Duration, req *clusterv1.SyncRequest, sent func()) (*clusterv1.SyncResponse, error) {
	pc.syncMu.Lock()
	defer pc.syncMu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		sent()
		if time.Now().Before(pc.unaryUntil) {
			return pc.client.Sync(cctx, req)
		}
		reused := pc.stream != nil
		rep, err := pc.syncOnStream(cctx, req)
		switch {
		case err == nil:
			return rep, nil
		case status.Code(err) == codes.Unimplemented:
			// An older peer: nothing was applied; send it as a unary
			// call, now and for a while.
			pc.unaryUntil = time.Now().Add(fallback)
		case reused && status.Code(err) == codes.Unavailable && cctx.Err() == nil:
			// Try once more on a new stream.
		default:
			return nil, err
		}
	}
}

// syncOnStream sends req on the open stream, or a new one, and waits for
// its answer; any failure ends the stream.
func (pc *peerConn) syncOnStream(cctx context.Context, req *clusterv1.SyncRequest) (*clusterv1.SyncResponse, error) {
	if pc.stream == nil {
		// The stream outlives the call: it ends with an error, a call's
		// timeout, or the connection. Opening it may wait for the
		// connection, so the call's end cancels that too.
		sctx, scancel := context.WithCancel(context.Background())
		stopOpen := context.AfterFunc(cctx, scancel)
		st, err := pc.client.SyncStream(sctx)
		if !stopOpen() || err != nil {
			scancel()
			if cctx.Err() != nil {
				return nil, status.FromContextError(cctx.Err()).Err()
			}
			return nil, err
		}
		pc.stream = &syncStream{st: st, cancel: scancel}
	}
	s := pc.stream
	stop := context.AfterFunc(cctx, s.cancel)
	err := s.st.Send(req)
	if errors.Is(err, io.EOF) {
		err = nil // the stream has ended: Recv returns why
	}
	var rep *clusterv1.SyncResponse
	if err == nil {
		rep, err = s.st.Recv()
	}
	if !stop() || err != nil {
		s.cancel()
		pc.stream = nil
		if err != nil && cctx.Err() != nil {
			// Cancelled by the call's end: say why, as a unary call would.
			err = status.FromContextError(cctx.Err()).Err()
		}
	}
	return rep, err
}
