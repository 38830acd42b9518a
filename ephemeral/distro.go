package ephemeral

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/regent-registry/regent/internal/naming"
)

// numBuckets partitions clients for paged snapshots: a page walks buckets in
// order and sorts only inside one bucket, so paging a million clients costs
// O(n log(n/numBuckets)) in all, with no per-request state on the server.
const numBuckets = 1024

// clientMeta is what Distro keeps per client beside the store's instances.
type clientMeta struct {
	id      string
	owner   string
	ver     Version
	native  bool      // this node holds the client's session
	renewed time.Time // last time the owner confirmed this copy
}

type tomb struct {
	owner string
	ver   Version
	at    time.Time
}

// ownerSet is every client one node owns, as this node knows it.
type ownerSet struct {
	clients map[string]*clientMeta
	digest  Digest
	// renewed is when the owner last verified the whole set by digest.
	renewed time.Time
}

// peer is this node's view of one other node and its outgoing queue.
type peer struct {
	name      string
	up        bool
	downSince time.Time
	purged    bool
	// pending holds clients whose current state (or tombstone) must be
	// sent: the whole state for a nil entry, else a delta.
	pending map[string]*pendingDelta
	// deltas: the peer's last sync reply said it applies deltas.
	deltas bool
	// syncTAT paces the batches (the generic cell rate algorithm): each
	// batch moves it SyncDelay past max(it, now), and a batch may go when
	// now is at least SyncTAT - (SyncBurst-1)*SyncDelay.
	syncTAT    time.Time
	retryAt    time.Time
	backoff    time.Duration
	nextVerify time.Time
	verifyNow  bool
	wake       chan struct{}
	started    bool
}

// pendingDelta is what a peer lacks of one client that it holds at base:
// the instances touched since, by service. Their content is read when the
// delta is sent.
type pendingDelta struct {
	base    Version
	touched map[naming.ServiceKey]map[naming.InstanceID]struct{}
	n       int // instance ids in touched
}

// maxDeltaIDs caps the instance ids a pending delta collects; past it the
// client's whole state is sent instead.
const maxDeltaIDs = 4096

// add records ids of key as touched; false when the delta grew past
// maxDeltaIDs.
func (pd *pendingDelta) add(key naming.ServiceKey, ids []naming.InstanceID) bool {
	set := pd.touched[key]
	if set == nil {
		set = make(map[naming.InstanceID]struct{}, len(ids))
		pd.touched[key] = set
	}
	for _, id := range ids {
		if _, ok := set[id]; !ok {
			set[id] = struct{}{}
			pd.n++
		}
	}
	return pd.n <= maxDeltaIDs
}

// merge adds what o touched (a later delta) to pd; false past maxDeltaIDs.
func (pd *pendingDelta) merge(o *pendingDelta) bool {
	for key, set := range o.touched {
		ids := make([]naming.InstanceID, 0, len(set))
		for id := range set {
			ids = append(ids, id)
		}
		if !pd.add(key, ids) {
			return false
		}
	}
	return true
}

// touch names the instances a local change may have changed; a nil touch
// means the whole client (a replace, a takeover).
type touch struct {
	key naming.ServiceKey
	ids []naming.InstanceID
}

// DistroStats counts what the engine did since it started.
type DistroStats struct {
	SyncMessages      uint64 // sync messages sent
	SyncClients       uint64 // client states, deltas and tombstones in them
	SyncDeltas        uint64 // of which deltas
	DeltasRefused     uint64 // deltas a peer could not apply (sent whole next)
	SyncFailures      uint64
	VerifyMessages    uint64 // digest messages sent
	VerifyListMsgs    uint64 // list messages sent after a digest mismatch
	VerifyListEntries uint64
	Repairs           uint64 // clients re-sent because a peer lacked them
	Applied           uint64 // remote states and tombstones that changed this node
	Expired           uint64 // replicated clients removed because their owner stopped confirming them
	Purged            uint64 // replicated clients removed after their owner died or left
	Clients           int    // clients held now
	Native            int    // of which this node owns
	Tombstones        int
}

// PeerStatus is one peer as the engine sees it.
type PeerStatus struct {
	Name    string
	Up      bool
	Pending int
}

// Distro replicates the ephemeral store between nodes, as Nacos' Distro does
// but with batched syncs, digest verification, owner epochs and a paged
// start-up load. See DESIGN.md.
type Distro struct {
	cfg   Config
	clock Clock
	log   *slog.Logger
	store *Store
	tr    Transport
	self  string

	// mu guards every field below it.
	mu      sync.Mutex
	clients map[string]*clientMeta
	tombs   map[string]tomb
	// tombQ lists the tombstones in the order they were made (so by
	// their at), from tombHead on: Sweep forgets the expired ones from
	// the head, in O(expired) rather than a scan of them all under mu.
	// An entry whose tombstone was replaced or deleted since is skipped.
	tombQ    []tombRef
	tombHead int
	buckets  [numBuckets]map[string]struct{}
	owners   map[string]*ownerSet
	peers    map[string]*peer
	draining bool
	// epochClock is a Lamport clock over ownership epochs: the highest
	// epoch this node has seen or made. A takeover's epoch exceeds it, so
	// a node never takes over below an epoch it has witnessed, whatever
	// its wall clock says.
	epochClock uint64

	loaded   atomic.Bool
	loadedCh chan struct{}

	// lifecycle, also under mu
	ctx     context.Context
	cancel  context.CancelFunc
	running bool
	stopped bool
	wg      sync.WaitGroup

	syncMsgs, syncClients, syncFail     atomic.Uint64
	syncDeltas, deltasRefused           atomic.Uint64
	verifyMsgs, verifyList, verifyEntry atomic.Uint64
	repairs, applied, expired, purged   atomic.Uint64
}

