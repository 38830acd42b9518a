package rpc

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/persistent"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"
	"github.com/regent-registry/regent/storage"
)

func registerReq(id uint64, svc, ip string) *regentv1.WriteRequest {
	return &regentv1.WriteRequest{RequestId: id, Body: &regentv1.WriteRequest_Register{Register: &regentv1.RegisterInstanceRequest{Service: svcRef(svc), Instance: inst(ip, 8080)}}}
}

// Writes on one stream are all served, pipelined, each answered under its
// own id; bad ones get INVALID_ARGUMENT in their reply, change nothing and
// leave the stream going; every reply names the leader.
func TestWriteStream(t *testing.T) {
	e := newEnv(t, envOptions{leader: func() (string, bool) { return "10.9.9.9:7400", true }})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := e.client.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 100
	for i := range n {
		if err := st.Send(registerReq(uint64(i+1), "svc-ws", fmt.Sprintf("10.1.0.%d", i+1))); err != nil {
			t.Fatal(err)
		}
	}
	bad := map[uint64]*regentv1.WriteRequest{
		1001: {RequestId: 1001},                          // no body
		1002: registerReq(1002, "bad name!", "10.1.1.1"), // invalid service
		1003: registerReq(1003, "svc-ws", ""),            // no IP
		1004: {RequestId: 1004, Body: &regentv1.WriteRequest_Register{Register: &regentv1.RegisterInstanceRequest{Service: svcRef("svc-ws"), Instance: &regentv1.Instance{Ip: "10.1.1.2", Port: 80, Ephemeral: true}}}},
	}
	for _, r := range bad {
		if err := st.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Send(registerReq(0, "svc-ws", "10.1.1.3")); err != nil { // no id
		t.Fatal(err)
	}
	del := &regentv1.WriteRequest{RequestId: 2000, Body: &regentv1.WriteRequest_Deregister{Deregister: &regentv1.DeregisterInstanceRequest{Service: svcRef("svc-ws"), Instance: inst("10.1.0.1", 8080)}}}
	seen := map[uint64]*regentv1.WriteReply{}
	for len(seen) < n+len(bad)+1 {
		r, err := st.Recv()
		if err != nil {
			t.Fatalf("after %d replies: %v", len(seen), err)
		}
		if _, dup := seen[r.GetRequestId()]; dup {
			t.Fatalf("two replies for request %d", r.GetRequestId())
		}
		seen[r.GetRequestId()] = r
		if r.GetLeader() != "10.9.9.9:7400" {
			t.Fatalf("reply %d names leader %q", r.GetRequestId(), r.GetLeader())
		}
	}
	for i := range n {
		if r := seen[uint64(i+1)]; r.GetCode() != 0 || r.GetRevision() == 0 {
			t.Fatalf("write %d: code %d (%s), revision %d", i+1, r.GetCode(), r.GetMessage(), r.GetRevision())
		}
	}
	for id := range bad {
		if r := seen[id]; codes.Code(r.GetCode()) != codes.InvalidArgument || r.GetRevision() != 0 || r.GetMessage() == "" {
			t.Fatalf("bad write %d: code %d (%q), revision %d; want INVALID_ARGUMENT", id, r.GetCode(), r.GetMessage(), r.GetRevision())
		}
	}
	if r := seen[0]; codes.Code(r.GetCode()) != codes.InvalidArgument {
		t.Fatalf("write without an id: code %d, want INVALID_ARGUMENT", r.GetCode())
	}
	// The stream still serves, and the deregister lands.
	if err := st.Send(del); err != nil {
		t.Fatal(err)
	}
	if r, err := st.Recv(); err != nil || r.GetRequestId() != 2000 || r.GetCode() != 0 {
		t.Fatalf("deregister after the bad writes: %v %v", r, err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err == nil {
		t.Fatal("the stream went on after CloseSend")
	}
	got, err := e.client.GetService(ctx, &regentv1.GetServiceRequest{Service: svcRef("svc-ws")})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.GetSnapshot().GetInstances()) != n-1 {
		t.Fatalf("%d instances listed, want %d: the bad writes changed something, or a good one is missing", len(got.GetSnapshot().GetInstances()), n-1)
	}
	if w := e.srv.StreamWrites(); w != n+uint64(len(bad))+2 {
		t.Fatalf("%d stream writes counted, want %d", w, n+len(bad)+2)
	}
}

// A stream whose client goes away mid-flight ends the handler: nothing is
// left running (the env's cleanup waits on the server).
func TestWriteStreamClientGone(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	st, err := e.client.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := st.Send(registerReq(uint64(i+1), "svc-gone", fmt.Sprintf("10.2.0.%d", i+1))); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	// The node still serves others.
	if _, err := e.client.RegisterInstance(context.Background(), &regentv1.RegisterInstanceRequest{Service: svcRef("svc-gone"), Instance: inst("10.2.1.1", 80)}); err != nil {
		t.Fatal(err)
	}
}

// deadlineRecorder is the persistent side of a test node that notes the
// deadline each register was given.
type deadlineRecorder struct {
	*persistent.Local
	mu        sync.Mutex
	deadlines []time.Duration // time left at the call; -1: none
}

func (d *deadlineRecorder) Register(ctx context.Context, k naming.ServiceKey, ins []naming.Instance) (uint64, error) {
	left := time.Duration(-1)
	if dl, ok := ctx.Deadline(); ok {
		left = time.Until(dl)
	}
	d.mu.Lock()
	d.deadlines = append(d.deadlines, left)
	d.mu.Unlock()
	return d.Local.Register(ctx, k, ins)
}

// A stream write is bounded by its timeout_ms as a unary call is by its
// deadline (so that a node forwarding it hands the leader that bound); one
// without runs on the stream's context alone.
func TestWriteStreamCarriesEachWritesBound(t *testing.T) {
	rec := &deadlineRecorder{Local: persistent.NewLocal(storage.OpenTest(t))}
	e := newEnv(t, envOptions{per: rec})
	// A stream without a deadline of its own, as the SDK opens it.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := e.client.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bounded := registerReq(1, "svc-bound", "10.3.0.1")
	bounded.TimeoutMs = 3000
	huge := registerReq(3, "svc-bound", "10.3.0.3")
	huge.TimeoutMs = 1 << 62 // capped, not overflowed into the past
	for _, r := range []*regentv1.WriteRequest{bounded, registerReq(2, "svc-bound", "10.3.0.2"), huge} {
		if err := st.Send(r); err != nil {
			t.Fatal(err)
		}
		if rep, err := st.Recv(); err != nil || rep.GetCode() != 0 {
			t.Fatalf("write %d: %v %v", r.GetRequestId(), rep, err)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.deadlines) != 3 {
		t.Fatalf("%d registers reached the persistent side, want 3", len(rec.deadlines))
	}
	if d := rec.deadlines[0]; d <= 2*time.Second || d > 3*time.Second {
		t.Errorf("write with timeout_ms 3000 had %v left, want (2s, 3s]", d)
	}
	if d := rec.deadlines[1]; d != -1 {
		t.Errorf("write without timeout_ms had a deadline %v away", d)
	}
	if d := rec.deadlines[2]; d <= 0 || d > maxWriteTimeout {
		t.Errorf("write with a huge timeout_ms had %v left, want (0, %v]", d, maxWriteTimeout)
	}
}

// A Write stream its client keeps open does not hold a shutdown up: the
// node answers the writes it took, ends the stream with UNAVAILABLE, and
// the graceful stop finishes long before its deadline.
func TestShutdownEndsWriteStreams(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := e.client.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(registerReq(1, "svc-drain", "10.4.0.1")); err != nil {
		t.Fatal(err)
	}
	if r, err := st.Recv(); err != nil || r.GetCode() != 0 {
		t.Fatalf("write before the shutdown: %v %v", r, err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
	defer scancel()
	done := make(chan struct{})
	go func() { e.srv.Shutdown(sctx); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Shutdown still waiting 30 s on an open Write stream")
	}
	if sctx.Err() != nil {
		t.Fatal("Shutdown returned only at its deadline: it stopped hard, not gracefully")
	}
	if _, err := st.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("the stream ended with %v, want UNAVAILABLE", err)
	}
}
