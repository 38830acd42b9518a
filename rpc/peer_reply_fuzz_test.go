package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	clusterv1 "github.com/regent-registry/regent/proto/cluster/v1"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/persistent"
)

// Kinds of peer replies FuzzPeerReplies decodes, by index.
const (
	replySnapshot = iota // a page of the Snapshot call (start-up load)
	replyQuery           // the Query reply (a moving client's state)
	replyVerify          // the Verify reply (ids to re-send)
	replyApply           // a forwarded Raft write's reply
	numReplyKinds
)

func newReply(kind uint8) proto.Message {
	switch int(kind) % numReplyKinds {
	case replySnapshot:
		return &clusterv1.SnapshotResponse{}
	case replyQuery:
		return &clusterv1.QueryResponse{}
	case replyVerify:
		return &clusterv1.VerifyResponse{}
	default:
		return &clusterv1.ApplyResponse{}
	}
}

// replySeeds are valid and invalid peer replies, by corpus file name: the
// "valid-" ones are accepted by the transport, the others refused.
func replySeeds() map[string]struct {
	kind uint8
	msg  proto.Message
} {
	type seed = struct {
		kind uint8
		msg  proto.Message
	}
	w := 2.5
	full := validState("client-1")
	full.Services = append(full.Services, &clusterv1.ServiceInstances{
		Service:   &regentv1.ServiceRef{Namespace: "ns", Group: "g", Service: "providers:com.x:1.0"},
		Instances: []*regentv1.Instance{{Ip: "fe80::1", Port: 65535, Cluster: "c1", Weight: &w, Metadata: map[string]string{"zone": "z1"}}},
	})
	mine := validState("client-3")
	mine.Owner = fuzzNode
	older := validState("client-1")
	older.Version = &clusterv1.Version{Epoch: 1}
	meta, err := persistent.EncodeResult(persistent.Result{Revision: 7, Meta: naming.ServiceMeta{ProtectThreshold: 0.5, Metadata: map[string]string{"k": "v"}}})
	if err != nil {
		panic(err)
	}
	return map[string]seed{
		"valid-snapshot-done":  {replySnapshot, &clusterv1.SnapshotResponse{Clients: []*clusterv1.ClientState{full, validState("client-2")}, Done: true}},
		"valid-snapshot-more":  {replySnapshot, &clusterv1.SnapshotResponse{Clients: []*clusterv1.ClientState{validState("client-2")}, Next: "3:client-2"}},
		"valid-snapshot-empty": {replySnapshot, &clusterv1.SnapshotResponse{Done: true}},
		"valid-snapshot-mine":  {replySnapshot, &clusterv1.SnapshotResponse{Clients: []*clusterv1.ClientState{mine, validState("client-2")}, Done: true}},
		"valid-snapshot-twice": {replySnapshot, &clusterv1.SnapshotResponse{Clients: []*clusterv1.ClientState{older, full}, Done: true}},
		"valid-query":          {replyQuery, &clusterv1.QueryResponse{Clients: []*clusterv1.ClientState{full}}},
		"valid-query-empty":    {replyQuery, &clusterv1.QueryResponse{}},
		"valid-query-others":   {replyQuery, &clusterv1.QueryResponse{Clients: []*clusterv1.ClientState{validState("client-7"), mine}}},
		"valid-verify-match":   {replyVerify, &clusterv1.VerifyResponse{Match: true}},
		"valid-verify-want":    {replyVerify, &clusterv1.VerifyResponse{Want: []string{"client-1", "client-2"}}},
		"valid-apply":          {replyApply, &clusterv1.ApplyResponse{Result: meta}},
		"valid-apply-revision": {replyApply, &clusterv1.ApplyResponse{Result: []byte(`{"Revision":3}`)}},
		"snapshot-bad-port": {replySnapshot, &clusterv1.SnapshotResponse{Done: true, Clients: []*clusterv1.ClientState{
			validState("client-2"), edited("c1", func(s *clusterv1.ClientState) { s.Services[0].Instances[0].Port = 70000 })}}},
		"snapshot-dup-instance": {replySnapshot, &clusterv1.SnapshotResponse{Done: true, Clients: []*clusterv1.ClientState{edited("c1", func(s *clusterv1.ClientState) {
			s.Services[0].Instances = append(s.Services[0].Instances, s.Services[0].Instances[0])
		})}}},
		"snapshot-long-cursor": {replySnapshot, &clusterv1.SnapshotResponse{Next: strings.Repeat("x", maxPeerCursorLen+1)}},
		"snapshot-nil-client":  {replySnapshot, &clusterv1.SnapshotResponse{Done: true, Clients: []*clusterv1.ClientState{nil, validState("client-2")}}},
		"snapshot-epoch-wraps": {replySnapshot, &clusterv1.SnapshotResponse{Done: true, Clients: []*clusterv1.ClientState{edited("c1", func(s *clusterv1.ClientState) { s.Version.Epoch = 1<<64 - 1 })}}},
		"query-bad-id":         {replyQuery, &clusterv1.QueryResponse{Clients: []*clusterv1.ClientState{validState("bad id!")}}},
		"query-no-owner":       {replyQuery, &clusterv1.QueryResponse{Clients: []*clusterv1.ClientState{edited("client-1", func(s *clusterv1.ClientState) { s.Owner = "" })}}},
		"query-zero-version":   {replyQuery, &clusterv1.QueryResponse{Clients: []*clusterv1.ClientState{edited("client-1", func(s *clusterv1.ClientState) { s.Version = nil })}}},
		"verify-bad-want":      {replyVerify, &clusterv1.VerifyResponse{Want: []string{"ok", "not ok"}}},
		"apply-not-json":       {replyApply, &clusterv1.ApplyResponse{Result: []byte("{{")}},
		"apply-empty":          {replyApply, &clusterv1.ApplyResponse{}},
	}
}

