package membership

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// checkAllAlive checks that every observer lists exactly the nodes, all
// alive, with their addresses and metadata.
func checkAllAlive(observers []*node, nodes []*node) error {
	var want []Member
	for _, n := range nodes {
		want = append(want, Member{Name: n.name, Addr: n.Local().Addr, Meta: testMeta(n.name), Status: StatusAlive})
	}
	slices.SortFunc(want, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	for _, o := range observers {
		if got := o.Members(); !slices.Equal(got, want) {
			return fmt.Errorf("%s lists %+v, want %+v", o.name, got, want)
		}
		for _, w := range want {
			if got, ok := o.Member(w.Name); !ok || got != w {
				return fmt.Errorf("%s: Member(%s) = %+v, %v; want %+v", o.name, w.Name, got, ok, w)
			}
		}
		if got, ok := o.Member("nobody"); ok {
			return fmt.Errorf("%s: Member(nobody) = %+v", o.name, got)
		}
	}
	return nil
}

func TestThreeNodesJoinThroughOneSeed(t *testing.T) {
	t.Parallel()
	a, b, c := startNode(t, "a"), startNode(t, "b"), startNode(t, "c")
	if l := a.Local(); l.Status != StatusAlive || l.Meta != testMeta("a") || l.Name != "a" {
		t.Fatalf("local before join: %+v", l)
	}
	if ms := a.Members(); len(ms) != 1 || ms[0].Name != "a" {
		t.Fatalf("members before join: %+v", ms)
	}
	join(t, b, a)
	join(t, c, a)
	all := []*node{a, b, c}
	waitFor(t, 10*time.Second, func() error { return checkAllAlive(all, all) })

	for _, o := range all {
		var peers []string
		for _, p := range o.Peers() {
			peers = append(peers, p.Name)
		}
		for _, n := range all {
			if n == o {
				if got := o.events.events(n.name); len(got) != 0 {
					t.Errorf("%s got events about itself: %+v", o.name, got)
				}
				if slices.Contains(peers, n.name) {
					t.Errorf("%s lists itself among peers %v", o.name, peers)
				}
				continue
			}
			if !slices.Contains(peers, n.name) {
				t.Errorf("%s peers %v lack %s", o.name, peers, n.name)
			}
			ev := o.events.waitEvent(t, 5*time.Second, EventJoin, n.name)
			if ev.Member.Meta != testMeta(n.name) || ev.Member.Status != StatusAlive || ev.Member.Addr != n.Local().Addr {
				t.Errorf("%s: join event for %s carries %+v", o.name, n.name, ev.Member)
			}
		}
	}
}

// TestMockNetwork runs three nodes on memberlist's in-process MockNetwork:
// join, metadata update and leave, without sockets.
func TestMockNetwork(t *testing.T) {
	t.Parallel()
	var mn memberlist.MockNetwork
	names := []string{"m1", "m2", "m3"}
	transports := map[string]memberlist.Transport{}
	for _, n := range names { // all before any node runs: MockNetwork is not safe for concurrent use
		transports[n] = mn.NewTransport(n)
	}
	var nodes []*node
	for _, n := range names {
		nodes = append(nodes, startNode(t, n, func(c *Config) { c.Transport = transports[n]; c.BindAddr = "" }))
	}
	m1, m2, m3 := nodes[0], nodes[1], nodes[2]
	if !slices.Equal([]string{m1.Local().Addr, m2.Local().Addr, m3.Local().Addr}, []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}) {
		t.Fatalf("mock addresses: %s %s %s", m1.Local().Addr, m2.Local().Addr, m3.Local().Addr)
	}
	join(t, m2, m1)
	join(t, m3, m1)
	waitFor(t, 10*time.Second, func() error { return checkAllAlive(nodes, nodes) })

	newMeta := Meta{GRPCAddr: "m2.grpc:9100", Version: "2.0.0", Role: "learner"}
	if err := m2.UpdateMeta(newMeta, 5*time.Second); err != nil {
		t.Fatalf("UpdateMeta: %v", err)
	}
	if got := m2.Local().Meta; got != newMeta {
		t.Fatalf("local meta right after UpdateMeta: %+v", got)
	}
	for _, o := range []*node{m1, m3} {
		ev := o.events.waitEvent(t, 5*time.Second, EventUpdate, "m2")
		if ev.Member.Meta != newMeta || ev.Member.Status != StatusAlive {
			t.Errorf("%s: update event %+v", o.name, ev.Member)
		}
	}
	waitFor(t, 5*time.Second, func() error {
		for _, o := range nodes {
			for _, m := range o.Members() {
				if m.Name == "m2" && m.Meta != newMeta {
					return fmt.Errorf("%s lists m2 with %+v", o.name, m.Meta)
				}
			}
		}
		return nil
	})

	if err := m3.Leave(5 * time.Second); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	waitStatus(t, 5*time.Second, "m3", StatusLeft, m1, m2, m3)
	m1.events.waitEvent(t, 5*time.Second, EventLeft, "m3")
}

