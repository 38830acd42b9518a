package rpc

import (
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regent-registry/regent/proto/regent/v1"
)

// sessionSeed is one input of FuzzSessionMessages: a client message, sent
// as the first message of a stream (first) or after a Hello, a baseline
// register of fuzzBaseService and a subscription to it.
type sessionSeed struct {
	first bool
	msg   proto.Message
}

const fuzzBaseService = "s"

// sessionSeeds are valid and invalid stream messages, by corpus file name:
// the "valid-" ones are accepted (acked OK, or a session opened), the
// others refused.
func sessionSeeds() map[string]sessionSeed {
	w := 2.5
	withID := func(id uint64, m *regentv1.ClientMessage) *regentv1.ClientMessage { m.RequestId = id; return m }
	ping := &regentv1.ClientMessage{RequestId: 9, Body: &regentv1.ClientMessage_Ping{Ping: &regentv1.Ping{}}}
	return map[string]sessionSeed{
		"valid-register":       {false, withID(7, registerMsg(fuzzBaseService, inst("10.0.0.2", 80), &regentv1.Instance{Ip: "fe80::1", Port: 65535, Cluster: "c1", Weight: &w, Metadata: map[string]string{"zone": "z1"}}))},
		"valid-register-no-id": {false, registerMsg("other", inst("10.0.0.3", 1))},
		"valid-deregister":     {false, withID(8, deregisterMsg(fuzzBaseService, inst("10.0.0.1", 80)))},
		"valid-register-all":   {false, withID(10, registerAllMsg(entry("a", inst("10.0.0.4", 80)), entry("a", inst("10.0.0.5", 80)), entry("b")))},
		"valid-register-none":  {false, withID(11, registerAllMsg())},
		"valid-subscribe":      {false, withID(12, subscribeMsg("other", true, "DEFAULT", "c1"))},
		"valid-unsubscribe":    {false, withID(13, unsubscribeMsg(fuzzBaseService))},
		"valid-ping":           {false, ping},
		"valid-ping-max-id":    {false, withID(1<<64-1, &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Ping{Ping: &regentv1.Ping{}}})},
		"valid-probe-reply":    {false, &regentv1.ClientMessage{RequestId: 14, Body: &regentv1.ClientMessage_ProbeReply{ProbeReply: &regentv1.ProbeReply{ProbeId: 3}}}},
		"valid-first-hello":    {true, withID(1, &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Hello{Hello: &regentv1.Hello{ClientId: "c-9", ClientName: "n", SdkVersion: "v", PreviousNode: "elsewhere", Labels: map[string]string{"app": "shop"}}}})},
		"register-port-0":      {false, withID(15, registerMsg(fuzzBaseService, inst("10.0.0.2", 0)))},
		"register-none":        {false, withID(16, registerMsg(fuzzBaseService))},
		"register-bad-ip":      {false, withID(17, registerMsg(fuzzBaseService, inst("-bad-", 80)))},
		"register-good-bad":    {false, withID(18, registerMsg(fuzzBaseService, inst("10.0.0.2", 80), inst("10.0.0.3", 70000)))},
		"register-all-bad":     {false, withID(19, registerAllMsg(entry("a", inst("10.0.0.4", 80)), entry("b c", inst("10.0.0.5", 80))))},
		"deregister-none":      {false, withID(20, deregisterMsg(fuzzBaseService))},
		"deregister-bad":       {false, withID(21, deregisterMsg(fuzzBaseService, inst("10.0.0.1", 0)))},
		"subscribe-bad-svc":    {false, withID(22, subscribeMsg("a/b", false))},
		"subscribe-bad-filter": {false, withID(23, subscribeMsg(fuzzBaseService, false, "a b"))},
		"unsubscribe-bad":      {false, withID(24, unsubscribeMsg(""))},
		"hello-again":          {false, withID(25, helloMsg("client-x", nil))},
		"empty-body":           {false, &regentv1.ClientMessage{RequestId: 26}},
		"valid-get-service":    {false, withID(27, &regentv1.ClientMessage{Body: &regentv1.ClientMessage_GetService{GetService: &regentv1.GetServiceRequest{Service: svcRef(fuzzBaseService), HealthyOnly: true}}})},
		"get-service-lin":      {false, withID(28, &regentv1.ClientMessage{Body: &regentv1.ClientMessage_GetService{GetService: &regentv1.GetServiceRequest{Service: svcRef(fuzzBaseService), Linearizable: true}}})},
		"get-service-unknown":  {false, withID(29, &regentv1.ClientMessage{Body: &regentv1.ClientMessage_GetService{GetService: &regentv1.GetServiceRequest{Service: svcRef("nobody-has-this")}}})},
		"get-service-bad":      {false, withID(30, &regentv1.ClientMessage{Body: &regentv1.ClientMessage_GetService{GetService: &regentv1.GetServiceRequest{}}})},
		"first-register":       {true, withID(1, registerMsg(fuzzBaseService, inst("10.0.0.2", 80)))},
		"first-hello-bad-id":   {true, helloMsg("bad id", nil)},
		"first-hello-long":     {true, &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Hello{Hello: &regentv1.Hello{ClientId: "ok", SdkVersion: strings.Repeat("v", 257)}}}},
		"first-empty":          {true, &regentv1.ClientMessage{}},
	}
}

