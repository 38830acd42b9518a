package membership

import "fmt"

// Status is the state of a member as this node sees it.
type Status int

// Statuses of a member. The zero Status is not a valid status.
const (
	// StatusAlive: the member answers probes.
	StatusAlive Status = iota + 1
	// StatusSuspect: a probe of the member failed and the cluster is waiting
	// for it to refute the suspicion before declaring it dead.
	StatusSuspect
	// StatusDead: the member stopped answering and was declared failed. It
	// may come back (EventJoin).
	StatusDead
	// StatusLeft: the member left gracefully (Cluster.Leave).
	StatusLeft
)

// String returns "alive", "suspect", "dead" or "left".
func (s Status) String() string {
	switch s {
	case StatusAlive:
		return "alive"
	case StatusSuspect:
		return "suspect"
	case StatusDead:
		return "dead"
	case StatusLeft:
		return "left"
	default:
		return fmt.Sprintf("Status(%d)", int(s))
	}
}

// Meta is the metadata a node gossips about itself. It must encode to at
// most memberlist.MetaMaxSize (512) bytes; Validate and UpdateMeta check.
type Meta struct {
	// GRPCAddr is the host:port of the node's client API.
	GRPCAddr string
	// PeerAddr is the host:port other nodes use for replication traffic.
	PeerAddr string
	// RaftAddr is the host:port of the node's Raft transport, if any.
	RaftAddr string
	// Version is the node's build version.
	Version string
	// Role is the node's role in the cluster (free text, e.g. "voter").
	Role string
	// HasRaftState is set once the node holds Raft state (it bootstrapped
	// or was added to a cluster): a node that sees one never bootstraps.
	HasRaftState bool
}

// Member is one node of the cluster as this node sees it. It is a value:
// later changes never alter a Member already returned.
type Member struct {
	// Name is the node's unique name.
	Name string
	// Addr is the node's gossip address, host:port.
	Addr string
	// Meta is the node's metadata. It is empty if the node's metadata
	// could not be decoded (this is logged).
	Meta Meta
	// Status is the node's state.
	Status Status
}

// EventType says what changed about a member.
type EventType int

// Event types. The zero EventType is not a valid type.
const (
	// EventJoin: the member became alive. This is sent when a member is
	// first seen, when it comes back after being dead or having left, and
	// when a suspect member refutes the suspicion (it is alive again).
	EventJoin EventType = iota + 1
	// EventUpdate: an alive member changed its metadata.
	EventUpdate
	// EventSuspect: the member became suspect.
	EventSuspect
	// EventDead: the member was declared dead (failed without leaving).
	EventDead
	// EventLeft: the member left gracefully.
	EventLeft
)

// String returns "join", "update", "suspect", "dead" or "left".
func (t EventType) String() string {
	switch t {
	case EventJoin:
		return "join"
	case EventUpdate:
		return "update"
	case EventSuspect:
		return "suspect"
	case EventDead:
		return "dead"
	case EventLeft:
		return "left"
	default:
		return fmt.Sprintf("EventType(%d)", int(t))
	}
}

// Event reports a change of one member. Member is the member's complete
// state after the change. When the status and the metadata change at once
// (a member comes back with new metadata) only the status event is sent.
type Event struct {
	Type   EventType
	Member Member
}

// Listener follows the changes of the other members (see Cluster.Subscribe).
//
// MemberChanged is called from one goroutine per Cluster, in event order,
// never concurrently, and must not block for long: every other listener of
// the Cluster waits meanwhile. It may call Members, Local, Peers, Subscribe
// and the cancel function, but must not call Shutdown (Shutdown waits for
// the goroutine that calls the listener).
type Listener interface {
	MemberChanged(Event)
}

// ListenerFunc adapts a function to a Listener.
type ListenerFunc func(Event)

// MemberChanged calls f(e).
func (f ListenerFunc) MemberChanged(e Event) { f(e) }
