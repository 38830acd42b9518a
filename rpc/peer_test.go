package rpc

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	clusterv1 "github.com/regent-registry/regent/proto/cluster/v1"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
)

// ---- test network: PeerServers on bufconn listeners ----

// peerNet resolves node names to bufconn listeners. Each Serve gets a fresh
// address, so a node that moves changes address as it would in gossip.
type peerNet struct {
	// mu guards every field.
	mu    sync.Mutex
	addrs map[string]string            // node -> address
	lis   map[string]*bufconn.Listener // address -> listener
	gen   int
}

func newPeerNet() *peerNet {
	return &peerNet{addrs: make(map[string]string), lis: make(map[string]*bufconn.Listener)}
}

// resolve is PeerTransportConfig.Resolve.
func (n *peerNet) resolve(node string) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	a, ok := n.addrs[node]
	if !ok {
		return "", false
	}
	return "passthrough:///" + a, true
}

// setAddr points a node at an address, which may have no listener.
func (n *peerNet) setAddr(node, addr string) {
	n.mu.Lock()
	n.addrs[node] = addr
	n.mu.Unlock()
}

func (n *peerNet) dialer() grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		n.mu.Lock()
		l := n.lis[addr]
		n.mu.Unlock()
		if l == nil {
			return nil, fmt.Errorf("no listener at %s", addr)
		}
		return l.DialContext(ctx)
	})
}

// serve starts a PeerServer for node on a new address and points the node
// at it. The server is shut down at cleanup (or earlier by the test).
func (n *peerNet) serve(t *testing.T, node string, h ephemeral.Handler) *PeerServer {
	t.Helper()
	return n.serveWith(t, node, h, DefaultPeerServerConfig())
}

// serveWith is serve with the server's settings.
func (n *peerNet) serveWith(t *testing.T, node string, h ephemeral.Handler, cfg PeerServerConfig) *PeerServer {
	t.Helper()
	srv, err := NewPeerServer(h, cfg)
	if err != nil {
		t.Fatal(err)
	}
	l := bufconn.Listen(1 << 20)
	n.mu.Lock()
	n.gen++
	addr := fmt.Sprintf("peer-%s-%d", node, n.gen)
	n.lis[addr] = l
	n.addrs[node] = addr
	n.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("serve %s: %v", node, err)
		}
	})
	return srv
}

