package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regent-registry/regent/proto/regent/v1"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/registry"
	"github.com/regent-registry/regent/persistent"
	"github.com/regent-registry/regent/storage"
)

// ---- test stack ----

// fakeClock is a Clock moved by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// testClientIP is the address every test connection appears to come from:
// bufconn's own address ("bufconn") has no IP, so the listener is wrapped.
const testClientIP = "10.1.2.3"

type ipListener struct {
	net.Listener
	remote net.Addr
}

func (l ipListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return ipConn{Conn: c, remote: l.remote}, nil
}

type ipConn struct {
	net.Conn
	remote net.Addr
}

func (c ipConn) RemoteAddr() net.Addr { return c.remote }

func testSessionConfig() SessionConfig {
	return SessionConfig{
		CheckInterval: time.Hour, // Run is never started: tests call Check
		IdleTimeout:   10 * time.Second,
		ProbeTimeout:  time.Second,
		HelloTimeout:  5 * time.Second,
		KeepaliveHint: 5 * time.Second,
		DrainGrace:    300 * time.Millisecond,
		SendQueue:     64,
	}
}

type envOptions struct {
	session SessionConfig
	limits  *LimitWatcher
	members MembersFunc
	metrics prometheus.Registerer
	leader  func() (string, bool)
	// per replaces the persistent side (default: persistent.Local on a
	// test database).
	per registry.Persistent
	// wrapConn, if set, wraps the client's side of each connection.
	wrapConn func(net.Conn) net.Conn
}

type testEnv struct {
	reg    *registry.Registry
	srv    *Server
	clock  *fakeClock
	conn   *grpc.ClientConn
	client regentv1.RegistryClient
}

// newEnv builds the real stack (bbolt, persistent.Local, ephemeral store,
// registry with its pusher, rpc.Server) served over bufconn.
func newEnv(t testing.TB, opt envOptions) *testEnv {
	t.Helper()
	if opt.session == (SessionConfig{}) {
		opt.session = testSessionConfig()
	}
	per := opt.per
	if per == nil {
		per = persistent.NewLocal(storage.OpenTest(t))
	}
	rcfg := registry.DefaultConfig()
	rcfg.MergeWindow = 5 * time.Millisecond
	reg, err := registry.New(rcfg, ephemeral.NewStore(nil), per)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	regDone := make(chan struct{})
	go func() { defer close(regDone); reg.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-regDone })

	clock := newFakeClock()
	cfg := DefaultConfig()
	cfg.NodeName = "node-test"
	cfg.Session = opt.session
	srv, err := NewServer(cfg, Deps{Registry: reg, Clock: clock, Limits: opt.limits, Members: opt.members, Metrics: opt.metrics, Leader: opt.leader})
	if err != nil {
		t.Fatal(err)
	}
	bl := bufconn.Listen(1 << 20)
	lis := ipListener{Listener: bl, remote: &net.TCPAddr{IP: net.ParseIP(testClientIP), Port: 40000}}
	serveDone := make(chan struct{})
	go func() { defer close(serveDone); _ = srv.GRPC().Serve(lis) }()

	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			c, err := bl.DialContext(ctx)
			if err == nil && opt.wrapConn != nil {
				c = opt.wrapConn(c)
			}
			return c, err
		}),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		srv.GRPC().Stop()
		<-serveDone
		// Stop does not wait for handlers; every session handler removes
		// its session before it returns, and no handler may still write
		// when the database's own clean-up checks and closes it.
		waitFor(t, "all sessions removed at shutdown", func() bool { return srv.Sessions().Count() == 0 })
		waitFor(t, "every handler returned at shutdown", func() bool { return srv.handlers.Load() == 0 })
	})
	return &testEnv{reg: reg, srv: srv, clock: clock, conn: conn, client: regentv1.NewRegistryClient(conn)}
}

// waitFor polls cond every 5 ms and fails the test after 5 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ---- client side of a session ----

type testClient struct {
	t      *testing.T
	stream regentv1.Registry_SessionClient
	cancel context.CancelFunc

	sendMu sync.Mutex
	nextID atomic.Uint64
	// answerProbes makes the receiver reply to every Probe.
	answerProbes atomic.Bool

	mu   sync.Mutex
	msgs []*regentv1.ServerMessage
	err  error // why Recv stopped
	done chan struct{}
}

// openRaw opens a Session stream without saying Hello.
func (e *testEnv) openRaw(t *testing.T) *testClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := e.client.Session(ctx)
	if err != nil {
		cancel()
		t.Fatalf("open session stream: %v", err)
	}
	c := &testClient{t: t, stream: stream, cancel: cancel, done: make(chan struct{})}
	c.nextID.Store(1000)
	go c.recvLoop()
	t.Cleanup(func() {
		cancel()
		<-c.done
	})
	return c
}

func (c *testClient) recvLoop() {
	defer close(c.done)
	for {
		m, err := c.stream.Recv()
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		c.mu.Lock()
		c.msgs = append(c.msgs, m)
		c.mu.Unlock()
		if p := m.GetProbe(); p != nil && c.answerProbes.Load() {
			_ = c.send(&regentv1.ClientMessage{Body: &regentv1.ClientMessage_ProbeReply{ProbeReply: &regentv1.ProbeReply{ProbeId: p.GetProbeId()}}})
		}
	}
}

func (c *testClient) send(m *regentv1.ClientMessage) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	return c.stream.Send(m)
}

func (c *testClient) mustSend(m *regentv1.ClientMessage) {
	c.t.Helper()
	if err := c.send(m); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *testClient) closeSend() {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if err := c.stream.CloseSend(); err != nil {
		c.t.Fatalf("CloseSend: %v", err)
	}
}

func (c *testClient) messages() []*regentv1.ServerMessage {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.msgs)
}

// waitMsg waits for the first received message (from index from on) that
// matches and returns it with its index.
func (c *testClient) waitMsg(what string, from int, match func(*regentv1.ServerMessage) bool) (*regentv1.ServerMessage, int) {
	c.t.Helper()
	var found *regentv1.ServerMessage
	idx := -1
	waitFor(c.t, what, func() bool {
		msgs := c.messages()
		for i := from; i < len(msgs); i++ {
			if match(msgs[i]) {
				found, idx = msgs[i], i
				return true
			}
		}
		return false
	})
	return found, idx
}

// ended reports whether the stream has ended, and how.
func (c *testClient) ended() (bool, error) {
	select {
	case <-c.done:
		c.mu.Lock()
		defer c.mu.Unlock()
		return true, c.err
	default:
		return false, nil
	}
}

