package persistent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/regent-registry/regent/internal/naming"
)

// A write whose deadline has passed when it reaches the leader (a forwarded
// write held up in the network and delivered after its sender gave up:
// chaos soak seed 279001576, see chaos/README.md) is refused as
// unavailable and never proposed. Before, raft.Apply got a timeout <= 0,
// which it reads as no bound, and the write was applied after its sender
// had reported it failed, and after that sender's next write.
func TestLateWriteIsNotProposed(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	leader := c.node(c.waitLeader()).store
	data, err := Command{Op: OpRegister, Key: tkey, Instances: []naming.Instance{tinst(1)}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	before := leader.FSM().AppliedIndex()
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Millisecond))
	defer cancel()
	_, err = leader.HandleApply(ctx, data)
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("a write past its deadline: %v, want ErrUnavailable (not applied), not outcome unknown", err)
	}
	// A raft barrier (through the same queue as writes) orders this check
	// after anything the write could have appended.
	if err := leader.Raft().Barrier(5 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	if listed(t, leader, tkey)[tinst(1).IP] {
		t.Fatalf("the late write was applied (applied index %d -> %d)", before, leader.FSM().AppliedIndex())
	}
	// A live deadline still writes.
	if _, err := leader.HandleApply(ctxT(t), data); err != nil {
		t.Fatal(err)
	}
	if !listed(t, leader, tkey)[tinst(1).IP] {
		t.Fatal("a write in time was not applied")
	}
}
