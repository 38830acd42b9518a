package bench

// Cluster benchmarks: three complete nodes in this process on loopback
// (internal/testcluster). Run them with `make bench-cluster`:
//
//	go test -run '^$' -bench '^BenchmarkCluster' -benchtime 1x ./internal/bench/
//
// Every figure is printed beside its baseline from the same run, with the
// ratio; the harness is in cluster_harness_test.go.

import (
	"fmt"
	"testing"
	"time"

	"github.com/regent-registry/regent/internal/testcluster"
)

// BenchmarkClusterConvergence: 1,000 registrations/s for 3 s over raw
// Session streams on node A (100 sessions, each its own client, over 100
// services); for each, the time from its register ack on A until a push
// lists it on B and on C (subscribers over raw Session streams, one per
// node), beside the same time on A itself. Both include the registry's
// 20 ms push merge window. Production Distro settings (5 ms sync delay).
// Target: replicated p99 <= 50 ms.
func BenchmarkClusterConvergence(b *testing.B) {
	c := testcluster.Start(b, 3, productionDistro)
	o := convOptions{Rate: 1000, Duration: 3 * time.Second, Workers: 100, Services: 100}
	var r convResult
	for b.Loop() {
		r = runConvergence(b, c, o)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(r.Registered), "regs")
	b.ReportMetric(r.Rate, "regs/s")
	b.ReportMetric(ms(r.Local.P50), "local-p50-ms")
	b.ReportMetric(ms(r.Local.P99), "local-p99-ms")
	b.ReportMetric(ms(r.Local.Max), "local-max-ms")
	b.ReportMetric(ms(r.Replicated.P50), "repl-p50-ms")
	b.ReportMetric(ms(r.Replicated.P99), "repl-p99-ms")
	b.ReportMetric(ms(r.Replicated.Max), "repl-max-ms")
	b.ReportMetric(ratio(r.Replicated.P50, r.Local.P50), "p50-ratio")
	b.ReportMetric(ratio(r.Replicated.P99, r.Local.P99), "p99-ratio")
	b.Logf("%d registrations at %.0f/s: listed on B and C p50 %v p99 %v max %v; on A (local push) p50 %v p99 %v max %v; ratio p50 %.2f p99 %.2f",
		r.Registered, r.Rate, r.Replicated.P50, r.Replicated.P99, r.Replicated.Max, r.Local.P50, r.Local.P99, r.Local.Max,
		ratio(r.Replicated.P50, r.Local.P50), ratio(r.Replicated.P99, r.Local.P99))
	if r.Missing > 0 {
		b.Errorf("%d (node, instance) pairs never pushed", r.Missing)
	}
}

// BenchmarkClusterRemoval: 30 times per mode, an SDK client on node A
// registers one instance; once subscribers on A, B and C list it, its
// session ends - mode=close: Client.Close; mode=cut: its TCP connection is
// closed under it and it cannot reconnect - and the time until a push
// without the instance comes from all three nodes is taken, beside the
// time until it comes from A, the owner. Target <= 1 s.
func BenchmarkClusterRemoval(b *testing.B) {
	c := testcluster.Start(b, 3, productionDistro)
	for _, mode := range []string{"close", "cut"} {
		b.Run("mode="+mode, func(b *testing.B) {
			var r removalResult
			for b.Loop() {
				r = runRemoval(b, c, mode, 30)
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(r.Runs), "runs")
			b.ReportMetric(ms(r.Local.P50), "owner-p50-ms")
			b.ReportMetric(ms(r.Local.Max), "owner-max-ms")
			b.ReportMetric(ms(r.Replicated.P50), "all3-p50-ms")
			b.ReportMetric(ms(r.Replicated.Max), "all3-max-ms")
			b.ReportMetric(ratio(r.Replicated.P50, r.Local.P50), "p50-ratio")
			b.ReportMetric(ratio(r.Replicated.Max, r.Local.Max), "max-ratio")
			b.Logf("%s, %d runs: gone from all 3 p50 %v max %v; from the owner p50 %v max %v; ratio p50 %.2f max %.2f",
				mode, r.Runs, r.Replicated.P50, r.Replicated.Max, r.Local.P50, r.Local.Max,
				ratio(r.Replicated.P50, r.Local.P50), ratio(r.Replicated.Max, r.Local.Max))
		})
	}
}

