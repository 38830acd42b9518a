package membership

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// inputKind is the kind of an input to the dispatcher.
type inputKind int

const (
	// inJoin: memberlist's NotifyJoin (a node became alive).
	inJoin inputKind = iota + 1
	// inUpdate: memberlist's NotifyUpdate (an alive node changed meta).
	inUpdate
	// inLeave: memberlist's NotifyLeave (a node is dead or left).
	inLeave
	// inPoll: a snapshot of memberlist's node states, and a clock tick for
	// DeadRetention.
	inPoll
	// inBarrier: closes done once every earlier input is processed.
	inBarrier
)

// input is one item of the dispatcher's queue. Everything in it is a copy:
// nothing points into memberlist.
type input struct {
	kind inputKind
	// name, addr and meta describe the node of inJoin, inUpdate, inLeave.
	name string
	addr string
	meta []byte
	// left is set on an inLeave for a graceful leave.
	left bool
	// states is memberlist's view for inPoll (nil when it cannot be read).
	states []nodeStatus
	// done is closed by inBarrier.
	done chan struct{}
}

// entry is the table's record of one member.
type entry struct {
	member Member
	// rawMeta is the metadata as gossiped, to decode (and log a bad one)
	// only when it changes.
	rawMeta []byte
	// since is when the status last changed, for DeadRetention.
	since time.Time
}

// table is the membership as this node sees it, and the state machine that
// turns memberlist's notifications into Events. It has no goroutines, locks
// or clock: the Cluster's dispatcher owns it and passes the time in.
type table struct {
	self      string
	retention time.Duration
	logger    *slog.Logger
	entries   map[string]*entry
}

func newTable(self string, retention time.Duration, logger *slog.Logger) *table {
	return &table{self: self, retention: retention, logger: logger, entries: make(map[string]*entry)}
}

// apply processes one input and returns the events it causes, in order.
func (t *table) apply(in input, now time.Time) []Event {
	switch in.kind {
	case inJoin, inUpdate:
		return t.alive(in, now)
	case inLeave:
		return t.gone(in, now)
	case inPoll:
		evs := t.poll(in.states, now)
		t.expire(now)
		return evs
	}
	return nil
}

// alive handles NotifyJoin and NotifyUpdate: the node is alive now.
func (t *table) alive(in input, now time.Time) []Event {
	e, ok := t.entries[in.name]
	if !ok {
		e = &entry{member: Member{Name: in.name}}
		t.entries[in.name] = e
	}
	wasAlive := ok && e.member.Status == StatusAlive
	metaChanged := t.setMeta(e, in.meta)
	addrChanged := e.member.Addr != in.addr
	e.member.Addr = in.addr
	if !wasAlive {
		e.member.Status = StatusAlive
		e.since = now
		return []Event{{Type: EventJoin, Member: e.member}}
	}
	// memberlist calls NotifyUpdate only when the meta bytes changed.
	if in.kind == inUpdate || metaChanged || addrChanged {
		return []Event{{Type: EventUpdate, Member: e.member}}
	}
	return nil
}

// gone handles NotifyLeave.
func (t *table) gone(in input, now time.Time) []Event {
	status, typ := StatusDead, EventDead
	if in.left {
		status, typ = StatusLeft, EventLeft
	}
	e, ok := t.entries[in.name]
	if !ok {
		e = &entry{member: Member{Name: in.name, Addr: in.addr}}
		t.entries[in.name] = e
		t.setMeta(e, in.meta)
	} else if e.member.Status == status {
		return nil
	}
	e.member.Status = status
	e.since = now
	return []Event{{Type: typ, Member: e.member}}
}

// poll applies memberlist's states: it is the only source for suspect and
// for a refuted suspicion (suspect -> alive without new metadata), which
// memberlist reports through no callback. Everything else comes from the
// callbacks, which the snapshot is ordered with (see snapshot).
func (t *table) poll(states []nodeStatus, now time.Time) []Event {
	var evs []Event
	for _, s := range states {
		e, ok := t.entries[s.name]
		if !ok {
			continue
		}
		switch {
		case s.state == memberlist.StateSuspect && e.member.Status == StatusAlive:
			e.member.Status = StatusSuspect
			e.since = now
			evs = append(evs, Event{Type: EventSuspect, Member: e.member})
		case s.state == memberlist.StateAlive && e.member.Status == StatusSuspect:
			e.member.Status = StatusAlive
			e.since = now
			evs = append(evs, Event{Type: EventJoin, Member: e.member})
		}
	}
	return evs
}

// expire forgets dead and left members after the retention.
func (t *table) expire(now time.Time) {
	for name, e := range t.entries {
		if name == t.self {
			continue
		}
		if (e.member.Status == StatusDead || e.member.Status == StatusLeft) && now.Sub(e.since) >= t.retention {
			delete(t.entries, name)
			t.logger.Debug("forgetting departed member", "member", name, "status", e.member.Status.String())
		}
	}
}

// setMeta stores raw metadata and decodes it if it changed; it reports
// whether it changed. Undecodable metadata gives an empty Meta and a log.
func (t *table) setMeta(e *entry, raw []byte) bool {
	if e.rawMeta != nil && bytes.Equal(e.rawMeta, raw) {
		return false
	}
	e.rawMeta = bytes.Clone(raw)
	if e.rawMeta == nil {
		e.rawMeta = []byte{}
	}
	m, err := decodeMeta(raw)
	if err != nil {
		t.logger.Warn("cannot decode member meta; listing it with empty meta", "member", e.member.Name, "meta-len", len(raw), "err", err)
		m = Meta{}
	}
	changed := m != e.member.Meta
	e.member.Meta = m
	return changed
}

// members returns every member sorted by name.
func (t *table) members() []Member {
	out := make([]Member, 0, len(t.entries))
	for _, e := range t.entries {
		out = append(out, e.member)
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}
