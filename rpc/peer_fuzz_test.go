package rpc

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"google.golang.org/protobuf/proto"

	clusterv1 "github.com/regent-registry/regent/proto/cluster/v1"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"

	"github.com/regent-registry/regent/internal/naming"
)

var writePeerCorpus = flag.Bool("peer-write-corpus", false, "rewrite the checked-in seed corpus of the peer fuzz targets")

// peerSyncSeeds are valid and invalid sync requests, by corpus file name.
func peerSyncSeeds() map[string]proto.Message {
	w := 2.5
	full := validState("client-1")
	full.Version = &clusterv1.Version{Epoch: 1 << 52, Seq: 9}
	full.Services = append(full.Services, &clusterv1.ServiceInstances{
		Service: &regentv1.ServiceRef{Namespace: "ns", Group: "g", Service: "providers:com.x:1.0"},
		Instances: []*regentv1.Instance{
			{Ip: "fe80::1", Port: 65535, Cluster: "c1", Weight: &w, Metadata: map[string]string{"zone": "z1"}},
			{Ip: "host.example.com", Port: 1},
		},
	})
	return map[string]proto.Message{
		"valid-change":  syncOf(full),
		"valid-delete":  &clusterv1.SyncRequest{From: "a", Deletes: []*clusterv1.Tombstone{{Id: "client-2", Owner: "a", Version: &clusterv1.Version{Epoch: 3, Seq: 1}}}},
		"valid-empty":   &clusterv1.SyncRequest{From: "a"},
		"bad-client-id": syncOf(validState("bad id!")),
		"bad-port":      syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Services[0].Instances[0].Port = 70000 })),
		"bad-ip":        syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Services[0].Instances[0].Ip = "-bad-" })),
		"empty-owner":   syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Owner = "" })),
		"zero-version":  syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Version = nil })),
		"dup-instance": syncOf(edited("c1", func(s *clusterv1.ClientState) {
			s.Services[0].Instances = append(s.Services[0].Instances, s.Services[0].Instances[0])
		})),
		"missing-from":   &clusterv1.SyncRequest{Changes: []*clusterv1.ClientState{validState("c1")}},
		"nil-service":    syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Services[0].Service = nil })),
		"owner-control":  syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Owner = "a\x00b" })),
		"epoch-wraps":    syncOf(edited("c1", func(s *clusterv1.ClientState) { s.Version.Epoch = 1<<64 - 1 })),
		"delete-no-vers": &clusterv1.SyncRequest{From: "a", Deletes: []*clusterv1.Tombstone{{Id: "c2", Owner: "a"}}},
		"valid-delta":    deltaSync(func(*clusterv1.ClientDelta) {}),
		"delta-no-base":  deltaSync(func(d *clusterv1.ClientDelta) { d.Base = nil }),
		"delta-base-eq":  deltaSync(func(d *clusterv1.ClientDelta) { d.Base = d.Version }),
		"delta-put-rm": deltaSync(func(d *clusterv1.ClientDelta) {
			d.Services[0].Removed = append(d.Services[0].Removed, d.Services[0].Put[0])
		}),
		"delta-bad-rm":  deltaSync(func(d *clusterv1.ClientDelta) { d.Services[0].Removed[0].Ip = "" }),
		"delta-svc-dup": deltaSync(func(d *clusterv1.ClientDelta) { d.Services = append(d.Services, d.Services[0]) }),
	}
}

// deltaSync is a sync carrying one valid delta, edited.
func deltaSync(edit func(*clusterv1.ClientDelta)) *clusterv1.SyncRequest {
	d := &clusterv1.ClientDelta{Id: "client-5", Owner: "a", Base: &clusterv1.Version{Epoch: 7, Seq: 1}, Version: &clusterv1.Version{Epoch: 7, Seq: 4},
		Services: []*clusterv1.ServiceDelta{{
			Service: &regentv1.ServiceRef{Service: "svc"},
			Put:     []*regentv1.Instance{{Ip: "10.0.0.5", Port: 80, Metadata: map[string]string{"v": "2"}}},
			Removed: []*regentv1.Instance{{Ip: "10.0.0.6", Port: 80}},
		}}}
	edit(d)
	return &clusterv1.SyncRequest{From: "a", Deltas: []*clusterv1.ClientDelta{d}}
}