// New builds the engine of one node over its store and a transport to its
// peers. It does nothing on its own until Start.
func New(cfg Config, store *Store, tr Transport) (*Distro, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if store == nil || tr == nil {
		return nil, fmt.Errorf("%w: store and transport are required", ErrConfig)
	}
	clock := cfg.Clock
	if clock == nil {
		clock = wallClock{}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	d := &Distro{
		cfg: cfg, clock: clock, store: store, tr: tr, self: cfg.Node,
		log:      logger.With("component", "distro"),
		clients:  make(map[string]*clientMeta),
		tombs:    make(map[string]tomb),
		owners:   make(map[string]*ownerSet),
		peers:    make(map[string]*peer),
		loadedCh: make(chan struct{}),
	}
	for i := range d.buckets {
		d.buckets[i] = make(map[string]struct{})
	}
	return d, nil
}

// Store returns the store the engine writes.
func (d *Distro) Store() *Store { return d.store }

// Node returns this node's name.
func (d *Distro) Node() string { return d.self }

// Start launches the sweeper and one sender per peer; they stop when ctx
// ends or Stop is called.
func (d *Distro) Start(ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.running || d.stopped {
		return
	}
	d.ctx, d.cancel = context.WithCancel(ctx)
	d.running = true
	d.goFuncLocked(d.sweepLoop)
	for _, p := range d.peers {
		d.startPeerLocked(p)
	}
}

// Stop ends every goroutine of the engine and waits for them. It is
// idempotent.
func (d *Distro) Stop() {
	d.mu.Lock()
	d.stopped, d.running = true, false
	if d.cancel != nil {
		d.cancel()
	}
	d.mu.Unlock()
	d.wg.Wait()
}

// goFuncLocked runs f in a goroutine the engine owns and waits for on Stop;
// callers hold mu and have checked that the engine runs.
func (d *Distro) goFuncLocked(f func(ctx context.Context)) {
	d.wg.Add(1)
	ctx := d.ctx
	go func() {
		defer d.wg.Done()
		f(ctx)
	}()
}

// startPeerLocked starts p's sender if the engine runs.
func (d *Distro) startPeerLocked(p *peer) {
	if p.started || !d.running {
		return
	}
	p.started = true
	d.goFuncLocked(func(ctx context.Context) { d.peerLoop(ctx, p) })
}

func (d *Distro) now() time.Time { return d.clock.Now() }

func bucketOf(id string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return int(h.Sum32() % numBuckets)
}

func (d *Distro) ownerSetLocked(owner string) *ownerSet {
	o := d.owners[owner]
	if o == nil {
		o = &ownerSet{clients: make(map[string]*clientMeta)}
		d.owners[owner] = o
	}
	return o
}

// link records m (with its current owner and version) in the indexes.
func (d *Distro) linkLocked(m *clientMeta) {
	d.clients[m.id] = m
	d.buckets[bucketOf(m.id)][m.id] = struct{}{}
	o := d.ownerSetLocked(m.owner)
	o.clients[m.id] = m
	o.digest.add(m.id, m.ver)
}

// unlink removes m from the indexes; the store is the caller's business.
func (d *Distro) unlinkLocked(m *clientMeta) {
	delete(d.clients, m.id)
	delete(d.buckets[bucketOf(m.id)], m.id)
	if o := d.owners[m.owner]; o != nil {
		if _, ok := o.clients[m.id]; ok {
			delete(o.clients, m.id)
			o.digest.remove(m.id, m.ver)
		}
		if len(o.clients) == 0 && m.owner != d.self && d.peers[m.owner] == nil {
			delete(d.owners, m.owner)
		}
	}
}

// ---------------------------------------------------------------------------
// Local changes: the sessions held by this node.

// takeLocked makes this node the owner of a client, creating it if new. A
// client that another node owned (or that was deleted) gets an epoch above
// anything known of it, so every peer swaps owners. It reports whether the
// ownership is new.
func (d *Distro) takeLocked(id string) (*clientMeta, bool) {
	m := d.clients[id]
	if m != nil && m.native {
		return m, false
	}
	var floor Version
	if m != nil {
		floor = m.ver
		d.unlinkLocked(m)
	} else {
		m = &clientMeta{id: id}
	}
	if t, ok := d.tombs[id]; ok && floor.Less(t.ver) {
		floor = t.ver
	}
	now := d.now()
	epoch := max(uint64(now.UnixMicro()), floor.Epoch+1, d.epochClock+1)
	d.epochClock = epoch
	m.owner, m.ver, m.native, m.renewed = d.self, Version{Epoch: epoch}, true, now
	d.linkLocked(m)
	delete(d.tombs, id)
	d.store.SetOwner(id, d.self)
	return m, true
}

// bumpLocked records a change of a native client.
func (d *Distro) bumpLocked(m *clientMeta) {
	o := d.owners[d.self]
	o.digest.remove(m.id, m.ver)
	m.ver.Seq++
	o.digest.add(m.id, m.ver)
}

// markLocked queues a client's whole state (or tombstone) for every live
// peer and returns the peers to wake.
func (d *Distro) markLocked(id string) []*peer {
	return d.markDeltaLocked(id, Version{}, nil)
}

// markDeltaLocked queues a change of a client for every live peer: as a
// delta on top of base (the version before the change) when t names what
// it touched and the peer takes deltas, else the whole state. A client
// already queued keeps its older base and adds t; one queued whole stays
// whole. It returns the peers to wake.
func (d *Distro) markDeltaLocked(id string, base Version, t *touch) []*peer {
	woken := make([]*peer, 0, len(d.peers))
	for _, p := range d.peers {
		if !p.up {
			continue
		}
		woken = append(woken, p)
		cur, queued := p.pending[id]
		switch {
		case t == nil || !p.deltas || base.IsZero():
			p.pending[id] = nil
		case queued && cur == nil:
			// stays whole
		case queued:
			if !cur.add(t.key, t.ids) {
				p.pending[id] = nil
			}
		default:
			pd := &pendingDelta{base: base, touched: make(map[naming.ServiceKey]map[naming.InstanceID]struct{}, 1)}
			if pd.add(t.key, t.ids) {
				p.pending[id] = pd
			} else {
				p.pending[id] = nil
			}
		}
	}
	return woken
}

func wakeAll(ps []*peer) {
	for _, p := range ps {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// Connect is called when a session of clientID opens on this node. If a
// peer's copy of the client is known, this node takes it over at once, so
// peers swap owners without removing the instances. prevNode, the node the
// client was connected to before (may be empty), is asked for the client's
// state when this node has no copy yet.
func (d *Distro) Connect(ctx context.Context, clientID, prevNode string) {
	d.mu.Lock()
	m := d.clients[clientID]
	ask := m == nil && prevNode != "" && prevNode != d.self
	if p := d.peers[prevNode]; ask && (p == nil || !p.up) {
		ask = false
	}
	d.mu.Unlock()
	if ask {
		qctx, cancel := context.WithTimeout(ctx, d.cfg.QueryTimeout)
		rep, err := d.tr.Query(qctx, prevNode, &QueryRequest{From: d.self, IDs: []string{clientID}})
		cancel()
		if err != nil {
			d.log.Debug("query of a moving client failed", "client-id", clientID, "peer", prevNode, "err", err)
		} else {
			d.mu.Lock()
			var lost []string
			for i := range rep.Clients {
				if rep.Clients[i].ID == clientID {
					d.applyLocked(&rep.Clients[i], &lost)
				}
			}
			d.mu.Unlock()
			d.notifyLost(lost)
		}
	}
	d.mu.Lock()
	var woken []*peer
	if m := d.clients[clientID]; m != nil && !m.native {
		d.takeLocked(clientID)
		woken = d.markLocked(clientID)
	}
	d.mu.Unlock()
	wakeAll(woken)
}

// Register adds or replaces instances of a service for a client whose
// session this node holds. It reports whether anything changed.
func (d *Distro) Register(clientID string, key naming.ServiceKey, instances []naming.Instance) bool {
	ids := make([]naming.InstanceID, len(instances))
	for i := range instances {
		ids[i] = instances[i].ID()
	}
	return d.localChange(clientID, &touch{key: key, ids: ids}, func() bool {
		_, changed := d.store.Register(clientID, d.self, key, instances)
		return changed
	})
}

// Deregister removes instances of a service from a client whose session
// this node holds. It reports whether anything changed.
func (d *Distro) Deregister(clientID string, key naming.ServiceKey, ids []naming.InstanceID) bool {
	return d.localChange(clientID, &touch{key: key, ids: ids}, func() bool {
		_, changed := d.store.Deregister(clientID, key, ids)
		return changed
	})
}

// Replace sets the whole instance set of a client whose session this node
// holds, in one step: what a reconnected SDK sends when it redoes its
// registrations, so that instances it dropped while moving go and the ones
// it keeps never vanish. It reports whether anything changed.
func (d *Distro) Replace(clientID string, services map[naming.ServiceKey][]naming.Instance) bool {
	return d.localChange(clientID, nil, func() bool { return d.store.ReplaceClient(clientID, d.self, services) })
}

// localChange applies change (a store write reporting whether it changed
// anything, at most the instances t names) to a client this node takes or
// keeps ownership of, and queues the client for the peers when it changed
// (as a delta) or changed owner (whole).
func (d *Distro) localChange(clientID string, t *touch, change func() bool) bool {
	d.mu.Lock()
	m, taken := d.takeLocked(clientID)
	base := m.ver
	changed := change()
	if changed {
		d.bumpLocked(m)
	}
	var woken []*peer
	switch {
	case taken:
		woken = d.markLocked(clientID)
	case changed:
		woken = d.markDeltaLocked(clientID, base, t)
	}
	d.mu.Unlock()
	wakeAll(woken)
	return changed
}

// Disconnect is called when the session of a client ends for good: the
// client and its instances are deleted here and on every peer. It does
// nothing for a client another node has taken over, and nothing while the
// node drains (its clients are reconnecting elsewhere; peers remove the ones
// that do not after the node has left).
func (d *Distro) Disconnect(clientID string) {
	d.mu.Lock()
	m := d.clients[clientID]
	if m == nil || !m.native || d.draining {
		d.mu.Unlock()
		return
	}
	d.unlinkLocked(m)
	d.setTombLocked(clientID, tomb{owner: d.self, ver: Version{Epoch: m.ver.Epoch, Seq: m.ver.Seq + 1}, at: d.now()})
	d.store.RemoveClient(clientID)
	woken := d.markLocked(clientID)
	d.mu.Unlock()
	wakeAll(woken)
}

// Drain makes Disconnect keep clients: the node is shutting down and its
// clients move to other nodes, which take them over without a gap.
func (d *Distro) Drain() {
	d.mu.Lock()
	d.draining = true
	d.mu.Unlock()
}

// Owns reports whether this node owns the client.
func (d *Distro) Owns(clientID string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.clients[clientID]
	return m != nil && m.native
}

// ClientVersion returns what the engine knows of one client.
func (d *Distro) ClientVersion(clientID string) (owner string, v Version, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.clients[clientID]
	if m == nil {
		return "", Version{}, false
	}
	return m.owner, m.ver, true
}

// ---------------------------------------------------------------------------
// Membership.

// PeerUp records that gossip sees a node alive (joined, or back). A peer
// that returns is verified at once, which re-sends what it missed.
func (d *Distro) PeerUp(name string) {
	if name == d.self || name == "" {
		return
	}
	d.mu.Lock()
	p := d.peers[name]
	if p == nil {
		p = &peer{name: name, pending: make(map[string]*pendingDelta), wake: make(chan struct{}, 1)}
		d.peers[name] = p
		d.ownerSetLocked(name)
	}
	wasUp := p.up
	p.up, p.downSince, p.purged = true, time.Time{}, false
	if !wasUp {
		p.verifyNow = true
		p.backoff, p.retryAt = 0, time.Time{}
		// It may come back as another build: whole states until its
		// first reply says it takes deltas.
		p.deltas = false
	}
	d.startPeerLocked(p)
	d.mu.Unlock()
	wakeAll([]*peer{p})
}

// PeerDown records that gossip declares a node dead or left. Nothing is
// sent to it until it returns, and its clients are removed after
// OwnerGrace unless they reconnect elsewhere first.
func (d *Distro) PeerDown(name string) {
	if name == d.self {
		return
	}
	d.mu.Lock()
	p := d.peers[name]
	if p == nil {
		p = &peer{name: name, pending: make(map[string]*pendingDelta), wake: make(chan struct{}, 1)}
		d.peers[name] = p
	}
	if p.up || p.downSince.IsZero() {
		p.up = false
		p.downSince = d.now()
		p.purged = false
		// What it misses is repaired by verify when it returns.
		clear(p.pending)
	}
	d.mu.Unlock()
}

// Peers lists the peers the engine knows, sorted by name.
func (d *Distro) Peers() []PeerStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]PeerStatus, 0, len(d.peers))
	for _, p := range d.peers {
		out = append(out, PeerStatus{Name: p.name, Up: p.up, Pending: len(p.pending)})
	}
	slices.SortFunc(out, func(a, b PeerStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (d *Distro) upPeersLocked() []string {
	var out []string
	for _, p := range d.peers {
		if p.up {
			out = append(out, p.name)
		}
	}
	slices.Sort(out)
	return out
}

// ---------------------------------------------------------------------------
// Applying what peers send.

// dedupe returns a replicated state's services with each service and each
// instance named once (the last wins, a service named twice has the union),
// so that a malformed state cannot make every later apply look like a
// change. A well-formed state (the rule) is returned as it is.
func dedupe(services []ServiceInstances) []ServiceInstances {
	if !hasDuplicates(services) {
		return services
	}
	out := make([]ServiceInstances, 0, len(services))
	at := make(map[naming.ServiceKey]int, len(services))
	for _, s := range services {
		i, ok := at[s.Key]
		if !ok {
			i = len(out)
			at[s.Key] = i
			out = append(out, ServiceInstances{Key: s.Key})
		}
		list := out[i].Instances
		byID := make(map[naming.InstanceID]int, len(list)+len(s.Instances))
		for j := range list {
			byID[list[j].ID()] = j
		}
		for _, in := range s.Instances {
			if j, ok := byID[in.ID()]; ok {
				list[j] = in
				continue
			}
			byID[in.ID()] = len(list)
			list = append(list, in)
		}
		out[i].Instances = list
	}
	return slices.DeleteFunc(out, func(s ServiceInstances) bool { return len(s.Instances) == 0 })
}

// hasDuplicates reports whether services names a service or, within one,
// an instance twice, or holds a service with no instance. It scans short
// lists (up to smallMax) pairwise and uses a set beyond.
func hasDuplicates(services []ServiceInstances) bool {
	var keys map[naming.ServiceKey]struct{}
	if len(services) > smallMax {
		keys = make(map[naming.ServiceKey]struct{}, len(services))
	}
	for i, s := range services {
		if len(s.Instances) == 0 {
			return true
		}
		if len(services) <= smallMax {
			for j := range i {
				if services[j].Key == s.Key {
					return true
				}
			}
		} else {
			if _, ok := keys[s.Key]; ok {
				return true
			}
			keys[s.Key] = struct{}{}
		}
		if len(s.Instances) <= smallMax {
			for a := range s.Instances {
				for b := range a {
					if s.Instances[a].ID() == s.Instances[b].ID() {
						return true
					}
				}
			}
			continue
		}
		ids := make(map[naming.InstanceID]struct{}, len(s.Instances))
		for a := range s.Instances {
			id := s.Instances[a].ID()
			if _, ok := ids[id]; ok {
				return true
			}
			ids[id] = struct{}{}
		}
	}
	return false
}

// applyLocked applies a peer's state of a client (a CHANGE or a snapshot
// entry) if it is newer than what this node knows. Clients whose session
// this node loses are appended to lost. It reports whether anything
// changed.
func (d *Distro) applyLocked(st *ClientState, lost *[]string) bool {
	if st.ID == "" || st.Owner == "" || !st.Version.Valid() {
		return false
	}
	if st.Owner == d.self {
		m := d.clients[st.ID]
		if m != nil && m.native {
			// This node is the authority on its own clients: a copy of one
			// coming back (in a snapshot) never overwrites it.
			return false
		}
		// A client of an earlier run of this node: its session died with
		// that run. Delete it everywhere, unless a newer owner exists.
		if m != nil && !m.ver.Less(st.Version) {
			return false
		}
		if t, ok := d.tombs[st.ID]; ok && !t.ver.Less(st.Version) {
			return false
		}
		if m != nil {
			d.removeLocked(m)
		}
		d.setTombLocked(st.ID, tomb{owner: d.self, ver: Version{Epoch: st.Version.Epoch, Seq: st.Version.Seq + 1}, at: d.now()})
		wakeAll(d.markLocked(st.ID))
		return false
	}
	if t, ok := d.tombs[st.ID]; ok && !t.ver.Less(st.Version) {
		return false // deleted at a version at least as new
	}
	now := d.now()
	m := d.clients[st.ID]
	if m != nil {
		switch m.ver.Compare(st.Version) {
		case 1:
			return false
		case 0:
			m.renewed = now // the owner re-sent what we hold: a renewal
			return false
		}
		if m.native {
			*lost = append(*lost, st.ID)
		}
		d.unlinkLocked(m)
	} else {
		m = &clientMeta{id: st.ID}
	}
	m.owner, m.ver, m.native, m.renewed = st.Owner, st.Version, false, now
	d.epochClock = max(d.epochClock, st.Version.Epoch)
	d.linkLocked(m)
	delete(d.tombs, st.ID)
	d.store.replaceClient(st.ID, st.Owner, dedupe(st.Services))
	d.applied.Add(1)
	return true
}

// deleteLocked applies a peer's DELETE.
func (d *Distro) deleteLocked(t *Tombstone, lost *[]string) bool {
	if t.ID == "" || !t.Version.Valid() {
		return false
	}
	if old, ok := d.tombs[t.ID]; ok && !old.ver.Less(t.Version) {
		return false
	}
	m := d.clients[t.ID]
	if m != nil && !m.ver.Less(t.Version) {
		return false // a newer state exists (the client moved or came back)
	}
	d.setTombLocked(t.ID, tomb{owner: t.Owner, ver: t.Version, at: d.now()})
	if m == nil {
		return false
	}
	if m.native {
		*lost = append(*lost, t.ID)
	}
	d.unlinkLocked(m)
	d.store.RemoveClient(t.ID)
	d.applied.Add(1)
	return true
}

func (d *Distro) notifyLost(ids []string) {
	if d.cfg.OwnershipLost == nil {
		return
	}
	for _, id := range ids {
		d.cfg.OwnershipLost(id)
	}
}

// HandleSync applies a batch of CHANGEs and DELETEs from a peer. A node
// only ever syncs the clients it owns, so entries naming another owner than
// the sender are ignored.
func (d *Distro) HandleSync(_ context.Context, req *SyncRequest) (*SyncReply, error) {
	var lost []string
	rep := &SyncReply{Deltas: true}
	d.mu.Lock()
	for i := range req.Changes {
		if req.Changes[i].Owner == req.From && d.applyLocked(&req.Changes[i], &lost) {
			rep.Applied++
		}
	}
	for i := range req.Deltas {
		if req.Deltas[i].Owner != req.From {
			continue
		}
		switch applied, whole := d.applyDeltaLocked(&req.Deltas[i]); {
		case applied:
			rep.Applied++
		case whole:
			rep.NeedFull = append(rep.NeedFull, req.Deltas[i].ID)
		}
	}
	for i := range req.Deletes {
		if req.Deletes[i].Owner == req.From && d.deleteLocked(&req.Deletes[i], &lost) {
			rep.Applied++
		}
	}
	d.mu.Unlock()
	d.notifyLost(lost)
	return rep, nil
}

// applyDeltaLocked applies a peer's delta of a client when this node's copy
// is the owner's at exactly the delta's base. It reports whether it
// applied it, or else whether the owner must send the whole state: not for
// a delta that is stale (this node has the client deleted, or at its
// version or newer), but for one it lacks the base of (a copy missing,
// older, from another owner, or this node's own session's).
func (d *Distro) applyDeltaLocked(dl *ClientDelta) (applied, whole bool) {
	if dl.ID == "" || dl.Owner == "" || dl.Owner == d.self || !dl.Version.Valid() || !dl.Base.Valid() || !dl.Base.Less(dl.Version) {
		return false, false
	}
	if t, ok := d.tombs[dl.ID]; ok && !t.ver.Less(dl.Version) {
		return false, false
	}
	now := d.now()
	m := d.clients[dl.ID]
	if m != nil && !m.ver.Less(dl.Version) {
		if m.ver == dl.Version && m.owner == dl.Owner {
			m.renewed = now
		}
		return false, false
	}
	if m == nil || m.native || m.owner != dl.Owner || m.ver != dl.Base {
		return false, true
	}
	o := d.owners[m.owner]
	o.digest.remove(m.id, m.ver)
	m.ver, m.renewed = dl.Version, now
	o.digest.add(m.id, m.ver)
	d.epochClock = max(d.epochClock, dl.Version.Epoch)
	d.store.ApplyDelta(dl.ID, dl.Owner, dl.Services)
	d.applied.Add(1)
	return true, false
}

// HandleVerify checks an owner's claim on its clients and renews the copies
// that match.
func (d *Distro) HandleVerify(_ context.Context, req *VerifyRequest) (*VerifyReply, error) {
	if req.From == "" || req.From == d.self {
		return nil, fmt.Errorf("%w: verify from %q", naming.ErrInvalid, req.From)
	}
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if !req.List {
		o := d.owners[req.From]
		var have Digest
		if o != nil {
			have = o.digest
		}
		if have == req.Digest {
			if o != nil {
				o.renewed = now
			}
			return &VerifyReply{Match: true}, nil
		}
		return &VerifyReply{Match: false}, nil
	}
	var want []string
	for _, cv := range req.Clients {
		m := d.clients[cv.ID]
		if m != nil {
			switch m.ver.Compare(cv.Version) {
			case 0:
				m.renewed = now
				continue
			case 1:
				continue // we hold something newer: the claim is stale
			}
		}
		if t, ok := d.tombs[cv.ID]; ok && !t.ver.Less(cv.Version) {
			continue
		}
		want = append(want, cv.ID)
	}
	return &VerifyReply{Want: want}, nil
}

// stateLocked builds the replicated state of a client.
func (d *Distro) stateLocked(m *clientMeta) ClientState {
	return ClientState{ID: m.id, Owner: m.owner, Version: m.ver, Services: d.store.clientServices(m.id)}
}

// HandleQuery returns the states of the clients asked for that this node
// holds.
func (d *Distro) HandleQuery(_ context.Context, req *QueryRequest) (*QueryReply, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rep := &QueryReply{}
	for _, id := range req.IDs {
		if m := d.clients[id]; m != nil {
			rep.Clients = append(rep.Clients, d.stateLocked(m))
		}
	}
	return rep, nil
}

// HandleSnapshot returns one page of every client this node holds, owned
// or replicated.
func (d *Distro) HandleSnapshot(_ context.Context, req *SnapshotRequest) (*SnapshotPage, error) {
	b, after, err := parseCursor(req.Cursor)
	if err != nil {
		return nil, err
	}
	maxBytes := req.MaxBytes
	if maxBytes <= 0 || maxBytes > d.cfg.MaxBatchBytes {
		maxBytes = d.cfg.MaxBatchBytes
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	page := &SnapshotPage{}
	size, lastB := 0, 0
	for ; b < numBuckets; b, after = b+1, "" {
		ids := make([]string, 0, len(d.buckets[b]))
		for id := range d.buckets[b] {
			if id > after {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		for _, id := range ids {
			if size >= maxBytes && len(page.Clients) > 0 {
				page.Next = formatCursor(lastB, page.Clients[len(page.Clients)-1].ID)
				return page, nil
			}
			st := d.stateLocked(d.clients[id])
			size += stateSize(&st)
			page.Clients = append(page.Clients, st)
			lastB = b
		}
	}
	page.Done = true
	return page, nil
}

func formatCursor(b int, after string) string { return strconv.Itoa(b) + ":" + after }

func parseCursor(c string) (int, string, error) {
	if c == "" {
		return 0, "", nil
	}
	bs, after, ok := strings.Cut(c, ":")
	b, err := strconv.Atoi(bs)
	if !ok || err != nil || b < 0 || b >= numBuckets {
		return 0, "", fmt.Errorf("%w: %q", ErrBadCursor, c)
	}
	return b, after, nil
}

// ---------------------------------------------------------------------------
// Sending: one loop per peer, so a slow peer never holds up the others.

func (d *Distro) peerLoop(ctx context.Context, p *peer) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		act, wait := d.nextAction(p)
		switch act {
		case actSync:
			d.syncPeer(ctx, p)
			continue
		case actVerify:
			d.verifyPeer(ctx, p)
			continue
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-timer.C:
		}
	}
}

// maxStepActions bounds the syncs and verifies one Step runs for one peer;
// a backlog left over is reported as due at once (Step returns 0).
const maxStepActions = 1 << 12

// Step is the senders' work without their goroutines, for a driver that
// owns time (the scale model runs hundreds of engines on one virtual
// clock): for every peer, in name order, it runs on the calling goroutine
// the syncs and verifies that are due by Config.Clock, exactly as the
// sender started by Start would, and returns how long until the next one
// is due. Sweep does the sweeper's part. An engine driven by Step must not
// be started; Step does nothing and returns a long wait if it was.
func (d *Distro) Step(ctx context.Context) time.Duration {
	d.mu.Lock()
	if d.running || d.stopped {
		d.mu.Unlock()
		return time.Hour
	}
	ps := make([]*peer, 0, len(d.peers))
	for _, p := range d.peers {
		ps = append(ps, p)
	}
	d.mu.Unlock()
	slices.SortFunc(ps, func(a, b *peer) int { return strings.Compare(a.name, b.name) })
	next := time.Hour
	for _, p := range ps {
		for i := 0; ; i++ {
			if ctx.Err() != nil {
				return time.Hour
			}
			if i == maxStepActions {
				next = 0
				break
			}
			act, wait := d.nextAction(p)
			if act == actSync {
				d.syncPeer(ctx, p)
				continue
			}
			if act == actVerify {
				d.verifyPeer(ctx, p)
				continue
			}
			next = min(next, wait)
			break
		}
	}
	return next
}

const (
	actWait = iota
	actSync
	actVerify
)

// firstVerifyDelay spreads a first verify round over the second half of
// the interval, by node and peer, so that nodes do not verify in step.
func (d *Distro) firstVerifyDelay(p *peer) time.Duration {
	return d.cfg.VerifyInterval/2 + time.Duration(bucketOf(d.self+p.name))*d.cfg.VerifyInterval/(2*numBuckets)
}

func (d *Distro) nextAction(p *peer) (int, time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.now()
	if !p.up {
		return actWait, time.Hour
	}
	if p.nextVerify.IsZero() {
		p.nextVerify = now.Add(d.firstVerifyDelay(p))
	}
	// Verify is not held back by a sync backing off: it is the lease of
	// this node's clients on the peer, and its repair path. Changes still
	// pending go first (unless syncs are failing), when the spacing of
	// batches allows, or the digest would differ only by them and the peer
	// ask for the whole client list.
	if p.verifyNow || !now.Before(p.nextVerify) {
		if len(p.pending) > 0 && !now.Before(p.retryAt) {
			if due := d.syncDue(p); now.Before(due) {
				return actWait, due.Sub(now)
			}
			return actSync, 0
		}
		return actVerify, 0
	}
	wait := p.nextVerify.Sub(now)
	if now.Before(p.retryAt) {
		return actWait, min(wait, p.retryAt.Sub(now))
	}
	if len(p.pending) > 0 {
		// A change goes at once while the pace allows; changes that
		// come while it does not wait for the next batch and go
		// together.
		due := d.syncDue(p)
		if !now.Before(due) {
			return actSync, 0
		}
		wait = min(wait, due.Sub(now))
	}
	return actWait, wait
}

// syncDue is when the pace next lets a batch go to p.
func (d *Distro) syncDue(p *peer) time.Time {
	return p.syncTAT.Add(-time.Duration(max(d.cfg.SyncBurst, 1)-1) * d.cfg.SyncDelay)
}

func (d *Distro) failLocked(p *peer) {
	if p.backoff == 0 {
		p.backoff = d.cfg.RetryMin
	} else {
		p.backoff = min(2*p.backoff, d.cfg.RetryMax)
	}
	p.retryAt = d.now().Add(p.backoff)
}

// syncPeer sends one batch of p's pending clients, read at send time so that
// changes merged in the queue go once, in their latest state: a delta when
// the peer holds the client at the delta's base and it is smaller than the
// whole state, else the whole state or the tombstone.
func (d *Distro) syncPeer(ctx context.Context, p *peer) {
	d.mu.Lock()
	req := &SyncRequest{From: d.self}
	taken := make(map[string]*pendingDelta)
	size := 0
	for id, pd := range p.pending {
		if size >= d.cfg.MaxBatchBytes {
			break
		}
		delete(p.pending, id)
		taken[id] = pd
		if m := d.clients[id]; m != nil && m.native {
			if pd != nil && p.deltas {
				if services, total, ok := d.store.ClientDelta(id, pd.touched); ok && pd.n < total {
					dl := ClientDelta{ID: id, Owner: d.self, Base: pd.base, Version: m.ver, Services: services}
					size += deltaSize(&dl)
					req.Deltas = append(req.Deltas, dl)
					continue
				}
			}
			st := d.stateLocked(m)
			size += stateSize(&st)
			req.Changes = append(req.Changes, st)
		} else if t, ok := d.tombs[id]; ok && t.owner == d.self {
			size += 48 + len(id)
			req.Deletes = append(req.Deletes, Tombstone{ID: id, Owner: t.owner, Version: t.ver})
		}
		// Otherwise the client is no longer this node's: its new owner
		// syncs it.
	}
	if len(taken) > 0 {
		now := d.now()
		if p.syncTAT.Before(now) {
			p.syncTAT = now
		}
		p.syncTAT = p.syncTAT.Add(d.cfg.SyncDelay)
	}
	d.mu.Unlock()
	if len(req.Changes)+len(req.Deletes)+len(req.Deltas) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, d.cfg.SyncTimeout)
	rep, err := d.tr.Sync(cctx, p.name, req)
	cancel()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.syncFail.Add(1)
		if errors.Is(err, naming.ErrInvalid) {
			// The peer refuses the batch itself: retrying it as is would
			// hold up every client in it forever. Drop it; verify names
			// again what the peer lacks, and re-sends it alone.
			d.log.Warn("peer refused a sync batch", "peer", p.name, "clients", len(taken), "err", err)
			return
		}
		if ctx.Err() == nil {
			d.log.Debug("sync failed", "peer", p.name, "clients", len(taken), "err", err)
		}
		if p.up {
			for id, pd := range taken {
				d.requeueLocked(p, id, pd)
			}
			d.failLocked(p)
		}
		return
	}
	p.backoff, p.retryAt = 0, time.Time{}
	if rep == nil {
		rep = &SyncReply{}
	}
	p.deltas = rep.Deltas
	for _, id := range rep.NeedFull {
		if m := d.clients[id]; m != nil && m.native && p.up {
			p.pending[id] = nil
		}
	}
	d.syncMsgs.Add(1)
	d.syncClients.Add(uint64(len(req.Changes) + len(req.Deletes) + len(req.Deltas)))
	d.syncDeltas.Add(uint64(len(req.Deltas)))
	d.deltasRefused.Add(uint64(len(rep.NeedFull)))
}

// requeueLocked puts back what a failed sync took from p's queue for one
// client. A change queued since is on top of what failed, so the merged
// entry keeps the failed one's base; either being whole makes it whole.
func (d *Distro) requeueLocked(p *peer, id string, failed *pendingDelta) {
	later, queued := p.pending[id]
	switch {
	case !queued:
		p.pending[id] = failed
	case failed == nil || later == nil:
		p.pending[id] = nil
	default:
		if failed.merge(later) {
			p.pending[id] = failed
		} else {
			p.pending[id] = nil
		}
	}
}

// verifyPeer sends p the digest of this node's clients and, on a mismatch,
// the list; then it queues what p lacks.
func (d *Distro) verifyPeer(ctx context.Context, p *peer) {
	d.mu.Lock()
	if p.verifyNow {
		// The verify at once when a peer comes up: nodes that came up
		// together would verify in step ever after, so the next round is
		// spread as a first one is.
		p.nextVerify = d.now().Add(d.firstVerifyDelay(p))
	} else {
		p.nextVerify = d.now().Add(d.cfg.VerifyInterval)
	}
	p.verifyNow = false
	digest := d.ownerSetLocked(d.self).digest
	d.mu.Unlock()

	call := func(req *VerifyRequest) (*VerifyReply, error) {
		cctx, cancel := context.WithTimeout(ctx, d.cfg.SyncTimeout)
		defer cancel()
		return d.tr.Verify(cctx, p.name, req)
	}
	rep, err := call(&VerifyRequest{From: d.self, Digest: digest})
	if err != nil {
		if ctx.Err() == nil {
			d.log.Debug("verify failed", "peer", p.name, "err", err)
		}
		return
	}
	d.verifyMsgs.Add(1)
	if rep.Match {
		return
	}
	d.mu.Lock()
	own := d.owners[d.self]
	list := make([]ClientVersion, 0, len(own.clients))
	for _, m := range own.clients {
		list = append(list, ClientVersion{ID: m.id, Version: m.ver})
	}
	d.mu.Unlock()
	var want []string
	for start := 0; start < len(list) || start == 0; start += d.cfg.VerifyChunk {
		chunk := list[start:min(start+d.cfg.VerifyChunk, len(list))]
		rep, err := call(&VerifyRequest{From: d.self, Digest: digest, List: true, Clients: chunk})
		if err != nil {
			if ctx.Err() == nil {
				d.log.Debug("verify list failed", "peer", p.name, "err", err)
			}
			return
		}
		d.verifyList.Add(1)
		d.verifyEntry.Add(uint64(len(chunk)))
		want = append(want, rep.Want...)
		if len(list) == 0 {
			break
		}
	}
	if len(want) == 0 {
		return
	}
	d.mu.Lock()
	n := 0
	for _, id := range want {
		if m := d.clients[id]; m != nil && m.native && p.up {
			p.pending[id] = nil
			n++
		}
	}
	d.mu.Unlock()
	d.repairs.Add(uint64(n))
	d.log.Debug("verify found clients a peer lacks", "peer", p.name, "clients", n)
}

// ---------------------------------------------------------------------------
// Expiry, owner grace and tombstones.

func (d *Distro) sweepLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.Sweep()
		}
	}
}