// waitEnd waits for the stream to end and returns Recv's final error.
func (c *testClient) waitEnd() error {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		c.t.Fatal("timed out waiting for the session stream to end")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// request sends body with a fresh request id and returns its Ack.
func (c *testClient) request(m *regentv1.ClientMessage) *regentv1.Ack {
	c.t.Helper()
	id := c.nextID.Add(1)
	m.RequestId = id
	c.mustSend(m)
	msg, _ := c.waitMsg(fmt.Sprintf("ack of request %d", id), 0, func(m *regentv1.ServerMessage) bool {
		return m.GetAck() != nil && m.GetAck().GetRequestId() == id
	})
	return msg.GetAck()
}

func (c *testClient) requestOK(m *regentv1.ClientMessage) {
	c.t.Helper()
	if a := c.request(m); a.GetCode() != 0 {
		c.t.Fatalf("request %T: ack code %v %q, want OK", m.GetBody(), codes.Code(a.GetCode()), a.GetMessage())
	}
}

// sync does a Ping round trip: every message the server queued before
// handling it has been received afterwards.
func (c *testClient) sync() int {
	c.t.Helper()
	id := c.nextID.Add(1)
	c.mustSend(&regentv1.ClientMessage{RequestId: id, Body: &regentv1.ClientMessage_Ping{Ping: &regentv1.Ping{}}})
	_, idx := c.waitMsg("ping ack", 0, func(m *regentv1.ServerMessage) bool {
		return m.GetAck() != nil && m.GetAck().GetRequestId() == id
	})
	return idx
}

// count returns how many received messages match.
func (c *testClient) count(match func(*regentv1.ServerMessage) bool) int {
	n := 0
	for _, m := range c.messages() {
		if match(m) {
			n++
		}
	}
	return n
}

func isReconnect(m *regentv1.ServerMessage) bool { return m.GetReconnect() != nil }
func isProbe(m *regentv1.ServerMessage) bool     { return m.GetProbe() != nil }

// open opens a session and says Hello; the first message back must be the
// HelloReply.
func (e *testEnv) open(t *testing.T, clientID string, labels map[string]string) (*testClient, *regentv1.HelloReply) {
	t.Helper()
	c := e.openRaw(t)
	c.mustSend(helloMsg(clientID, labels))
	c.waitMsg("first server message", 0, func(*regentv1.ServerMessage) bool { return true })
	first := c.messages()[0]
	hr := first.GetHelloReply()
	if hr == nil {
		t.Fatalf("first server message is %v, want HelloReply", first)
	}
	return c, hr
}

func helloMsg(clientID string, labels map[string]string) *regentv1.ClientMessage {
	return &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Hello{Hello: &regentv1.Hello{
		ClientId: clientID, ClientName: "test " + clientID, SdkVersion: "test/1", Labels: labels,
	}}}
}

// ---- message builders ----

func svcRef(name string) *regentv1.ServiceRef { return &regentv1.ServiceRef{Service: name} }

func inst(ip string, port uint32) *regentv1.Instance {
	return &regentv1.Instance{Ip: ip, Port: port}
}

func registerMsg(service string, ins ...*regentv1.Instance) *regentv1.ClientMessage {
	return &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Register{Register: &regentv1.RegisterEphemeral{Service: svcRef(service), Instances: ins}}}
}

func deregisterMsg(service string, ins ...*regentv1.Instance) *regentv1.ClientMessage {
	return &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Deregister{Deregister: &regentv1.DeregisterEphemeral{Service: svcRef(service), Instances: ins}}}
}

func subscribeMsg(service string, healthyOnly bool, clusters ...string) *regentv1.ClientMessage {
	return &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Subscribe{Subscribe: &regentv1.Subscribe{Service: svcRef(service), HealthyOnly: healthyOnly, Clusters: clusters}}}
}

func unsubscribeMsg(service string) *regentv1.ClientMessage {
	return &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Unsubscribe{Unsubscribe: &regentv1.Unsubscribe{Service: svcRef(service)}}}
}

// addrs renders a snapshot's instances as sorted "ip:port" strings.
func addrs(sn *regentv1.ServiceSnapshot) []string {
	var out []string
	for _, in := range sn.GetInstances() {
		out = append(out, fmt.Sprintf("%s:%d", in.GetIp(), in.GetPort()))
	}
	slices.Sort(out)
	return out
}

// getService queries a service; code is the gRPC code of the call.
func (e *testEnv) getService(t *testing.T, service string) (*regentv1.GetServiceResponse, codes.Code) {
	t.Helper()
	resp, err := e.client.GetService(context.Background(), &regentv1.GetServiceRequest{Service: svcRef(service)})
	return resp, status.Code(err)
}

// listed returns a service's instances as "ip:port" (nil when not found).
func (e *testEnv) listed(t *testing.T, service string) []string {
	t.Helper()
	resp, code := e.getService(t, service)
	switch code {
	case codes.OK:
		return addrs(resp.GetSnapshot())
	case codes.NotFound:
		return nil
	default:
		t.Fatalf("GetService(%s): %v", service, code)
		return nil
	}
}

func wantAddrs(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}

func pushOf(service string, match func(*regentv1.ServiceSnapshot) bool) func(*regentv1.ServerMessage) bool {
	return func(m *regentv1.ServerMessage) bool {
		sn := m.GetPush().GetSnapshot()
		return sn != nil && sn.GetService().GetService() == service && match(sn)
	}
}

func wantCode(t *testing.T, what string, err error, want codes.Code) *status.Status {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != want {
		t.Fatalf("%s: got %v (%v), want %v", what, st.Code(), err, want)
	}
	return st
}

// ---- tests ----

func TestSessionRegisterDeregister(t *testing.T) {
	e := newEnv(t, envOptions{})
	c, hr := e.open(t, "client-1", map[string]string{"app": "shop"})
	if hr.GetSessionId() == "" || hr.GetNode() != "node-test" || hr.GetKeepaliveMs() != 5000 {
		t.Fatalf("HelloReply = %v, want a session id, node node-test, keepalive 5000 ms", hr)
	}
	if n := e.srv.Sessions().Count(); n != 1 {
		t.Fatalf("Count = %d, want 1", n)
	}
	sums := e.srv.Sessions().Sessions()
	if len(sums) != 1 || sums[0].ID != hr.GetSessionId() || sums[0].ClientID != "client-1" || sums[0].IP != testClientIP ||
		sums[0].App != "shop" || sums[0].Name != "test client-1" {
		t.Fatalf("Sessions() = %+v", sums)
	}

	a := c.request(registerMsg("svc-a", inst("10.0.0.1", 80), inst("10.0.0.2", 80)))
	if a.GetCode() != 0 || a.GetMessage() != "" {
		t.Fatalf("register ack = %v, want OK", a)
	}
	c.requestOK(registerMsg("svc-b", inst("10.0.0.3", 81)))

	resp, code := e.getService(t, "svc-a")
	if code != codes.OK {
		t.Fatalf("GetService(svc-a): %v", code)
	}
	wantAddrs(t, "svc-a", addrs(resp.GetSnapshot()), "10.0.0.1:80", "10.0.0.2:80")
	for _, in := range resp.GetSnapshot().GetInstances() {
		if !in.GetEphemeral() || in.GetWeight() != 1 || !in.GetHealthy() || !in.GetEnabled() || in.GetCluster() != "DEFAULT" {
			t.Fatalf("instance %v: want ephemeral, weight 1, healthy, enabled, cluster DEFAULT", in)
		}
	}
	if k := resp.GetSnapshot().GetService(); k.GetNamespace() != "public" || k.GetGroup() != "DEFAULT_GROUP" || k.GetService() != "svc-a" {
		t.Fatalf("snapshot service = %v, want defaults filled in", k)
	}
	wantAddrs(t, "svc-b", e.listed(t, "svc-b"), "10.0.0.3:81")
	rev := resp.GetSnapshot().GetRevision()

	// The same registration again changes nothing.
	c.requestOK(registerMsg("svc-a", inst("10.0.0.1", 80), inst("10.0.0.2", 80)))
	resp, _ = e.getService(t, "svc-a")
	wantAddrs(t, "svc-a after re-register", addrs(resp.GetSnapshot()), "10.0.0.1:80", "10.0.0.2:80")
	if resp.GetSnapshot().GetRevision() != rev {
		t.Fatalf("identical re-register moved the revision %d -> %d", rev, resp.GetSnapshot().GetRevision())
	}

	// Deregister, then deregister again: both succeed.
	c.requestOK(deregisterMsg("svc-a", inst("10.0.0.1", 80)))
	wantAddrs(t, "svc-a after deregister", e.listed(t, "svc-a"), "10.0.0.2:80")
	c.requestOK(deregisterMsg("svc-a", inst("10.0.0.1", 80)))
	wantAddrs(t, "svc-a after second deregister", e.listed(t, "svc-a"), "10.0.0.2:80")
	wantAddrs(t, "svc-b untouched", e.listed(t, "svc-b"), "10.0.0.3:81")
}

