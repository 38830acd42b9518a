package membership

import (
	"bytes"
	"net"
	"strconv"

	"github.com/hashicorp/memberlist"
)

// The delegates are memberlist's hooks into the Cluster. memberlist calls
// them from its own goroutines, the event and conflict ones with its node
// lock held; so they copy what they keep, never block, and never call back
// into memberlist. Notifications go to the dispatcher's unbounded queue.

// delegate serves the local node's metadata. The other methods are for
// application messages and state, which this package does not use.
type delegate struct{ c *Cluster }

var _ memberlist.Delegate = (*delegate)(nil)

// NodeMeta returns the encoded local metadata. Its size was checked against
// memberlist.MetaMaxSize, the limit memberlist passes, when it was set.
func (d *delegate) NodeMeta(limit int) []byte {
	b := d.c.localMeta()
	if len(b) > limit { // not reachable with memberlist v0.7.0: limit is MetaMaxSize
		d.c.logger.Error("node meta exceeds memberlist limit; gossiping empty meta", "meta-len", len(b), "limit", limit)
		return []byte{metaFormatJSON, '{', '}'}
	}
	return b
}

func (d *delegate) NotifyMsg([]byte)                  {}
func (d *delegate) GetBroadcasts(_, _ int) [][]byte   { return nil }
func (d *delegate) LocalState(bool) []byte            { return nil }
func (d *delegate) MergeRemoteState(_ []byte, _ bool) {}

// eventDelegate queues memberlist's join, leave and update notifications.
// memberlist calls it with its node lock held, never concurrently, in the
// order of the state changes.
type eventDelegate struct{ c *Cluster }

var _ memberlist.EventDelegate = (*eventDelegate)(nil)

func (d *eventDelegate) NotifyJoin(n *memberlist.Node) {
	d.c.queue.push(nodeInput(inJoin, n))
}

func (d *eventDelegate) NotifyUpdate(n *memberlist.Node) {
	d.c.queue.push(nodeInput(inUpdate, n))
}

// NotifyLeave is called for both a dead and a left node; n.State does not
// tell them apart in memberlist v0.7.0 (see introspect.go), the state
// memberlist keeps for n does.
func (d *eventDelegate) NotifyLeave(n *memberlist.Node) {
	in := nodeInput(inLeave, n)
	in.left = layoutOK() && nodeState(n) == memberlist.StateLeft
	d.c.queue.push(in)
}

// nodeInput copies what the table needs from n.
func nodeInput(kind inputKind, n *memberlist.Node) input {
	return input{
		kind: kind,
		name: n.Name,
		addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))),
		meta: bytes.Clone(n.Meta),
	}
}

// conflictDelegate notices another node using this node's name.
type conflictDelegate struct{ c *Cluster }

var _ memberlist.ConflictDelegate = (*conflictDelegate)(nil)

func (d *conflictDelegate) NotifyConflict(existing, other *memberlist.Node) {
	otherAddr := net.JoinHostPort(other.Addr.String(), strconv.Itoa(int(other.Port)))
	if existing.Name != d.c.name {
		d.c.logger.Warn("two nodes gossip under one name", "member", existing.Name, "other-addr", otherAddr)
		return
	}
	d.c.conflicts.Add(1)
	d.c.logger.Error("another node uses this node's name", "other-addr", otherAddr)
}