// removeLocked drops a replicated client without a tombstone: its owner may
// still hold it (a partition), and then verify brings it back after the
// heal.
func (d *Distro) removeLocked(m *clientMeta) {
	d.unlinkLocked(m)
	d.store.RemoveClient(m.id)
}

// Sweep removes replicated clients whose owner stopped confirming them or
// died more than OwnerGrace ago, and forgets old tombstones. The engine runs
// it every SweepInterval; tests may call it.
func (d *Distro) Sweep() {
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, o := range d.owners {
		if name == d.self {
			continue
		}
		if p := d.peers[name]; p != nil && !p.up && !p.purged && now.Sub(p.downSince) >= d.cfg.OwnerGrace {
			p.purged = true
			n := 0
			for _, m := range o.clients {
				d.removeLocked(m)
				n++
			}
			d.purged.Add(uint64(n))
			if n > 0 {
				d.log.Info("removed the clients of a node that is gone", "peer", name, "clients", n)
			}
			continue
		}
		if now.Sub(o.renewed) <= d.cfg.Expiry {
			continue // the owner verified the whole set recently
		}
		for _, m := range o.clients {
			if now.Sub(m.renewed) > d.cfg.Expiry {
				d.removeLocked(m)
				d.expired.Add(1)
			}
		}
	}
	for d.tombHead < len(d.tombQ) {
		r := d.tombQ[d.tombHead]
		if now.Sub(r.at) <= d.cfg.TombstoneTTL {
			break // the rest are younger
		}
		if t, ok := d.tombs[r.id]; ok && t.at.Equal(r.at) {
			delete(d.tombs, r.id)
		}
		d.tombQ[d.tombHead] = tombRef{}
		d.tombHead++
	}
	if d.tombHead > 1024 && d.tombHead*2 >= len(d.tombQ) {
		// Most of the queue is spent: move the rest to the front.
		d.tombQ = append(d.tombQ[:0], d.tombQ[d.tombHead:]...)
		d.tombHead = 0
	}
}

