package rpc

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/persistent"
)

// A forwarded write that may have been applied is never reported as a
// plain (retryable) Unavailable; one refused for not being the leader is.
func TestRaftCallErrorMapping(t *testing.T) {
	cases := []struct {
		code    codes.Code
		want    error
		unknown bool
	}{
		{codes.FailedPrecondition, persistent.ErrNotLeader, false},
		{codes.InvalidArgument, naming.ErrInvalid, false},
		{codes.Unavailable, persistent.ErrUnavailable, false},
		{codes.Aborted, persistent.ErrOutcomeUnknown, true},
		{codes.DeadlineExceeded, persistent.ErrOutcomeUnknown, true},
	}
	for _, c := range cases {
		err := raftCallError("n1", "write", status.Error(c.code, "x"))
		if !errors.Is(err, c.want) {
			t.Errorf("%v: %v, want %v", c.code, err, c.want)
		}
		if got := errors.Is(err, persistent.ErrOutcomeUnknown); got != c.unknown {
			t.Errorf("%v: outcome unknown %v, want %v", c.code, got, c.unknown)
		}
	}
	// The leader side: an outcome-unknown write answers ABORTED, anything
	// else goes through the common table.
	srv := raftServer{h: fakeRaftHandler{err: persistent.ErrOutcomeUnknown}}
	if _, err := srv.Apply(t.Context(), nil); status.Code(err) != codes.Aborted {
		t.Fatalf("outcome unknown answered %v, want Aborted", status.Code(err))
	}
	srv = raftServer{h: fakeRaftHandler{err: persistent.ErrNotLeader}}
	if _, err := srv.Apply(t.Context(), nil); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("not leader answered %v, want FailedPrecondition", status.Code(err))
	}
}

type fakeRaftHandler struct{ err error }

func (f fakeRaftHandler) HandleApply(context.Context, []byte) (persistent.Result, error) {
	return persistent.Result{}, f.err
}

func (f fakeRaftHandler) HandleReadIndex(context.Context) (uint64, error) { return 0, f.err }