func (n *peerNet) transport(t *testing.T, cfg PeerTransportConfig) *PeerTransport {
	t.Helper()
	cfg.Resolve = n.resolve
	cfg.DialOptions = append(cfg.DialOptions, n.dialer())
	tr, err := NewPeerTransport(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// rawClient is a plain Distro client to a node, for hand-made requests.
func (n *peerNet) rawClient(t *testing.T, node string) clusterv1.DistroClient {
	t.Helper()
	addr, ok := n.resolve(node)
	if !ok {
		t.Fatalf("no address for %s", node)
	}
	cc, err := grpc.NewClient(addr, n.dialer(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return clusterv1.NewDistroClient(cc)
}

// peerRecorder wraps a Handler: it counts the requests that reach it and
// can acknowledge syncs without applying them (a lost update).
type peerRecorder struct {
	ephemeral.Handler
	calls    atomic.Int64
	dropSync atomic.Bool
	dropped  atomic.Int64
}

func (r *peerRecorder) HandleSync(ctx context.Context, req *ephemeral.SyncRequest) (*ephemeral.SyncReply, error) {
	r.calls.Add(1)
	if r.dropSync.Load() {
		r.dropped.Add(1)
		return &ephemeral.SyncReply{}, nil
	}
	return r.Handler.HandleSync(ctx, req)
}

func (r *peerRecorder) HandleVerify(ctx context.Context, req *ephemeral.VerifyRequest) (*ephemeral.VerifyReply, error) {
	r.calls.Add(1)
	return r.Handler.HandleVerify(ctx, req)
}

func (r *peerRecorder) HandleSnapshot(ctx context.Context, req *ephemeral.SnapshotRequest) (*ephemeral.SnapshotPage, error) {
	r.calls.Add(1)
	return r.Handler.HandleSnapshot(ctx, req)
}

func (r *peerRecorder) HandleQuery(ctx context.Context, req *ephemeral.QueryRequest) (*ephemeral.QueryReply, error) {
	r.calls.Add(1)
	return r.Handler.HandleQuery(ctx, req)
}

// peerStub is a Handler made of functions; a nil one answers empty.
type peerStub struct {
	sync     func(context.Context, *ephemeral.SyncRequest) (*ephemeral.SyncReply, error)
	verify   func(context.Context, *ephemeral.VerifyRequest) (*ephemeral.VerifyReply, error)
	snapshot func(context.Context, *ephemeral.SnapshotRequest) (*ephemeral.SnapshotPage, error)
	query    func(context.Context, *ephemeral.QueryRequest) (*ephemeral.QueryReply, error)
}

func (s *peerStub) HandleSync(ctx context.Context, r *ephemeral.SyncRequest) (*ephemeral.SyncReply, error) {
	if s.sync == nil {
		return &ephemeral.SyncReply{}, nil
	}
	return s.sync(ctx, r)
}

func (s *peerStub) HandleVerify(ctx context.Context, r *ephemeral.VerifyRequest) (*ephemeral.VerifyReply, error) {
	if s.verify == nil {
		return &ephemeral.VerifyReply{}, nil
	}
	return s.verify(ctx, r)
}

func (s *peerStub) HandleSnapshot(ctx context.Context, r *ephemeral.SnapshotRequest) (*ephemeral.SnapshotPage, error) {
	if s.snapshot == nil {
		return &ephemeral.SnapshotPage{Done: true}, nil
	}
	return s.snapshot(ctx, r)
}

func (s *peerStub) HandleQuery(ctx context.Context, r *ephemeral.QueryRequest) (*ephemeral.QueryReply, error) {
	if s.query == nil {
		return &ephemeral.QueryReply{}, nil
	}
	return s.query(ctx, r)
}

// ---- Distro engines over the network ----

type peerNode struct {
	name  string
	d     *ephemeral.Distro
	store *ephemeral.Store
	tr    *PeerTransport
	rec   *peerRecorder
	srv   *PeerServer
}

// startPeerNode builds and starts one engine with its server and
// transport; edit adjusts the engine's config.
func startPeerNode(t *testing.T, n *peerNet, name string, edit func(*ephemeral.Config)) *peerNode {
	t.Helper()
	cfg := ephemeral.DefaultLocalConfig()
	cfg.Node = name
	if edit != nil {
		edit(&cfg)
	}
	store := ephemeral.NewStore(nil)
	tr := n.transport(t, PeerTransportConfig{CallTimeout: 5 * time.Second})
	d, err := ephemeral.New(cfg, store, tr)
	if err != nil {
		t.Fatal(err)
	}
	rec := &peerRecorder{Handler: d}
	srv := n.serve(t, name, rec)
	d.Start(context.Background())
	t.Cleanup(d.Stop) // runs before the server's and transport's cleanups
	return &peerNode{name: name, d: d, store: store, tr: tr, rec: rec, srv: srv}
}

// meshUp tells every node that every other is alive.
func meshUp(nodes ...*peerNode) {
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				a.d.PeerUp(b.name)
			}
		}
	}
}

// peerWait polls cond every 10 ms and fails the test after 10 s.
func peerWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func peerKey(service string) naming.ServiceKey {
	k, err := naming.NormalizeKey(naming.ServiceKey{Service: service})
	if err != nil {
		panic(err)
	}
	return k
}

func peerInst(ip string, port int, md map[string]string) naming.Instance {
	in, err := naming.NormalizeInstance(naming.Instance{IP: ip, Port: port, Weight: 1, Healthy: true, Enabled: true, Ephemeral: true, Metadata: md})
	if err != nil {
		panic(err)
	}
	return in
}

// sameClient reports whether two nodes hold the same instances of a client.
func sameClient(a, b *peerNode, id string) bool {
	ai, bi := a.store.ClientInstances(id), b.store.ClientInstances(id)
	return ai != nil && reflect.DeepEqual(ai, bi)
}

// ---- tests ----

func TestPeerDistroReplicatesAndDeletes(t *testing.T) {
	n := newPeerNet()
	a := startPeerNode(t, n, "a", nil)
	b := startPeerNode(t, n, "b", nil)
	c := startPeerNode(t, n, "c", nil)
	meshUp(a, b, c)

	key := peerKey("orders")
	a.d.Register("client-1", key, []naming.Instance{
		peerInst("10.0.0.1", 8080, map[string]string{"zone": "z1"}),
		peerInst("10.0.0.2", 8080, nil),
	})
	a.d.Register("client-1", peerKey("billing"), []naming.Instance{peerInst("svc.example.com", 9090, nil)})
	for _, p := range []*peerNode{b, c} {
		peerWait(t, "client-1 replicated to "+p.name, func() bool { return sameClient(a, p, "client-1") })
		owner, v, ok := p.d.ClientVersion("client-1")
		_, av, _ := a.d.ClientVersion("client-1")
		if !ok || owner != "a" || v != av {
			t.Fatalf("%s: client-1 owner %q version %v ok %v, want a %v", p.name, owner, v, ok, av)
		}
		if info, _ := p.store.Client("client-1"); info.Owner != "a" || info.Instances != 3 {
			t.Fatalf("%s: store has %+v", p.name, info)
		}
	}
	if got, _ := b.store.Instances(key); len(got) != 2 || !got[0].Ephemeral || got[0].Metadata["zone"] != "z1" {
		t.Fatalf("b's instances of orders: %+v", got)
	}

	a.d.Disconnect("client-1")
	for _, p := range []*peerNode{b, c} {
		peerWait(t, "client-1 deleted on "+p.name, func() bool {
			_, inStore := p.store.Client("client-1")
			_, _, inEngine := p.d.ClientVersion("client-1")
			return !inStore && !inEngine
		})
	}
	if s := a.tr.Sent()[PeerKindSync]; s.Messages < 2 || s.Bytes == 0 {
		t.Fatalf("a sent syncs %+v, want at least the change and the delete", s)
	}
}

// A change of one instance of a client holding many goes over gRPC as a
// delta, a fraction of the client's state in bytes, and the peer ends with
// the owner's state.
func TestPeerDistroSendsDeltas(t *testing.T) {
	n := newPeerNet()
	a := startPeerNode(t, n, "a", nil)
	b := startPeerNode(t, n, "b", nil)
	meshUp(a, b)
	key := peerKey("many")
	var all []naming.Instance
	for i := range 50 {
		all = append(all, peerInst("10.3.0.1", 1000+i, map[string]string{"zone": "z1"}))
	}
	a.d.Register("client-d", key, all)
	peerWait(t, "client-d replicated", func() bool { return sameClient(a, b, "client-d") })
	full := a.tr.Sent()[PeerKindSync].Bytes
	// A reply tells a that b takes deltas; from then on changes go as
	// deltas. A change sent before a read that reply goes whole, so puts
	// go on until one has gone as a delta.
	puts := 0
	for ; a.d.Stats().SyncDeltas == 0; puts++ {
		if puts == 100 {
			t.Fatal("no change went as a delta after 100 puts")
		}
		a.d.Register("client-d", key, []naming.Instance{peerInst("10.3.0.1", 2000+puts, nil)})
		peerWait(t, "the put replicated", func() bool { return sameClient(a, b, "client-d") })
	}
	before, deltasBefore := a.tr.Sent()[PeerKindSync].Bytes, a.d.Stats().SyncDeltas
	a.d.Deregister("client-d", key, []naming.InstanceID{{IP: "10.3.0.1", Port: 1000, Cluster: "DEFAULT"}})
	a.d.Register("client-d", key, []naming.Instance{peerInst("10.3.0.1", 1001, map[string]string{"zone": "z2"})})
	// The two changes may go as one batch: one delta or two.
	peerWait(t, "the removal and update replicated", func() bool {
		return sameClient(a, b, "client-d") && a.d.Stats().SyncDeltas > deltasBefore
	})
	// 50, one more per put, one fewer for the removal (1001 is updated).
	if got, _ := b.store.Instances(key); len(got) != 50+puts-1 {
		t.Fatalf("b lists %d instances, want %d", len(got), 50+puts-1)
	}
	if delta := a.tr.Sent()[PeerKindSync].Bytes - before; delta*5 > full {
		t.Fatalf("the delta syncs took %d bytes, the whole state %d: want under a fifth", delta, full)
	}
}

func TestPeerDistroVerifyRepairsLostSync(t *testing.T) {
	n := newPeerNet()
	a := startPeerNode(t, n, "a", nil)
	b := startPeerNode(t, n, "b", nil)
	// b acknowledges a's syncs without applying them: a believes b has the
	// client, so only a verify round can find and repair the loss.
	b.rec.dropSync.Store(true)
	meshUp(a, b)

	// Counted before the register: a repair sent while b still dropped
	// syncs may land after the drop ends, and it is the one that repairs.
	repairsBefore := a.d.Stats().Repairs
	a.d.Register("client-v", peerKey("svc-v"), []naming.Instance{peerInst("10.1.0.1", 80, nil)})
	peerWait(t, "b received and dropped a sync", func() bool { return b.rec.dropped.Load() > 0 })
	if _, ok := b.store.Client("client-v"); ok {
		t.Fatal("b applied a sync it should have dropped")
	}
	b.rec.dropSync.Store(false)

	peerWait(t, "verify repairs client-v on b", func() bool { return sameClient(a, b, "client-v") })
	if got := a.d.Stats().Repairs; got <= repairsBefore {
		t.Fatalf("repairs %d -> %d: b got the client some other way than verify", repairsBefore, got)
	}
	if s := a.tr.Sent()[PeerKindVerifyList]; s.Messages == 0 {
		t.Fatalf("a sent no verify list: %+v", a.tr.Sent())
	}
}

func TestPeerSnapshotPaging(t *testing.T) {
	n := newPeerNet()
	a := startPeerNode(t, n, "a", nil)
	const clients = 150
	for i := range clients {
		a.d.Register(fmt.Sprintf("client-%03d", i), peerKey(fmt.Sprintf("svc-%d", i%7)),
			[]naming.Instance{peerInst(fmt.Sprintf("10.2.%d.%d", i/250, i%250+1), 1000+i, nil)})
	}

	// By hand, with a small page budget.
	tr := n.transport(t, PeerTransportConfig{})
	ctx := context.Background()
	seen := make(map[string]bool)
	pages, cursor := 0, ""
	for {
		page, err := tr.Snapshot(ctx, "a", &ephemeral.SnapshotRequest{From: "x", Cursor: cursor, MaxBytes: 1024})
		if err != nil {
			t.Fatalf("page %d: %v", pages, err)
		}
		pages++
		for _, st := range page.Clients {
			if seen[st.ID] {
				t.Fatalf("client %s on two pages", st.ID)
			}
			seen[st.ID] = true
			want := a.store.ClientInstances(st.ID)
			got := make(map[naming.ServiceKey][]naming.Instance)
			for _, s := range st.Services {
				got[s.Key] = s.Instances
			}
			if st.Owner != "a" || !reflect.DeepEqual(got, want) {
				t.Fatalf("client %s: owner %q services %+v, want a %+v", st.ID, st.Owner, got, want)
			}
		}
		if page.Done {
			break
		}
		if page.Next == "" || page.Next == cursor {
			t.Fatalf("page %d makes no progress (next %q)", pages, page.Next)
		}
		cursor = page.Next
	}
	if len(seen) != clients || pages < 5 {
		t.Fatalf("%d clients in %d pages, want %d in several", len(seen), pages, clients)
	}
	if got := tr.Sent()[PeerKindSnapshot].Messages; got != uint64(pages) {
		t.Fatalf("counted %d snapshot messages for %d pages", got, pages)
	}

	// A cursor a did not issue.
	_, err := tr.Snapshot(ctx, "a", &ephemeral.SnapshotRequest{From: "x", Cursor: "no-such-cursor"})
	if !errors.Is(err, naming.ErrInvalid) || status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad cursor: %v (code %v), want InvalidArgument", err, status.Code(err))
	}

	// A starting engine loads everything, page by page.
	c := startPeerNode(t, n, "c", func(cfg *ephemeral.Config) { cfg.MaxBatchBytes = 1024 })
	c.d.PeerUp("a")
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.d.Load(lctx); err != nil {
		t.Fatal(err)
	}
	if !c.d.Loaded() || c.store.Stats().Clients != clients {
		t.Fatalf("c loaded %d clients (loaded=%v), want %d", c.store.Stats().Clients, c.d.Loaded(), clients)
	}
	if got := c.tr.Sent()[PeerKindSnapshot].Messages; got < 5 {
		t.Fatalf("c loaded in %d pages, want several", got)
	}
	if !sameClient(a, c, "client-042") {
		t.Fatal("client-042 differs between a and c")
	}
}