func TestUpdateMetaErrors(t *testing.T) {
	t.Parallel()
	a := startNode(t, "a")
	big := Meta{Role: string(bytes.Repeat([]byte("x"), memberlist.MetaMaxSize))}
	if err := a.UpdateMeta(big, time.Second); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("oversized meta: %v", err)
	}
	if a.Local().Meta != testMeta("a") {
		t.Fatalf("oversized meta was applied: %+v", a.Local().Meta)
	}
	// Alone: nothing to broadcast to, returns at once.
	if err := a.UpdateMeta(Meta{Role: "r"}, 0); err != nil {
		t.Fatalf("UpdateMeta alone: %v", err)
	}
	if m := a.Members(); len(m) != 1 || m[0].Meta != (Meta{Role: "r"}) {
		t.Fatalf("members %+v", m)
	}
	a.barrier() // memberlist's NotifyUpdate about a has been dispatched
	if got := a.events.events("a"); len(got) != 0 {
		t.Fatalf("listener got events about the local node: %+v", got)
	}
}

func TestRetryJoinWaitsForSeed(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startNode(t, "b")
	done := make(chan error, 1)
	go func() { done <- b.RetryJoin(context.Background(), []string{addr}) }()

	// Let some attempts fail while the seed does not exist yet.
	failed := func(r logRecord) bool { return r.msg == "join attempt failed; will retry" }
	waitFor(t, 5*time.Second, func() error {
		if n := b.logs.count(failed); n < 3 {
			return fmt.Errorf("%d failed attempts", n)
		}
		return nil
	})
	select {
	case err := <-done:
		t.Fatalf("RetryJoin returned before the seed existed: %v", err)
	default:
	}

	a := startNode(t, "a", func(c *Config) { c.BindAddr = addr })
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RetryJoin: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("RetryJoin did not return after the seed started")
	}
	waitFor(t, 5*time.Second, func() error { return checkAllAlive([]*node{a, b}, []*node{a, b}) })
}

func TestRetryJoinContext(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t) // nothing listens there
	b := startNode(t, "b")

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	err := b.RetryJoin(ctx, []string{addr})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("RetryJoin after cancel: %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("RetryJoin took %v to notice the cancel", d)
	}

	ctx, cancel2 := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel2()
	if err := b.RetryJoin(ctx, []string{addr}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RetryJoin after deadline: %v, want context.DeadlineExceeded", err)
	}
}

func TestRetryJoinMax(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startNode(t, "b", func(c *Config) { c.RetryJoinMax = 3; c.RetryJoinInterval = 20 * time.Millisecond })
	err := b.RetryJoin(context.Background(), []string{addr})
	if !errors.Is(err, ErrJoinFailed) {
		t.Fatalf("RetryJoin: %v, want ErrJoinFailed", err)
	}
	retries := b.logs.count(func(r logRecord) bool { return r.msg == "join attempt failed; will retry" })
	gaveUp := b.logs.count(func(r logRecord) bool { return r.msg == "join attempt failed; giving up" && r.attrs["attempt"] == "3" })
	if retries != 2 || gaveUp != 1 {
		t.Fatalf("%d retries and %d give-ups logged, want 2 and 1", retries, gaveUp)
	}
	if _, err := b.Join(nil); !errors.Is(err, ErrJoinFailed) {
		t.Fatalf("Join without seeds: %v", err)
	}
	if err := b.RetryJoin(context.Background(), nil); !errors.Is(err, ErrJoinFailed) {
		t.Fatalf("RetryJoin without seeds: %v", err)
	}
}