func TestSessionMessagesWithoutAckAndOddMessages(t *testing.T) {
	e := newEnv(t, envOptions{})
	c, _ := e.open(t, "client-1", nil)

	// request_id 0 asks for no Ack, but the message is still served.
	c.mustSend(registerMsg("svc-a", inst("10.0.0.1", 80)))
	c.mustSend(&regentv1.ClientMessage{Body: &regentv1.ClientMessage_Ping{Ping: &regentv1.Ping{}}})
	c.sync()
	if n := c.count(func(m *regentv1.ServerMessage) bool { return m.GetAck() != nil }); n != 1 {
		t.Fatalf("got %d acks, want only the sync ping's", n)
	}
	wantAddrs(t, "svc-a", e.listed(t, "svc-a"), "10.0.0.1:80")

	// A second Hello is refused without ending the session.
	a := c.request(helloMsg("client-1", nil))
	if codes.Code(a.GetCode()) != codes.FailedPrecondition {
		t.Fatalf("second Hello: ack %v, want FailedPrecondition", a)
	}
	// A message without a body.
	a = c.request(&regentv1.ClientMessage{})
	if codes.Code(a.GetCode()) != codes.InvalidArgument {
		t.Fatalf("empty message: ack %v, want InvalidArgument", a)
	}
	if ended, err := c.ended(); ended {
		t.Fatalf("session ended after refused messages: %v", err)
	}
	c.sync()
	if n := e.srv.Sessions().Count(); n != 1 {
		t.Fatalf("Count = %d, want 1", n)
	}
}

// A session answers get_service in its ack exactly as the unary
// GetService answers; refuses linearizable and bad lookups without ending;
// serves nothing for a lookup without a request id; and says in its
// HelloReply that it takes lookups.
func TestSessionLookup(t *testing.T) {
	e := newEnv(t, envOptions{})
	c, hr := e.open(t, "client-1", nil)
	if !hr.GetSessionLookups() {
		t.Fatalf("HelloReply %v does not offer session lookups", hr)
	}
	c.requestOK(registerMsg("svc-q", inst("10.0.0.1", 80), inst("10.0.0.2", 80)))
	if _, err := e.client.RegisterInstance(context.Background(), &regentv1.RegisterInstanceRequest{Service: svcRef("svc-q"), Instance: inst("10.0.0.3", 81)}); err != nil {
		t.Fatal(err)
	}
	lookup := func(r *regentv1.GetServiceRequest) *regentv1.Ack {
		return c.request(&regentv1.ClientMessage{Body: &regentv1.ClientMessage_GetService{GetService: r}})
	}
	for _, r := range []*regentv1.GetServiceRequest{
		{Service: svcRef("svc-q")},
		{Service: svcRef("svc-q"), Clusters: []string{"DEFAULT"}, HealthyOnly: true},
		{Service: svcRef("svc-none")},
	} {
		a := lookup(r)
		want, err := e.client.GetService(context.Background(), r)
		st, _ := status.FromError(err)
		if codes.Code(a.GetCode()) != st.Code() || a.GetMessage() != st.Message() || !proto.Equal(a.GetService(), want) {
			t.Fatalf("session lookup %v: ack %v; unary answers %v, %v", r, a, want, err)
		}
	}
	if n := len(lookup(&regentv1.GetServiceRequest{Service: svcRef("svc-q")}).GetService().GetSnapshot().GetInstances()); n != 3 {
		t.Fatalf("lookup lists %d instances, want 3", n)
	}
	for what, r := range map[string]*regentv1.GetServiceRequest{
		"linearizable": {Service: svcRef("svc-q"), Linearizable: true},
		"no service":   {},
		"bad cluster":  {Service: svcRef("svc-q"), Clusters: []string{"bad cluster!"}},
	} {
		if a := lookup(r); codes.Code(a.GetCode()) != codes.InvalidArgument || a.GetService() != nil {
			t.Errorf("%s lookup: ack %v, want InvalidArgument and no answer", what, a)
		}
	}
	before := len(c.messages())
	c.mustSend(&regentv1.ClientMessage{Body: &regentv1.ClientMessage_GetService{GetService: &regentv1.GetServiceRequest{Service: svcRef("svc-q")}}})
	idx := c.sync()
	if idx != before {
		t.Fatalf("a lookup without request id was answered: %v", c.messages()[before:idx])
	}
	if ended, err := c.ended(); ended {
		t.Fatalf("session ended after refused lookups: %v", err)
	}
}

func TestSessionEndRemovesInstancesAndSubscriptions(t *testing.T) {
	for _, how := range []string{"CloseSend", "cancel"} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			watcher, _ := e.open(t, "watcher", nil)
			watcher.requestOK(subscribeMsg("svc-a", false))

			a, _ := e.open(t, "client-a", nil)
			a.requestOK(registerMsg("svc-a", inst("10.0.0.1", 80), inst("10.0.0.2", 80)))
			a.requestOK(registerMsg("svc-b", inst("10.0.0.3", 80)))
			a.requestOK(subscribeMsg("svc-a", false))
			a.requestOK(subscribeMsg("svc-b", true))
			if n := e.reg.Subscriptions(); n != 3 {
				t.Fatalf("Subscriptions = %d, want 3", n)
			}
			full, fullIdx := watcher.waitMsg("push with client-a's instances", 0, pushOf("svc-a", func(sn *regentv1.ServiceSnapshot) bool {
				return len(sn.GetInstances()) == 2
			}))

			switch how {
			case "CloseSend":
				a.closeSend()
				if err := a.waitEnd(); !errors.Is(err, io.EOF) {
					t.Fatalf("stream ended with %v, want a clean end (io.EOF)", err)
				}
			case "cancel":
				a.cancel()
				a.waitEnd()
			}
			waitFor(t, "session of client-a removed", func() bool { return e.srv.Sessions().Count() == 1 })
			wantAddrs(t, "svc-a", e.listed(t, "svc-a"))
			wantAddrs(t, "svc-b", e.listed(t, "svc-b"))
			if n := e.reg.Subscriptions(); n != 1 {
				t.Fatalf("Subscriptions = %d, want 1 (the watcher's)", n)
			}
			if n := e.srv.Sessions().Closed(); n != 1 {
				t.Fatalf("Closed = %d, want 1", n)
			}
			empty, _ := watcher.waitMsg("push without client-a's instances", fullIdx+1, pushOf("svc-a", func(sn *regentv1.ServiceSnapshot) bool {
				return len(sn.GetInstances()) == 0
			}))
			if empty.GetPush().GetSnapshot().GetRevision() <= full.GetPush().GetSnapshot().GetRevision() {
				t.Fatalf("revision went %d -> %d, want it to grow", full.GetPush().GetSnapshot().GetRevision(), empty.GetPush().GetSnapshot().GetRevision())
			}
		})
	}
}

