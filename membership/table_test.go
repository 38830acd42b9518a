package membership

import (
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func metaBytes(t *testing.T, m Meta) []byte {
	t.Helper()
	b, err := encodeMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func eventTypes(evs []Event) []EventType {
	var out []EventType
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}

func TestTableTransitions(t *testing.T) {
	logs := newLogRecorder(t)
	tb := newTable("self", time.Minute, logs.logger())
	now := time.Unix(1000, 0)
	ma, mb := metaBytes(t, testMeta("a")), metaBytes(t, Meta{Role: "other"})
	type step struct {
		in     input
		after  time.Duration
		want   []EventType
		status Status // of "b" after the step; 0 = absent
	}
	steps := []step{
		{in: input{kind: inJoin, name: "b", addr: "1.2.3.4:7946", meta: ma}, want: []EventType{EventJoin}, status: StatusAlive},
		// A duplicate join changes nothing.
		{in: input{kind: inJoin, name: "b", addr: "1.2.3.4:7946", meta: ma}, status: StatusAlive},
		{in: input{kind: inUpdate, name: "b", addr: "1.2.3.4:7946", meta: mb}, want: []EventType{EventUpdate}, status: StatusAlive},
		{in: input{kind: inPoll, states: []nodeStatus{{"b", memberlist.StateSuspect}}}, want: []EventType{EventSuspect}, status: StatusSuspect},
		// Still suspect: no new event.
		{in: input{kind: inPoll, states: []nodeStatus{{"b", memberlist.StateSuspect}}}, status: StatusSuspect},
		// Refuted: alive again, reported as a join.
		{in: input{kind: inPoll, states: []nodeStatus{{"b", memberlist.StateAlive}}}, want: []EventType{EventJoin}, status: StatusAlive},
		{in: input{kind: inPoll, states: []nodeStatus{{"b", memberlist.StateSuspect}}}, want: []EventType{EventSuspect}, status: StatusSuspect},
		// Refuted with new metadata: one join carrying it.
		{in: input{kind: inUpdate, name: "b", addr: "1.2.3.4:7946", meta: ma}, want: []EventType{EventJoin}, status: StatusAlive},
		{in: input{kind: inLeave, name: "b", addr: "1.2.3.4:7946", meta: ma}, want: []EventType{EventDead}, status: StatusDead},
		// A stale poll cannot make a dead node suspect or alive.
		{in: input{kind: inPoll, states: []nodeStatus{{"b", memberlist.StateSuspect}}}, status: StatusDead},
		{in: input{kind: inPoll, states: []nodeStatus{{"b", memberlist.StateAlive}}}, status: StatusDead},
		{in: input{kind: inJoin, name: "b", addr: "1.2.3.5:7946", meta: ma}, want: []EventType{EventJoin}, status: StatusAlive},
		{in: input{kind: inLeave, name: "b", addr: "1.2.3.5:7946", meta: ma, left: true}, want: []EventType{EventLeft}, status: StatusLeft},
		{in: input{kind: inLeave, name: "b", addr: "1.2.3.5:7946", meta: ma, left: true}, status: StatusLeft},
		// Retained until DeadRetention has passed.
		{in: input{kind: inPoll}, after: 59 * time.Second, status: StatusLeft},
		{in: input{kind: inPoll}, after: time.Second, status: 0},
		{in: input{kind: inJoin, name: "b", addr: "1.2.3.5:7946", meta: ma}, want: []EventType{EventJoin}, status: StatusAlive},
	}
	for i, s := range steps {
		now = now.Add(s.after)
		evs := tb.apply(s.in, now)
		if got := eventTypes(evs); !slices.Equal(got, s.want) {
			t.Fatalf("step %d (%+v): events %v, want %v", i, s.in, got, s.want)
		}
		for _, e := range evs {
			if e.Member.Name != "b" || e.Member.Status == 0 {
				t.Fatalf("step %d: bad event member %+v", i, e.Member)
			}
		}
		e := tb.entries["b"]
		switch {
		case s.status == 0 && e != nil:
			t.Fatalf("step %d: b still listed as %v", i, e.member.Status)
		case s.status != 0 && (e == nil || e.member.Status != s.status):
			t.Fatalf("step %d: b is %+v, want %v", i, e, s.status)
		}
	}
}

func TestTableEventCarriesCurrentMember(t *testing.T) {
	tb := newTable("self", time.Minute, slog.New(slog.DiscardHandler))
	evs := tb.apply(input{kind: inJoin, name: "b", addr: "10.0.0.2:7946", meta: metaBytes(t, testMeta("b"))}, time.Now())
	want := Member{Name: "b", Addr: "10.0.0.2:7946", Meta: testMeta("b"), Status: StatusAlive}
	if len(evs) != 1 || evs[0].Member != want {
		t.Fatalf("got %+v, want one join of %+v", evs, want)
	}
	evs = tb.apply(input{kind: inUpdate, name: "b", addr: "10.0.0.2:7946", meta: metaBytes(t, Meta{Version: "2"})}, time.Now())
	if len(evs) != 1 || evs[0].Type != EventUpdate || evs[0].Member.Meta != (Meta{Version: "2"}) {
		t.Fatalf("update: got %+v", evs)
	}
}

func TestTableBadMetaKeepsMember(t *testing.T) {
	logs := newLogRecorder(t)
	tb := newTable("self", time.Minute, logs.logger())
	evs := tb.apply(input{kind: inJoin, name: "b", addr: "10.0.0.2:7946", meta: []byte("garbage")}, time.Now())
	if len(evs) != 1 || evs[0].Type != EventJoin || evs[0].Member.Meta != (Meta{}) {
		t.Fatalf("got %+v, want a join with empty meta", evs)
	}
	bad := func(r logRecord) bool {
		return r.msg == "cannot decode member meta; listing it with empty meta" && r.attrs["member"] == "b"
	}
	if n := logs.count(bad); n != 1 {
		t.Fatalf("%d bad-meta logs, want 1", n)
	}
	// The same bad bytes again are not decoded (and logged) again.
	tb.apply(input{kind: inLeave, name: "b", addr: "10.0.0.2:7946", meta: []byte("garbage")}, time.Now())
	if n := logs.count(bad); n != 1 {
		t.Fatalf("%d bad-meta logs after a second notification, want 1", n)
	}
	if m := tb.members(); len(m) != 1 || m[0].Status != StatusDead {
		t.Fatalf("members %+v", m)
	}
}

func TestTableNeverForgetsSelf(t *testing.T) {
	tb := newTable("self", 0, slog.New(slog.DiscardHandler))
	now := time.Now()
	tb.apply(input{kind: inJoin, name: "self", addr: "x:1"}, now)
	tb.apply(input{kind: inJoin, name: "b", addr: "x:2"}, now)
	tb.apply(input{kind: inLeave, name: "self", addr: "x:1", left: true}, now)
	tb.apply(input{kind: inLeave, name: "b", addr: "x:2"}, now)
	tb.apply(input{kind: inPoll}, now.Add(time.Hour))
	ms := tb.members()
	if len(ms) != 1 || ms[0].Name != "self" || ms[0].Status != StatusLeft {
		t.Fatalf("members %+v, want only self (left)", ms)
	}
}

func TestTableMembersSorted(t *testing.T) {
	tb := newTable("self", time.Minute, slog.New(slog.DiscardHandler))
	for _, n := range []string{"c", "a", "self", "b"} {
		tb.apply(input{kind: inJoin, name: n, addr: "x:1"}, time.Now())
	}
	var names []string
	for _, m := range tb.members() {
		names = append(names, m.Name)
	}
	if !slices.Equal(names, []string{"a", "b", "c", "self"}) {
		t.Fatalf("names %v", names)
	}
}

func TestStrings(t *testing.T) {
	for s, want := range map[Status]string{StatusAlive: "alive", StatusSuspect: "suspect", StatusDead: "dead", StatusLeft: "left", 0: "Status(0)"} {
		if s.String() != want {
			t.Errorf("%d.String() = %q, want %q", int(s), s.String(), want)
		}
	}
	for e, want := range map[EventType]string{EventJoin: "join", EventUpdate: "update", EventSuspect: "suspect", EventDead: "dead", EventLeft: "left", 9: "EventType(9)"} {
		if e.String() != want {
			t.Errorf("%d.String() = %q, want %q", int(e), e.String(), want)
		}
	}
}

func TestInputQueue(t *testing.T) {
	q := newInputQueue()
	for i := range 10000 { // far beyond any channel buffer: push never blocks
		q.push(input{kind: inPoll, name: string(rune('a' + i%26))})
	}
	select {
	case <-q.ready:
	default:
		t.Fatal("no ready token after pushes")
	}
	items := q.take()
	if len(items) != 10000 || items[0].name != "a" || items[27].name != "b" {
		t.Fatalf("took %d items, order broken", len(items))
	}
	q.close()
	q.push(input{kind: inPoll})
	if len(q.take()) != 0 {
		t.Fatal("push after close was kept")
	}
}
