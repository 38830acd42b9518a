package wire

import (
	"fmt"
	"testing"

	"google.golang.org/grpc/encoding"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	clusterv1 "github.com/regent-registry/regent/proto/cluster/v1"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"
)

func ptr[T any](v T) *T { return &v }

func instances(n int) []*regentv1.Instance {
	out := make([]*regentv1.Instance, n)
	for i := range out {
		out[i] = &regentv1.Instance{Ip: fmt.Sprintf("10.0.%d.%d", i/256, i%256), Port: 8080, Cluster: "DEFAULT", Weight: ptr(1.0),
			Healthy: ptr(true), Enabled: ptr(true), Ephemeral: true, Metadata: map[string]string{"version": "1.0.0", "zone": "z1"}}
	}
	return out
}

// messages are what the nodes send most: a session's register and its
// ack, a lookup's answer, a Distro sync of 16 clients.
func messages() map[string]proto.Message {
	var states []*clusterv1.ClientState
	for i := range 16 {
		states = append(states, &clusterv1.ClientState{Id: fmt.Sprintf("client-%d", i), Owner: "node-1", Version: &clusterv1.Version{Epoch: 1 << 50, Seq: 3},
			Services: []*clusterv1.ServiceInstances{{Service: &regentv1.ServiceRef{Service: "orders"}, Instances: instances(1)}}})
	}
	return map[string]proto.Message{
		"register": &regentv1.ClientMessage{RequestId: 7, Body: &regentv1.ClientMessage_Register{Register: &regentv1.RegisterEphemeral{
			Service: &regentv1.ServiceRef{Service: "orders"}, Instances: instances(1)}}},
		"ack": &regentv1.ServerMessage{Body: &regentv1.ServerMessage_Ack{Ack: &regentv1.Ack{RequestId: 7}}},
		"lookup": &regentv1.GetServiceResponse{Snapshot: &regentv1.ServiceSnapshot{Service: &regentv1.ServiceRef{Namespace: "public", Group: "DEFAULT_GROUP", Service: "orders"},
			Revision: 99, Instances: instances(10)}, Meta: &regentv1.ServiceMeta{ProtectThreshold: 0.5}},
		"sync16": &clusterv1.SyncRequest{From: "node-1", Changes: states},
	}
}

// Every message decodes, through Codec, to what gRPC's own codec makes of
// the same bytes, and Codec's bytes decode with gRPC's codec to the
// message: the two interoperate either way. A message without the fast
// paths (health) goes through the fallback.
func TestCodecMatchesProto(t *testing.T) {
	grpcCodec := encoding.GetCodecV2("proto")
	for name, m := range messages() {
		ours, err := Codec{}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		theirs, err := grpcCodec.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		for what, data := range map[string]mem.BufferSlice{"ours": ours, "gRPC's": theirs} {
			a, b := m.ProtoReflect().New().Interface(), m.ProtoReflect().New().Interface()
			if err := (Codec{}).Unmarshal(data, a); err != nil {
				t.Fatalf("%s: Codec cannot read %s bytes: %v", name, what, err)
			}
			if err := grpcCodec.Unmarshal(data, b); err != nil {
				t.Fatalf("%s: gRPC's codec cannot read %s bytes: %v", name, what, err)
			}
			if !proto.Equal(a, m) || !proto.Equal(b, m) {
				t.Fatalf("%s from %s bytes: Codec read %v, gRPC's %v, want %v", name, what, a, b, m)
			}
		}
	}
	h := &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}
	data, err := Codec{}.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var got healthpb.HealthCheckResponse
	if err := (Codec{}).Unmarshal(data, &got); err != nil || got.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health message through the fallback: %v %v", &got, err)
	}
	if err := (Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer([]byte{0x0a, 0xff})}, &regentv1.ClientMessage{}); err == nil {
		t.Fatal("a truncated message decoded")
	}
}

// BenchmarkCodec: marshal then unmarshal of each message, Codec beside
// gRPC's proto codec (the baseline).
func BenchmarkCodec(b *testing.B) {
	codecs := map[string]encoding.CodecV2{"grpc-proto": encoding.GetCodecV2("proto"), "vtproto": Codec{}}
	for name, m := range messages() {
		for _, cn := range []string{"grpc-proto", "vtproto"} {
			c := codecs[cn]
			b.Run(name+"/"+cn, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					data, err := c.Marshal(m)
					if err != nil {
						b.Fatal(err)
					}
					out := m.ProtoReflect().New().Interface()
					if err := c.Unmarshal(data, out); err != nil {
						b.Fatal(err)
					}
					data.Free()
				}
			})
		}
	}
}
