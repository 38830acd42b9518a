package membership

import (
	"fmt"
	"reflect"
	"sync"
	"unsafe"

	"github.com/hashicorp/memberlist"
)

// memberlist v0.7.0 does not expose the state of its nodes:
//
//   - Each node lives in an unexported nodeState that embeds memberlist.Node
//     and has its own State field, which shadows Node.State. memberlist
//     updates nodeState.State only, so the *Node handed to EventDelegate
//     and returned by Members always has State == StateAlive
//     (hashicorp/memberlist#293, open; fix proposed in #321). NotifyLeave
//     therefore cannot tell "left" from "dead" through the exported field.
//   - There is no callback for alive -> suspect or suspect -> alive.
//   - Members returns pointers into that state; reading Addr, Port or Meta
//     through them after the call races with memberlist's updates.
//
// nodeStates reads the real state from memberlist's own structures, found
// by reflection on its type (checked once, below) and read only while
// memberlist's node lock is held: inside EventDelegate callbacks, which
// memberlist calls with the lock held for writing, and in snapshot, which
// takes it for reading. If the layout ever differs from what is checked
// here, layoutOK is false and the Cluster degrades (logged): no suspect
// status, and every departure is reported as dead.

// mlLayout is memberlist's layout as far as this file relies on it.
type mlLayout struct {
	// lockOff is the offset of Memberlist.nodeLock (sync.RWMutex), which
	// guards nodes and every nodeState.
	lockOff uintptr
	// nodesOff is the offset of Memberlist.nodes ([]*nodeState).
	nodesOff uintptr
	// stateOff is the offset of the authoritative NodeStateType inside a
	// nodeState, whose embedded Node sits at offset 0 (so a *Node from
	// memberlist is a *nodeState).
	stateOff uintptr
}

var layout, layoutErr = inspectLayout()

// layoutOK reports whether memberlist's node states can be read.
func layoutOK() bool { return layoutErr == nil }

func inspectLayout() (mlLayout, error) {
	var l mlLayout
	mt := reflect.TypeFor[memberlist.Memberlist]()

	lock, ok := mt.FieldByName("nodeLock")
	if !ok || len(lock.Index) != 1 || lock.Type != reflect.TypeFor[sync.RWMutex]() {
		return l, fmt.Errorf("memberlist.Memberlist.nodeLock is not a sync.RWMutex")
	}
	l.lockOff = lock.Offset

	nodes, ok := mt.FieldByName("nodes")
	if !ok || len(nodes.Index) != 1 || nodes.Type.Kind() != reflect.Slice ||
		nodes.Type.Elem().Kind() != reflect.Pointer || nodes.Type.Elem().Elem().Kind() != reflect.Struct {
		return l, fmt.Errorf("memberlist.Memberlist.nodes is not a slice of struct pointers")
	}
	l.nodesOff = nodes.Offset
	st := nodes.Type.Elem().Elem()

	node, ok := st.FieldByName("Node")
	if !ok || !node.Anonymous || len(node.Index) != 1 || node.Offset != 0 || node.Type != reflect.TypeFor[memberlist.Node]() {
		return l, fmt.Errorf("memberlist.%s does not embed Node first", st.Name())
	}

	// The shallowest field named State: nodeState.State in v0.7.0, or the
	// promoted Node.State should memberlist adopt #321.
	state, ok := st.FieldByName("State")
	if !ok || state.Type != reflect.TypeFor[memberlist.NodeStateType]() {
		return l, fmt.Errorf("memberlist.%s has no State of type NodeStateType", st.Name())
	}
	t := st
	for _, i := range state.Index {
		if t.Kind() != reflect.Struct {
			return l, fmt.Errorf("memberlist.%s.State is reached through a pointer", st.Name())
		}
		f := t.Field(i)
		l.stateOff += f.Offset
		t = f.Type
	}
	return l, nil
}

// nodeState returns the state memberlist keeps for n. n must have come
// from memberlist (a callback argument or a snapshot) and the caller must
// hold memberlist's node lock, as EventDelegate callbacks do.
func nodeState(n *memberlist.Node) memberlist.NodeStateType {
	return *(*memberlist.NodeStateType)(unsafe.Add(unsafe.Pointer(n), layout.stateOff))
}

// nodeStatus is one node's name and memberlist state.
type nodeStatus struct {
	name  string
	state memberlist.NodeStateType
}

// snapshot calls fn with the state of every node memberlist knows, while
// holding memberlist's node lock for reading, so that fn runs in order with
// the EventDelegate callbacks. fn must not block or call into memberlist.
// It reports false, without calling fn, if the layout is not understood.
func snapshot(ml *memberlist.Memberlist, fn func([]nodeStatus)) bool {
	if !layoutOK() {
		return false
	}
	base := unsafe.Pointer(ml)
	mu := (*sync.RWMutex)(unsafe.Add(base, layout.lockOff))
	mu.RLock()
	defer mu.RUnlock()
	nodes := *(*[]*memberlist.Node)(unsafe.Add(base, layout.nodesOff))
	out := make([]nodeStatus, 0, len(nodes))
	for _, n := range nodes {
		if n != nil {
			out = append(out, nodeStatus{name: n.Name, state: nodeState(n)})
		}
	}
	fn(out)
	return true
}
