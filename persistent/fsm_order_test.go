package persistent

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/storage"
)

// The FSM tells its observer which services an apply changed before it
// marks the entry applied: a reader that waits for the index (a
// linearizable read) must find every cache of those services dropped. The
// chaos soak found the reverse order as a non-linearizable read.
func TestFSMNotifiesBeforeMarkingApplied(t *testing.T) {
	fsm := NewFSM(storage.OpenTest(t), nil)
	notified := make(chan struct{})
	release := make(chan struct{})
	fsm.SetObserver(func([]naming.ServiceKey) {
		close(notified)
		<-release
	})
	key := naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "ordered"}
	in := naming.Instance{IP: "10.0.0.1", Port: 80, Cluster: naming.DefaultCluster, Weight: 1, Healthy: true, Enabled: true}
	data, err := Command{Op: OpRegister, Key: key, Instances: []naming.Instance{in}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	waiter := fsm.WaitApplied(7)
	done := make(chan struct{})
	go func() {
		defer close(done)
		fsm.ApplyBatch([]*raft.Log{{Index: 7, Type: raft.LogCommand, Data: data}})
	}()
	<-notified
	select {
	case <-waiter:
		t.Fatal("index 7 was marked applied before the observer returned")
	default:
	}
	close(release)
	<-done
	select {
	case <-waiter:
	case <-time.After(5 * time.Second):
		t.Fatal("index 7 never marked applied")
	}
}