func TestGracefulLeave(t *testing.T) {
	t.Parallel()
	a := startNode(t, "a")
	b := startNode(t, "b")
	c := startNode(t, "c")
	join(t, b, a)
	join(t, c, a)
	waitFor(t, 10*time.Second, func() error { return checkAllAlive([]*node{a, b, c}, []*node{a, b, c}) })

	if err := c.Leave(5 * time.Second); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	if got := c.Local().Status; got != StatusLeft {
		t.Fatalf("c's own status right after Leave: %v", got)
	}
	waitStatus(t, 5*time.Second, "c", StatusLeft, a, b)
	for _, o := range []*node{a, b} {
		ev := o.events.waitEvent(t, 5*time.Second, EventLeft, "c")
		if ev.Member.Status != StatusLeft || ev.Member.Meta != testMeta("c") {
			t.Errorf("%s: left event %+v", o.name, ev.Member)
		}
		if slices.ContainsFunc(o.Peers(), func(m Member) bool { return m.Name == "c" }) {
			t.Errorf("%s still has c among its peers", o.name)
		}
	}
	c.barrier() // memberlist's NotifyLeave about c has been dispatched
	if got := c.events.events("c"); len(got) != 0 {
		t.Fatalf("c's listener got events about c itself: %+v", got)
	}

	if _, err := c.Join([]string{a.Local().Addr}); !errors.Is(err, ErrLeft) {
		t.Fatalf("Join after Leave: %v, want ErrLeft", err)
	}
	if err := c.UpdateMeta(Meta{}, time.Second); !errors.Is(err, ErrLeft) {
		t.Fatalf("UpdateMeta after Leave: %v, want ErrLeft", err)
	}
	if err := c.Leave(time.Second); err != nil {
		t.Fatalf("second Leave: %v", err)
	}
	if err := c.Shutdown(); err != nil {
		t.Fatal(err)
	}

	// A node that left can come back under its name from a new address.
	c2 := startNode(t, "c")
	join(t, c2, a)
	waitStatus(t, 5*time.Second, "c", StatusAlive, a, b, c2)
	for _, o := range []*node{a, b} {
		// Stale gossip about the old c may mark the new one left for a
		// moment, until it refutes: the events end with a join, and a
		// graceful leave is never reported as a failure.
		waitEventsMatch(t, 5*time.Second, o, "c", []EventType{EventJoin, EventLeft}, EventJoin, EventDead, EventSuspect)
	}
}

