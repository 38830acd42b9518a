package rpc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	clusterv1 "github.com/regent-registry/regent/proto/cluster/v1"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/persistent"
)

// RaftHandler is the leader side of the Raft forwarding service: a
// *persistent.Store.
type RaftHandler interface {
	// HandleApply validates and applies a forwarded command.
	HandleApply(ctx context.Context, cmd []byte) (persistent.Result, error)
	// HandleReadIndex confirms leadership and returns the read index.
	HandleReadIndex(ctx context.Context) (uint64, error)
}

// raftServer serves clusterv1.Raft in front of a RaftHandler.
type raftServer struct {
	clusterv1.UnimplementedRaftServer
	h RaftHandler
}

func (s raftServer) Apply(ctx context.Context, p *clusterv1.ApplyRequest) (*clusterv1.ApplyResponse, error) {
	if len(p.GetCommand()) > persistent.MaxCommandBytes {
		return nil, status.Errorf(codes.InvalidArgument, "command of %d bytes, at most %d allowed", len(p.GetCommand()), persistent.MaxCommandBytes)
	}
	if na := p.GetNotAfterUnixNano(); na != 0 {
		// gRPC's own deadline is relative, counted from when the request
		// arrived: a request held up in the network and delivered after
		// its sender gave up (and told its client the write failed) would
		// get a fresh one and be applied, possibly after the sender's next
		// write. The sender's own deadline bounds it instead.
		notAfter := time.Unix(0, na)
		if !time.Now().Before(notAfter) {
			return nil, status.Errorf(codes.Unavailable, "forwarded write arrived %v after its sender's deadline: not applied", time.Since(notAfter).Round(time.Millisecond))
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, notAfter)
		defer cancel()
	}
	res, err := s.h.HandleApply(ctx, p.GetCommand())
	if errors.Is(err, persistent.ErrOutcomeUnknown) {
		// Distinct from UNAVAILABLE, so that the sender does not retry
		// a write that may be applied.
		return nil, status.Error(codes.Aborted, err.Error())
	}
	if err != nil {
		return nil, toStatus(err)
	}
	b, err := persistent.EncodeResult(res)
	if err != nil {
		return nil, toStatus(err)
	}
	return &clusterv1.ApplyResponse{Result: b}, nil
}

func (s raftServer) ReadIndex(ctx context.Context, _ *clusterv1.ReadIndexRequest) (*clusterv1.ReadIndexResponse, error) {
	idx, err := s.h.HandleReadIndex(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &clusterv1.ReadIndexResponse{Index: idx}, nil
}

var _ persistent.Forwarder = (*PeerTransport)(nil)

// Apply forwards an encoded write to the leader (persistent.Forwarder).
func (t *PeerTransport) Apply(ctx context.Context, leader string, cmd []byte) (persistent.Result, error) {
	pc, err := t.conn(leader)
	if err != nil {
		return persistent.Result{}, fmt.Errorf("%w: %w", persistent.ErrUnavailable, err)
	}
	cctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	req := &clusterv1.ApplyRequest{Command: cmd}
	if dl, ok := cctx.Deadline(); ok {
		req.NotAfterUnixNano = dl.UnixNano()
	}
	rep, err := pc.raft.Apply(cctx, req)
	if err != nil {
		return persistent.Result{}, raftCallError(leader, "write", err)
	}
	res, err := persistent.DecodeResult(rep.GetResult())
	if err != nil {
		// The leader answered OK, so the write is applied; only its result
		// is unreadable. Outcome unknown (UNAVAILABLE to the client, never
		// retried), not an internal error.
		return persistent.Result{}, fmt.Errorf("%w: write forwarded to %s: %w", persistent.ErrOutcomeUnknown, leader, err)
	}
	return res, nil
}

// ReadIndex asks the leader for a read barrier (persistent.Forwarder).
func (t *PeerTransport) ReadIndex(ctx context.Context, leader string) (uint64, error) {
	pc, err := t.conn(leader)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", persistent.ErrUnavailable, err)
	}
	cctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	rep, err := pc.raft.ReadIndex(cctx, &clusterv1.ReadIndexRequest{})
	if err != nil {
		return 0, raftCallError(leader, "read index", err)
	}
	return rep.GetIndex(), nil
}

// raftCallError maps a failed forwarding call to the persistent and naming
// sentinels, keeping the leader's message.
func raftCallError(leader, what string, err error) error {
	msg := status.Convert(err).Message()
	switch status.Code(err) {
	case codes.FailedPrecondition:
		return fmt.Errorf("%w: %s forwarded to %s: %s", persistent.ErrNotLeader, what, leader, msg)
	case codes.InvalidArgument:
		return fmt.Errorf("%w: %s refused by the leader %s: %s", naming.ErrInvalid, what, leader, msg)
	case codes.Aborted, codes.DeadlineExceeded, codes.Canceled:
		// The leader had the write (or may have had it) when the call
		// ended: it may be applied.
		return fmt.Errorf("%w: %s forwarded to %s: %s", persistent.ErrOutcomeUnknown, what, leader, msg)
	case codes.Unavailable:
		return fmt.Errorf("%w: %s forwarded to %s: %s", persistent.ErrUnavailable, what, leader, msg)
	}
	return fmt.Errorf("rpc: %s forwarded to %s: %w", what, leader, err)
}
