package rpc

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	clusterv1 "github.com/regent-registry/regent/proto/cluster/v1"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
)

// requestSeeds are valid and invalid Snapshot and Query requests (kind 0
// and 1), by corpus file name: the "valid-" ones are served, the others
// refused.
func requestSeeds() map[string]struct {
	kind uint8
	msg  proto.Message
} {
	type seed = struct {
		kind uint8
		msg  proto.Message
	}
	return map[string]seed{
		"valid-snapshot-first":  {0, &clusterv1.SnapshotRequest{From: "a", MaxBytes: 1 << 20}},
		"valid-snapshot-small":  {0, &clusterv1.SnapshotRequest{From: "a", MaxBytes: 1}},
		"valid-snapshot-cursor": {0, &clusterv1.SnapshotRequest{From: "a", Cursor: "3:client-2", MaxBytes: 1}},
		"valid-snapshot-end":    {0, &clusterv1.SnapshotRequest{From: "a", Cursor: "255:~", MaxBytes: 4294967295}},
		"valid-query":           {1, &clusterv1.QueryRequest{From: "a", Ids: []string{"client-1", "client-9"}}},
		"valid-query-none":      {1, &clusterv1.QueryRequest{From: "a"}},
		"snapshot-no-from":      {0, &clusterv1.SnapshotRequest{}},
		"snapshot-bad-cursor":   {0, &clusterv1.SnapshotRequest{From: "a", Cursor: "x:y"}},
		"snapshot-neg-bucket":   {0, &clusterv1.SnapshotRequest{From: "a", Cursor: "-1:"}},
		"snapshot-huge-bucket":  {0, &clusterv1.SnapshotRequest{From: "a", Cursor: "99999999999999999999:"}},
		"snapshot-long-cursor":  {0, &clusterv1.SnapshotRequest{From: "a", Cursor: "1:" + strings.Repeat("z", maxPeerCursorLen)}},
		"query-bad-id":          {1, &clusterv1.QueryRequest{From: "a", Ids: []string{"client-1", "bad id"}}},
		"query-control-from":    {1, &clusterv1.QueryRequest{From: "a\nb", Ids: []string{"client-1"}}},
	}
}

// TestPeerRequestFuzzSeeds keeps the checked-in corpus of FuzzPeerRequests
// in step with requestSeeds (REGENT_WRITE_CORPUS=1 rewrites it) and checks
// each seed's outcome.
func TestPeerRequestFuzzSeeds(t *testing.T) {
	env := newRequestEnv(t)
	for name, s := range requestSeeds() {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(s.msg)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("go test fuzz v1\nbyte(%q)\n[]byte(%q)\n", rune(s.kind), b)
		checkCorpusFile(t, "FuzzPeerRequests", name, want)
		t.Run(name, func(t *testing.T) {
			if served := env.check(t, s.kind, b); served != strings.HasPrefix(name, "valid-") {
				t.Fatalf("served = %v", served)
			}
		})
	}
}

// FuzzPeerRequests decodes arbitrary bytes as the Snapshot and Query
// requests a node serves to its peers and serves them through the real
// PeerServer handlers in front of a real Distro engine holding clients.
// Properties: no panic; a refusal is INVALID_ARGUMENT (a bad cursor
// included), never INTERNAL; serving changes nothing; an accepted request
// round-trips through its encoder; and the reply passes the decoder the
// asking peer runs on it (a node never sends what its peers refuse).
func FuzzPeerRequests(f *testing.F) {
	for _, s := range requestSeeds() {
		b, err := proto.Marshal(s.msg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(s.kind, b)
	}
	env := newRequestEnv(f)
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		env.check(t, kind, data)
	})
}

type requestEnv struct {
	d   *ephemeral.Distro
	srv *PeerServer
}

// newRequestEnv is a never started engine holding a few clients of peer
// "a" and one of its own.
func newRequestEnv(tb testing.TB) *requestEnv {
	tb.Helper()
	cfg := ephemeral.DefaultLocalConfig()
	cfg.Node = fuzzNode
	d, err := ephemeral.New(cfg, ephemeral.NewStore(nil), fixedReplies{})
	if err != nil {
		tb.Fatal(err)
	}
	var changes []*clusterv1.ClientState
	for i := range 40 {
		changes = append(changes, validState(fmt.Sprintf("client-%d", i)))
	}
	req, err := syncRequestFromProto(syncOf(changes...))
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := d.HandleSync(context.Background(), req); err != nil {
		tb.Fatal(err)
	}
	own, err := instanceFromProto(inst("10.0.0.9", 80), true)
	if err != nil {
		tb.Fatal(err)
	}
	d.Register("own-1", peerKey("mine"), []naming.Instance{own})
	srv, err := NewPeerServer(d, DefaultPeerServerConfig())
	if err != nil {
		tb.Fatal(err)
	}
	return &requestEnv{d: d, srv: srv}
}

func (e *requestEnv) check(t *testing.T, kind uint8, data []byte) bool {
	ctx := context.Background()
	before := storeState(e.d.Store()) + fmt.Sprintf("%+v", e.d.Stats())
	var err error
	switch kind % 2 {
	case 0:
		var p clusterv1.SnapshotRequest
		if proto.Unmarshal(data, &p) != nil {
			return false
		}
		var rep *clusterv1.SnapshotResponse
		if rep, err = e.srv.Snapshot(ctx, &p); err == nil {
			checkPeerDecode(t, data, func() *clusterv1.SnapshotRequest { return new(clusterv1.SnapshotRequest) }, snapshotRequestFromProto, snapshotRequestToProto)
			if _, derr := snapshotPageFromProto(rep); derr != nil {
				t.Fatalf("the page served for %v is refused by a peer: %v", &p, derr)
			}
			if !rep.GetDone() && (rep.GetNext() == "" || rep.GetNext() == p.GetCursor()) {
				t.Fatalf("a page for %v without progress: next %q", &p, rep.GetNext())
			}
		}
	default:
		var p clusterv1.QueryRequest
		if proto.Unmarshal(data, &p) != nil {
			return false
		}
		var rep *clusterv1.QueryResponse
		if rep, err = e.srv.Query(ctx, &p); err == nil {
			checkPeerDecode(t, data, func() *clusterv1.QueryRequest { return new(clusterv1.QueryRequest) }, queryRequestFromProto, queryRequestToProto)
			if _, derr := queryReplyFromProto(rep); derr != nil {
				t.Fatalf("the reply served for %v is refused by a peer: %v", &p, derr)
			}
		}
	}
	if after := storeState(e.d.Store()) + fmt.Sprintf("%+v", e.d.Stats()); after != before {
		t.Fatalf("serving a request changed the engine:\n%s\n%s", before, after)
	}
	if err == nil {
		return true
	}
	if code := status.Code(err); code != codes.InvalidArgument {
		t.Fatalf("refused with %v: %v", code, err)
	}
	return false
}