// BenchmarkClusterVerifyCost: n clients (one instance each) owned by node A
// of a fresh cluster, verify interval 200 ms, nothing changing; what A
// sends per peer per verify round over 15 rounds (all Distro message kinds,
// proto.Size, from its /metrics), beside the Nacos scheme over the same
// clients: one verify request per client per peer per round, each the
// size of a one-entry clusterv1.VerifyRequest for that client. Target: 1
// message per peer per round, bytes flat in n.
func BenchmarkClusterVerifyCost(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			var r verifyResult
			for b.Loop() {
				r = runVerifyCost(b, n, 15)
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(r.Rounds, "rounds")
			b.ReportMetric(r.Msgs, "msgs/peer/round")
			b.ReportMetric(r.Bytes, "bytes/peer/round")
			b.ReportMetric(r.NacosMsgs, "nacos-msgs/peer/round")
			b.ReportMetric(r.NacosBytes, "nacos-bytes/peer/round")
			b.ReportMetric(r.Msgs/r.NacosMsgs, "msgs-ratio")
			b.ReportMetric(r.Bytes/r.NacosBytes, "bytes-ratio")
			b.Logf("%d clients, %.1f rounds: %.2f messages and %.1f bytes per peer per round; Nacos scheme %.0f messages and %.0f bytes; ratio %.2g and %.2g",
				n, r.Rounds, r.Msgs, r.Bytes, r.NacosMsgs, r.NacosBytes, r.Msgs/r.NacosMsgs, r.Bytes/r.NacosBytes)
		})
	}
}

// BenchmarkClusterOwnerKilled: 50 SDK clients on node A (servers A, B, C in
// that order), one instance each; A is killed (testcluster.Kill: no gossip
// leave, every connection cut); for each client, the time until its
// instance is listed on B and C with an owner other than A, beside the time
// until its SDK holds a session on another node. Nodes polled in process
// every 2 ms. Production Distro settings. Target <= 5 s.
func BenchmarkClusterOwnerKilled(b *testing.B) {
	var r killResult
	for b.Loop() {
		r = runOwnerKilled(b, 50)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(r.Clients), "clients")
	b.ReportMetric(ms(r.Moved.P50), "moved-p50-ms")
	b.ReportMetric(ms(r.Moved.Max), "moved-max-ms")
	b.ReportMetric(ms(r.Reconnected.P50), "reconnect-p50-ms")
	b.ReportMetric(ms(r.Reconnected.Max), "reconnect-max-ms")
	b.ReportMetric(ratio(r.Moved.P50, r.Reconnected.P50), "p50-ratio")
	b.ReportMetric(ratio(r.Moved.Max, r.Reconnected.Max), "max-ratio")
	b.Logf("%d clients: listed on B and C under a new owner p50 %v max %v; SDK reconnected p50 %v max %v; ratio p50 %.2f max %.2f",
		r.Clients, r.Moved.P50, r.Moved.Max, r.Reconnected.P50, r.Reconnected.Max,
		ratio(r.Moved.P50, r.Reconnected.P50), ratio(r.Moved.Max, r.Reconnected.Max))
	b.Logf("(Kill itself took %v; gossip on B and C declared A dead %v after the kill)", r.KillTook, r.GossipDead)
}

// TestClusterMeasurements runs every cluster measurement small, so that the
// harness is exercised (with -race too) and the behaviours it relies on
// hold: every registration is pushed by all three nodes, every ended
// session's instance goes from all three, an idle verify round is one
// digest message per peer, and clients of a killed node move.
func TestClusterMeasurements(t *testing.T) {
	t.Run("convergence and removal", func(t *testing.T) {
		c := testcluster.Start(t, 3, productionDistro)
		r := runConvergence(t, c, convOptions{Rate: 200, Duration: 500 * time.Millisecond, Workers: 10, Services: 5})
		if r.Missing != 0 || r.Registered != 100 {
			t.Fatalf("%d registrations (want 100), %d (node, instance) pairs never pushed", r.Registered, r.Missing)
		}
		// The owner pushes as soon as it has the instance, so its push may
		// reach the watcher before the ack reaches the worker: Local can be
		// below zero. The peers' pushes need a Distro hop after that.
		if r.Local.N != r.Registered || r.Replicated.N != r.Registered || r.Replicated.P50 <= 0 {
			t.Fatalf("latencies not measured: %+v", r)
		}
		t.Logf("convergence: %+v", r)
		for _, mode := range []string{"close", "cut"} {
			r := runRemoval(t, c, mode, 2)
			if r.Local.P50 <= 0 || r.Replicated.Max < r.Local.Max {
				t.Fatalf("%s: %+v", mode, r)
			}
			t.Logf("removal %s: %+v", mode, r)
		}
	})
	t.Run("verify cost", func(t *testing.T) {
		r := runVerifyCost(t, 2000, 5)
		if r.NacosMsgs != 2000 {
			t.Fatalf("Nacos messages %v, want 2000", r.NacosMsgs)
		}
		// About one digest per peer per round; a list or sync in an idle
		// round would push it to 2 or more.
		if r.Msgs < 0.5 || r.Msgs > 1.5 || r.Bytes <= 0 || r.Bytes > r.NacosBytes/100 {
			t.Fatalf("idle verify rounds: %+v", r)
		}
		t.Logf("verify: %+v", r)
	})
	t.Run("owner killed", func(t *testing.T) {
		r := runOwnerKilled(t, 5)
		// How fast is the benchmark's business; here every client must
		// have moved (runOwnerKilled fails otherwise) at a measured time.
		if r.Moved.Max <= 0 || r.Reconnected.Max <= 0 || r.Moved.Max < r.Moved.P50 {
			t.Fatalf("moved %+v, reconnected %+v", r.Moved, r.Reconnected)
		}
		t.Logf("owner killed: %+v", r)
	})
}