func TestSessionSubscribePushes(t *testing.T) {
	e := newEnv(t, envOptions{})
	owner, _ := e.open(t, "owner", nil)
	owner.requestOK(registerMsg("svc-a", inst("10.0.0.1", 80)))
	c2 := &regentv1.Instance{Ip: "10.0.0.9", Port: 90, Cluster: "c2"}
	owner.requestOK(registerMsg("svc-a", c2))

	sub, _ := e.open(t, "subscriber", nil)
	sub.requestOK(subscribeMsg("svc-a", false))
	first, _ := sub.waitMsg("immediate push", 0, pushOf("svc-a", func(*regentv1.ServiceSnapshot) bool { return true }))
	sn := first.GetPush().GetSnapshot()
	wantAddrs(t, "first push", addrs(sn), "10.0.0.1:80", "10.0.0.9:90")
	if !sn.GetInstances()[0].GetEphemeral() {
		t.Fatalf("pushed instance %v is not marked ephemeral", sn.GetInstances()[0])
	}

	owner.requestOK(registerMsg("svc-a", inst("10.0.0.2", 80)))
	second, _ := sub.waitMsg("push with the new instance", 0, pushOf("svc-a", func(sn *regentv1.ServiceSnapshot) bool {
		return slices.Contains(addrs(sn), "10.0.0.2:80")
	}))
	wantAddrs(t, "second push", addrs(second.GetPush().GetSnapshot()), "10.0.0.1:80", "10.0.0.2:80", "10.0.0.9:90")
	if r1, r2 := sn.GetRevision(), second.GetPush().GetSnapshot().GetRevision(); r2 <= r1 {
		t.Fatalf("revision went %d -> %d, want it to grow", r1, r2)
	}

	// A second Subscribe replaces the filter: only cluster c2 now.
	n := len(sub.messages())
	sub.requestOK(subscribeMsg("svc-a", false, "c2"))
	filtered, _ := sub.waitMsg("push filtered to c2", n, pushOf("svc-a", func(*regentv1.ServiceSnapshot) bool { return true }))
	wantAddrs(t, "filtered push", addrs(filtered.GetPush().GetSnapshot()), "10.0.0.9:90")
	if got := e.reg.Subscriptions(); got != 1 {
		t.Fatalf("Subscriptions = %d after re-subscribe, want 1", got)
	}

	// A bad filter is refused and leaves the subscription alone.
	if a := sub.request(subscribeMsg("svc-b", false, "bad cluster")); codes.Code(a.GetCode()) != codes.InvalidArgument {
		t.Fatalf("subscribe with a bad cluster: ack %v, want InvalidArgument", a)
	}
	if a := sub.request(subscribeMsg("", false)); codes.Code(a.GetCode()) != codes.InvalidArgument {
		t.Fatalf("subscribe without a service: ack %v, want InvalidArgument", a)
	}
	if got := e.reg.Subscriptions(); got != 1 {
		t.Fatalf("Subscriptions = %d after refused subscribes, want 1", got)
	}

	// Subscribing to a service that does not exist yet pushes an empty list.
	n = len(sub.messages())
	sub.requestOK(subscribeMsg("svc-later", false))
	empty, _ := sub.waitMsg("push of an unknown service", n, pushOf("svc-later", func(*regentv1.ServiceSnapshot) bool { return true }))
	if len(empty.GetPush().GetSnapshot().GetInstances()) != 0 {
		t.Fatalf("push of an unknown service = %v, want empty", empty)
	}
	owner.requestOK(registerMsg("svc-later", inst("10.0.0.5", 80)))
	sub.waitMsg("push when the service appears", n, pushOf("svc-later", func(sn *regentv1.ServiceSnapshot) bool {
		return slices.Equal(addrs(sn), []string{"10.0.0.5:80"})
	}))

	// Unsubscribe removes the subscriptions from the registry.
	sub.requestOK(unsubscribeMsg("svc-a"))
	sub.requestOK(unsubscribeMsg("svc-later"))
	if got := e.reg.Subscriptions(); got != 0 {
		t.Fatalf("Subscriptions = %d after unsubscribe, want 0", got)
	}
	// Unsubscribing again is fine.
	sub.requestOK(unsubscribeMsg("svc-a"))
}

// TestSessionSilentProbedAndClosed: a client that does not answer probes is
// closed after IdleTimeout + ProbeTimeout.
func TestSessionSilentProbedAndClosed(t *testing.T) {
	e := newEnv(t, envOptions{})
	cfg := testSessionConfig()
	other, _ := e.open(t, "other", nil)
	other.answerProbes.Store(true)
	other.requestOK(subscribeMsg("svc-a", false))

	c, _ := e.open(t, "silent", nil)
	c.requestOK(registerMsg("svc-a", inst("10.0.0.1", 80)))
	c.requestOK(subscribeMsg("svc-a", false))
	other.sync() // other's last activity is now too

	if e.srv.Sessions().Check() {
		t.Fatal("Check reports probing before any session is idle")
	}
	e.clock.Advance(cfg.IdleTimeout)
	if !e.srv.Sessions().Check() {
		t.Fatal("Check after IdleTimeout reports no probe outstanding")
	}
	probe, _ := c.waitMsg("probe", 0, isProbe)
	if probe.GetProbe().GetProbeId() == 0 {
		t.Fatal("probe id is 0")
	}
	other.waitMsg("probe of the other session", 0, isProbe)
	other.sync() // its reply has been handled

	// Just at the deadline: still alive.
	e.clock.Advance(cfg.ProbeTimeout)
	e.srv.Sessions().Check()
	if ended, err := c.ended(); ended {
		t.Fatalf("session closed at the probe deadline: %v", err)
	}
	if n := e.srv.Sessions().Count(); n != 2 {
		t.Fatalf("Count = %d before the probe deadline passed, want 2", n)
	}

	e.clock.Advance(time.Millisecond)
	e.srv.Sessions().Check()
	err := c.waitEnd()
	wantCode(t, "silent session end", err, codes.Unavailable)
	waitFor(t, "silent session removed", func() bool { return e.srv.Sessions().Count() == 1 })
	wantAddrs(t, "svc-a", e.listed(t, "svc-a"))
	if n := e.reg.Subscriptions(); n != 1 {
		t.Fatalf("Subscriptions = %d, want 1 (the other session's)", n)
	}
	if n := c.count(isProbe); n != 1 {
		t.Fatalf("silent session got %d probes, want 1", n)
	}
	// The session that answered is alive and not probed again.
	if ended, err := other.ended(); ended {
		t.Fatalf("answering session ended: %v", err)
	}
	other.sync()
	if n := other.count(isProbe); n != 1 {
		t.Fatalf("answering session got %d probes, want 1", n)
	}
}

func TestSessionProbeAnswered(t *testing.T) {
	e := newEnv(t, envOptions{})
	cfg := testSessionConfig()
	c, _ := e.open(t, "answering", nil)
	c.answerProbes.Store(true)
	c.requestOK(registerMsg("svc-a", inst("10.0.0.1", 80)))

	for round := range 3 {
		e.clock.Advance(cfg.IdleTimeout)
		e.srv.Sessions().Check()
		c.waitMsg(fmt.Sprintf("probe %d", round+1), 0, func(m *regentv1.ServerMessage) bool {
			return isProbe(m) && c.count(isProbe) == round+1
		})
		c.sync() // the ProbeReply, sent before the Ping, has been handled
		e.clock.Advance(cfg.ProbeTimeout + time.Millisecond)
		if e.srv.Sessions().Check() {
			t.Fatalf("round %d: a probe is still outstanding after the reply", round)
		}
		if ended, err := c.ended(); ended {
			t.Fatalf("round %d: answering session closed: %v", round, err)
		}
		if n := e.srv.Sessions().Count(); n != 1 {
			t.Fatalf("round %d: Count = %d, want 1", round, n)
		}
		wantAddrs(t, "svc-a", e.listed(t, "svc-a"), "10.0.0.1:80")
	}
	// Probe ids differ.
	var ids []uint64
	for _, m := range c.messages() {
		if isProbe(m) {
			ids = append(ids, m.GetProbe().GetProbeId())
		}
	}
	if slices.Sort(ids); len(slices.Compact(ids)) != 3 {
		t.Fatalf("probe ids %v are not distinct", ids)
	}
}