// TestPeerReplyFuzzSeeds keeps the checked-in corpus of FuzzPeerReplies in
// step with replySeeds (REGENT_WRITE_CORPUS=1 rewrites it) and checks that
// each seed has the outcome its name says.
func TestPeerReplyFuzzSeeds(t *testing.T) {
	env := newReplyEnv(t)
	for name, s := range replySeeds() {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(s.msg)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("go test fuzz v1\nbyte(%q)\n[]byte(%q)\n", rune(s.kind), b)
		checkCorpusFile(t, "FuzzPeerReplies", name, want)
		t.Run(name, func(t *testing.T) {
			if accepted := env.check(t, s.kind, b); accepted != strings.HasPrefix(name, "valid-") {
				t.Fatalf("accepted = %v", accepted)
			}
		})
	}
}

// FuzzPeerReplies decodes arbitrary bytes as a reply a node gets from a
// peer, serves it from a fake peer over gRPC (bufconn), and has the real
// PeerTransport and a real Distro engine take it: a snapshot page through
// the start-up load, a query reply through a moving client's Connect, a
// verify reply and a forwarded write's reply through the transport.
// Properties: no panic; a reply the decoders refuse fails the call with an
// error (naming.ErrInvalid for Distro replies, persistent.ErrOutcomeUnknown
// for a write's reply: the leader may have applied it) and leaves the
// ephemeral store empty; an accepted reply round-trips through its encoder,
// and the engine ends with the same store as one handed the decoded reply
// in-process (nothing is lost or changed on the wire).
func FuzzPeerReplies(f *testing.F) {
	for _, s := range replySeeds() {
		b, err := proto.Marshal(s.msg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(s.kind, b)
	}
	f.Add(uint8(replySnapshot), []byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f}) // a truncated, oversized length
	env := newReplyEnv(f)
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		env.check(t, kind, data)
	})
}

const (
	fuzzNode = "fuzz-node"
	fuzzPeer = "fuzz-peer"
)

// rawPeer is a fake peer that answers every Distro and Raft call with the
// reply the test set, whatever it holds.
type rawPeer struct {
	clusterv1.UnimplementedDistroServer
	clusterv1.UnimplementedRaftServer

	mu    sync.Mutex
	reply proto.Message
}

func (p *rawPeer) set(m proto.Message) {
	p.mu.Lock()
	p.reply = m
	p.mu.Unlock()
}

func rawReply[T proto.Message](p *rawPeer) (T, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if r, ok := p.reply.(T); ok {
		return r, nil
	}
	var zero T
	return zero, fmt.Errorf("fake peer: no %T set", zero)
}

func (p *rawPeer) Snapshot(context.Context, *clusterv1.SnapshotRequest) (*clusterv1.SnapshotResponse, error) {
	return rawReply[*clusterv1.SnapshotResponse](p)
}

func (p *rawPeer) Query(context.Context, *clusterv1.QueryRequest) (*clusterv1.QueryResponse, error) {
	return rawReply[*clusterv1.QueryResponse](p)
}

func (p *rawPeer) Verify(context.Context, *clusterv1.VerifyRequest) (*clusterv1.VerifyResponse, error) {
	return rawReply[*clusterv1.VerifyResponse](p)
}

