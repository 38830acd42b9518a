package membership

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// waitFor polls cond until it returns nil, failing the test with cond's last
// error after timeout.
func waitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logRecorder is a slog.Handler that records every record (at any level)
// and writes those at info and above through t.Log until the test ends.
type logRecorder struct {
	mu   sync.Mutex
	t    testing.TB
	done bool // set when the test ends: no t.Log afterwards
	recs []logRecord
}

type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func newLogRecorder(t testing.TB) *logRecorder {
	r := &logRecorder{t: t}
	t.Cleanup(func() {
		r.mu.Lock()
		r.done = true
		r.mu.Unlock()
	})
	return r
}

func (r *logRecorder) logger() *slog.Logger { return slog.New(&recHandler{rec: r}) }

// count returns the number of records matching f.
func (r *logRecorder) count(f func(logRecord) bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.recs {
		if f(rec) {
			n++
		}
	}
	return n
}

type recHandler struct {
	rec   *logRecorder
	attrs []slog.Attr
}

func (h *recHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *recHandler) Handle(_ context.Context, r slog.Record) error {
	attrs := make(map[string]string)
	var sb strings.Builder
	add := func(a slog.Attr) {
		attrs[a.Key] = a.Value.String()
		fmt.Fprintf(&sb, " %s=%q", a.Key, a.Value.String())
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(func(a slog.Attr) bool { add(a); return true })
	h.rec.mu.Lock()
	defer h.rec.mu.Unlock()
	h.rec.recs = append(h.rec.recs, logRecord{level: r.Level, msg: r.Message, attrs: attrs})
	if !h.rec.done && r.Level >= slog.LevelInfo {
		h.rec.t.Logf("%s %s%s", r.Level, r.Message, sb.String())
	}
	return nil
}

func (h *recHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &recHandler{rec: h.rec, attrs: append(slices.Clip(h.attrs), as...)}
}

func (h *recHandler) WithGroup(string) slog.Handler { return h }

// eventRecorder is a Listener that records events and notices concurrent
// calls.
type eventRecorder struct {
	mu         sync.Mutex
	evs        []Event
	inflight   atomic.Int32
	concurrent atomic.Bool
}

func (r *eventRecorder) MemberChanged(e Event) {
	if r.inflight.Add(1) > 1 {
		r.concurrent.Store(true)
	}
	defer r.inflight.Add(-1)
	time.Sleep(time.Millisecond) // widen the window for a concurrent call
	r.mu.Lock()
	r.evs = append(r.evs, e)
	r.mu.Unlock()
}

// events returns the events about member name, in order.
func (r *eventRecorder) events(name string) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Event
	for _, e := range r.evs {
		if e.Member.Name == name {
			out = append(out, e)
		}
	}
	return out
}

// types returns the types of the events about member name, in order.
func (r *eventRecorder) types(name string) []EventType {
	var out []EventType
	for _, e := range r.events(name) {
		out = append(out, e.Type)
	}
	return out
}

// waitEvent waits for an event of type typ about member name and returns
// the first one.
func (r *eventRecorder) waitEvent(t testing.TB, timeout time.Duration, typ EventType, name string) Event {
	t.Helper()
	var found Event
	waitFor(t, timeout, func() error {
		for _, e := range r.events(name) {
			if e.Type == typ {
				found = e
				return nil
			}
		}
		return fmt.Errorf("no %v event for %s; got %v", typ, name, r.types(name))
	})
	return found
}

// waitEvents waits until observer o has received exactly the events want
// about member name (a listener may lag behind Members).
func waitEvents(t testing.TB, timeout time.Duration, o *node, name string, want ...EventType) {
	t.Helper()
	waitFor(t, timeout, func() error {
		if got := o.events.types(name); !slices.Equal(got, want) {
			return fmt.Errorf("%s: events for %s %v, want %v", o.name, name, got, want)
		}
		return nil
	})
}