func TestSessionProbeWrongIDDoesNotCount(t *testing.T) {
	e := newEnv(t, envOptions{})
	cfg := testSessionConfig()
	c, _ := e.open(t, "wrong-id", nil)
	e.clock.Advance(cfg.IdleTimeout)
	e.srv.Sessions().Check()
	probe, _ := c.waitMsg("probe", 0, isProbe)
	c.mustSend(&regentv1.ClientMessage{Body: &regentv1.ClientMessage_ProbeReply{ProbeReply: &regentv1.ProbeReply{ProbeId: probe.GetProbe().GetProbeId() + 100}}})
	c.sync()
	e.clock.Advance(cfg.ProbeTimeout + time.Millisecond)
	e.srv.Sessions().Check()
	wantCode(t, "session with a wrong probe reply", c.waitEnd(), codes.Unavailable)
}

// TestSessionActivityAvoidsProbe: any message resets the idle timer.
func TestSessionActivityAvoidsProbe(t *testing.T) {
	e := newEnv(t, envOptions{})
	cfg := testSessionConfig()
	c, _ := e.open(t, "active", nil)
	for range 4 {
		e.clock.Advance(cfg.IdleTimeout / 2)
		c.sync()
		e.clock.Advance(cfg.IdleTimeout/2 - time.Millisecond)
		if e.srv.Sessions().Check() {
			t.Fatal("an active session was probed")
		}
	}
	c.sync()
	if n := c.count(isProbe); n != 0 {
		t.Fatalf("active session got %d probes", n)
	}
}

func TestSessionHelloRules(t *testing.T) {
	cfg := testSessionConfig()
	cfg.HelloTimeout = 100 * time.Millisecond
	e := newEnv(t, envOptions{session: cfg})

	t.Run("no hello", func(t *testing.T) {
		start := time.Now()
		c := e.openRaw(t)
		err := c.waitEnd()
		st := wantCode(t, "stream without Hello", err, codes.DeadlineExceeded)
		if el := time.Since(start); el < cfg.HelloTimeout {
			t.Fatalf("closed after %v, before the hello timeout %v", el, cfg.HelloTimeout)
		}
		if !strings.Contains(st.Message(), "Hello") {
			t.Fatalf("message %q does not mention Hello", st.Message())
		}
	})
	t.Run("first message not hello", func(t *testing.T) {
		c := e.openRaw(t)
		c.mustSend(registerMsg("svc-a", inst("10.0.0.1", 80)))
		wantCode(t, "register before Hello", c.waitEnd(), codes.FailedPrecondition)
		wantAddrs(t, "svc-a", e.listed(t, "svc-a"))
	})
	for _, tc := range []struct {
		name string
		msg  *regentv1.ClientMessage
	}{
		{"client id with spaces", helloMsg("bad id with spaces", nil)},
		{"empty client id", helloMsg("", nil)},
		{"long client id", helloMsg(strings.Repeat("x", 129), nil)},
		{"long client name", &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Hello{Hello: &regentv1.Hello{ClientId: "ok", ClientName: strings.Repeat("n", 257)}}}},
		{"bad labels", helloMsg("ok", map[string]string{"": "x"})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := e.openRaw(t)
			c.mustSend(tc.msg)
			wantCode(t, tc.name, c.waitEnd(), codes.InvalidArgument)
			if n := len(c.messages()); n != 0 {
				t.Fatalf("refused session got %d messages", n)
			}
		})
	}
	if n := e.srv.Sessions().Count(); n != 0 {
		t.Fatalf("Count = %d, want 0", n)
	}
	if n := e.srv.Sessions().Closed(); n != 0 {
		t.Fatalf("Closed = %d: refused streams were counted as sessions", n)
	}
}

func TestSessionBadInput(t *testing.T) {
	e := newEnv(t, envOptions{})
	c, _ := e.open(t, "client-1", nil)
	neg := -1.0
	big := 10001.0
	for _, tc := range []struct {
		name string
		msg  *regentv1.ClientMessage
	}{
		{"port 0", registerMsg("svc-a", inst("10.0.0.1", 0))},
		{"port 65536", registerMsg("svc-a", inst("10.0.0.1", 65536))},
		{"empty service", registerMsg("", inst("10.0.0.1", 80))},
		{"bad service", registerMsg("svc a", inst("10.0.0.1", 80))},
		{"weight -1", registerMsg("svc-a", &regentv1.Instance{Ip: "10.0.0.1", Port: 80, Weight: &neg})},
		{"weight too big", registerMsg("svc-a", &regentv1.Instance{Ip: "10.0.0.1", Port: 80, Weight: &big})},
		{"empty ip", registerMsg("svc-a", inst("", 80))},
		{"bad ip", registerMsg("svc-a", inst("not a host!", 80))},
		{"bad cluster", registerMsg("svc-a", &regentv1.Instance{Ip: "10.0.0.1", Port: 80, Cluster: "a/b"})},
		{"no instances", registerMsg("svc-a")},
		{"good and bad together", registerMsg("svc-a", inst("10.0.0.1", 80), inst("10.0.0.2", 0))},
		{"deregister bad port", deregisterMsg("svc-a", inst("10.0.0.1", 0))},
		{"deregister none", deregisterMsg("svc-a")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := c.request(tc.msg)
			if codes.Code(a.GetCode()) != codes.InvalidArgument || a.GetMessage() == "" {
				t.Fatalf("ack = %v, want InvalidArgument with a message", a)
			}
			wantAddrs(t, "svc-a", e.listed(t, "svc-a"))
		})
	}
	if n := len(e.reg.Ephemeral().Services()); n != 0 {
		t.Fatalf("ephemeral store holds %d services after refused registers", n)
	}
	if ended, err := c.ended(); ended {
		t.Fatalf("session ended after bad input: %v", err)
	}
}

// TestSessionSameClientReconnect: a new session of the same client id takes
// over the old one's instances with no gap.
func TestSessionSameClientReconnect(t *testing.T) {
	e := newEnv(t, envOptions{})
	watcher, _ := e.open(t, "watcher", nil)
	watcher.requestOK(subscribeMsg("svc-a", false))

	a, helloA := e.open(t, "client-x", nil)
	a.requestOK(registerMsg("svc-a", inst("10.0.0.1", 80)))
	a.requestOK(subscribeMsg("svc-a", false))
	_, fullIdx := watcher.waitMsg("push with the instance", 0, pushOf("svc-a", func(sn *regentv1.ServiceSnapshot) bool { return len(sn.GetInstances()) == 1 }))

	b, helloB := e.open(t, "client-x", nil)
	if helloB.GetSessionId() == helloA.GetSessionId() {
		t.Fatal("the new session has the old session id")
	}
	wantAddrs(t, "svc-a right after the new HelloReply", e.listed(t, "svc-a"), "10.0.0.1:80")

	st := wantCode(t, "superseded session", a.waitEnd(), codes.FailedPrecondition)
	if !strings.Contains(st.Message(), "superseded") {
		t.Fatalf("superseded session's status %q does not say why", st.Message())
	}
	waitFor(t, "old session removed", func() bool { return e.srv.Sessions().Count() == 2 })
	wantAddrs(t, "svc-a after the old session ended", e.listed(t, "svc-a"), "10.0.0.1:80")
	if n := e.reg.Subscriptions(); n != 1 {
		t.Fatalf("Subscriptions = %d, want 1: the old session's subscription must go", n)
	}
	sums := e.srv.Sessions().Sessions()
	if !slices.ContainsFunc(sums, func(s SessionSummary) bool { return s.ID == helloB.GetSessionId() && s.ClientID == "client-x" }) ||
		slices.ContainsFunc(sums, func(s SessionSummary) bool { return s.ID == helloA.GetSessionId() }) {
		t.Fatalf("Sessions() = %+v, want the new session and not the old one", sums)
	}

	// The new session owns the instances: it can deregister them, and its
	// end removes them.
	b.requestOK(registerMsg("svc-a", inst("10.0.0.2", 80)))
	wantAddrs(t, "svc-a", e.listed(t, "svc-a"), "10.0.0.1:80", "10.0.0.2:80")
	b.closeSend()
	b.waitEnd()
	waitFor(t, "new session removed", func() bool { return e.srv.Sessions().Count() == 1 })
	wantAddrs(t, "svc-a after the client left", e.listed(t, "svc-a"))

	// The watcher never saw the instance disappear until the client left.
	_, emptyIdx := watcher.waitMsg("push without instances", fullIdx+1, pushOf("svc-a", func(sn *regentv1.ServiceSnapshot) bool { return len(sn.GetInstances()) == 0 }))
	for _, m := range watcher.messages()[fullIdx:emptyIdx] {
		if sn := m.GetPush().GetSnapshot(); sn != nil && !slices.Contains(addrs(sn), "10.0.0.1:80") {
			t.Fatalf("watcher got a push without 10.0.0.1:80 during the handover: %v", addrs(sn))
		}
	}
}