func (p *rawPeer) Apply(context.Context, *clusterv1.ApplyRequest) (*clusterv1.ApplyResponse, error) {
	return rawReply[*clusterv1.ApplyResponse](p)
}

type replyEnv struct {
	peer *rawPeer
	tr   *PeerTransport
}

// newReplyEnv serves a rawPeer on bufconn and builds a transport to it.
func newReplyEnv(tb testing.TB) *replyEnv {
	tb.Helper()
	peer := &rawPeer{}
	gs := grpc.NewServer()
	clusterv1.RegisterDistroServer(gs, peer)
	clusterv1.RegisterRaftServer(gs, peer)
	l := bufconn.Listen(1 << 20)
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(l) }()
	tr, err := NewPeerTransport(PeerTransportConfig{
		Resolve:     func(string) (string, bool) { return "passthrough:///fuzz-peer", true },
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.DialContext(ctx) })},
		CallTimeout: 5 * time.Second,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = tr.Close()
		gs.Stop()
		<-done
	})
	return &replyEnv{peer: peer, tr: tr}
}

// loadWatch is a slog handler that reports the outcome of a start-up load.
type loadWatch struct {
	failed chan struct{}
	once   sync.Once
}

func (w *loadWatch) Enabled(context.Context, slog.Level) bool { return true }
func (w *loadWatch) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "start-up load from a peer failed" {
		w.once.Do(func() { close(w.failed) })
	}
	return nil
}
func (w *loadWatch) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *loadWatch) WithGroup(string) slog.Handler      { return w }

// replyEngine is a fresh, never started engine that sees fuzzPeer up.
func replyEngine(t *testing.T, tr ephemeral.Transport) (*ephemeral.Distro, *loadWatch) {
	t.Helper()
	w := &loadWatch{failed: make(chan struct{})}
	cfg := ephemeral.DefaultLocalConfig()
	cfg.Node = fuzzNode
	cfg.LoadRetry = time.Hour // one attempt: a failure is seen in the log
	cfg.Logger = slog.New(w)
	d, err := ephemeral.New(cfg, ephemeral.NewStore(nil), tr)
	if err != nil {
		t.Fatal(err)
	}
	d.PeerUp(fuzzPeer)
	return d, w
}

// load runs one start-up load attempt and reports whether it succeeded.
func load(t *testing.T, d *ephemeral.Distro, w *loadWatch) bool {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Load(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-d.LoadedCh():
		return true
	case <-w.failed:
		return false
	case <-time.After(10 * time.Second):
		t.Fatal("the start-up load neither finished nor failed within 10 s")
		return false
	}
}

// storeState renders everything a store holds.
func storeState(s *ephemeral.Store) string {
	var b strings.Builder
	keys := s.Services()
	slices.SortFunc(keys, func(a, b naming.ServiceKey) int { return strings.Compare(a.String(), b.String()) })
	for _, k := range keys {
		list, _ := s.Instances(k)
		fmt.Fprintf(&b, "%s=%v;", k, list)
	}
	st := s.Stats()
	fmt.Fprintf(&b, " stats=%+v", st)
	return b.String()
}

// fixedReplies is an in-process Transport that answers with decoded
// replies, the reference the gRPC path is compared with.
type fixedReplies struct {
	page  *ephemeral.SnapshotPage
	query *ephemeral.QueryReply
}

func (f fixedReplies) Sync(context.Context, string, *ephemeral.SyncRequest) (*ephemeral.SyncReply, error) {
	return &ephemeral.SyncReply{}, nil
}
func (f fixedReplies) Verify(context.Context, string, *ephemeral.VerifyRequest) (*ephemeral.VerifyReply, error) {
	return &ephemeral.VerifyReply{}, nil
}
func (f fixedReplies) Snapshot(context.Context, string, *ephemeral.SnapshotRequest) (*ephemeral.SnapshotPage, error) {
	return f.page, nil
}
func (f fixedReplies) Query(context.Context, string, *ephemeral.QueryRequest) (*ephemeral.QueryReply, error) {
	return f.query, nil
}

