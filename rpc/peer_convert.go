package rpc

import (
	"fmt"
	"unicode"
	"unicode/utf8"

	clusterv1 "github.com/regent-registry/regent/proto/cluster/v1"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
)

// Limits on what one peer message may carry. A peer is another Regent node,
// but its messages are decoded as untrusted input all the same: a bug or a
// bad actor on the peer port must not be able to plant what the client API
// refuses, nor make one message cost unbounded work.
const (
	// MaxPeerNodeNameLen caps a node name (from, owner) in bytes.
	MaxPeerNodeNameLen = 256
	// MaxPeerEntries caps every list of clients in one message: changes
	// plus deletes of a sync, the client versions of a verify list and the
	// ids it wants back, the ids of a query, the clients of a snapshot page
	// or query reply. Distro's defaults stay far below it (a 1 MiB batch
	// holds at most ~20k entries; a verify chunk is 20k).
	MaxPeerEntries = 1 << 17
	// MaxPeerServices caps the services of one client state.
	MaxPeerServices = 1 << 14
	// MaxPeerInstances caps the instances of one service in one client
	// state.
	MaxPeerInstances = 1 << 16
	// MaxPeerVersion bounds both parts of a version (exclusive). An epoch
	// is microseconds since 1970, so 2^62 is ~146,000 years away; the bound
	// only keeps the engine's epoch+1 and seq+1 from wrapping around.
	MaxPeerVersion = 1 << 62
	// maxPeerCursorLen caps a snapshot cursor ("bucket:client-id").
	maxPeerCursorLen = 512
	// maxPeerPageBytes caps a snapshot page budget, so it fits an int on
	// every platform; the engine clamps it to its own limit anyway.
	maxPeerPageBytes = 1 << 30
)

func peerInvalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", naming.ErrInvalid, fmt.Sprintf(format, args...))
}

// validateNodeName checks a node name from a peer: non-empty, at most
// MaxPeerNodeNameLen bytes, valid UTF-8 without control characters. Node
// names are otherwise free-form (--name defaults to the host name).
func validateNodeName(what, name string) error {
	if name == "" {
		return peerInvalid("%s is empty", what)
	}
	if len(name) > MaxPeerNodeNameLen {
		return peerInvalid("%s is %d bytes, at most %d allowed", what, len(name), MaxPeerNodeNameLen)
	}
	if !utf8.ValidString(name) {
		return peerInvalid("%s is not valid UTF-8", what)
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return peerInvalid("%s %q has control characters", what, name)
		}
	}
	return nil
}

func checkPeerCount(what string, n, max int) error {
	if n > max {
		return peerInvalid("%s has %d entries, at most %d allowed", what, n, max)
	}
	return nil
}

// ---- ephemeral -> proto ----

func versionToProto(v ephemeral.Version) *clusterv1.Version {
	return &clusterv1.Version{Epoch: v.Epoch, Seq: v.Seq}
}

func clientStateToProto(c *ephemeral.ClientState) *clusterv1.ClientState {
	out := &clusterv1.ClientState{
		Id:       c.ID,
		Owner:    c.Owner,
		Version:  versionToProto(c.Version),
		Services: make([]*clusterv1.ServiceInstances, len(c.Services)),
	}
	for i := range c.Services {
		s := &c.Services[i]
		out.Services[i] = &clusterv1.ServiceInstances{Service: keyToProto(s.Key), Instances: instancesToProto(s.Instances)}
	}
	return out
}

func clientStatesToProto(list []ephemeral.ClientState) []*clusterv1.ClientState {
	if len(list) == 0 {
		return nil
	}
	out := make([]*clusterv1.ClientState, len(list))
	for i := range list {
		out[i] = clientStateToProto(&list[i])
	}
	return out
}

func clientDeltaToProto(c *ephemeral.ClientDelta) *clusterv1.ClientDelta {
	out := &clusterv1.ClientDelta{
		Id:       c.ID,
		Owner:    c.Owner,
		Base:     versionToProto(c.Base),
		Version:  versionToProto(c.Version),
		Services: make([]*clusterv1.ServiceDelta, len(c.Services)),
	}
	for i := range c.Services {
		s := &c.Services[i]
		ps := &clusterv1.ServiceDelta{Service: keyToProto(s.Key)}
		if len(s.Put) > 0 {
			ps.Put = instancesToProto(s.Put)
		}
		if len(s.Removed) > 0 {
			ps.Removed = make([]*regentv1.Instance, len(s.Removed))
			for j, id := range s.Removed {
				ps.Removed[j] = &regentv1.Instance{Ip: id.IP, Port: uint32(id.Port), Cluster: id.Cluster}
			}
		}
		out.Services[i] = ps
	}
	return out
}