// TestSessionReconnectAfterEndKeepsNewRegistrations: when a client's old
// session ends on its own (not superseded) and the client reconnects at
// once, what the new session registers must not be wiped by the old
// session's clean-up. The old session holds many subscriptions so that its
// clean-up takes long enough for the new session to get in.
func TestSessionReconnectAfterEndKeepsNewRegistrations(t *testing.T) {
	e := newEnv(t, envOptions{})
	for round := range 3 {
		a, _ := e.open(t, "client-y", nil)
		for i := range 2000 {
			a.mustSend(subscribeMsg(fmt.Sprintf("svc-%d", i), false))
		}
		a.requestOK(registerMsg("svc-main", inst("10.0.0.1", 80)))

		b := e.openRaw(t)
		a.closeSend()
		// Hello as soon as the old session is gone from the table but
		// (possibly) still cleaning up.
		waitFor(t, "old session out of the table", func() bool { return e.srv.Sessions().Count() == 0 })
		b.mustSend(helloMsg("client-y", nil))
		b.requestOK(registerMsg("svc-main", inst("10.0.0.2", 80)))
		a.waitEnd()
		waitFor(t, "old session's subscriptions gone", func() bool { return e.reg.Subscriptions() == 0 })
		wantAddrs(t, fmt.Sprintf("round %d: svc-main", round), e.listed(t, "svc-main"), "10.0.0.2:80")
		b.closeSend()
		b.waitEnd()
		waitFor(t, "new session removed", func() bool { return e.srv.Sessions().Count() == 0 })
		wantAddrs(t, "svc-main after the client left", e.listed(t, "svc-main"))
	}
}

func writeLimits(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// limitsFrom is a LimitWatcher of rules given as JSON.
func limitsFrom(t *testing.T, rules string) *LimitWatcher {
	t.Helper()
	path := filepath.Join(t.TempDir(), "limits.json")
	writeLimits(t, path, rules)
	w, err := NewLimitWatcher(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func TestSessionConnectionLimitRefuses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "limits.json")
	writeLimits(t, path, `{"countLimitPerClientIpDefault":1}`)
	w, err := NewLimitWatcher(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{limits: w})
	first, _ := e.open(t, "client-1", nil)
	first.requestOK(registerMsg("svc-a", inst("10.0.0.1", 80)))
	if ip := e.srv.Sessions().Sessions()[0].IP; ip != testClientIP {
		t.Fatalf("session IP = %q, want %q", ip, testClientIP)
	}

	second := e.openRaw(t)
	second.mustSend(helloMsg("client-2", nil))
	st := wantCode(t, "second session from the same IP", second.waitEnd(), codes.ResourceExhausted)
	if !strings.Contains(st.Message(), "countLimitPerClientIpDefault=1") {
		t.Fatalf("refusal %q does not name the limit", st.Message())
	}
	if n := len(second.messages()); n != 0 {
		t.Fatalf("refused session got %d messages, want none", n)
	}
	if n := e.srv.Sessions().Count(); n != 1 {
		t.Fatalf("Count = %d, want 1", n)
	}
	// The refusal did not touch the admitted session.
	first.sync()
	wantAddrs(t, "svc-a", e.listed(t, "svc-a"), "10.0.0.1:80")

	// The same client reconnecting replaces its session: not refused.
	again, _ := e.open(t, "client-1", nil)
	first.waitEnd()
	again.sync()
	wantAddrs(t, "svc-a after reconnect", e.listed(t, "svc-a"), "10.0.0.1:80")
}

// The counts the limits are checked against follow sessions as they end:
// a closed session's slot is free again, a reconnect does not use a
// second one, and a refused session takes none.
func TestSessionConnectionLimitCountsFollowSessions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "limits.json")
	writeLimits(t, path, `{"countLimit":2}`)
	w, err := NewLimitWatcher(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{limits: w})
	for round := range 3 {
		a, _ := e.open(t, fmt.Sprintf("a%d", round), nil)
		b, _ := e.open(t, fmt.Sprintf("b%d", round), nil)
		refused := e.openRaw(t)
		refused.mustSend(helloMsg(fmt.Sprintf("c%d", round), nil))
		wantCode(t, fmt.Sprintf("round %d: third session", round), refused.waitEnd(), codes.ResourceExhausted)
		// b reconnecting replaces its own session: admitted at the limit.
		b2, _ := e.open(t, fmt.Sprintf("b%d", round), nil)
		b.waitEnd()
		for _, s := range []*testClient{a, b2} {
			s.closeSend()
			s.waitEnd()
		}
		waitFor(t, "sessions removed", func() bool { return e.srv.Sessions().Count() == 0 })
	}
}

func TestSessionConnectionLimitPerIPRule(t *testing.T) {
	path := filepath.Join(t.TempDir(), "limits.json")
	writeLimits(t, path, `{"countLimitPerClientIp":{"`+testClientIP+`":2}}`)
	w, err := NewLimitWatcher(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{limits: w})
	e.open(t, "c1", nil)
	e.open(t, "c2", nil)
	third := e.openRaw(t)
	third.mustSend(helloMsg("c3", nil))
	st := wantCode(t, "third session", third.waitEnd(), codes.ResourceExhausted)
	if want := "countLimitPerClientIp[" + testClientIP + "]=2"; !strings.Contains(st.Message(), want) {
		t.Fatalf("refusal %q does not name %s", st.Message(), want)
	}
}

