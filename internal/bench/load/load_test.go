package load

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestRunCountsEveryCall(t *testing.T) {
	var mu sync.Mutex
	calls := map[int]int{} // worker -> calls
	seqOK := true
	s := Run(context.Background(), 4, 50*time.Millisecond, func(_ context.Context, w, seq int) error {
		mu.Lock()
		defer mu.Unlock()
		if seq != calls[w] {
			seqOK = false
		}
		calls[w]++
		if seq%3 == 2 {
			return errors.New("every third fails")
		}
		return nil
	})
	total := 0
	for _, n := range calls {
		total += n
	}
	if len(calls) != 4 || !seqOK {
		t.Fatalf("workers %d, seq in order %v", len(calls), seqOK)
	}
	if int(s.Ops+s.Errors) != total || s.Errors == 0 || s.FirstErr != "every third fails" {
		t.Fatalf("ops %d + errors %d, calls %d, first error %q", s.Ops, s.Errors, total, s.FirstErr)
	}
	if len(s.Latencies) != int(s.Ops) || s.Rate() <= 0 {
		t.Fatalf("%d latencies for %d ops, rate %v", len(s.Latencies), s.Ops, s.Rate())
	}
	for i := 1; i < len(s.Latencies); i++ {
		if s.Latencies[i] < s.Latencies[i-1] {
			t.Fatal("latencies not sorted")
		}
	}
}

func TestPct(t *testing.T) {
	l := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if Pct(l, 0.5) != 5 || Pct(l, 0.99) != 9 || Pct(l, 1) != 10 || Pct(nil, 0.5) != 0 {
		t.Fatalf("p50 %v p99 %v p100 %v", Pct(l, 0.5), Pct(l, 0.99), Pct(l, 1))
	}
}

func TestRunStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s := Run(ctx, 2, time.Hour, func(context.Context, int, int) error { return nil })
	if s.Ops != 0 {
		t.Fatalf("%d ops after cancel", s.Ops)
	}
}

func TestRunPacedSpacesCalls(t *testing.T) {
	var mu sync.Mutex
	starts := map[int][]time.Time{}
	pace := 20 * time.Millisecond
	t0 := time.Now()
	s := RunPaced(context.Background(), 2, 200*time.Millisecond, pace, func(_ context.Context, w, _ int) error {
		mu.Lock()
		starts[w] = append(starts[w], time.Now())
		mu.Unlock()
		return nil
	})
	for w, ts := range starts {
		// A paced worker never starts a call before its slot: worker w
		// of 2 is offset by w*pace/2, so the two do not fire together
		// (the timer may fire late, never early).
		phase := time.Duration(w) * pace / 2
		for i := range ts {
			if due := phase + time.Duration(i)*pace; ts[i].Sub(t0) < due {
				t.Fatalf("worker %d call %d started %v after the run began, before %v", w, i, ts[i].Sub(t0), due)
			}
		}
		if len(ts) > 10 {
			t.Fatalf("worker %d made %d calls in 200 ms at one per 20 ms", w, len(ts))
		}
	}
	for _, l := range s.Latencies {
		if l >= pace {
			t.Fatalf("latency %v includes the pause", l)
		}
	}
}

func TestWithWindowBracketsTheCalls(t *testing.T) {
	var mu sync.Mutex
	var events []string
	ctx := WithWindow(context.Background(), func(start bool) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, map[bool]string{true: "open", false: "close"}[start])
	})
	s := Run(ctx, 2, 30*time.Millisecond, func(context.Context, int, int) error {
		mu.Lock()
		defer mu.Unlock()
		if len(events) == 0 || events[len(events)-1] != "open" && events[len(events)-1] != "call" {
			events = append(events, "call outside the window")
		} else {
			events = append(events, "call")
		}
		return nil
	})
	if s.Ops == 0 || len(events) < 3 || events[0] != "open" || events[len(events)-1] != "close" {
		t.Fatalf("events %v (ops %d), want open, calls, close", events[:min(len(events), 5)], s.Ops)
	}
	for _, e := range events[1 : len(events)-1] {
		if e != "call" {
			t.Fatalf("event %q inside the window", e)
		}
	}
}

// prep runs before each call, untimed, and a failed prep skips its call.
func TestRunPacedPrepIsNotTimed(t *testing.T) {
	var mu sync.Mutex
	prepped := map[int]bool{}
	pace := 20 * time.Millisecond
	s := RunPacedPrep(context.Background(), 1, 200*time.Millisecond, pace,
		func(_ context.Context, _, seq int) error {
			if seq == 3 {
				return errors.New("prep 3 failed")
			}
			time.Sleep(5 * time.Millisecond) // set-up that must not be timed
			mu.Lock()
			prepped[seq] = true
			mu.Unlock()
			return nil
		},
		func(_ context.Context, _, seq int) error {
			mu.Lock()
			defer mu.Unlock()
			if !prepped[seq] {
				t.Errorf("call %d ran without its prep", seq)
			}
			return nil
		})
	if s.Errors != 1 || s.FirstErr != "prep 3 failed" || s.Ops < 3 {
		t.Fatalf("ops %d errors %d (%q), want the failed prep counted once", s.Ops, s.Errors, s.FirstErr)
	}
	for _, l := range s.Latencies {
		if l >= 5*time.Millisecond {
			t.Fatalf("latency %v includes the prep", l)
		}
	}
}
