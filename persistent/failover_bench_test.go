package persistent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/regent-registry/regent/internal/naming"
)

// BenchmarkRaftFailover: a 3-node Regent cluster over TCP on 127.0.0.1 with
// production timings and fsync on, each node on a fixed port. In each of
// -raftbench.failover-runs runs the leader is killed: marked unreachable,
// then Store.Close (raft.Shutdown, no LeadershipTransfer). At once a
// client round-robins Register calls over the two survivors, each attempt
// with a 250 ms timeout, retrying on error; a survivor that is not the
// leader forwards the write through benchForwarder (a direct call of the
// leader's Store.HandleApply). The time from the kill until the first
// acknowledged write is the failover time. The killed node is then
// restarted from its files on its address and the cluster left to catch up
// before the next run. Reported beside HeartbeatTimeout+ElectionTimeout.
// Target: p50 <= 1.5 s.
func BenchmarkRaftFailover(b *testing.B) {
	const attempt = 250 * time.Millisecond
	cfg := DefaultRaftConfig()
	cfg.NoSync = false
	runs := max(1, *benchRaftFailovers)
	timeout := cfg.HeartbeatTimeout + cfg.ElectionTimeout
	var times []time.Duration
	var attempts, wrote int
	var closeTook time.Duration
	var details []string
	for b.Loop() {
		times, attempts, wrote, closeTook, details = nil, 0, 0, 0, nil
		c := startBenchCluster(b, b.TempDir(), 3, cfg, benchFreePorts(b, 3))
		key := benchKey(0)
		write := func(s *Store) error {
			ctx, cancel := context.WithTimeout(context.Background(), attempt)
			defer cancel()
			_, err := s.Register(ctx, key, []naming.Instance{benchInstance(wrote)})
			if err == nil {
				wrote++
			}
			return err
		}
		if err := write(c.nodes[c.waitLeader(30*time.Second)].store); err != nil {
			b.Fatal(err)
		}
		c.waitCaughtUp(30 * time.Second)
		for run := range runs {
			l := c.waitLeader(30 * time.Second)
			var survivors []*Store
			for i, nd := range c.nodes {
				if i != l {
					survivors = append(survivors, nd.store)
				}
			}
			t0 := time.Now()
			c.kill(l)
			closeTook += time.Since(t0)
			n := 0
			for {
				n++
				if write(survivors[n%2]) == nil {
					break
				}
				if time.Since(t0) > time.Minute {
					b.Fatalf("run %d: no write acknowledged within a minute of the kill", run)
				}
			}
			d := time.Since(t0)
			times = append(times, d)
			attempts += n
			details = append(details, fmt.Sprintf("%s→%s %v/%d", c.nodes[l].id, survivors[0].Leader(), d.Round(time.Millisecond), n))
			c.start(l)
			c.waitCaughtUp(30 * time.Second)
		}
		c.stop()
	}
	slices.Sort(times)
	p50, worst := benchPct(times, 0.5), times[len(times)-1]
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(len(times)), "runs")
	b.ReportMetric(benchMS(p50), "failover-p50-ms")
	b.ReportMetric(benchMS(worst), "failover-max-ms")
	b.ReportMetric(benchMS(timeout), "hb+election-ms")
	b.ReportMetric(float64(p50)/float64(timeout), "p50-ratio")
	b.ReportMetric(float64(worst)/float64(timeout), "max-ratio")
	b.ReportMetric(float64(attempts)/float64(len(times)), "attempts/run")
	b.Logf("%d leader kills: next acknowledged write after p50 %v max %v (min %v); heartbeat+election timeout %v; ratio p50 %.2f max %.2f; %.1f attempts per run; Close of the leader took %v on average",
		len(times), p50.Round(time.Millisecond), worst.Round(time.Millisecond), times[0].Round(time.Millisecond), timeout,
		float64(p50)/float64(timeout), float64(worst)/float64(timeout), float64(attempts)/float64(len(times)), (closeTook / time.Duration(len(times))).Round(time.Microsecond))
	b.Logf("runs (killed→new leader, time/attempts): %s", strings.Join(details, ", "))
}
