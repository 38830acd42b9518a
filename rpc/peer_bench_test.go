package rpc

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
)

// BenchmarkPeerServerWorkers: a Distro sync of one client with one
// instance, the unit of replication under the ephemeral workload, served by
// a PeerServer over loopback TCP, with a new goroutine per call (workers=0,
// gRPC's default and the baseline) beside reused workers (the default).
// 16 callers run at once, as two peers' syncs and forwarded writes do on a
// loaded node. Client and server share the process, so ns/op is the CPU
// of both sides on a saturated machine; the handler applies nothing, so
// what differs is the server's per-call goroutine.
func BenchmarkPeerServerWorkers(b *testing.B) {
	for _, workers := range []int{0, DefaultPeerStreamWorkers} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			cfg := DefaultPeerServerConfig()
			cfg.StreamWorkers = workers
			srv, err := NewPeerServer(&peerStub{}, cfg)
			if err != nil {
				b.Fatal(err)
			}
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- srv.Serve(lis) }()
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				srv.Shutdown(ctx)
				<-done
			}()
			addr := lis.Addr().String()
			tr, err := NewPeerTransport(PeerTransportConfig{Resolve: func(string) (string, bool) { return addr, true }})
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			req := &ephemeral.SyncRequest{From: "a", Changes: []ephemeral.ClientState{{ID: "c1", Owner: "a", Version: ephemeral.Version{Epoch: 5, Seq: 2},
				Services: []ephemeral.ServiceInstances{{Key: peerKey("svc"), Instances: []naming.Instance{peerInst("10.0.0.1", 80, nil)}}}}}}
			ctx := context.Background()
			if _, err := tr.Sync(ctx, "b", req); err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(8) // 16 callers on 2 cores
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := tr.Sync(ctx, "b", req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
