package membership

import (
	"testing"

	"github.com/hashicorp/memberlist"
)

// TestMemberlistLayoutUnderstood fails if a memberlist upgrade changes the
// internals introspect.go reads: suspect and left would then be lost.
func TestMemberlistLayoutUnderstood(t *testing.T) {
	if !layoutOK() {
		t.Fatalf("memberlist layout not understood: %v", layoutErr)
	}
}

func TestSnapshotReadsStates(t *testing.T) {
	n := startNode(t, "solo")
	var got []nodeStatus
	if !snapshot(n.ml, func(s []nodeStatus) { got = s }) {
		t.Fatal("snapshot not taken")
	}
	if len(got) != 1 || got[0].name != "solo" || got[0].state != memberlist.StateAlive {
		t.Fatalf("snapshot %+v, want solo alive", got)
	}
}
