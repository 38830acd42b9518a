package ephemeral

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// InmemNetwork connects Distro engines in one process, with no sockets.
// Tests drop, delay, reorder and partition messages on command. A message
// that is delayed stays in flight after its sender gave up waiting, as on a
// real network, so a late message can arrive after a newer one.
type InmemNetwork struct {
	// mu guards every field.
	mu       sync.Mutex
	nodes    map[string]Handler
	group    map[string]int // partition group per node; nodes in different groups cannot talk
	dropRate float64
	minDelay time.Duration
	maxDelay time.Duration
	rng      *rand.Rand
	filter   func(from, to string, req any) bool
	counts   NetCounts
	inflight sync.WaitGroup
}

// NetCounts counts messages by kind.
type NetCounts struct {
	Sync, Verify, VerifyList, Snapshot, Query, Dropped uint64
}

// NewInmemNetwork returns an empty network whose random choices (drops,
// delays) come from seed.
func NewInmemNetwork(seed uint64) *InmemNetwork {
	return &InmemNetwork{
		nodes: make(map[string]Handler),
		group: make(map[string]int),
		rng:   rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
	}
}

// Register attaches a node's handler; a node without one is unreachable.
func (n *InmemNetwork) Register(name string, h Handler) {
	n.mu.Lock()
	n.nodes[name] = h
	n.mu.Unlock()
}

// Unregister detaches a node (it crashed): calls to it fail.
func (n *InmemNetwork) Unregister(name string) {
	n.mu.Lock()
	delete(n.nodes, name)
	n.mu.Unlock()
}

// Partition splits the nodes into groups that cannot reach each other;
// nodes not named form one more group together.
func (n *InmemNetwork) Partition(groups ...[]string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.group)
	for i, g := range groups {
		for _, name := range g {
			n.group[name] = i + 1
		}
	}
}

// Heal undoes Partition.
func (n *InmemNetwork) Heal() {
	n.mu.Lock()
	clear(n.group)
	n.mu.Unlock()
}

// SetDrop loses each message (request or reply) with probability p.
func (n *InmemNetwork) SetDrop(p float64) {
	n.mu.Lock()
	n.dropRate = p
	n.mu.Unlock()
}

// SetDelay delays each message by a random time in [lo, hi], which also
// reorders messages between different senders.
func (n *InmemNetwork) SetDelay(lo, hi time.Duration) {
	n.mu.Lock()
	n.minDelay, n.maxDelay = lo, hi
	n.mu.Unlock()
}

// SetFilter installs a hook that sees every request (a *SyncRequest,
// *VerifyRequest, ...) and drops it when it returns false. nil removes it.
func (n *InmemNetwork) SetFilter(f func(from, to string, req any) bool) {
	n.mu.Lock()
	n.filter = f
	n.mu.Unlock()
}

// Counts returns the messages delivered so far, by kind.
func (n *InmemNetwork) Counts() NetCounts {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.counts
}

// Wait blocks until no message is in flight.
func (n *InmemNetwork) Wait() { n.inflight.Wait() }

// Transport returns the transport a node named from sends through.
func (n *InmemNetwork) Transport(from string) Transport { return &inmemTransport{net: n, from: from} }

type inmemTransport struct {
	net  *InmemNetwork
	from string
}

var _ Transport = (*inmemTransport)(nil)

type plan struct {
	delay      time.Duration
	dropReq    bool
	dropReply  bool
	reachable  bool
	handler    Handler
	filteredIn bool
}

func (n *InmemNetwork) plan(from, to string, req any) plan {
	n.mu.Lock()
	defer n.mu.Unlock()
	p := plan{}
	h, ok := n.nodes[to]
	p.handler = h
	p.reachable = ok && n.group[from] == n.group[to]
	if n.maxDelay > 0 {
		p.delay = n.minDelay
		if span := n.maxDelay - n.minDelay; span > 0 {
			p.delay += time.Duration(n.rng.Int64N(int64(span) + 1))
		}
	}
	if n.dropRate > 0 {
		p.dropReq = n.rng.Float64() < n.dropRate
		p.dropReply = !p.dropReq && n.rng.Float64() < n.dropRate
	}
	if n.filter != nil && !n.filter(from, to, req) {
		p.dropReq = true
	}
	if !p.reachable || p.dropReq {
		n.counts.Dropped++
		return p
	}
	switch r := req.(type) {
	case *SyncRequest:
		n.counts.Sync++
	case *VerifyRequest:
		if r.List {
			n.counts.VerifyList++
		} else {
			n.counts.Verify++
		}
	case *SnapshotRequest:
		n.counts.Snapshot++
	case *QueryRequest:
		n.counts.Query++
	}
	return p
}

type result struct {
	rep any
	err error
}

// deliver runs call on the receiving side after the planned delay, in its
// own goroutine so that the message stays in flight if the sender stops
// waiting.
func deliver[Req any, Rep any](ctx context.Context, t *inmemTransport, to string, req Req, call func(Handler, Req) (Rep, error)) (Rep, error) {
	var zero Rep
	p := t.net.plan(t.from, to, req)
	if !p.reachable {
		return zero, fmt.Errorf("%w: %s -> %s", ErrUnreachable, t.from, to)
	}
	ch := make(chan result, 1)
	t.net.inflight.Add(1)
	go func() {
		defer t.net.inflight.Done()
		if p.delay > 0 {
			time.Sleep(p.delay)
		}
		if p.dropReq {
			ch <- result{err: fmt.Errorf("%w: request lost", ErrUnreachable)}
			return
		}
		// The receiver may have crashed or been cut off meanwhile.
		t.net.mu.Lock()
		h, ok := t.net.nodes[to]
		ok = ok && h == p.handler && t.net.group[t.from] == t.net.group[to]
		t.net.mu.Unlock()
		if !ok {
			ch <- result{err: fmt.Errorf("%w: %s -> %s", ErrUnreachable, t.from, to)}
			return
		}
		rep, err := call(h, req)
		if p.dropReply {
			ch <- result{err: fmt.Errorf("%w: reply lost", ErrUnreachable)}
			return
		}
		ch <- result{rep: rep, err: err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return zero, r.err
		}
		return r.rep.(Rep), nil
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

func (t *inmemTransport) Sync(ctx context.Context, to string, req *SyncRequest) (*SyncReply, error) {
	return deliver(ctx, t, to, req, func(h Handler, r *SyncRequest) (*SyncReply, error) { return h.HandleSync(context.Background(), r) })
}

func (t *inmemTransport) Verify(ctx context.Context, to string, req *VerifyRequest) (*VerifyReply, error) {
	return deliver(ctx, t, to, req, func(h Handler, r *VerifyRequest) (*VerifyReply, error) {
		return h.HandleVerify(context.Background(), r)
	})
}

func (t *inmemTransport) Snapshot(ctx context.Context, to string, req *SnapshotRequest) (*SnapshotPage, error) {
	return deliver(ctx, t, to, req, func(h Handler, r *SnapshotRequest) (*SnapshotPage, error) {
		return h.HandleSnapshot(context.Background(), r)
	})
}

func (t *inmemTransport) Query(ctx context.Context, to string, req *QueryRequest) (*QueryReply, error) {
	return deliver(ctx, t, to, req, func(h Handler, r *QueryRequest) (*QueryReply, error) { return h.HandleQuery(context.Background(), r) })
}