func syncRequestToProto(r *ephemeral.SyncRequest) *clusterv1.SyncRequest {
	out := &clusterv1.SyncRequest{From: r.From, Changes: clientStatesToProto(r.Changes)}
	if len(r.Deletes) > 0 {
		out.Deletes = make([]*clusterv1.Tombstone, len(r.Deletes))
		for i, t := range r.Deletes {
			out.Deletes[i] = &clusterv1.Tombstone{Id: t.ID, Owner: t.Owner, Version: versionToProto(t.Version)}
		}
	}
	if len(r.Deltas) > 0 {
		out.Deltas = make([]*clusterv1.ClientDelta, len(r.Deltas))
		for i := range r.Deltas {
			out.Deltas[i] = clientDeltaToProto(&r.Deltas[i])
		}
	}
	return out
}

func syncReplyToProto(r *ephemeral.SyncReply) *clusterv1.SyncResponse {
	if r == nil {
		return &clusterv1.SyncResponse{}
	}
	return &clusterv1.SyncResponse{Applied: r.Applied, NeedFull: r.NeedFull, Deltas: r.Deltas}
}

func verifyRequestToProto(r *ephemeral.VerifyRequest) *clusterv1.VerifyRequest {
	out := &clusterv1.VerifyRequest{
		From:   r.From,
		Digest: &clusterv1.Digest{Count: r.Digest.Count, Xor: r.Digest.Xor, Sum: r.Digest.Sum},
		List:   r.List,
	}
	if len(r.Clients) > 0 {
		out.Clients = make([]*clusterv1.ClientVersion, len(r.Clients))
		for i, cv := range r.Clients {
			out.Clients[i] = &clusterv1.ClientVersion{Id: cv.ID, Version: versionToProto(cv.Version)}
		}
	}
	return out
}

func verifyReplyToProto(r *ephemeral.VerifyReply) *clusterv1.VerifyResponse {
	if r == nil {
		return &clusterv1.VerifyResponse{}
	}
	return &clusterv1.VerifyResponse{Match: r.Match, Want: r.Want}
}

func snapshotRequestToProto(r *ephemeral.SnapshotRequest) *clusterv1.SnapshotRequest {
	return &clusterv1.SnapshotRequest{From: r.From, Cursor: r.Cursor, MaxBytes: uint32(min(max(r.MaxBytes, 0), maxPeerPageBytes))}
}

func snapshotPageToProto(p *ephemeral.SnapshotPage) *clusterv1.SnapshotResponse {
	if p == nil {
		return &clusterv1.SnapshotResponse{}
	}
	return &clusterv1.SnapshotResponse{Clients: clientStatesToProto(p.Clients), Next: p.Next, Done: p.Done}
}

func queryRequestToProto(r *ephemeral.QueryRequest) *clusterv1.QueryRequest {
	return &clusterv1.QueryRequest{From: r.From, Ids: r.IDs}
}

func queryReplyToProto(r *ephemeral.QueryReply) *clusterv1.QueryResponse {
	if r == nil {
		return &clusterv1.QueryResponse{}
	}
	return &clusterv1.QueryResponse{Clients: clientStatesToProto(r.Clients)}
}

// ---- proto -> ephemeral, validated ----
//
// Every decoder checks the whole message before it returns anything, so that
// a handler sees either a fully valid request or none at all. Errors wrap
// naming.ErrInvalid (InvalidArgument on the wire) and name the offending
// entry, e.g. "changes[3].services[0].instances[1]: ...".

// versionFromProto reads a version whose epoch is at least 1 (every state,
// tombstone and claim the engine makes has one) and whose parts are below
// MaxPeerVersion: a peer sending epoch 2^64-1 would otherwise wrap the
// engine's takeover epoch (epoch+1) to 0 and pin that client to it.
func versionFromProto(p *clusterv1.Version) (ephemeral.Version, error) {
	v := ephemeral.Version{Epoch: p.GetEpoch(), Seq: p.GetSeq()}
	if v.Epoch == 0 {
		return v, peerInvalid("version epoch is 0")
	}
	if v.Epoch >= MaxPeerVersion || v.Seq >= MaxPeerVersion {
		return v, peerInvalid("version %d.%d is not below 2^62", v.Epoch, v.Seq)
	}
	return v, nil
}

