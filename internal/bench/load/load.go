// Package load runs a bounded closed-loop load (W workers, each calling an
// operation back to back until a deadline) and summarizes it: operations,
// errors, rate and latency percentiles. The benchmarks of internal/bench
// and internal/bench/compare share it.
package load

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Sample is the outcome of one Run.
type Sample struct {
	Ops, Errors int64
	// Latencies of the successful operations, sorted.
	Latencies []time.Duration
	Elapsed   time.Duration
	// FirstErr is the first error seen, for the report.
	FirstErr string
}

// Run calls op(worker, seq) from workers goroutines, each back to back,
// starting new calls until d has passed (or ctx ends), and waits for the
// calls in flight. seq counts each worker's calls from 0.
func Run(ctx context.Context, workers int, d time.Duration, op func(ctx context.Context, worker, seq int) error) Sample {
	return RunPaced(ctx, workers, d, 0, op)
}

// RunPaced is Run with each worker starting its calls at most one per
// pace (a call that takes longer is followed at once): a load of
// workers/pace calls per second at most, as from clients that each act
// now and then. The workers' schedules are offset from each other by
// pace/workers, so the calls arrive evenly spread rather than all at
// once. The pause is not part of the latencies.
func RunPaced(ctx context.Context, workers int, d, pace time.Duration, op func(ctx context.Context, worker, seq int) error) Sample {
	return RunPacedPrep(ctx, workers, d, pace, nil, op)
}

// RunPacedPrep is RunPaced with prep(worker, seq), if not nil, run before
// each call and outside its time (before the wait for its slot): set-up
// the operation needs that is not part of what is measured. A failed prep
// counts as a failed call, which is then not made.
func RunPacedPrep(ctx context.Context, workers int, d, pace time.Duration, prep, op func(ctx context.Context, worker, seq int) error) Sample {
	if w, ok := ctx.Value(windowKey{}).(func(start bool)); ok {
		w(true)
		defer w(false)
	}
	var wg sync.WaitGroup
	var ops, errs atomic.Int64
	var firstErr atomic.Value
	lats := make([][]time.Duration, workers)
	start := time.Now()
	end := start.Add(d)
	for w := range workers {
		wg.Add(1)
		// Worker w's calls are due at w*pace/workers past each multiple
		// of pace: the workers' calls are spread evenly over the pace,
		// as from independent clients, not fired together in bursts.
		phase := time.Duration(w) * pace / time.Duration(workers)
		go func() {
			defer wg.Done()
			fail := func(err error) {
				if ctx.Err() == nil && errs.Add(1) == 1 {
					firstErr.Store(err.Error())
				}
			}
			for seq := 0; ctx.Err() == nil; seq++ {
				if prep != nil && time.Now().Before(end) {
					if err := prep(ctx, w, seq); err != nil {
						fail(err)
						continue
					}
				}
				if pace > 0 && (seq > 0 || w > 0) {
					if next := start.Add(phase + time.Duration(seq)*pace); next.After(time.Now()) {
						if !next.Before(end) {
							return
						}
						select {
						case <-ctx.Done():
							return
						case <-time.After(time.Until(next)):
						}
					}
				}
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				if err := op(ctx, w, seq); err != nil {
					fail(err)
					continue
				}
				lats[w] = append(lats[w], time.Since(t0))
				ops.Add(1)
			}
		}()
	}
	wg.Wait()
	s := Sample{Ops: ops.Load(), Errors: errs.Load(), Elapsed: time.Since(start)}
	if e, ok := firstErr.Load().(string); ok {
		s.FirstErr = e
	}
	for _, l := range lats {
		s.Latencies = append(s.Latencies, l...)
	}
	slices.Sort(s.Latencies)
	return s
}

type windowKey struct{}

// WithWindow returns a context that makes Run and RunPaced call f(true)
// as their timed window opens and f(false) once its calls have returned:
// a caller measuring something over the window alone (CPU time, say)
// hooks it here, without the set-up and tear-down around it.
func WithWindow(ctx context.Context, f func(start bool)) context.Context {
	return context.WithValue(ctx, windowKey{}, f)
}

// Add merges o into s (rounds of one measurement).
func (s *Sample) Add(o Sample) {
	s.Ops += o.Ops
	s.Errors += o.Errors
	s.Elapsed += o.Elapsed
	if s.FirstErr == "" {
		s.FirstErr = o.FirstErr
	}
	s.Latencies = append(s.Latencies, o.Latencies...)
	slices.Sort(s.Latencies)
}

// Rate is successful operations per second.
func (s Sample) Rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Ops) / s.Elapsed.Seconds()
}

// Pct is the p-quantile (0..1) of the latencies, 0 without any.
func (s Sample) Pct(p float64) time.Duration { return Pct(s.Latencies, p) }

// Pct is the p-quantile (0..1) of sorted, 0 if it is empty.
func Pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(float64(len(sorted)-1)*p)]
}
