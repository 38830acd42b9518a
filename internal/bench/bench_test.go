package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/regent-registry/regent/internal/daemon"
)

func startNode(tb testing.TB) *daemon.Daemon {
	tb.Helper()
	cfg := daemon.DefaultLocalConfig("bench", tb.TempDir())
	d, err := daemon.Start(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.Shutdown(ctx)
	})
	return d
}

// TestRunMeasuresEveryPair checks that the harness really drives the node:
// registrations land and every figure is filled.
func TestRunMeasuresEveryPair(t *testing.T) {
	d := startNode(t)
	rs, err := Run(context.Background(), Options{Server: d.GRPCAddr(), Concurrency: []int{2}, Duration: 200 * time.Millisecond, Rounds: 1, Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != len(pairs) {
		t.Fatalf("%d results, want %d", len(rs), len(pairs))
	}
	for _, r := range rs {
		if r.OpsPerSec <= 0 || r.BaseOps <= 0 || r.P50 <= 0 || r.Errors != 0 {
			t.Fatalf("result not filled or with errors: %+v", r)
		}
	}
	// The workers ran real sessions (2 workers and the seeding one), which
	// end, and take their instances with them, once Run has closed them.
	deadline := time.Now().Add(5 * time.Second)
	for d.Sessions().Closed() < 3 || d.Registry().Ephemeral().Stats().Instances != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions ended, %d instances left; want 3 and 0", d.Sessions().Closed(), d.Registry().Ephemeral().Stats().Instances)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkSessionRegisterVsNoop prints ephemeral registration and query
// throughput beside the no-op ceiling over the same connections, at several
// concurrencies, with the ratio. Run with -benchtime=1x.
func BenchmarkSessionRegisterVsNoop(b *testing.B) {
	d := startNode(b)
	for _, c := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("clients=%d", c), func(b *testing.B) {
			for b.Loop() {
				rs, err := Run(context.Background(), Options{Server: d.GRPCAddr(), Concurrency: []int{c}, Duration: 2 * time.Second, Rounds: 2})
				if err != nil {
					b.Fatal(err)
				}
				for _, r := range rs {
					b.ReportMetric(r.OpsPerSec, r.Op+"-ops/s")
					b.ReportMetric(r.BaseOps, r.Op+"-baseline-ops/s")
					b.ReportMetric(r.Ratio, r.Op+"-ratio")
				}
			}
		})
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
