package rpc

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
)

// BenchmarkPeerServerWorkers: a Distro sync of one client with one
// instance, the unit of replication under the ephemeral workload, served by
// a PeerServer over loopback TCP, with a new goroutine per call (workers=0,
// gRPC's default and the baseline) beside reused workers (the default).
// 16 callers run at once, as two peers' verifies and forwarded writes do
// on a loaded node. Client and server share the process, so ns/op is the
// CPU of both sides on a saturated machine; the handler applies nothing, so
// what differs is the server's per-call goroutine. The calls are unary
// Syncs (what an older peer gets), as the other unary peer calls go;
// batches to a current peer go on its sync stream (BenchmarkPeerSyncStream).
func BenchmarkPeerServerWorkers(b *testing.B) {
	for _, workers := range []int{0, DefaultPeerStreamWorkers} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			cfg := DefaultPeerServerConfig()
			cfg.StreamWorkers = workers
			_, pc := benchPeer(b, cfg)
			ctx := context.Background()
			preq := syncRequestToProto(benchBatch())
			if _, err := pc.client.Sync(ctx, preq); err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(8) // 16 callers on 2 cores
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := pc.client.Sync(ctx, preq); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkPeerSyncStream: one owner's batches of one client with one
// instance to one peer over loopback TCP, one at a time as the engine's
// peer worker sends them: as unary Sync calls (the baseline, what every
// batch was before SyncStream) and on the peer's sync stream, in
// alternating rounds. "back-to-back" sends the next batch as soon as the
// last is answered (ns/op: both sides' CPU and wake-ups); "paced" waits
// 2 ms between batches, as a change at a time arrives, and reports the
// median and p99 round trip from an idle process.
func BenchmarkPeerSyncStream(b *testing.B) {
	tr, pc := benchPeer(b, DefaultPeerServerConfig())
	ctx := context.Background()
	req := benchBatch()
	preq := syncRequestToProto(req)
	ways := []struct {
		name string
		send func() error
	}{
		{"unary", func() error { _, err := pc.client.Sync(ctx, preq); return err }},
		{"stream", func() error { _, err := tr.Sync(ctx, "b", req); return err }},
	}
	for _, w := range ways {
		if err := w.send(); err != nil {
			b.Fatal(err)
		}
	}
	for round := range 2 {
		for _, w := range ways {
			b.Run(fmt.Sprintf("back-to-back/%s/round=%d", w.name, round), func(b *testing.B) {
				for range b.N {
					if err := w.send(); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(fmt.Sprintf("paced/%s/round=%d", w.name, round), func(b *testing.B) {
				lats := make([]time.Duration, 0, b.N)
				for range b.N {
					time.Sleep(2 * time.Millisecond)
					t0 := time.Now()
					if err := w.send(); err != nil {
						b.Fatal(err)
					}
					lats = append(lats, time.Since(t0))
				}
				slices.Sort(lats)
				b.ReportMetric(float64(lats[len(lats)/2].Nanoseconds())/1e3, "p50-µs")
				b.ReportMetric(float64(lats[len(lats)*99/100].Nanoseconds())/1e3, "p99-µs")
			})
		}
	}
}

// benchPeer serves a PeerServer with cfg on loopback TCP, stopped at the
// benchmark's end, and returns a transport to it (node "b") and its
// connection.
func benchPeer(b *testing.B, cfg PeerServerConfig) (*PeerTransport, *peerConn) {
	b.Helper()
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
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
	addr := lis.Addr().String()
	tr, err := NewPeerTransport(PeerTransportConfig{Resolve: func(string) (string, bool) { return addr, true }})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tr.Close() })
	pc, err := tr.conn("b")
	if err != nil {
		b.Fatal(err)
	}
	return tr, pc
}

// benchBatch is a sync of one client with one instance, the unit of
// replication under the ephemeral workload.
func benchBatch() *ephemeral.SyncRequest {
	return &ephemeral.SyncRequest{From: "a", Changes: []ephemeral.ClientState{{ID: "c1", Owner: "a", Version: ephemeral.Version{Epoch: 5, Seq: 2},
		Services: []ephemeral.ServiceInstances{{Key: peerKey("svc"), Instances: []naming.Instance{peerInst("10.0.0.1", 80, nil)}}}}}}
}