func TestPeerQuery(t *testing.T) {
	n := newPeerNet()
	a := startPeerNode(t, n, "a", nil)
	b := startPeerNode(t, n, "b", nil)
	key := peerKey("svc-q")
	a.d.Register("client-q", key, []naming.Instance{peerInst("10.3.0.1", 7000, map[string]string{"v": "1"})})

	rep, err := b.tr.Query(context.Background(), "a", &ephemeral.QueryRequest{From: "b", IDs: []string{"client-q", "client-none"}})
	if err != nil {
		t.Fatal(err)
	}
	_, av, _ := a.d.ClientVersion("client-q")
	want := ephemeral.ClientState{ID: "client-q", Owner: "a", Version: av, Services: []ephemeral.ServiceInstances{
		{Key: key, Instances: a.store.ClientInstances("client-q")[key]},
	}}
	if len(rep.Clients) != 1 || !reflect.DeepEqual(rep.Clients[0], want) {
		t.Fatalf("query reply %+v, want [%+v]", rep.Clients, want)
	}

	// The engine's path: the client reconnects to b, which has no copy
	// (a never synced to b), asks a, and takes it over.
	b.d.PeerUp("a")
	b.d.Connect(context.Background(), "client-q", "a")
	if !b.d.Owns("client-q") || !sameClient(a, b, "client-q") {
		t.Fatalf("b owns client-q: %v; instances %+v", b.d.Owns("client-q"), b.store.ClientInstances("client-q"))
	}
	if got := b.tr.Sent()[PeerKindQuery].Messages; got != 2 {
		t.Fatalf("b sent %d queries, want 2", got)
	}
	// b syncs its takeover to a, which gives the client up.
	peerWait(t, "a sees b as owner", func() bool { o, _, _ := a.d.ClientVersion("client-q"); return o == "b" })
}