// tombRef is an entry of the tombstone queue.
type tombRef struct {
	id string
	at time.Time
}

// setTombLocked records a tombstone (made now: t.at is the engine clock's
// now) and queues it for Sweep.
func (d *Distro) setTombLocked(id string, t tomb) {
	d.tombs[id] = t
	d.tombQ = append(d.tombQ, tombRef{id: id, at: t.at})
}

// ---------------------------------------------------------------------------
// Start-up load.

// Loaded reports whether the start-up load has finished: the node holds
// what its peers held when it started and may answer queries.
func (d *Distro) Loaded() bool { return d.loaded.Load() }

// LoadedCh is closed when the start-up load finishes.
func (d *Distro) LoadedCh() <-chan struct{} { return d.loadedCh }

func (d *Distro) markLoaded() {
	if d.loaded.CompareAndSwap(false, true) {
		close(d.loadedCh)
	}
}

// Load pulls every peer's clients, page by page, from the first live peer
// that answers, trying the next on failure and all of them again after
// LoadRetry. A node with no live peer is loaded at once. Registrations made
// on this node meanwhile are kept: a loaded state never overwrites a client
// this node owns, and stale ones lose on version.
func (d *Distro) Load(ctx context.Context) error {
	defer func() {
		if ctx.Err() == nil {
			d.markLoaded()
		}
	}()
	for {
		d.mu.Lock()
		peers := d.upPeersLocked()
		d.mu.Unlock()
		if len(peers) == 0 {
			d.log.Info("no live peer: start-up load skipped")
			return nil
		}
		for _, name := range peers {
			n, err := d.loadFrom(ctx, name)
			if err == nil {
				d.log.Info("loaded clients from a peer", "peer", name, "clients", n)
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			d.log.Warn("start-up load from a peer failed", "peer", name, "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d.cfg.LoadRetry):
		}
	}
}

func (d *Distro) loadFrom(ctx context.Context, name string) (int, error) {
	cursor := ""
	n := 0
	for {
		cctx, cancel := context.WithTimeout(ctx, d.cfg.SyncTimeout)
		page, err := d.tr.Snapshot(cctx, name, &SnapshotRequest{From: d.self, Cursor: cursor, MaxBytes: d.cfg.MaxBatchBytes})
		cancel()
		if err != nil {
			return n, err
		}
		var lost []string
		d.mu.Lock()
		for i := range page.Clients {
			d.applyLocked(&page.Clients[i], &lost)
		}
		d.mu.Unlock()
		d.notifyLost(lost)
		n += len(page.Clients)
		if page.Done {
			return n, nil
		}
		if page.Next == "" || page.Next == cursor {
			return n, errors.New("snapshot page without progress")
		}
		cursor = page.Next
	}
}

// Stats returns the engine's counters.
func (d *Distro) Stats() DistroStats {
	d.mu.Lock()
	clients, tombs := len(d.clients), len(d.tombs)
	native := 0
	if o := d.owners[d.self]; o != nil {
		native = len(o.clients)
	}
	d.mu.Unlock()
	return DistroStats{
		SyncMessages: d.syncMsgs.Load(), SyncClients: d.syncClients.Load(), SyncFailures: d.syncFail.Load(),
		SyncDeltas: d.syncDeltas.Load(), DeltasRefused: d.deltasRefused.Load(),
		VerifyMessages: d.verifyMsgs.Load(), VerifyListMsgs: d.verifyList.Load(), VerifyListEntries: d.verifyEntry.Load(),
		Repairs: d.repairs.Load(), Applied: d.applied.Load(), Expired: d.expired.Load(), Purged: d.purged.Load(),
		Clients: clients, Native: native, Tombstones: tombs,
	}
}

var _ Handler = (*Distro)(nil)

// NewStandalone returns an engine for a node without peers: it keeps the
// store's ownership and versions, and is loaded at once.
func NewStandalone(node string, store *Store) *Distro {
	cfg := DefaultConfig()
	cfg.Node = node
	d, err := New(cfg, store, noPeers{})
	if err != nil {
		panic(fmt.Sprintf("ephemeral: standalone config: %v", err)) // only a bad node name gets here
	}
	d.markLoaded()
	return d
}

type noPeers struct{}

func (noPeers) Sync(context.Context, string, *SyncRequest) (*SyncReply, error) {
	return nil, ErrUnreachable
}
func (noPeers) Verify(context.Context, string, *VerifyRequest) (*VerifyReply, error) {
	return nil, ErrUnreachable
}
func (noPeers) Snapshot(context.Context, string, *SnapshotRequest) (*SnapshotPage, error) {
	return nil, ErrUnreachable
}
func (noPeers) Query(context.Context, string, *QueryRequest) (*QueryReply, error) {
	return nil, ErrUnreachable
}
