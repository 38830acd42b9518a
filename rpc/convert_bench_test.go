package rpc

import (
	"fmt"
	"testing"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/internal/registry"
	"github.com/regent-registry/regent/internal/wire"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"
)

// BenchmarkLookupAnswer: what a node spends on the answer to a lookup of a
// service of n instances once the registry has it: the conversion to its
// message and the encoding.
func BenchmarkLookupAnswer(b *testing.B) {
	for _, n := range []int{10, 100} {
		snap := registry.Snapshot{Key: naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "orders"}, Revision: 7}
		for i := range n {
			snap.Instances = append(snap.Instances, naming.Instance{IP: fmt.Sprintf("10.0.0.%d", i), Port: 8080, Cluster: naming.DefaultCluster, Weight: 1, Healthy: true, Enabled: true, Ephemeral: true})
		}
		b.Run(fmt.Sprintf("instances=%d", n), func(b *testing.B) {
			var codec wire.Codec
			b.ReportAllocs()
			for b.Loop() {
				m := &regentv1.ServerMessage{Body: &regentv1.ServerMessage_Ack{Ack: &regentv1.Ack{RequestId: 1, Service: &regentv1.GetServiceResponse{Snapshot: snapshotToProto(snap)}}}}
				if _, err := codec.Marshal(m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