// check runs one input and reports whether the transport accepted it.
func (e *replyEnv) check(t *testing.T, kind uint8, data []byte) bool {
	msg := newReply(kind)
	if proto.Unmarshal(data, msg) != nil {
		return false // gRPC would fail the call before the decoder
	}
	e.peer.set(msg)
	ctx := context.Background()
	refused := func(err error, sentinel error) {
		t.Helper()
		if !errors.Is(err, sentinel) {
			t.Fatalf("refused %T: error %v does not wrap %v", msg, err, sentinel)
		}
	}
	switch p := msg.(type) {
	case *clusterv1.SnapshotResponse:
		want, derr := snapshotPageFromProto(p)
		d, w := replyEngine(t, e.tr)
		loaded := load(t, d, w)
		if derr != nil {
			if loaded {
				t.Fatalf("a page the decoder refuses (%v) loaded", derr)
			}
			if _, err := e.tr.Snapshot(ctx, fuzzPeer, &ephemeral.SnapshotRequest{From: fuzzNode}); err == nil {
				t.Fatalf("the transport accepted a page the decoder refuses: %v", derr)
			} else {
				refused(err, naming.ErrInvalid)
			}
			if st := d.Store().Stats(); st != (ephemeral.Stats{}) {
				t.Fatalf("a refused page reached the store: %+v", st)
			}
			return false
		}
		checkPeerDecode(t, data, func() *clusterv1.SnapshotResponse { return new(clusterv1.SnapshotResponse) }, snapshotPageFromProto, snapshotPageToProto)
		ref, rw := replyEngine(t, fixedReplies{page: want})
		if refLoaded := load(t, ref, rw); refLoaded != loaded || loaded != want.Done {
			t.Fatalf("loaded over gRPC %v, in-process %v, page done %v", loaded, refLoaded, want.Done)
		}
		if got, exp := storeState(d.Store()), storeState(ref.Store()); got != exp {
			t.Fatalf("a page loaded over gRPC left\n%s\nin-process\n%s", got, exp)
		}
		return true
	case *clusterv1.QueryResponse:
		want, derr := queryReplyFromProto(p)
		id := "client-q"
		if len(p.GetClients()) > 0 && naming.ValidateClientID(p.GetClients()[0].GetId()) == nil {
			id = p.GetClients()[0].GetId()
		}
		d, _ := replyEngine(t, e.tr)
		d.Connect(ctx, id, fuzzPeer)
		if derr != nil {
			if _, err := e.tr.Query(ctx, fuzzPeer, &ephemeral.QueryRequest{From: fuzzNode, IDs: []string{id}}); err == nil {
				t.Fatalf("the transport accepted a query reply the decoder refuses: %v", derr)
			} else {
				refused(err, naming.ErrInvalid)
			}
			if st := d.Store().Stats(); st != (ephemeral.Stats{}) {
				t.Fatalf("a refused query reply reached the store: %+v", st)
			}
			return false
		}
		checkPeerDecode(t, data, func() *clusterv1.QueryResponse { return new(clusterv1.QueryResponse) }, queryReplyFromProto, queryReplyToProto)
		ref, _ := replyEngine(t, fixedReplies{query: want})
		ref.Connect(ctx, id, fuzzPeer)
		if got, exp := storeState(d.Store()), storeState(ref.Store()); got != exp {
			t.Fatalf("a query reply over gRPC left\n%s\nin-process\n%s", got, exp)
		}
		return true
	case *clusterv1.VerifyResponse:
		want, derr := verifyReplyFromProto(p)
		got, err := e.tr.Verify(ctx, fuzzPeer, &ephemeral.VerifyRequest{From: fuzzNode})
		if derr != nil {
			if err == nil {
				t.Fatalf("the transport accepted a verify reply the decoder refuses: %v", derr)
			}
			refused(err, naming.ErrInvalid)
			return false
		}
		if err != nil {
			t.Fatalf("the transport refused a verify reply the decoder accepts: %v", err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("verify reply over gRPC %+v, decoded %+v", got, want)
		}
		checkPeerDecode(t, data, func() *clusterv1.VerifyResponse { return new(clusterv1.VerifyResponse) }, verifyReplyFromProto, verifyReplyToProto)
		return true
	case *clusterv1.ApplyResponse:
		got, err := e.tr.Apply(ctx, fuzzPeer, []byte("cmd"))
		want, derr := persistent.DecodeResult(p.GetResult())
		if derr != nil {
			if err == nil {
				t.Fatalf("the transport accepted a write reply that does not decode: %v", derr)
			}
			refused(err, persistent.ErrOutcomeUnknown)
			return false
		}
		if err != nil {
			t.Fatalf("the transport refused a write reply that decodes: %v", err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("write reply over gRPC %+v, decoded %+v", got, want)
		}
		b, err := persistent.EncodeResult(got)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", got, err)
		}
		again, err := persistent.DecodeResult(b)
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Fatalf("write reply round trip: %+v, %v; want %+v", again, err, got)
		}
		return true
	}
	return false
}
