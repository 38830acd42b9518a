package ephemeral

import (
	"context"
	"encoding/binary"
	"hash/fnv"

	"github.com/regent-registry/regent/internal/naming"
)

// Version orders the states of one client across the cluster. Epoch changes
// when a node takes ownership of the client (it is the hybrid-logical time of
// the takeover: the later of the wall clock in microseconds and the previous
// epoch plus one), Seq counts changes within an epoch. A state with a greater
// version always wins, so applying states is idempotent and order-safe.
type Version struct {
	Epoch uint64
	Seq   uint64
}

// Compare returns -1, 0 or +1 as v is older than, equal to or newer than o.
func (v Version) Compare(o Version) int {
	switch {
	case v.Epoch < o.Epoch:
		return -1
	case v.Epoch > o.Epoch:
		return 1
	case v.Seq < o.Seq:
		return -1
	case v.Seq > o.Seq:
		return 1
	}
	return 0
}

// Less reports whether v is older than o.
func (v Version) Less(o Version) bool { return v.Compare(o) < 0 }

// MaxVersionPart bounds an epoch or seq received from a peer, so that the
// +1 of a takeover or a tombstone can never wrap around.
const MaxVersionPart = 1 << 62

// Valid reports whether a version received from a peer can be applied.
func (v Version) Valid() bool {
	return v.Epoch >= 1 && v.Epoch < MaxVersionPart && v.Seq < MaxVersionPart
}

// IsZero reports whether v is the zero version (no state).
func (v Version) IsZero() bool { return v == Version{} }

// ServiceInstances is a client's instances of one service.
type ServiceInstances struct {
	Key       naming.ServiceKey
	Instances []naming.Instance
}

// ClientState is the whole replicated state of one client: Distro ships
// state, not operations (a CHANGE).
type ClientState struct {
	ID       string
	Owner    string
	Version  Version
	Services []ServiceInstances
}

// ServiceDelta is what changed in a client's instances of one service: the
// instances put (added or changed) and the ones removed.
type ServiceDelta struct {
	Key     naming.ServiceKey
	Put     []naming.Instance
	Removed []naming.InstanceID
}

// ClientDelta is a change of one client on top of Base, the version the
// peer last received: what a client holding many instances sends when a
// few change, instead of its whole state. A peer applies it only to its copy
// at exactly Base, from the same owner, and otherwise asks for the whole
// state (SyncReply.NeedFull).
type ClientDelta struct {
	ID       string
	Owner    string
	Base     Version
	Version  Version
	Services []ServiceDelta
}

// Tombstone records that a client was deleted at a version (a DELETE). A
// state with a version not above it is stale and is dropped.
type Tombstone struct {
	ID      string
	Owner   string
	Version Version
}

// ClientVersion names one client's version in a verify list.
type ClientVersion struct {
	ID      string
	Version Version
}

// Digest summarises a set of (client, version) pairs in constant size. It is
// kept up to date incrementally on every change, so a verify round costs the
// same whatever the number of clients.
type Digest struct {
	Count uint64
	Xor   uint64
	Sum   uint64
}

func entryHash(id string, v Version) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], v.Epoch)
	binary.BigEndian.PutUint64(b[8:], v.Seq)
	_, _ = h.Write(b[:])
	x := h.Sum64()
	// A final avalanche (splitmix64) so that near-identical inputs spread.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func (d *Digest) add(id string, v Version) {
	h := entryHash(id, v)
	d.Count++
	d.Xor ^= h
	d.Sum += h
}

func (d *Digest) remove(id string, v Version) {
	h := entryHash(id, v)
	d.Count--
	d.Xor ^= h
	d.Sum -= h
}

// SyncRequest carries pending changes for many clients to one peer in one
// message: CHANGEs with a client's whole state or, as deltas, only what
// changed, and DELETEs.
type SyncRequest struct {
	From    string
	Changes []ClientState
	Deletes []Tombstone
	// Deltas go only to a peer whose last reply set Deltas.
	Deltas []ClientDelta
}

