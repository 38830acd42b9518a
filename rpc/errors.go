package rpc

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/internal/registry"
	"github.com/regent-registry/regent/persistent"
)

// Sentinels of this package.
var (
	// ErrUnavailable marks a write that cannot be served now (no quorum,
	// shutting down).
	ErrUnavailable = errors.New("rpc: unavailable")
	// ErrFailedPrecondition marks a request that is well-formed but not
	// allowed in the current state (e.g. a session message before Hello).
	ErrFailedPrecondition = errors.New("rpc: failed precondition")
)

// errorCodes is the one table from domain errors to gRPC codes.
var errorCodes = []struct {
	err  error
	code codes.Code
}{
	{naming.ErrInvalid, codes.InvalidArgument},
	{registry.ErrNotFound, codes.NotFound},
	{registry.ErrNotReady, codes.Unavailable},
	{ErrUnavailable, codes.Unavailable},
	{ErrFailedPrecondition, codes.FailedPrecondition},
	{ephemeral.ErrBadCursor, codes.InvalidArgument},
	{ephemeral.ErrStopped, codes.Unavailable},
	{persistent.ErrUnavailable, codes.Unavailable},
	{persistent.ErrNotLeader, codes.FailedPrecondition},
	{persistent.ErrClosed, codes.Unavailable},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
}

// toStatus converts an error to a gRPC status error. Errors that are already
// statuses pass through; unknown errors become Internal.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, e := range errorCodes {
		if errors.Is(err, e.err) {
			return status.Error(e.code, err.Error())
		}
	}
	var le *LimitExceededError
	if errors.As(err, &le) {
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}
