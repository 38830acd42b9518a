package scale

import (
	"context"
	"strings"
	"sync"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
)

// Message kinds counted per node.
const (
	msgSync = iota
	msgVerify
	msgVerifyList
	msgQuery
	msgSnapshot
	numMsgKinds
)

// Phases of a run: counts go to the phase the clock is in.
const (
	phaseLoad = iota
	phaseQuiet
	phaseChurn
	phaseRepair
	numPhases
)

// traffic is what one node sent in one phase: requests by kind, and bytes
// by kind (its requests plus its replies to others' requests).
type traffic struct {
	Msgs  [numMsgKinds]uint64
	Bytes [numMsgKinds]uint64
}

func (t traffic) msgs() (n uint64) {
	for _, v := range t.Msgs {
		n += v
	}
	return n
}

func (t traffic) bytes() (n uint64) {
	for _, v := range t.Bytes {
		n += v
	}
	return n
}

// meter counts the messages the engines send through the network.
type meter struct {
	mu     sync.Mutex
	phase  int
	sizing bool // compute byte sizes (off while loading: sizes cost time)
	index  map[string]int
	counts [numPhases][]traffic
}

func newMeter(names []string) *meter {
	m := &meter{index: make(map[string]int, len(names))}
	for i, n := range names {
		m.index[n] = i
	}
	for p := range m.counts {
		m.counts[p] = make([]traffic, len(names))
	}
	return m
}

func (m *meter) setPhase(p int, sizing bool) {
	m.mu.Lock()
	m.phase, m.sizing = p, sizing
	m.mu.Unlock()
}

func (m *meter) sizingOn() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sizing
}

func (m *meter) add(from, to string, kind, reqBytes, repBytes int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.counts[m.phase]
	f, t := m.index[from], m.index[to]
	c[f].Msgs[kind]++
	c[f].Bytes[kind] += uint64(reqBytes)
	c[t].Bytes[kind] += uint64(repBytes)
}

func (m *meter) phaseCounts(p int) []traffic {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]traffic(nil), m.counts[p]...)
}

// meteredTransport counts what a node sends and gives the receiver fresh
// copies of the strings it stores, as decoding a real message would: the
// engines never share an id, owner or service name, so their memory is
// what separate processes would use.
type meteredTransport struct {
	inner ephemeral.Transport
	from  string
	m     *meter
}

var _ ephemeral.Transport = (*meteredTransport)(nil)

func cloneStates(list []ephemeral.ClientState) []ephemeral.ClientState {
	out := make([]ephemeral.ClientState, len(list))
	for i := range list {
		c := &list[i]
		o := ephemeral.ClientState{ID: strings.Clone(c.ID), Owner: strings.Clone(c.Owner), Version: c.Version,
			Services: make([]ephemeral.ServiceInstances, len(c.Services))}
		for j := range c.Services {
			s := &c.Services[j]
			ins := make([]naming.Instance, len(s.Instances))
			for k := range s.Instances {
				in := s.Instances[k].Clone()
				in.IP, in.Cluster = strings.Clone(in.IP), strings.Clone(in.Cluster)
				ins[k] = in
			}
			o.Services[j] = ephemeral.ServiceInstances{Key: naming.ServiceKey{Namespace: strings.Clone(s.Key.Namespace),
				Group: strings.Clone(s.Key.Group), Service: strings.Clone(s.Key.Service)}, Instances: ins}
		}
		out[i] = o
	}
	return out
}

func (t *meteredTransport) Sync(ctx context.Context, to string, req *ephemeral.SyncRequest) (*ephemeral.SyncReply, error) {
	sent := &ephemeral.SyncRequest{From: req.From, Changes: cloneStates(req.Changes), Deletes: make([]ephemeral.Tombstone, len(req.Deletes))}
	for i, d := range req.Deletes {
		sent.Deletes[i] = ephemeral.Tombstone{ID: strings.Clone(d.ID), Owner: strings.Clone(d.Owner), Version: d.Version}
	}
	rep, err := t.inner.Sync(ctx, to, sent)
	if err != nil {
		return nil, err
	}
	rb, pb := 0, 0
	if t.m.sizingOn() {
		rb, pb = regentSyncSize(req), regentSyncReplySize(rep)
	}
	t.m.add(t.from, to, msgSync, rb, pb)
	return rep, nil
}

func (t *meteredTransport) Verify(ctx context.Context, to string, req *ephemeral.VerifyRequest) (*ephemeral.VerifyReply, error) {
	rep, err := t.inner.Verify(ctx, to, req)
	if err != nil {
		return nil, err
	}
	rb, pb := 0, 0
	if t.m.sizingOn() {
		rb, pb = regentVerifySize(req), regentVerifyReplySize(rep)
	}
	kind := msgVerify
	if req.List {
		kind = msgVerifyList
	}
	t.m.add(t.from, to, kind, rb, pb)
	return rep, nil
}

func (t *meteredTransport) Snapshot(ctx context.Context, to string, req *ephemeral.SnapshotRequest) (*ephemeral.SnapshotPage, error) {
	rep, err := t.inner.Snapshot(ctx, to, req)
	if err != nil {
		return nil, err
	}
	rb, pb := 0, 0
	if t.m.sizingOn() {
		rb, pb = regentSnapshotSize(req), regentSnapshotReplySize(rep)
	}
	t.m.add(t.from, to, msgSnapshot, rb, pb)
	out := *rep
	out.Clients = cloneStates(rep.Clients)
	return &out, nil
}

func (t *meteredTransport) Query(ctx context.Context, to string, req *ephemeral.QueryRequest) (*ephemeral.QueryReply, error) {
	rep, err := t.inner.Query(ctx, to, req)
	if err != nil {
		return nil, err
	}
	rb, pb := 0, 0
	if t.m.sizingOn() {
		rb, pb = regentQuerySize(req), regentQueryReplySize(rep)
	}
	t.m.add(t.from, to, msgQuery, rb, pb)
	return &ephemeral.QueryReply{Clients: cloneStates(rep.Clients)}, nil
}