func TestSessionConnectionLimitLoweredAtRuntime(t *testing.T) {
	path := filepath.Join(t.TempDir(), "limits.json")
	writeLimits(t, path, `{"countLimit":3}`)
	w, err := NewLimitWatcher(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{limits: w})
	var cs []*testClient
	for i := range 3 {
		c, _ := e.open(t, fmt.Sprintf("client-%d", i), nil)
		c.requestOK(registerMsg("svc-a", inst(fmt.Sprintf("10.0.0.%d", i+1), 80)))
		cs = append(cs, c)
		e.clock.Advance(time.Millisecond) // distinct creation times
	}
	fourth := e.openRaw(t)
	fourth.mustSend(helloMsg("client-3", nil))
	st := wantCode(t, "fourth session", fourth.waitEnd(), codes.ResourceExhausted)
	if !strings.Contains(st.Message(), "countLimit=3") {
		t.Fatalf("refusal %q does not name countLimit=3", st.Message())
	}

	writeLimits(t, path, `{"countLimit":1}`)
	if changed, err := w.Reload(); err != nil || !changed {
		t.Fatalf("Reload = %v, %v", changed, err)
	}
	e.srv.Sessions().Check()
	for i, c := range cs {
		c.sync()
		got := c.count(isReconnect)
		want := 1
		if i == 0 {
			want = 0 // the oldest stays
		}
		if got != want {
			t.Fatalf("session %d got %d Reconnect messages, want %d", i, got, want)
		}
	}
	// Told once only.
	e.srv.Sessions().Check()
	for i, c := range cs {
		c.sync()
		if got := c.count(isReconnect); got > 1 {
			t.Fatalf("session %d told %d times", i, got)
		}
		if ended, err := c.ended(); ended {
			t.Fatalf("session %d closed by the server: %v", i, err)
		}
	}
	if n := e.srv.Sessions().Count(); n != 3 {
		t.Fatalf("Count = %d, want 3: telling must not close", n)
	}
	wantAddrs(t, "svc-a", e.listed(t, "svc-a"), "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")
	r := cs[1].messages()
	for _, m := range r {
		if rc := m.GetReconnect(); rc != nil && rc.GetReason() == "" {
			t.Fatal("Reconnect without a reason")
		}
	}
}

func TestSessionDrain(t *testing.T) {
	e := newEnv(t, envOptions{})
	leaver, _ := e.open(t, "leaver", nil)
	stayer, _ := e.open(t, "stayer", nil)
	stayer.requestOK(registerMsg("svc-a", inst("10.0.0.1", 80)))

	drained := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(drained)
		e.srv.Sessions().Drain(context.Background())
	}()
	leaver.waitMsg("reconnect of the leaver", 0, isReconnect)
	stayer.waitMsg("reconnect of the stayer", 0, isReconnect)

	// New sessions are refused while draining.
	late := e.openRaw(t)
	late.mustSend(helloMsg("late", nil))
	wantCode(t, "session opened while draining", late.waitEnd(), codes.Unavailable)

	// The leaver does as told; the stayer is closed after the grace.
	leaver.closeSend()
	leaver.waitEnd()
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		t.Fatal("Drain did not return")
	}
	if el := time.Since(start); el < testSessionConfig().DrainGrace {
		t.Fatalf("Drain returned after %v, before the grace %v with a session left", el, testSessionConfig().DrainGrace)
	}
	wantCode(t, "session left after the grace", stayer.waitEnd(), codes.Unavailable)
	waitFor(t, "all sessions removed", func() bool { return e.srv.Sessions().Count() == 0 })
	wantAddrs(t, "svc-a", e.listed(t, "svc-a"))
	if n := leaver.count(isReconnect); n != 1 {
		t.Fatalf("leaver got %d Reconnect messages, want 1", n)
	}
}

func TestSessionDrainReturnsEarlyWhenAllLeft(t *testing.T) {
	cfg := testSessionConfig()
	cfg.DrainGrace = time.Minute
	e := newEnv(t, envOptions{session: cfg})
	c, _ := e.open(t, "c", nil)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		e.srv.Sessions().Drain(context.Background())
	}()
	c.waitMsg("reconnect", 0, isReconnect)
	c.closeSend()
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		t.Fatal("Drain kept waiting after every session left")
	}
}