// TestSessionFuzzSeeds keeps the checked-in corpus of FuzzSessionMessages
// in step with sessionSeeds (REGENT_WRITE_CORPUS=1 rewrites it) and checks
// that each seed has the outcome its name says.
func TestSessionFuzzSeeds(t *testing.T) {
	e := newEnv(t, envOptions{})
	var n atomic.Uint64
	for name, s := range sessionSeeds() {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(s.msg)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("go test fuzz v1\nbool(%v)\n[]byte(%q)\n", s.first, b)
		checkCorpusFile(t, "FuzzSessionMessages", name, want)
		t.Run(name, func(t *testing.T) {
			accepted := checkSessionInput(t, e, &n, s.first, b)
			if valid := strings.HasPrefix(name, "valid-"); valid != accepted {
				t.Fatalf("accepted = %v, want %v", accepted, valid)
			}
		})
	}
}

// FuzzSessionMessages decodes arbitrary bytes as a client's Session stream
// message and sends it over a real stream (bufconn) to the real handler of
// a real server (registry over bbolt, standalone Distro). Properties: no
// panic; no INTERNAL or UNKNOWN, neither in an ack nor as the stream's
// end; every message with a request id is acked; a refused message changes
// neither the client's instances nor its subscriptions; after it the
// session still answers a ping, or it ended with a clear status (then it
// holds nothing any more).
func FuzzSessionMessages(f *testing.F) {
	for _, s := range sessionSeeds() {
		b, err := proto.Marshal(s.msg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(s.first, b)
	}
	f.Add(false, []byte{0x1a, 0xff, 0xff, 0xff, 0xff, 0x0f}) // a truncated, oversized length
	e := newEnv(f, envOptions{})
	var n atomic.Uint64
	f.Fuzz(func(t *testing.T, first bool, data []byte) {
		checkSessionInput(t, e, &n, first, data)
	})
}

// clearCode reports whether a code is one a client can act on: everything
// but INTERNAL and UNKNOWN (a bug or a panic) and OK.
func clearCode(c codes.Code) bool {
	return c != codes.OK && c != codes.Internal && c != codes.Unknown
}

// checkSessionInput runs one input on a fresh session of its own client and
// reports whether the message was accepted: acked OK (or, without a request
// id, not refused by the end of the stream), or, sent first, a session
// opened by it.
func checkSessionInput(t *testing.T, e *testEnv, n *atomic.Uint64, first bool, data []byte) bool {
	var m regentv1.ClientMessage
	if proto.Unmarshal(data, &m) != nil {
		return false // gRPC would refuse the frame before the handler
	}
	clientID := fmt.Sprintf("fuzz-%d", n.Add(1))
	c := e.openRaw(t)
	defer func() {
		c.cancel()
		<-c.done
		waitFor(t, "the fuzzed session removed", func() bool { return e.srv.Sessions().Count() == 0 })
		if got := e.reg.Ephemeral().ClientInstances(clientID); got != nil {
			t.Fatalf("client %s still holds %v after its session ended", clientID, got)
		}
		if m.GetHello() != nil {
			if got := e.reg.Ephemeral().ClientInstances(m.GetHello().GetClientId()); got != nil {
				t.Fatalf("client %s still holds %v after its session ended", m.GetHello().GetClientId(), got)
			}
		}
		waitFor(t, "the fuzzed session's subscriptions removed", func() bool { return e.reg.Subscriptions() == 0 })
	}()

	var before string
	if first {
		clientID = m.GetHello().GetClientId()
	} else {
		c.mustSend(helloMsg(clientID, nil))
		c.waitMsg("HelloReply", 0, func(s *regentv1.ServerMessage) bool { return s.GetHelloReply() != nil })
		c.requestOK(registerMsg(fuzzBaseService, inst("10.0.0.1", 80)))
		c.requestOK(subscribeMsg(fuzzBaseService, false))
		before = sessionState(t, e, clientID)
	}
	if err := c.send(&m); err != nil {
		t.Fatalf("send: %v", err)
	}
	pingID := m.GetRequestId() + 1
	if pingID == 0 {
		pingID = 1
	}
	if err := c.send(&regentv1.ClientMessage{RequestId: pingID, Body: &regentv1.ClientMessage_Ping{Ping: &regentv1.Ping{}}}); err != nil {
		// The stream may already have ended (a refused first message);
		// what ended it is checked below.
		_ = err
	}
	isAck := func(id uint64) func(*regentv1.ServerMessage) bool {
		return func(s *regentv1.ServerMessage) bool { return s.GetAck() != nil && s.GetAck().GetRequestId() == id }
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if slices.ContainsFunc(c.messages(), isAck(pingID)) {
			break
		}
		if ended, err := c.ended(); ended {
			code := status.Code(err)
			if !clearCode(code) {
				t.Fatalf("session ended with %v (%v) after %v", code, err, &m)
			}
			if !first {
				t.Fatalf("an open session ended (%v) after %v", err, &m)
			}
			return false
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ping ack and no end within 5 s after %v", &m)
		}
		time.Sleep(time.Millisecond)
	}
	msgs := c.messages()
	if first {
		if len(msgs) == 0 || msgs[0].GetHelloReply() == nil {
			t.Fatalf("a session opened by %v did not answer HelloReply first: %v", &m, msgs)
		}
		return true
	}
	if m.GetRequestId() == 0 {
		// No ack to read: a message that changed something was accepted.
		return sessionState(t, e, clientID) != before
	}
	i := slices.IndexFunc(msgs, isAck(m.GetRequestId()))
	if i < 0 || i > slices.IndexFunc(msgs, isAck(pingID)) {
		if m.GetProbeReply() != nil {
			return true // a probe reply is never acked
		}
		t.Fatalf("no ack of request %d before the next ping's: %v", m.GetRequestId(), &m)
	}
	ack := msgs[i].GetAck()
	code := codes.Code(ack.GetCode())
	if code == codes.OK {
		return true
	}
	if !clearCode(code) || ack.GetMessage() == "" {
		t.Fatalf("ack %v %q for %v", code, ack.GetMessage(), &m)
	}
	if after := sessionState(t, e, clientID); after != before {
		t.Fatalf("a refused %v (%v) changed the session:\nbefore %s\nafter  %s", &m, code, before, after)
	}
	return false
}

// sessionState renders what a client holds: its instances and its
// session's subscriptions (the session's own set and the registry's count).
func sessionState(t *testing.T, e *testEnv, clientID string) string {
	t.Helper()
	var b strings.Builder
	inst := e.reg.Ephemeral().ClientInstances(clientID)
	keys := make([]string, 0, len(inst))
	for k := range inst {
		keys = append(keys, k.String())
	}
	slices.Sort(keys)
	for _, k := range keys {
		for key, list := range inst {
			if key.String() == k {
				fmt.Fprintf(&b, "%s=%v;", k, list)
			}
		}
	}
	e.srv.sessions.mu.Lock()
	s := e.srv.sessions.byClient[clientID]
	e.srv.sessions.mu.Unlock()
	if s == nil {
		t.Fatalf("client %s has no session", clientID)
	}
	s.subMu.Lock()
	subs := make([]string, 0, len(s.subs))
	for k := range s.subs {
		subs = append(subs, k.String())
	}
	s.subMu.Unlock()
	slices.Sort(subs)
	fmt.Fprintf(&b, " subs=%v registry-subs=%d", subs, e.reg.Subscriptions())
	return b.String()
}