// clientStateFromProto validates a client's whole state with the client
// API's rules: the client id, the owner's node name, a non-zero version,
// every service key and instance (normalized, as the store requires), no
// service twice and no instance twice within a service (after
// normalization, so "" and "DEFAULT" clusters collide).
func clientStateFromProto(p *clusterv1.ClientState) (ephemeral.ClientState, error) {
	var st ephemeral.ClientState
	if p == nil {
		return st, peerInvalid("client state is missing")
	}
	if err := naming.ValidateClientID(p.GetId()); err != nil {
		return st, err
	}
	if err := validateNodeName("owner", p.GetOwner()); err != nil {
		return st, fmt.Errorf("client %s: %w", p.GetId(), err)
	}
	v, err := versionFromProto(p.GetVersion())
	if err != nil {
		return st, fmt.Errorf("client %s: %w", p.GetId(), err)
	}
	if err := checkPeerCount("services", len(p.GetServices()), MaxPeerServices); err != nil {
		return st, fmt.Errorf("client %s: %w", p.GetId(), err)
	}
	st = ephemeral.ClientState{ID: p.GetId(), Owner: p.GetOwner(), Version: v}
	if len(p.GetServices()) > 0 {
		st.Services = make([]ephemeral.ServiceInstances, len(p.GetServices()))
	}
	seenKeys := make(map[naming.ServiceKey]struct{}, len(p.GetServices()))
	for i, ps := range p.GetServices() {
		key, err := keyFromProto(ps.GetService())
		if err != nil {
			return st, fmt.Errorf("client %s: services[%d]: %w", p.GetId(), i, err)
		}
		if _, dup := seenKeys[key]; dup {
			return st, fmt.Errorf("client %s: services[%d]: %w", p.GetId(), i, peerInvalid("service %s appears twice", key))
		}
		seenKeys[key] = struct{}{}
		if err := checkPeerCount("instances", len(ps.GetInstances()), MaxPeerInstances); err != nil {
			return st, fmt.Errorf("client %s: services[%d]: %w", p.GetId(), i, err)
		}
		si := ephemeral.ServiceInstances{Key: key}
		if len(ps.GetInstances()) > 0 {
			si.Instances = make([]naming.Instance, len(ps.GetInstances()))
		}
		seenIDs := make(map[naming.InstanceID]struct{}, len(ps.GetInstances()))
		for j, pi := range ps.GetInstances() {
			in, err := instanceFromProto(pi, true)
			if err != nil {
				return st, fmt.Errorf("client %s: services[%d].instances[%d]: %w", p.GetId(), i, j, err)
			}
			if _, dup := seenIDs[in.ID()]; dup {
				return st, fmt.Errorf("client %s: services[%d].instances[%d]: %w", p.GetId(), i, j, peerInvalid("instance %s appears twice", in.ID()))
			}
			seenIDs[in.ID()] = struct{}{}
			si.Instances[j] = in
		}
		st.Services[i] = si
	}
	return st, nil
}

func clientStatesFromProto(what string, list []*clusterv1.ClientState) ([]ephemeral.ClientState, error) {
	if err := checkPeerCount(what, len(list), MaxPeerEntries); err != nil {
		return nil, err
	}
	if len(list) == 0 {
		return nil, nil
	}
	out := make([]ephemeral.ClientState, len(list))
	for i, p := range list {
		st, err := clientStateFromProto(p)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", what, i, err)
		}
		out[i] = st
	}
	return out, nil
}