// validState is a well-formed client state for hand-made requests.
func validState(id string) *clusterv1.ClientState {
	return &clusterv1.ClientState{
		Id: id, Owner: "a", Version: &clusterv1.Version{Epoch: 1, Seq: 1},
		Services: []*clusterv1.ServiceInstances{{
			Service:   &regentv1.ServiceRef{Service: "svc"},
			Instances: []*regentv1.Instance{{Ip: "10.0.0.1", Port: 80}},
		}},
	}
}

// edited returns validState(id) changed by f.
func edited(id string, f func(*clusterv1.ClientState)) *clusterv1.ClientState {
	s := validState(id)
	f(s)
	return s
}

func syncOf(states ...*clusterv1.ClientState) *clusterv1.SyncRequest {
	return &clusterv1.SyncRequest{From: "a", Changes: states}
}

func TestPeerServerRejectsInvalidInput(t *testing.T) {
	n := newPeerNet()
	b := startPeerNode(t, n, "b", nil)
	c := n.rawClient(t, "b")
	ctx := context.Background()
	inst := func(ip string, port uint32) []*regentv1.Instance { return []*regentv1.Instance{{Ip: ip, Port: port}} }

	manyIDs := make([]string, MaxPeerEntries+1)
	for i := range manyIDs {
		manyIDs[i] = "c"
	}
	bigMeta := make(map[string]string)
	for i := range naming.MaxMetadataEntries + 1 {
		bigMeta[fmt.Sprint("k", i)] = "v"
	}

	cases := []struct {
		name string
		call func() error
	}{
		{"sync bad client id", func() error { _, err := c.Sync(ctx, syncOf(validState("bad id!"))); return err }},
		{"sync empty client id", func() error { _, err := c.Sync(ctx, syncOf(validState(""))); return err }},
		{"sync bad ip", func() error {
			_, err := c.Sync(ctx, syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Services[0].Instances = inst("not an ip!", 80) })))
			return err
		}},
		{"sync port 0", func() error {
			_, err := c.Sync(ctx, syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Services[0].Instances = inst("10.0.0.1", 0) })))
			return err
		}},
		{"sync port 70000", func() error {
			_, err := c.Sync(ctx, syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Services[0].Instances = inst("10.0.0.1", 70000) })))
			return err
		}},
		{"sync negative weight", func() error {
			_, err := c.Sync(ctx, syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Services[0].Instances[0].Weight = proto.Float64(-1) })))
			return err
		}},
		{"sync too much metadata", func() error {
			_, err := c.Sync(ctx, syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Services[0].Instances[0].Metadata = bigMeta })))
			return err
		}},
		{"sync empty owner", func() error {
			_, err := c.Sync(ctx, syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Owner = "" })))
			return err
		}},
		{"sync owner too long", func() error {
			_, err := c.Sync(ctx, syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Owner = strings.Repeat("n", MaxPeerNodeNameLen+1) })))
			return err
		}},
		{"sync owner with control character", func() error {
			_, err := c.Sync(ctx, syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Owner = "a\n" })))
			return err
		}},
		{"sync zero version", func() error {
			_, err := c.Sync(ctx, syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Version = nil })))
			return err
		}},
		{"sync epoch that would wrap", func() error {
			_, err := c.Sync(ctx, syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Version.Epoch = 1<<64 - 1 })))
			return err
		}},
		{"sync seq that would wrap", func() error {
			_, err := c.Sync(ctx, syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Version.Seq = 1<<64 - 1 })))
			return err
		}},
		{"sync bad service name", func() error {
			_, err := c.Sync(ctx, syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Services[0].Service.Service = "a/b" })))
			return err
		}},
		{"sync missing service", func() error {
			_, err := c.Sync(ctx, syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Services[0].Service = nil })))
			return err
		}},
		{"sync service twice (after defaults)", func() error {
			_, err := c.Sync(ctx, syncOf(edited("c1", func(s *clusterv1.ClientState) {
				s.Services = append(s.Services, &clusterv1.ServiceInstances{
					Service:   &regentv1.ServiceRef{Namespace: "public", Group: "DEFAULT_GROUP", Service: "svc"},
					Instances: inst("10.0.0.9", 80),
				})
			})))
			return err
		}},
		{"sync instance twice (after defaults)", func() error {
			_, err := c.Sync(ctx, syncOf(edited("c1", func(s *clusterv1.ClientState) {
				s.Services[0].Instances = append(s.Services[0].Instances, &regentv1.Instance{Ip: "10.0.0.1", Port: 80, Cluster: "DEFAULT"})
			})))
			return err
		}},
		{"sync empty from", func() error {
			r := syncOf(validState("c1"))
			r.From = ""
			_, err := c.Sync(ctx, r)
			return err
		}},
		{"sync valid change then an invalid one", func() error {
			_, err := c.Sync(ctx, syncOf(validState("c1"), validState("bad id!")))
			return err
		}},
		{"sync delete with bad id", func() error {
			_, err := c.Sync(ctx, &clusterv1.SyncRequest{From: "a", Deletes: []*clusterv1.Tombstone{{Id: "x y", Owner: "a", Version: &clusterv1.Version{Epoch: 1}}}})
			return err
		}},
		{"sync delete with empty owner", func() error {
			_, err := c.Sync(ctx, &clusterv1.SyncRequest{From: "a", Deletes: []*clusterv1.Tombstone{{Id: "c1", Version: &clusterv1.Version{Epoch: 1}}}})
			return err
		}},
		{"sync too many entries", func() error {
			r := &clusterv1.SyncRequest{From: "a", Deletes: make([]*clusterv1.Tombstone, MaxPeerEntries+1)}
			for i := range r.Deletes {
				r.Deletes[i] = &clusterv1.Tombstone{Id: "c", Owner: "a", Version: &clusterv1.Version{Epoch: 1}}
			}
			_, err := c.Sync(ctx, r)
			return err
		}},
		{"verify empty from", func() error { _, err := c.Verify(ctx, &clusterv1.VerifyRequest{}); return err }},
		{"verify from this node", func() error { _, err := c.Verify(ctx, &clusterv1.VerifyRequest{From: "b"}); return err }},
		{"verify digest with clients", func() error {
			_, err := c.Verify(ctx, &clusterv1.VerifyRequest{From: "a", Clients: []*clusterv1.ClientVersion{{Id: "c1", Version: &clusterv1.Version{Epoch: 1}}}})
			return err
		}},
		{"verify list with bad id", func() error {
			_, err := c.Verify(ctx, &clusterv1.VerifyRequest{From: "a", List: true, Clients: []*clusterv1.ClientVersion{{Id: "", Version: &clusterv1.Version{Epoch: 1}}}})
			return err
		}},
		{"query bad id", func() error {
			_, err := c.Query(ctx, &clusterv1.QueryRequest{From: "a", Ids: []string{"ok", "no way"}})
			return err
		}},
		{"query too many ids", func() error { _, err := c.Query(ctx, &clusterv1.QueryRequest{From: "a", Ids: manyIDs}); return err }},
		{"snapshot empty from", func() error { _, err := c.Snapshot(ctx, &clusterv1.SnapshotRequest{}); return err }},
		{"snapshot cursor too long", func() error {
			_, err := c.Snapshot(ctx, &clusterv1.SnapshotRequest{From: "a", Cursor: strings.Repeat("1", 600)})
			return err
		}},
	}
	for _, tc := range cases {
		err := tc.call()
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: got %v, want InvalidArgument", tc.name, err)
		}
	}
	// "verify from this node" is the engine's own check; every other case
	// must have been refused before the handler.
	if got := b.rec.calls.Load(); got != 1 {
		t.Errorf("%d invalid requests reached the handler, want only the one the engine refuses", got)
	}
	if st := b.store.Stats(); st != (ephemeral.Stats{}) {
		t.Errorf("store changed: %+v", st)
	}
	if st := b.d.Stats(); st.Clients != 0 || st.Tombstones != 0 || st.Applied != 0 {
		t.Errorf("engine changed: %+v", st)
	}

	// The same connection still serves a valid request.
	rep, err := c.Sync(ctx, syncOf(validState("c1")))
	if err != nil || rep.GetApplied() != 1 {
		t.Fatalf("valid sync: %v, %v", rep, err)
	}
	if info, ok := b.store.Client("c1"); !ok || info.Owner != "a" || info.Instances != 1 {
		t.Fatalf("valid sync not applied: %+v", info)
	}
}