func TestSessionConfigValidate(t *testing.T) {
	if err := DefaultSessionConfig().Validate(); err != nil {
		t.Fatalf("default session config: %v", err)
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	for name, mod := range map[string]func(*SessionConfig){
		"zero check interval":   func(c *SessionConfig) { c.CheckInterval = 0 },
		"zero idle":             func(c *SessionConfig) { c.IdleTimeout = 0 },
		"zero probe":            func(c *SessionConfig) { c.ProbeTimeout = 0 },
		"zero hello":            func(c *SessionConfig) { c.HelloTimeout = 0 },
		"zero keepalive hint":   func(c *SessionConfig) { c.KeepaliveHint = 0 },
		"hint not below idle":   func(c *SessionConfig) { c.KeepaliveHint = c.IdleTimeout },
		"empty send queue":      func(c *SessionConfig) { c.SendQueue = 0 },
		"negative drain grace":  func(c *SessionConfig) { c.DrainGrace = -1 },
		"negative probe period": func(c *SessionConfig) { c.ProbeTimeout = -time.Second },
	} {
		c := DefaultSessionConfig()
		mod(&c)
		if c.Validate() == nil {
			t.Errorf("%s: Validate accepted %+v", name, c)
		}
		cfg := DefaultConfig()
		cfg.Session = c
		if cfg.Validate() == nil {
			t.Errorf("%s: Config.Validate accepted it", name)
		}
	}
	for name, mod := range map[string]func(*Config){
		"no node name":     func(c *Config) { c.NodeName = "" },
		"small messages":   func(c *Config) { c.MaxRecvBytes = 1000 },
		"zero keepalive":   func(c *Config) { c.KeepaliveTime = 0 },
		"zero ka timeout":  func(c *Config) { c.KeepaliveTimeout = 0 },
		"zero client ping": func(c *Config) { c.MinClientPing = 0 },
		"no write slots":   func(c *Config) { c.WriteInFlight = 0 },
	} {
		c := DefaultConfig()
		mod(&c)
		if c.Validate() == nil {
			t.Errorf("%s: Validate accepted %+v", name, c)
		}
		if _, err := NewServer(c, Deps{}); err == nil {
			t.Errorf("%s: NewServer accepted it", name)
		}
	}
}

// TestSessionHelloReplyComesFirst: whatever the check loop sends (probes
// here), the first message of a session is its HelloReply.
func TestSessionHelloReplyComesFirst(t *testing.T) {
	cfg := testSessionConfig()
	// Probes never expire here: the checker only makes every new session
	// idle, so that Check sends it a probe as early as it can.
	cfg.ProbeTimeout = 100 * 365 * 24 * time.Hour
	e := newEnv(t, envOptions{session: cfg})
	stop := make(chan struct{})
	checkerDone := make(chan struct{})
	go func() {
		defer close(checkerDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			e.clock.Advance(cfg.IdleTimeout)
			e.srv.Sessions().Check()
		}
	}()
	defer func() { close(stop); <-checkerDone }()
	for i := range 200 {
		c := e.openRaw(t)
		c.mustSend(helloMsg(fmt.Sprintf("c-%d", i), nil))
		first, _ := c.waitMsg("first message", 0, func(*regentv1.ServerMessage) bool { return true })
		if first.GetHelloReply() == nil {
			t.Fatalf("session %d: first message is %v, want HelloReply", i, first)
		}
		c.cancel()
	}
}

// A client may send requests right after its Hello, without waiting for
// the HelloReply: they are served in order once the session is open, and
// answered after the HelloReply. Requests behind a refused Hello are not
// served at all.
func TestSessionRequestsPipelinedBehindHello(t *testing.T) {
	e := newEnv(t, envOptions{limits: limitsFrom(t, `{"countLimitPerClientIpDefault":1}`)})
	c := e.openRaw(t)
	c.mustSend(helloMsg("client-p", nil))
	reg := registerMsg("svc-p", inst("10.0.0.1", 80))
	reg.RequestId = 1
	c.mustSend(reg)
	look := &regentv1.ClientMessage{RequestId: 2, Body: &regentv1.ClientMessage_GetService{GetService: &regentv1.GetServiceRequest{Service: svcRef("svc-p")}}}
	c.mustSend(look)
	_, idx := c.waitMsg("the lookup's ack", 0, func(m *regentv1.ServerMessage) bool { return m.GetAck().GetRequestId() == 2 })
	msgs := c.messages()
	if msgs[0].GetHelloReply() == nil {
		t.Fatalf("first message %v, want the HelloReply", msgs[0])
	}
	var acks []uint64
	for _, m := range msgs[1 : idx+1] {
		if a := m.GetAck(); a != nil {
			if a.GetCode() != 0 {
				t.Fatalf("pipelined request refused: %v", a)
			}
			acks = append(acks, a.GetRequestId())
		}
	}
	if !slices.Equal(acks, []uint64{1, 2}) {
		t.Fatalf("acks %v, want 1 then 2", acks)
	}
	if got := msgs[idx].GetAck().GetService().GetSnapshot().GetInstances(); len(got) != 1 || got[0].GetIp() != "10.0.0.1" {
		t.Fatalf("the lookup behind the register lists %v", got)
	}

	// A second client from the same IP is refused: what it sent behind
	// its Hello changes nothing.
	r := e.openRaw(t)
	r.mustSend(helloMsg("client-q", nil))
	reg2 := registerMsg("svc-q", inst("10.0.0.2", 80))
	reg2.RequestId = 1
	r.mustSend(reg2)
	wantCode(t, "refused session", r.waitEnd(), codes.ResourceExhausted)
	if _, err := e.client.GetService(context.Background(), &regentv1.GetServiceRequest{Service: svcRef("svc-q")}); status.Code(err) != codes.NotFound {
		t.Fatalf("svc-q after the refused session: %v, want NotFound", err)
	}
}

func TestServerShutdown(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.srv.SetServing(true)
	c, _ := e.open(t, "c", nil)
	c.requestOK(registerMsg("svc-a", inst("10.0.0.1", 80)))
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.srv.Shutdown(ctx)
	}()
	c.waitMsg("reconnect", 0, isReconnect)
	c.closeSend()
	if err := c.waitEnd(); !errors.Is(err, io.EOF) {
		t.Fatalf("session end: %v, want a clean end", err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last session left")
	}
	waitFor(t, "session removed", func() bool { return e.srv.Sessions().Count() == 0 })
	_, err := e.client.ListMembers(context.Background(), &regentv1.ListMembersRequest{})
	wantCode(t, "call after shutdown", err, codes.Unavailable)
}

func registerAllMsg(entries ...*regentv1.RegisterEphemeral) *regentv1.ClientMessage {
	return &regentv1.ClientMessage{Body: &regentv1.ClientMessage_RegisterAll{RegisterAll: &regentv1.RegisterAll{Services: entries}}}
}

func entry(service string, ins ...*regentv1.Instance) *regentv1.RegisterEphemeral {
	return &regentv1.RegisterEphemeral{Service: svcRef(service), Instances: ins}
}

// TestSessionRegisterAllReplacesEverything: RegisterAll is the SDK's redo
// of its whole wish set; what it does not name goes, what it names stays
// or comes, and a bad entry changes nothing.
func TestSessionRegisterAllReplacesEverything(t *testing.T) {
	e := newEnv(t, envOptions{})
	c, _ := e.open(t, "client-all", nil)
	c.requestOK(registerMsg("svc-a", inst("10.0.0.1", 80), inst("10.0.0.2", 80)))
	c.requestOK(registerMsg("svc-b", inst("10.0.0.3", 80)))

	c.requestOK(registerAllMsg(entry("svc-a", inst("10.0.0.2", 80), inst("10.0.0.4", 80)), entry("svc-c", inst("10.0.0.5", 80))))
	wantAddrs(t, "svc-a", e.listed(t, "svc-a"), "10.0.0.2:80", "10.0.0.4:80")
	wantAddrs(t, "svc-b", e.listed(t, "svc-b"))
	wantAddrs(t, "svc-c", e.listed(t, "svc-c"), "10.0.0.5:80")

	// One bad instance anywhere: refused with InvalidArgument, nothing changes.
	a := c.request(registerAllMsg(entry("svc-a"), entry("svc-c", inst("10.0.0.5", 0))))
	if codes.Code(a.GetCode()) != codes.InvalidArgument {
		t.Fatalf("bad register-all acked %v, want InvalidArgument", a)
	}
	wantAddrs(t, "svc-a after refused", e.listed(t, "svc-a"), "10.0.0.2:80", "10.0.0.4:80")
	wantAddrs(t, "svc-c after refused", e.listed(t, "svc-c"), "10.0.0.5:80")

	// An empty set removes everything of the client.
	c.requestOK(registerAllMsg())
	wantAddrs(t, "svc-a after empty", e.listed(t, "svc-a"))
	wantAddrs(t, "svc-c after empty", e.listed(t, "svc-c"))
}

// TestSessionNothingAppliedAfterItsEnd: a client flooding registers while
// the node ends its session (here as if it had moved) has nothing listed
// once the session is gone: the receiver serves a request either before
// the session's clean-up or not at all.
func TestSessionNothingAppliedAfterItsEnd(t *testing.T) {
	e := newEnv(t, envOptions{})
	for round := range 20 {
		c, _ := e.open(t, fmt.Sprintf("flood-%d", round), nil)
		svc := fmt.Sprintf("flood-%d", round)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 0; ; i++ {
				m := registerMsg(svc, inst(fmt.Sprintf("10.1.%d.%d", i>>8&255, i&255), 80))
				m.RequestId = 0 // no ack: the flood does not wait
				if c.send(m) != nil {
					return
				}
			}
		}()
		waitFor(t, "flood registered", func() bool { return len(e.listed(t, svc)) > 0 })
		e.srv.Sessions().Moved(fmt.Sprintf("flood-%d", round))
		c.waitEnd()
		<-done
		waitFor(t, "session removed", func() bool { return e.srv.Sessions().Count() == 0 })
		if got := e.listed(t, svc); len(got) != 0 {
			t.Fatalf("round %d: %d instances listed after the session ended, want none", round, len(got))
		}
	}
}

// The send queue keeps order, refuses past its bound without blocking,
// makes a blocking push wait for the sender to take messages, and lets
// it give up with its context.
func TestSendQueue(t *testing.T) {
	q := newSendQueue(3)
	msg := func(id uint64) *regentv1.ServerMessage {
		return &regentv1.ServerMessage{Body: &regentv1.ServerMessage_Ack{Ack: &regentv1.Ack{RequestId: id}}}
	}
	for i := range uint64(3) {
		if !q.tryPush(msg(i)) {
			t.Fatalf("push %d refused below the bound", i)
		}
	}
	if q.tryPush(msg(9)) {
		t.Fatal("push past the bound accepted")
	}
	select {
	case <-q.ready:
	default:
		t.Fatal("no ready token with messages queued")
	}
	pushed := make(chan error, 1)
	go func() { pushed <- q.push(context.Background(), msg(3)) }()
	select {
	case err := <-pushed:
		t.Fatalf("push into a full queue returned %v before the sender took anything", err)
	case <-time.After(50 * time.Millisecond):
	}
	var got []uint64
	for _, m := range q.take() {
		got = append(got, m.GetAck().GetRequestId())
	}
	if err := <-pushed; err != nil {
		t.Fatal(err)
	}
	for _, m := range q.take() {
		got = append(got, m.GetAck().GetRequestId())
	}
	if fmt.Sprint(got) != "[0 1 2 3]" {
		t.Fatalf("took %v, want [0 1 2 3] in order", got)
	}
	for range 3 {
		q.tryPush(msg(0))
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	stop := errors.New("session ended")
	cancel(stop)
	if err := q.push(ctx, msg(0)); !errors.Is(err, stop) {
		t.Fatalf("push into a full queue with its session ended: %v, want the session's cause", err)
	}
}