// peerVerifySeeds are valid and invalid verify requests.
func peerVerifySeeds() map[string]proto.Message {
	cv := func(id string, epoch uint64) *clusterv1.ClientVersion {
		return &clusterv1.ClientVersion{Id: id, Version: &clusterv1.Version{Epoch: epoch}}
	}
	return map[string]proto.Message{
		"valid-digest":       &clusterv1.VerifyRequest{From: "a", Digest: &clusterv1.Digest{Count: 3, Xor: 1<<64 - 1, Sum: 42}},
		"valid-list":         &clusterv1.VerifyRequest{From: "a", List: true, Clients: []*clusterv1.ClientVersion{cv("c1", 1), cv("c2", 7)}},
		"digest-with-list":   &clusterv1.VerifyRequest{From: "a", Clients: []*clusterv1.ClientVersion{cv("c1", 1)}},
		"list-bad-id":        &clusterv1.VerifyRequest{From: "a", List: true, Clients: []*clusterv1.ClientVersion{cv("c 1", 1)}},
		"list-zero-version":  &clusterv1.VerifyRequest{From: "a", List: true, Clients: []*clusterv1.ClientVersion{cv("c1", 0)}},
		"missing-from":       &clusterv1.VerifyRequest{Digest: &clusterv1.Digest{}},
		"from-too-long-name": &clusterv1.VerifyRequest{From: string(make([]byte, MaxPeerNodeNameLen+1))},
	}
}

func addPeerSeeds(f *testing.F, seeds map[string]proto.Message) {
	for _, m := range seeds {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x12, 0xff, 0xff, 0xff, 0xff, 0x0f}) // a truncated, oversized length
}

// checkPeerDecode is the property both targets check: the decoder never
// panics; it fails only with naming.ErrInvalid; and what it accepts
// re-encodes and decodes to itself (normalization is idempotent and
// nothing is lost on the way).
func checkPeerDecode[P proto.Message, R any](t *testing.T, data []byte, newP func() P, decode func(P) (R, error), encode func(R) P) {
	p := newP()
	if err := proto.Unmarshal(data, p); err != nil {
		return
	}
	got, err := decode(p)
	if err != nil {
		if !errors.Is(err, naming.ErrInvalid) {
			t.Fatalf("decode error does not wrap naming.ErrInvalid: %v", err)
		}
		return
	}
	b, err := proto.Marshal(encode(got))
	if err != nil {
		t.Fatalf("re-encode: %v", err)
	}
	p2 := newP()
	if err := proto.Unmarshal(b, p2); err != nil {
		t.Fatalf("re-decode: %v", err)
	}
	again, err := decode(p2)
	if err != nil {
		t.Fatalf("an accepted message is refused after a round trip: %v", err)
	}
	if !reflect.DeepEqual(got, again) {
		t.Fatalf("round trip changed the message:\n%+v\n%+v", got, again)
	}
}

func FuzzDecodePeerSync(f *testing.F) {
	addPeerSeeds(f, peerSyncSeeds())
	f.Fuzz(func(t *testing.T, data []byte) {
		checkPeerDecode(t, data, func() *clusterv1.SyncRequest { return new(clusterv1.SyncRequest) },
			syncRequestFromProto, syncRequestToProto)
	})
}

func FuzzDecodePeerVerify(f *testing.F) {
	addPeerSeeds(f, peerVerifySeeds())
	f.Fuzz(func(t *testing.T, data []byte) {
		checkPeerDecode(t, data, func() *clusterv1.VerifyRequest { return new(clusterv1.VerifyRequest) },
			verifyRequestFromProto, verifyRequestToProto)
	})
}

// TestPeerFuzzSeeds rewrites testdata/fuzz/FuzzDecodePeer{Sync,Verify}
// from the seeds above when run with -peer-write-corpus; review the diff.
// Without the flag it only checks that every seed still decodes as
// expected: the "valid-" ones accepted, the others refused.
func TestPeerFuzzSeeds(t *testing.T) {
	targets := []struct {
		name   string
		seeds  map[string]proto.Message
		decode func([]byte) error
	}{
		{"FuzzDecodePeerSync", peerSyncSeeds(), func(b []byte) error {
			var p clusterv1.SyncRequest
			if err := proto.Unmarshal(b, &p); err != nil {
				return err
			}
			_, err := syncRequestFromProto(&p)
			return err
		}},
		{"FuzzDecodePeerVerify", peerVerifySeeds(), func(b []byte) error {
			var p clusterv1.VerifyRequest
			if err := proto.Unmarshal(b, &p); err != nil {
				return err
			}
			_, err := verifyRequestFromProto(&p)
			return err
		}},
	}
	for _, tg := range targets {
		dir := filepath.Join("testdata", "fuzz", tg.name)
		for name, m := range tg.seeds {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			err = tg.decode(b)
			if valid := len(name) > 6 && name[:6] == "valid-"; valid != (err == nil) {
				t.Errorf("%s/%s: decode error %v", tg.name, name, err)
			}
			if !*writePeerCorpus {
				continue
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