func TestPeerTransportUnreachable(t *testing.T) {
	n := newPeerNet()
	tr := n.transport(t, PeerTransportConfig{})
	ctx := context.Background()
	req := &ephemeral.SyncRequest{From: "a"}

	_, err := tr.Sync(ctx, "nobody", req)
	if !errors.Is(err, ephemeral.ErrUnreachable) {
		t.Fatalf("unknown node: %v", err)
	}
	if s := tr.Sent()[PeerKindSync]; s.Messages != 0 {
		t.Fatalf("a message to an unknown node was counted: %+v", s)
	}

	n.setAddr("ghost", "nothing-listens-here")
	_, err = tr.Sync(ctx, "ghost", req)
	if !errors.Is(err, ephemeral.ErrUnreachable) || status.Code(err) != codes.Unavailable {
		t.Fatalf("node without a listener: %v (code %v)", err, status.Code(err))
	}

	release := make(chan struct{})
	defer close(release)
	n.serve(t, "stopped", &peerStub{
		sync: func(context.Context, *ephemeral.SyncRequest) (*ephemeral.SyncReply, error) {
			return nil, fmt.Errorf("wrapped: %w", ephemeral.ErrStopped)
		},
		verify: func(ctx context.Context, _ *ephemeral.VerifyRequest) (*ephemeral.VerifyReply, error) {
			select {
			case <-ctx.Done():
			case <-release:
			}
			return nil, ctx.Err()
		},
	})
	_, err = tr.Sync(ctx, "stopped", req)
	if !errors.Is(err, ephemeral.ErrUnreachable) || status.Code(err) != codes.Unavailable {
		t.Fatalf("stopped engine: %v (code %v)", err, status.Code(err))
	}

	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err = tr.Verify(tctx, "stopped", &ephemeral.VerifyRequest{From: "a"})
	if !errors.Is(err, ephemeral.ErrUnreachable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow peer: %v", err)
	}

	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err = tr.Sync(ctx, "stopped", req); !errors.Is(err, ephemeral.ErrUnreachable) {
		t.Fatalf("after Close: %v", err)
	}
	if err := tr.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// counterValues reads a counter vector by kind from a registry.
func counterValues(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]float64)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" {
					out[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

func TestPeerTransportCounters(t *testing.T) {
	n := newPeerNet()
	n.serve(t, "b", &peerStub{})
	reg := prometheus.NewRegistry()
	tr := n.transport(t, PeerTransportConfig{Metrics: reg})
	ctx := context.Background()

	sync := &ephemeral.SyncRequest{From: "a",
		Changes: []ephemeral.ClientState{{ID: "c1", Owner: "a", Version: ephemeral.Version{Epoch: 5, Seq: 2},
			Services: []ephemeral.ServiceInstances{{Key: peerKey("svc"), Instances: []naming.Instance{peerInst("10.0.0.1", 80, nil)}}}}},
		Deletes: []ephemeral.Tombstone{{ID: "c2", Owner: "a", Version: ephemeral.Version{Epoch: 3}}},
	}
	verify := &ephemeral.VerifyRequest{From: "a", Digest: ephemeral.Digest{Count: 1, Xor: 7, Sum: 7}}
	list := &ephemeral.VerifyRequest{From: "a", List: true, Clients: []ephemeral.ClientVersion{{ID: "c1", Version: ephemeral.Version{Epoch: 5}}}}
	snap := &ephemeral.SnapshotRequest{From: "a", MaxBytes: 4096}
	query := &ephemeral.QueryRequest{From: "a", IDs: []string{"c1", "c2"}}
	for range 2 {
		if _, err := tr.Sync(ctx, "b", sync); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tr.Verify(ctx, "b", verify); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Verify(ctx, "b", list); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Snapshot(ctx, "b", snap); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Query(ctx, "b", query); err != nil {
		t.Fatal(err)
	}

	size := func(m proto.Message) uint64 { return uint64(proto.Size(m)) }
	want := map[string]PeerTraffic{
		PeerKindSync:       {2, 2 * size(syncRequestToProto(sync))},
		PeerKindVerify:     {1, size(verifyRequestToProto(verify))},
		PeerKindVerifyList: {1, size(verifyRequestToProto(list))},
		PeerKindSnapshot:   {1, size(snapshotRequestToProto(snap))},
		PeerKindQuery:      {1, size(queryRequestToProto(query))},
	}
	if got := tr.Sent(); !maps.Equal(got, want) {
		t.Fatalf("Sent() = %v, want %v", got, want)
	}
	if want[PeerKindSync].Bytes < 40 {
		t.Fatalf("sync encodes to %d bytes: the size is not the message's", want[PeerKindSync].Bytes)
	}
	msgs := counterValues(t, reg, "regent_distro_sent_messages_total")
	bytes := counterValues(t, reg, "regent_distro_sent_bytes_total")
	for k, w := range want {
		if msgs[k] != float64(w.Messages) || bytes[k] != float64(w.Bytes) {
			t.Errorf("kind %s: metrics %v messages %v bytes, want %+v", k, msgs[k], bytes[k], w)
		}
	}

	// A second transport on the same registry shares the counters.
	tr2 := n.transport(t, PeerTransportConfig{Metrics: reg})
	if _, err := tr2.Query(ctx, "b", query); err != nil {
		t.Fatal(err)
	}
	if got := counterValues(t, reg, "regent_distro_sent_messages_total")[PeerKindQuery]; got != 2 {
		t.Fatalf("shared query counter %v, want 2", got)
	}
	if got := tr2.Sent()[PeerKindQuery].Messages; got != 1 {
		t.Fatalf("tr2 counted %d queries, want its own 1", got)
	}
}

func TestPeerTransportRedialsWhenAddressChanges(t *testing.T) {
	n := newPeerNet()
	var first, second atomic.Int64
	srv1 := n.serve(t, "b", &peerStub{sync: func(context.Context, *ephemeral.SyncRequest) (*ephemeral.SyncReply, error) {
		first.Add(1)
		return &ephemeral.SyncReply{Applied: 1}, nil
	}})
	tr := n.transport(t, PeerTransportConfig{})
	ctx := context.Background()
	if rep, err := tr.Sync(ctx, "b", &ephemeral.SyncRequest{From: "a"}); err != nil || rep.Applied != 1 {
		t.Fatalf("first sync: %+v, %v", rep, err)
	}

	// b restarts on a new address; the old server goes away.
	n.serve(t, "b", &peerStub{sync: func(context.Context, *ephemeral.SyncRequest) (*ephemeral.SyncReply, error) {
		second.Add(1)
		return &ephemeral.SyncReply{Applied: 2}, nil
	}})
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	srv1.Shutdown(sctx)
	cancel()
	if rep, err := tr.Sync(ctx, "b", &ephemeral.SyncRequest{From: "a"}); err != nil || rep.Applied != 2 {
		t.Fatalf("sync after the move: %+v, %v", rep, err)
	}
	if first.Load() != 1 || second.Load() != 1 {
		t.Fatalf("calls: old server %d, new server %d; want 1 and 1", first.Load(), second.Load())
	}
	tr.mu.Lock()
	conns := len(tr.conns)
	tr.mu.Unlock()
	if conns != 1 {
		t.Fatalf("%d connections kept, want 1", conns)
	}
}

func TestPeerServerRecoversPanic(t *testing.T) {
	n := newPeerNet()
	n.serve(t, "b", &peerStub{query: func(context.Context, *ephemeral.QueryRequest) (*ephemeral.QueryReply, error) {
		panic("boom")
	}})
	tr := n.transport(t, PeerTransportConfig{})
	ctx := context.Background()
	_, err := tr.Query(ctx, "b", &ephemeral.QueryRequest{From: "a", IDs: []string{"c1"}})
	if status.Code(err) != codes.Internal || errors.Is(err, ephemeral.ErrUnreachable) {
		t.Fatalf("panicking handler: %v", err)
	}
	if _, err := tr.Sync(ctx, "b", &ephemeral.SyncRequest{From: "a"}); err != nil {
		t.Fatalf("server broken after a panic: %v", err)
	}
}

func TestPeerServerHealthAndShutdown(t *testing.T) {
	// A call that never ends holds GracefulStop; Shutdown cuts it off when
	// its ctx ends, or after PeerStopGrace if ctx never does (a paused
	// peer's connection holds GracefulStop just the same).
	for _, tc := range []struct {
		name     string
		timeout  time.Duration // 0: a ctx that never ends
		min, max time.Duration
	}{
		{"ctx ends first", 200 * time.Millisecond, 150 * time.Millisecond, 5 * time.Second},
		{"grace ends first", 0, PeerStopGrace * 3 / 4, 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) { testPeerShutdown(t, tc.timeout, tc.min, tc.max) })
	}
}

func testPeerShutdown(t *testing.T, timeout, minTook, maxTook time.Duration) {
	n := newPeerNet()
	entered := make(chan struct{})
	release := make(chan struct{})
	srv, err := NewPeerServer(&peerStub{sync: func(ctx context.Context, _ *ephemeral.SyncRequest) (*ephemeral.SyncReply, error) {
		close(entered)
		<-release // ignores ctx: only a hard stop gets rid of it
		return &ephemeral.SyncReply{}, nil
	}}, PeerServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	defer unblock()
	l := bufconn.Listen(1 << 20)
	n.mu.Lock()
	n.lis["solo"], n.addrs["b"] = l, "solo"
	n.mu.Unlock()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	cc, err := grpc.NewClient("passthrough:///solo", n.dialer(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx := context.Background()
	hc := healthpb.NewHealthClient(cc)
	for _, svc := range []string{"", clusterv1.Distro_ServiceDesc.ServiceName} {
		rep, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || rep.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health of %q: %v, %v", svc, rep, err)
		}
	}

	callErr := make(chan error, 1)
	go func() {
		_, err := clusterv1.NewDistroClient(cc).Sync(ctx, &clusterv1.SyncRequest{From: "a"})
		callErr <- err
	}()
	<-entered
	sctx, cancel := context.WithCancel(ctx)
	if timeout > 0 {
		sctx, cancel = context.WithTimeout(ctx, timeout)
	}
	defer cancel()
	start := time.Now()
	srv.Shutdown(sctx) // the call never ends: GracefulStop waits, Stop cuts it off
	if d := time.Since(start); d < minTook || d > maxTook {
		t.Fatalf("Shutdown took %v, want between %v and %v", d, minTook, maxTook)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
	if err := <-callErr; status.Code(err) != codes.Unavailable {
		t.Fatalf("call cut off by Shutdown: %v", err)
	}
	unblock()
	srv.Shutdown(ctx) // idempotent; returns once the handler has ended
}

func TestPeerConvertRoundTrip(t *testing.T) {
	st := ephemeral.ClientState{ID: "client-1", Owner: "node a", Version: ephemeral.Version{Epoch: 1 << 50, Seq: 3},
		Services: []ephemeral.ServiceInstances{
			{Key: peerKey("svc-a"), Instances: []naming.Instance{
				peerInst("10.0.0.1", 80, map[string]string{"k": "v"}),
				{IP: "fe80::1", Port: 65535, Cluster: "c2", Weight: 0, Healthy: false, Enabled: false, Ephemeral: true},
			}},
			{Key: naming.ServiceKey{Namespace: "ns", Group: "g", Service: "providers:com.x:1.0"}},
		}}
	check := func(what string, got, want any, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s:\n got %+v\nwant %+v", what, got, want)
		}
	}
	// Every message crosses the wire as bytes, as it would between nodes.
	wire := func(m proto.Message, into proto.Message) {
		t.Helper()
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := proto.Unmarshal(b, into); err != nil {
			t.Fatal(err)
		}
	}

	delta := ephemeral.ClientDelta{ID: "client-3", Owner: "node a", Base: ephemeral.Version{Epoch: 1 << 50, Seq: 3}, Version: ephemeral.Version{Epoch: 1 << 50, Seq: 5},
		Services: []ephemeral.ServiceDelta{
			{Key: peerKey("svc-a"), Put: []naming.Instance{peerInst("10.0.0.2", 81, map[string]string{"k": "w"})},
				Removed: []naming.InstanceID{{IP: "10.0.0.1", Port: 80, Cluster: "DEFAULT"}, {IP: "fe80::1", Port: 65535, Cluster: "c2"}}},
			{Key: peerKey("svc-b"), Removed: []naming.InstanceID{{IP: "10.0.0.9", Port: 1, Cluster: "DEFAULT"}}},
		}}
	sync := &ephemeral.SyncRequest{From: "a", Changes: []ephemeral.ClientState{st},
		Deletes: []ephemeral.Tombstone{{ID: "client-2", Owner: "b", Version: ephemeral.Version{Epoch: 9, Seq: 1}}},
		Deltas:  []ephemeral.ClientDelta{delta}}
	var ps clusterv1.SyncRequest
	wire(syncRequestToProto(sync), &ps)
	got, err := syncRequestFromProto(&ps)
	check("sync", got, sync, err)

	verify := &ephemeral.VerifyRequest{From: "a", Digest: ephemeral.Digest{Count: 2, Xor: 1<<64 - 1, Sum: 12345}, List: true,
		Clients: []ephemeral.ClientVersion{{ID: "client-1", Version: ephemeral.Version{Epoch: 4}}}}
	var pv clusterv1.VerifyRequest
	wire(verifyRequestToProto(verify), &pv)
	gotV, err := verifyRequestFromProto(&pv)
	check("verify", gotV, verify, err)

	snap := &ephemeral.SnapshotRequest{From: "a", Cursor: "12:client-1", MaxBytes: 4096}
	var psr clusterv1.SnapshotRequest
	wire(snapshotRequestToProto(snap), &psr)
	gotS, err := snapshotRequestFromProto(&psr)
	check("snapshot request", gotS, snap, err)

	query := &ephemeral.QueryRequest{From: "a", IDs: []string{"client-1"}}
	var pq clusterv1.QueryRequest
	wire(queryRequestToProto(query), &pq)
	gotQ, err := queryRequestFromProto(&pq)
	check("query request", gotQ, query, err)

	var psy clusterv1.SyncResponse
	srep := &ephemeral.SyncReply{Applied: 7, NeedFull: []string{"client-3"}, Deltas: true}
	wire(syncReplyToProto(srep), &psy)
	gotSR, err := syncReplyFromProto(&psy)
	check("sync reply", gotSR, srep, err)

	vrep := &ephemeral.VerifyReply{Match: false, Want: []string{"client-1", "client-9"}}
	var pvr clusterv1.VerifyResponse
	wire(verifyReplyToProto(vrep), &pvr)
	gotVR, err := verifyReplyFromProto(&pvr)
	check("verify reply", gotVR, vrep, err)

	page := &ephemeral.SnapshotPage{Clients: []ephemeral.ClientState{st}, Next: "3:client-1"}
	var pp clusterv1.SnapshotResponse
	wire(snapshotPageToProto(page), &pp)
	gotP, err := snapshotPageFromProto(&pp)
	check("snapshot page", gotP, page, err)

	qrep := &ephemeral.QueryReply{Clients: []ephemeral.ClientState{st}}
	var pqr clusterv1.QueryResponse
	wire(queryReplyToProto(qrep), &pqr)
	gotQR, err := queryReplyFromProto(&pqr)
	check("query reply", gotQR, qrep, err)

	// A reply that fails validation is an error for the engine too.
	bad := snapshotPageToProto(page)
	bad.Clients[0].Services[0].Instances[0].Ip = ""
	if _, err := snapshotPageFromProto(bad); !errors.Is(err, naming.ErrInvalid) {
		t.Fatalf("bad snapshot page accepted: %v", err)
	}
	if _, err := verifyReplyFromProto(&clusterv1.VerifyResponse{Want: []string{"no good"}}); !errors.Is(err, naming.ErrInvalid) {
		t.Fatalf("bad verify reply accepted: %v", err)
	}
	if _, err := syncReplyFromProto(&clusterv1.SyncResponse{NeedFull: []string{"no good"}}); !errors.Is(err, naming.ErrInvalid) {
		t.Fatalf("bad sync reply accepted: %v", err)
	}
	// A delta is refused whole when its base is not below its version, or
	// an instance is both put and removed, or appears twice.
	for what, edit := range map[string]func(*clusterv1.ClientDelta){
		"base not below": func(d *clusterv1.ClientDelta) { d.Base = d.Version },
		"no base":        func(d *clusterv1.ClientDelta) { d.Base = nil },
		"put and removed": func(d *clusterv1.ClientDelta) {
			d.Services[0].Removed[0].Ip, d.Services[0].Removed[0].Port = "10.0.0.2", 81
		},
		"removed twice": func(d *clusterv1.ClientDelta) { d.Services[0].Removed[1] = d.Services[0].Removed[0] },
		"service twice": func(d *clusterv1.ClientDelta) { d.Services[1].Service = d.Services[0].Service },
		"bad removed":   func(d *clusterv1.ClientDelta) { d.Services[1].Removed[0].Port = 0 },
		"bad owner":     func(d *clusterv1.ClientDelta) { d.Owner = "" },
	} {
		pd := clientDeltaToProto(&delta)
		edit(pd)
		if _, err := syncRequestFromProto(&clusterv1.SyncRequest{From: "a", Deltas: []*clusterv1.ClientDelta{pd}}); !errors.Is(err, naming.ErrInvalid) {
			t.Errorf("delta with %s accepted: %v", what, err)
		}
	}
}

func TestPeerConfigValidation(t *testing.T) {
	if _, err := NewPeerTransport(PeerTransportConfig{}); err == nil {
		t.Fatal("transport without Resolve accepted")
	}
	if _, err := NewPeerServer(&peerStub{}, PeerServerConfig{MaxRecvBytes: 1024}); err == nil {
		t.Fatal("1 KiB message limit accepted")
	}
	if _, err := NewPeerServer(nil, DefaultPeerServerConfig()); err == nil {
		t.Fatal("server without handler accepted")
	}
}
