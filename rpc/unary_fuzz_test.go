package rpc

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regent-registry/regent/proto/regent/v1"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/registry"
	"github.com/regent-registry/regent/persistent"
	"github.com/regent-registry/regent/storage"
)

// unaryKinds are the client requests the fuzz target decodes, by index.
var unaryKinds = []func() proto.Message{
	func() proto.Message { return &regentv1.RegisterInstanceRequest{} },
	func() proto.Message { return &regentv1.BatchRegisterInstancesRequest{} },
	func() proto.Message { return &regentv1.DeregisterInstanceRequest{} },
	func() proto.Message { return &regentv1.UpdateServiceMetadataRequest{} },
	func() proto.Message { return &regentv1.GetServiceRequest{} },
	func() proto.Message { return &regentv1.ListServicesRequest{} },
}

// unarySeeds are valid and invalid client requests, by corpus file name.
func unarySeeds() map[string]struct {
	kind uint8
	msg  proto.Message
} {
	type seed = struct {
		kind uint8
		msg  proto.Message
	}
	hc := &regentv1.HealthCheck{Type: regentv1.HealthCheck_TYPE_HTTP, IntervalMs: 1000}
	return map[string]seed{
		"register":        {0, &regentv1.RegisterInstanceRequest{Service: svcRef("s"), Instance: inst("10.0.0.1", 80)}},
		"register-port-0": {0, &regentv1.RegisterInstanceRequest{Service: svcRef("s"), Instance: inst("10.0.0.1", 0)}},
		"register-nil":    {0, &regentv1.RegisterInstanceRequest{}},
		"batch":           {1, &regentv1.BatchRegisterInstancesRequest{Service: svcRef("s"), Instances: []*regentv1.Instance{inst("10.0.0.2", 80), inst("10.0.0.3", 80)}}},
		"batch-dup":       {1, &regentv1.BatchRegisterInstancesRequest{Service: svcRef("s"), Instances: []*regentv1.Instance{inst("10.0.0.2", 80), inst("10.0.0.2", 80)}}},
		"deregister":      {2, &regentv1.DeregisterInstanceRequest{Service: svcRef("s"), Instance: inst("10.0.0.1", 80)}},
		"meta-http":       {3, &regentv1.UpdateServiceMetadataRequest{Service: svcRef("s"), Meta: &regentv1.ServiceMeta{ProtectThreshold: 0.5, HealthCheck: hc}}},
		"meta-bad-type":   {3, &regentv1.UpdateServiceMetadataRequest{Service: svcRef("s"), Meta: &regentv1.ServiceMeta{HealthCheck: &regentv1.HealthCheck{Type: 9}}}},
		"get":             {4, &regentv1.GetServiceRequest{Service: svcRef("s"), HealthyOnly: true, Clusters: []string{"DEFAULT"}, Linearizable: true}},
		"get-bad-cluster": {4, &regentv1.GetServiceRequest{Service: svcRef("s"), Clusters: []string{"a b"}}},
		"list":            {5, &regentv1.ListServicesRequest{Namespace: "public", PageSize: 10}},
	}
}

// TestUnaryFuzzSeeds keeps the checked-in corpus of FuzzUnaryRequests in
// step with unarySeeds (REGENT_WRITE_CORPUS=1 rewrites it).
func TestUnaryFuzzSeeds(t *testing.T) {
	for name, s := range unarySeeds() {
		b, err := proto.Marshal(s.msg)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("go test fuzz v1\nbyte(%q)\n[]byte(%q)\n", rune(s.kind), b)
		checkCorpusFile(t, "FuzzUnaryRequests", name, want)
	}
}

// FuzzUnaryRequests decodes arbitrary bytes as each client request and
// serves it through the real handlers (registry over bbolt): no input
// panics or answers INTERNAL, and a refused write changes nothing.
func FuzzUnaryRequests(f *testing.F) {
	for _, s := range unarySeeds() {
		b, err := proto.Marshal(s.msg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(s.kind, b)
	}
	db := storage.OpenTest(f)
	local := persistent.NewLocal(db)
	reg, err := registry.New(registry.DefaultConfig(), ephemeral.NewStore(nil), local)
	if err != nil {
		f.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.NodeName = "fuzz"
	srv, err := NewServer(cfg, Deps{Registry: reg})
	if err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()
	snapshot := func() string {
		keys, err := local.ServiceKeys("public", "", "", 0)
		if err != nil {
			f.Fatal(err)
		}
		out := fmt.Sprint(keys)
		for _, k := range keys {
			ps, _ := local.Service(k)
			out += fmt.Sprint(ps.Revision, len(ps.Instances))
		}
		return out
	}
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		msg := unaryKinds[int(kind)%len(unaryKinds)]()
		if proto.Unmarshal(data, msg) != nil {
			return // not a request of this kind: gRPC would refuse it
		}
		before := snapshot()
		var err error
		write := true
		switch m := msg.(type) {
		case *regentv1.RegisterInstanceRequest:
			_, err = srv.RegisterInstance(ctx, m)
		case *regentv1.BatchRegisterInstancesRequest:
			_, err = srv.BatchRegisterInstances(ctx, m)
		case *regentv1.DeregisterInstanceRequest:
			_, err = srv.DeregisterInstance(ctx, m)
		case *regentv1.UpdateServiceMetadataRequest:
			_, err = srv.UpdateServiceMetadata(ctx, m)
		case *regentv1.GetServiceRequest:
			write = false
			_, err = srv.GetService(ctx, m)
		case *regentv1.ListServicesRequest:
			write = false
			_, err = srv.ListServices(ctx, m)
		}
		if err == nil {
			return
		}
		switch status.Code(err) {
		case codes.InvalidArgument, codes.NotFound:
		default:
			t.Fatalf("%T answered %v: %v", msg, status.Code(err), err)
		}
		if write && snapshot() != before {
			t.Fatalf("a refused %T changed the state: %v", msg, err)
		}
	})
}