func clientIDsFromProto(what string, ids []string) ([]string, error) {
	if err := checkPeerCount(what, len(ids), MaxPeerEntries); err != nil {
		return nil, err
	}
	for i, id := range ids {
		if err := naming.ValidateClientID(id); err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", what, i, err)
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	return ids, nil
}

// clientDeltaFromProto validates a delta as clientStateFromProto does a
// state, and: a base version below the version; instances put normalized
// and unique; instances removed by id, unique, and none also put.
func clientDeltaFromProto(p *clusterv1.ClientDelta) (ephemeral.ClientDelta, error) {
	var dl ephemeral.ClientDelta
	if p == nil {
		return dl, peerInvalid("client delta is missing")
	}
	if err := naming.ValidateClientID(p.GetId()); err != nil {
		return dl, err
	}
	fail := func(err error) (ephemeral.ClientDelta, error) { return dl, fmt.Errorf("client %s: %w", p.GetId(), err) }
	if err := validateNodeName("owner", p.GetOwner()); err != nil {
		return fail(err)
	}
	base, err := versionFromProto(p.GetBase())
	if err != nil {
		return fail(fmt.Errorf("base: %w", err))
	}
	v, err := versionFromProto(p.GetVersion())
	if err != nil {
		return fail(err)
	}
	if !base.Less(v) {
		return fail(peerInvalid("base %d.%d is not below version %d.%d", base.Epoch, base.Seq, v.Epoch, v.Seq))
	}
	if err := checkPeerCount("services", len(p.GetServices()), MaxPeerServices); err != nil {
		return fail(err)
	}
	dl = ephemeral.ClientDelta{ID: p.GetId(), Owner: p.GetOwner(), Base: base, Version: v}
	if len(p.GetServices()) > 0 {
		dl.Services = make([]ephemeral.ServiceDelta, len(p.GetServices()))
	}
	seenKeys := make(map[naming.ServiceKey]struct{}, len(p.GetServices()))
	for i, ps := range p.GetServices() {
		key, err := keyFromProto(ps.GetService())
		if err != nil {
			return fail(fmt.Errorf("services[%d]: %w", i, err))
		}
		if _, dup := seenKeys[key]; dup {
			return fail(fmt.Errorf("services[%d]: %w", i, peerInvalid("service %s appears twice", key)))
		}
		seenKeys[key] = struct{}{}
		if err := checkPeerCount("instances put and removed", len(ps.GetPut())+len(ps.GetRemoved()), MaxPeerInstances); err != nil {
			return fail(fmt.Errorf("services[%d]: %w", i, err))
		}
		sd := ephemeral.ServiceDelta{Key: key}
		seen := make(map[naming.InstanceID]struct{}, len(ps.GetPut())+len(ps.GetRemoved()))
		for j, pi := range ps.GetPut() {
			in, err := instanceFromProto(pi, true)
			if err != nil {
				return fail(fmt.Errorf("services[%d].put[%d]: %w", i, j, err))
			}
			if _, dup := seen[in.ID()]; dup {
				return fail(fmt.Errorf("services[%d].put[%d]: %w", i, j, peerInvalid("instance %s appears twice", in.ID())))
			}
			seen[in.ID()] = struct{}{}
			sd.Put = append(sd.Put, in)
		}
		for j, pi := range ps.GetRemoved() {
			id, err := idFromProto(pi)
			if err != nil {
				return fail(fmt.Errorf("services[%d].removed[%d]: %w", i, j, err))
			}
			if _, dup := seen[id]; dup {
				return fail(fmt.Errorf("services[%d].removed[%d]: %w", i, j, peerInvalid("instance %s appears twice", id)))
			}
			seen[id] = struct{}{}
			sd.Removed = append(sd.Removed, id)
		}
		dl.Services[i] = sd
	}
	return dl, nil
}

// syncRequestFromProto validates a sync: the sender's node name, at most
// MaxPeerEntries changes, deletes and deltas together, every change as
// clientStateFromProto, every tombstone's id, owner and non-zero version,
// every delta as clientDeltaFromProto.
func syncRequestFromProto(p *clusterv1.SyncRequest) (*ephemeral.SyncRequest, error) {
	if err := validateNodeName("from", p.GetFrom()); err != nil {
		return nil, err
	}
	if err := checkPeerCount("changes, deletes and deltas", len(p.GetChanges())+len(p.GetDeletes())+len(p.GetDeltas()), MaxPeerEntries); err != nil {
		return nil, err
	}
	changes, err := clientStatesFromProto("changes", p.GetChanges())
	if err != nil {
		return nil, err
	}
	req := &ephemeral.SyncRequest{From: p.GetFrom(), Changes: changes}
	if len(p.GetDeletes()) > 0 {
		req.Deletes = make([]ephemeral.Tombstone, len(p.GetDeletes()))
	}
	for i, pt := range p.GetDeletes() {
		t := ephemeral.Tombstone{ID: pt.GetId(), Owner: pt.GetOwner()}
		err := naming.ValidateClientID(t.ID)
		if err == nil {
			err = validateNodeName("owner", t.Owner)
		}
		if err == nil {
			t.Version, err = versionFromProto(pt.GetVersion())
		}
		if err != nil {
			return nil, fmt.Errorf("deletes[%d]: %w", i, err)
		}
		req.Deletes[i] = t
	}
	if len(p.GetDeltas()) > 0 {
		req.Deltas = make([]ephemeral.ClientDelta, len(p.GetDeltas()))
	}
	for i, pd := range p.GetDeltas() {
		dl, err := clientDeltaFromProto(pd)
		if err != nil {
			return nil, fmt.Errorf("deltas[%d]: %w", i, err)
		}
		req.Deltas[i] = dl
	}
	return req, nil
}

// syncReplyFromProto reads a sync's reply; need_full must be valid client
// ids, at most MaxPeerEntries.
func syncReplyFromProto(p *clusterv1.SyncResponse) (*ephemeral.SyncReply, error) {
	ids, err := clientIDsFromProto("need_full", p.GetNeedFull())
	if err != nil {
		return nil, err
	}
	return &ephemeral.SyncReply{Applied: p.GetApplied(), NeedFull: ids, Deltas: p.GetDeltas()}, nil
}

// verifyRequestFromProto validates a verify: the sender's node name; a
// digest-only request carries no clients; a list carries at most
// MaxPeerEntries valid client ids with non-zero versions.
func verifyRequestFromProto(p *clusterv1.VerifyRequest) (*ephemeral.VerifyRequest, error) {
	if err := validateNodeName("from", p.GetFrom()); err != nil {
		return nil, err
	}
	d := p.GetDigest()
	req := &ephemeral.VerifyRequest{
		From:   p.GetFrom(),
		Digest: ephemeral.Digest{Count: d.GetCount(), Xor: d.GetXor(), Sum: d.GetSum()},
		List:   p.GetList(),
	}
	if !req.List && len(p.GetClients()) > 0 {
		return nil, peerInvalid("a digest-only verify carries %d clients", len(p.GetClients()))
	}
	if err := checkPeerCount("clients", len(p.GetClients()), MaxPeerEntries); err != nil {
		return nil, err
	}
	if len(p.GetClients()) > 0 {
		req.Clients = make([]ephemeral.ClientVersion, len(p.GetClients()))
	}
	for i, pc := range p.GetClients() {
		cv := ephemeral.ClientVersion{ID: pc.GetId()}
		err := naming.ValidateClientID(cv.ID)
		if err == nil {
			cv.Version, err = versionFromProto(pc.GetVersion())
		}
		if err != nil {
			return nil, fmt.Errorf("clients[%d]: %w", i, err)
		}
		req.Clients[i] = cv
	}
	return req, nil
}

// verifyReplyFromProto validates the ids a peer wants re-sent.
func verifyReplyFromProto(p *clusterv1.VerifyResponse) (*ephemeral.VerifyReply, error) {
	want, err := clientIDsFromProto("want", p.GetWant())
	if err != nil {
		return nil, err
	}
	return &ephemeral.VerifyReply{Match: p.GetMatch(), Want: want}, nil
}

// snapshotRequestFromProto validates a snapshot request: the sender's node
// name and a cursor of at most 512 bytes (the engine parses it and refuses
// one it did not issue with ErrBadCursor).
func snapshotRequestFromProto(p *clusterv1.SnapshotRequest) (*ephemeral.SnapshotRequest, error) {
	if err := validateNodeName("from", p.GetFrom()); err != nil {
		return nil, err
	}
	if len(p.GetCursor()) > maxPeerCursorLen {
		return nil, peerInvalid("cursor is %d bytes, at most %d allowed", len(p.GetCursor()), maxPeerCursorLen)
	}
	return &ephemeral.SnapshotRequest{
		From:     p.GetFrom(),
		Cursor:   p.GetCursor(),
		MaxBytes: int(min(p.GetMaxBytes(), maxPeerPageBytes)),
	}, nil
}

// snapshotPageFromProto validates a page a peer sent: its clients as
// clientStateFromProto, and its cursor's length.
func snapshotPageFromProto(p *clusterv1.SnapshotResponse) (*ephemeral.SnapshotPage, error) {
	clients, err := clientStatesFromProto("clients", p.GetClients())
	if err != nil {
		return nil, err
	}
	if len(p.GetNext()) > maxPeerCursorLen {
		return nil, peerInvalid("next cursor is %d bytes, at most %d allowed", len(p.GetNext()), maxPeerCursorLen)
	}
	return &ephemeral.SnapshotPage{Clients: clients, Next: p.GetNext(), Done: p.GetDone()}, nil
}

// queryRequestFromProto validates a query: the sender's node name and at
// most MaxPeerEntries valid client ids.
func queryRequestFromProto(p *clusterv1.QueryRequest) (*ephemeral.QueryRequest, error) {
	if err := validateNodeName("from", p.GetFrom()); err != nil {
		return nil, err
	}
	ids, err := clientIDsFromProto("ids", p.GetIds())
	if err != nil {
		return nil, err
	}
	return &ephemeral.QueryRequest{From: p.GetFrom(), IDs: ids}, nil
}

// queryReplyFromProto validates the states a peer returned.
func queryReplyFromProto(p *clusterv1.QueryResponse) (*ephemeral.QueryReply, error) {
	clients, err := clientStatesFromProto("clients", p.GetClients())
	if err != nil {
		return nil, err
	}
	return &ephemeral.QueryReply{Clients: clients}, nil
}
