package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func metric(name string) uint64 {
	s := []metrics.Sample{{Name: name}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// waitFor runs collections until cond holds, or fails after a deadline:
// the tuner acts in a finalizer, which runs shortly after a collection.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10 s (GOGC %d, live %d, goal %d)", what,
				metric("/gc/gogc:percent"), metric("/gc/heap/live:bytes"), metric("/gc/heap/goal:bytes"))
		}
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
}

func TestPercent(t *testing.T) {
	for _, c := range []struct {
		live, roots, floor uint64
		base, want         int
	}{
		{live: 4 << 20, floor: 64 << 20, base: 100, want: 1500},                 // goal 4 + 4×15 = 64 MiB
		{live: 3 << 20, roots: 1 << 20, floor: 64 << 20, base: 100, want: 1525}, // 3 + 4×15.25 = 64 MiB
		{live: 32 << 20, floor: 64 << 20, base: 100, want: 100},                 // half the floor: GOGC's own goal
		{live: 40 << 20, floor: 64 << 20, base: 100, want: 100},                 // past half: never below base
		{live: 80 << 20, floor: 64 << 20, base: 100, want: 100},                 // past the floor
		{live: 8 << 20, floor: 64 << 20, base: 1000, want: 1000},
		{live: 1 << 10, floor: 64 << 20, base: 100, want: 1600}, // capped: 4 MiB × 16 = 64 MiB
		{live: 0, floor: 64 << 20, base: 100, want: 1600},
		{live: 1 << 20, floor: 2 << 20, base: 100, want: 100},
	} {
		if got := Percent(c.live, c.roots, c.floor, c.base); got != c.want {
			t.Errorf("Percent(%d, %d, %d, %d) = %d, want %d", c.live, c.roots, c.floor, c.base, got, c.want)
		}
	}
}

// The heap goal rises to the floor while the live heap is small, comes
// down to GOGC's own once the live heap passes half the floor, and rises
// again when that heap is freed.
func TestGoalFollowsFloorThenLiveHeap(t *testing.T) {
	const floor = 64 << 20
	tu := Start(floor)
	if tu == nil {
		t.Fatal("Start returned nil with GOGC on")
	}
	defer tu.Stop()
	waitFor(t, "goal at the floor", func() bool {
		g := metric("/gc/heap/goal:bytes")
		return g >= floor*9/10 && g <= floor*12/10
	})

	big := make([]byte, 48<<20) // live heap past half the floor
	for i := range big {
		big[i] = byte(i)
	}
	waitFor(t, "GOGC back to base", func() bool { return metric("/gc/gogc:percent") == 100 })
	if g, live := metric("/gc/heap/goal:bytes"), metric("/gc/heap/live:bytes"); g < 2*live*9/10 {
		t.Fatalf("goal %d below GOGC=100's own for live %d", g, live)
	}
	runtime.KeepAlive(big)
	big = nil

	waitFor(t, "goal at the floor again", func() bool {
		g := metric("/gc/heap/goal:bytes")
		return metric("/gc/gogc:percent") > 100 && g >= floor*9/10 && g <= floor*12/10
	})
}

// Stop puts back the GOGC of Start, and later collections leave it there.
func TestStopRestoresGOGC(t *testing.T) {
	old := debug.SetGCPercent(150)
	defer debug.SetGCPercent(old)
	tu := Start(256 << 20)
	waitFor(t, "tuned", func() bool { return metric("/gc/gogc:percent") > 150 })
	tu.Stop()
	if p := metric("/gc/gogc:percent"); p != 150 {
		t.Fatalf("GOGC after Stop = %d, want 150", p)
	}
	for range 5 {
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
	if p := metric("/gc/gogc:percent"); p != 150 {
		t.Fatalf("GOGC after Stop and collections = %d, want 150", p)
	}
	tu.Stop() // twice is fine
}

// With the collector off, or no floor, Start changes nothing.
func TestStartLeavesGOGCOffAlone(t *testing.T) {
	old := debug.SetGCPercent(-1)
	defer debug.SetGCPercent(old)
	if tu := Start(64 << 20); tu != nil {
		tu.Stop()
		t.Fatal("Start tuned with GOGC=off")
	}
	if p := debug.SetGCPercent(-1); p != -1 {
		t.Fatalf("GOGC = %d after Start with GOGC=off", p)
	}
	debug.SetGCPercent(100)
	if tu := Start(0); tu != nil {
		t.Fatal("Start tuned with a floor of 0")
	}
	var nilTuner *Tuner
	nilTuner.Stop()
}