// waitEventsMatch waits until the events observer o received about member
// name start with prefix and end with last, and fails if any event after
// the prefix has one of the forbidden types.
func waitEventsMatch(t testing.TB, timeout time.Duration, o *node, name string, prefix []EventType, last EventType, forbidden ...EventType) {
	t.Helper()
	waitFor(t, timeout, func() error {
		got := o.events.types(name)
		if len(got) <= len(prefix) || !slices.Equal(got[:len(prefix)], prefix) || got[len(got)-1] != last {
			return fmt.Errorf("%s: events for %s %v, want %v, ..., %v", o.name, name, got, prefix, last)
		}
		return nil
	})
	got := o.events.types(name)
	for _, f := range forbidden {
		if slices.Contains(got[len(prefix):], f) {
			t.Errorf("%s: events for %s %v include %v", o.name, name, got, f)
		}
	}
}

// node is a started Cluster with its recorders.
type node struct {
	*Cluster
	events *eventRecorder
	logs   *logRecorder
}

func testMeta(name string) Meta {
	return Meta{GRPCAddr: name + ".grpc:9000", PeerAddr: name + ".peer:9001", RaftAddr: name + ".raft:9002", Version: "1.2.3", Role: "voter"}
}

// testConfig is a loopback configuration with the local profile and quick
// retries and polls.
func testConfig(name string, logs *logRecorder) Config {
	cfg := DefaultLocalConfig()
	cfg.Name = name
	cfg.Meta = testMeta(name)
	cfg.RetryJoinInterval = 50 * time.Millisecond
	cfg.StatePollInterval = 50 * time.Millisecond
	cfg.Logger = logs.logger()
	return cfg
}

// fastFailureDetection shortens memberlist's failure detection beyond the
// local profile: a failed node is suspect for at least 600 ms (3 probe
// intervals), then dead.
func fastFailureDetection(c *Config) {
	c.tune = func(mc *memberlist.Config) {
		mc.ProbeInterval = 200 * time.Millisecond
		mc.ProbeTimeout = 100 * time.Millisecond
		mc.GossipInterval = 50 * time.Millisecond
		mc.SuspicionMult = 3
		mc.TCPTimeout = 500 * time.Millisecond
	}
}

// startNode starts a node named name, subscribes an event recorder and
// shuts the node down when the test ends. mods adjust the configuration.
func startNode(t testing.TB, name string, mods ...func(*Config)) *node {
	t.Helper()
	logs := newLogRecorder(t)
	cfg := testConfig(name, logs)
	for _, m := range mods {
		m(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", name, err)
	}
	n := &node{Cluster: c, events: &eventRecorder{}, logs: logs}
	c.Subscribe(n.events)
	t.Cleanup(func() {
		if err := c.Shutdown(); err != nil {
			t.Errorf("Shutdown(%s): %v", name, err)
		}
		if n.events.concurrent.Load() {
			t.Errorf("%s: listener called concurrently", name)
		}
	})
	return n
}

// join makes n join through seed and checks the call.
func join(t testing.TB, n *node, seed *node) {
	t.Helper()
	cnt, err := n.Join([]string{seed.Local().Addr})
	if err != nil || cnt != 1 {
		t.Fatalf("%s joining %s: contacted %d, err %v", n.name, seed.name, cnt, err)
	}
}

// statusOf returns how n sees member name ("absent" if not listed).
func statusOf(n *node, name string) string {
	for _, m := range n.Members() {
		if m.Name == name {
			return m.Status.String()
		}
	}
	return "absent"
}

// waitStatus waits until every observer lists member name with status.
func waitStatus(t testing.TB, timeout time.Duration, name string, status Status, observers ...*node) {
	t.Helper()
	waitFor(t, timeout, func() error {
		for _, o := range observers {
			if got := statusOf(o, name); got != status.String() {
				return fmt.Errorf("%s sees %s as %s, want %s", o.name, name, got, status)
			}
		}
		return nil
	})
}

// freeAddr returns a loopback host:port that was free for TCP and UDP a
// moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	for range 10 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		u, uerr := net.ListenPacket("udp", addr)
		_ = l.Close()
		if uerr == nil {
			_ = u.Close()
			return addr
		}
	}
	t.Fatal("no free port for TCP and UDP")
	return ""
}