func TestCrashDetectedAndRejoin(t *testing.T) {
	t.Parallel()
	a := startNode(t, "a", fastFailureDetection)
	b := startNode(t, "b", fastFailureDetection)
	c := startNode(t, "c", fastFailureDetection)
	join(t, b, a)
	join(t, c, a)
	waitFor(t, 10*time.Second, func() error { return checkAllAlive([]*node{a, b, c}, []*node{a, b, c}) })
	cAddr := c.Local().Addr

	// Seen suspect in Members at some point, then dead.
	sawSuspect := make(chan struct{})
	go func() {
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			if statusOf(a, "c") == "suspect" {
				close(sawSuspect)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()

	if err := c.Shutdown(); err != nil { // no Leave: a crash as far as the others can tell
		t.Fatal(err)
	}
	waitStatus(t, 15*time.Second, "c", StatusDead, a, b)
	select {
	case <-sawSuspect:
	case <-time.After(time.Second):
		t.Error("a never listed c as suspect")
	}
	for _, o := range []*node{a, b} {
		waitEvents(t, 5*time.Second, o, "c", EventJoin, EventSuspect, EventDead)
		if ev := o.events.events("c"); ev[len(ev)-1].Member.Meta != testMeta("c") {
			t.Errorf("%s: dead event lost the meta: %+v", o.name, ev[len(ev)-1].Member)
		}
		if slices.ContainsFunc(o.Peers(), func(m Member) bool { return m.Name == "c" }) {
			t.Errorf("%s still has c among its peers", o.name)
		}
	}

	// The node restarts at the same address and is alive again.
	c2 := startNode(t, "c", fastFailureDetection, func(cfg *Config) { cfg.BindAddr = cAddr })
	join(t, c2, a)
	waitStatus(t, 10*time.Second, "c", StatusAlive, a, b, c2)
	for _, o := range []*node{a, b} {
		// Stale gossip about the old c may mark the new one dead for a
		// moment, until it refutes: the events end with a join.
		waitEventsMatch(t, 5*time.Second, o, "c", []EventType{EventJoin, EventSuspect, EventDead}, EventJoin)
	}
}

func TestDeadRetention(t *testing.T) {
	t.Parallel()
	retention := func(c *Config) { c.DeadRetention = 300 * time.Millisecond }
	a := startNode(t, "a", fastFailureDetection, retention)
	b := startNode(t, "b", fastFailureDetection, retention)
	join(t, b, a)
	waitStatus(t, 5*time.Second, "b", StatusAlive, a)
	if err := b.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, 5*time.Second, "b", StatusLeft, a)
	left := time.Now()
	waitFor(t, 5*time.Second, func() error {
		if s := statusOf(a, "b"); s != "absent" {
			return fmt.Errorf("b still listed as %s", s)
		}
		return nil
	})
	if d := time.Since(left); d < 250*time.Millisecond {
		t.Fatalf("b dropped after %v, before the 300ms retention", d)
	}
}

func TestEncryption(t *testing.T) {
	t.Parallel()
	key1 := bytes.Repeat([]byte{1}, 32)
	key2 := bytes.Repeat([]byte{2}, 16)
	withKey := func(k []byte) func(*Config) { return func(c *Config) { c.SecretKey = k } }
	a := startNode(t, "a", withKey(key1))
	b := startNode(t, "b", withKey(key1))
	join(t, b, a)
	waitFor(t, 5*time.Second, func() error { return checkAllAlive([]*node{a, b}, []*node{a, b}) })

	wrong := startNode(t, "wrong", withKey(key2))
	if n, err := wrong.Join([]string{a.Local().Addr}); !errors.Is(err, ErrJoinFailed) || n != 0 {
		t.Fatalf("join with another key: contacted %d, err %v; want ErrJoinFailed", n, err)
	}
	plain := startNode(t, "plain")
	if n, err := plain.Join([]string{a.Local().Addr}); !errors.Is(err, ErrJoinFailed) || n != 0 {
		t.Fatalf("join without a key: contacted %d, err %v; want ErrJoinFailed", n, err)
	}
	// The other way round: an encrypted node cannot join a plain one.
	if n, err := wrong.Join([]string{plain.Local().Addr}); !errors.Is(err, ErrJoinFailed) || n != 0 {
		t.Fatalf("encrypted joining plain: contacted %d, err %v; want ErrJoinFailed", n, err)
	}
	for _, o := range []*node{a, b} {
		if ms := o.Members(); len(ms) != 2 {
			t.Errorf("%s lists %+v, want only a and b", o.name, ms)
		}
	}
	if ms := wrong.Members(); len(ms) != 1 {
		t.Errorf("wrong lists %+v", ms)
	}
}

func TestNameConflict(t *testing.T) {
	t.Parallel()
	a := startNode(t, "a")
	b := startNode(t, "b")
	join(t, b, a)
	waitStatus(t, 5*time.Second, "b", StatusAlive, a)

	impostor := startNode(t, "b", func(c *Config) { c.RetryJoinMax = 5 })
	if _, err := impostor.Join([]string{a.Local().Addr}); !errors.Is(err, ErrNameConflict) {
		t.Fatalf("join under a taken name: %v, want ErrNameConflict", err)
	}
	// RetryJoin gives up at once: retrying cannot help.
	if err := impostor.RetryJoin(context.Background(), []string{a.Local().Addr}); !errors.Is(err, ErrNameConflict) {
		t.Fatalf("RetryJoin under a taken name: %v, want ErrNameConflict", err)
	}
	if got := a.Members(); len(got) != 2 || got[1].Addr != b.Local().Addr {
		t.Fatalf("a lists %+v; the original b must stay", got)
	}
}

func TestBindFailure(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	logs := newLogRecorder(t)
	cfg := testConfig("n", logs)
	cfg.BindAddr = l.Addr().String()
	if c, err := New(cfg); !errors.Is(err, ErrBind) {
		if c != nil {
			_ = c.Shutdown()
		}
		t.Fatalf("New on a used port: %v, want ErrBind", err)
	}
}

// rawMetaDelegate is a memberlist.Delegate gossiping fixed metadata.
type rawMetaDelegate struct{ meta []byte }

func (d rawMetaDelegate) NodeMeta(int) []byte             { return d.meta }
func (d rawMetaDelegate) NotifyMsg([]byte)                {}
func (d rawMetaDelegate) GetBroadcasts(int, int) [][]byte { return nil }
func (d rawMetaDelegate) LocalState(bool) []byte          { return nil }
func (d rawMetaDelegate) MergeRemoteState([]byte, bool)   {}

func TestRemoteBadMeta(t *testing.T) {
	t.Parallel()
	a := startNode(t, "a")
	mc := memberlist.DefaultLocalConfig()
	mc.Name = "foreign"
	mc.BindAddr = "127.0.0.1"
	mc.BindPort = 0
	mc.Logger = log.New(io.Discard, "", 0)
	mc.Delegate = rawMetaDelegate{meta: []byte{0x7f, 0x00, 0xff}}
	ml, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	defer ml.Shutdown()
	if _, err := ml.Join([]string{a.Local().Addr}); err != nil {
		t.Fatal(err)
	}
	ev := a.events.waitEvent(t, 5*time.Second, EventJoin, "foreign")
	wantAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ml.LocalNode().Port)))
	if ev.Member.Meta != (Meta{}) || ev.Member.Addr != wantAddr || ev.Member.Status != StatusAlive {
		t.Fatalf("foreign node listed as %+v", ev.Member)
	}
	if n := a.logs.count(func(r logRecord) bool {
		return r.attrs["member"] == "foreign" && r.msg == "cannot decode member meta; listing it with empty meta"
	}); n != 1 {
		t.Fatalf("%d bad-meta logs, want 1", n)
	}
}