// SyncReply acknowledges a SyncRequest.
type SyncReply struct {
	// Applied counts the entries that changed the peer's state; the rest
	// were already known or stale.
	Applied uint32
	// NeedFull names the clients of Deltas the peer could not apply: its
	// copy is not at their Base. The sender sends their whole state.
	NeedFull []string
	// Deltas: the peer applies deltas.
	Deltas bool
}

// VerifyRequest is one owner's periodic claim on its clients. Without
// Clients it carries only the digest of everything the sender owns; the
// peer answers Match when its copies agree. On a mismatch the sender follows
// with the list itself, in one or more requests with List set.
type VerifyRequest struct {
	From    string
	Digest  Digest
	List    bool
	Clients []ClientVersion
}

// VerifyReply answers a VerifyRequest.
type VerifyReply struct {
	// Match: the digest agreed and every copy's lease was renewed.
	Match bool
	// Want lists clients of a List request that the peer lacks or holds
	// at an older version; the owner re-sends exactly those.
	Want []string
}

// SnapshotRequest asks a peer for one page of everything it holds. Cursor
// is empty for the first page and the previous page's Next after that.
type SnapshotRequest struct {
	From     string
	Cursor   string
	MaxBytes int
}

// SnapshotPage is one page of a peer's clients.
type SnapshotPage struct {
	Clients []ClientState
	Next    string
	Done    bool
}

// QueryRequest asks a peer for the current state of some clients.
type QueryRequest struct {
	From string
	IDs  []string
}

// QueryReply holds the states the peer has, in no particular order.
type QueryReply struct {
	Clients []ClientState
}

// Transport carries Distro messages to a peer, named by its node name. The
// gRPC implementation lives in rpc; InmemNetwork is the in-process one.
// Every method must honour ctx.
type Transport interface {
	Sync(ctx context.Context, to string, req *SyncRequest) (*SyncReply, error)
	Verify(ctx context.Context, to string, req *VerifyRequest) (*VerifyReply, error)
	Snapshot(ctx context.Context, to string, req *SnapshotRequest) (*SnapshotPage, error)
	Query(ctx context.Context, to string, req *QueryRequest) (*QueryReply, error)
}

// Handler is the receiving side of a Transport; Distro implements it.
type Handler interface {
	HandleSync(ctx context.Context, req *SyncRequest) (*SyncReply, error)
	HandleVerify(ctx context.Context, req *VerifyRequest) (*VerifyReply, error)
	HandleSnapshot(ctx context.Context, req *SnapshotRequest) (*SnapshotPage, error)
	HandleQuery(ctx context.Context, req *QueryRequest) (*QueryReply, error)
}

// deltaSize estimates the encoded size of a delta, as stateSize does.
func deltaSize(c *ClientDelta) int {
	n := 48 + len(c.ID) + len(c.Owner)
	for i := range c.Services {
		s := &c.Services[i]
		n += 16 + len(s.Key.Namespace) + len(s.Key.Group) + len(s.Key.Service) + instancesSize(s.Put)
		for _, id := range s.Removed {
			n += 16 + len(id.IP) + len(id.Cluster)
		}
	}
	return n
}

// stateSize estimates the encoded size of a client state in bytes, to cut
// batches and snapshot pages below a byte budget.
func stateSize(c *ClientState) int {
	n := 32 + len(c.ID) + len(c.Owner)
	for i := range c.Services {
		s := &c.Services[i]
		n += 16 + len(s.Key.Namespace) + len(s.Key.Group) + len(s.Key.Service) + instancesSize(s.Instances)
	}
	return n
}

func instancesSize(list []naming.Instance) int {
	n := 0
	for i := range list {
		in := &list[i]
		n += 40 + len(in.IP) + len(in.Cluster)
		for k, v := range in.Metadata {
			n += 4 + len(k) + len(v)
		}
	}
	return n
}