func TestShutdown(t *testing.T) {
	t.Parallel()
	a := startNode(t, "a")
	b := startNode(t, "b")
	join(t, b, a)
	waitStatus(t, 5*time.Second, "b", StatusAlive, a)

	// A cancelled listener hears nothing more.
	cancelled := &eventRecorder{}
	cancel := a.Subscribe(cancelled)
	cancel()
	cancel() // idempotent

	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := b.Shutdown(); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if _, err := b.Join([]string{a.Local().Addr}); !errors.Is(err, ErrShutdown) {
		t.Errorf("Join after Shutdown: %v", err)
	}
	if err := b.RetryJoin(context.Background(), []string{a.Local().Addr}); !errors.Is(err, ErrShutdown) {
		t.Errorf("RetryJoin after Shutdown: %v", err)
	}
	if err := b.UpdateMeta(Meta{}, time.Second); !errors.Is(err, ErrShutdown) {
		t.Errorf("UpdateMeta after Shutdown: %v", err)
	}
	if err := b.Leave(time.Second); !errors.Is(err, ErrShutdown) { // memberlist would panic
		t.Errorf("Leave after Shutdown: %v", err)
	}
	// b's listener heard nothing after Shutdown even though a keeps
	// gossiping about b.
	before := len(b.events.events("a"))
	a.events.waitEvent(t, 15*time.Second, EventSuspect, "b")
	if after := len(b.events.events("a")); after != before {
		t.Errorf("b's listener got %d events after Shutdown", after-before)
	}
	if got := cancelled.events("b"); len(got) != 0 {
		t.Errorf("cancelled listener got %+v", got)
	}
}

func TestRetryJoinStopsAtShutdown(t *testing.T) {
	t.Parallel()
	b := startNode(t, "b", func(c *Config) { c.RetryJoinInterval = time.Hour })
	done := make(chan error, 1)
	go func() { done <- b.RetryJoin(context.Background(), []string{freeAddr(t)}) }()
	waitFor(t, 5*time.Second, func() error {
		if b.logs.count(func(r logRecord) bool { return r.msg == "join attempt failed; will retry" }) == 0 {
			return errors.New("no attempt yet")
		}
		return nil
	})
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrShutdown) {
			t.Fatalf("RetryJoin: %v, want ErrShutdown", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RetryJoin kept waiting after Shutdown")
	}
}
