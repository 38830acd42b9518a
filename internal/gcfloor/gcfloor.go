// Package gcfloor keeps the Go garbage collector's heap goal at or above a
// floor while the live heap is small.
//
// With the default GOGC of 100, a process whose live heap is a few MiB
// (a registry node with a few thousand instances) collects every few MiB
// it allocates: every few seconds when idle, many times a second under
// load. Each cycle costs a pair of stop-the-world pauses and mark work
// that delays whatever request or push is in flight, which on a small
// machine shows up in the tail latency (BENCHMARKS.md, "A floor under the
// GC's heap goal").
//
// A Tuner sets GOGC after every collection so that the next goal is
// max(floor, what the GOGC in force at Start gives): below half the floor
// the goal is the floor, above it the runtime's own rule applies. The GC's
// CPU per allocated byte is then never more than with the base GOGC, since
// a larger goal only spaces the same marking further apart. This is the
// scheme of TiDB's and Uber's GC tuners, and what the old "heap ballast"
// trick approximated. A memory limit (GOMEMLIMIT) still caps the heap:
// the runtime collects at the limit whatever GOGC says.
package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// runtimeMinHeap is the runtime's own smallest goal at GOGC=100 (its
// heapMinimum, which scales with GOGC): a nearly empty heap's goal is this
// times GOGC/100, so the tuner's percentage is capped to keep that at the
// floor.
const runtimeMinHeap = 4 << 20

// Tuner adjusts GOGC after each collection; see the package doc. The GOGC
// setting is process-wide, so a process runs at most one.
type Tuner struct {
	floor uint64
	base  int

	mu      sync.Mutex
	stopped bool
	percent int
}

// sentinel carries the finalizer that runs once per collection. It holds
// a pointer so that it is not placed in the tiny allocator's blocks, whose
// finalizers may be held back by their neighbours.
type sentinel struct{ _ *Tuner }

// Start begins tuning towards floor bytes. It returns nil, changing
// nothing, when floor is 0 or the collector is off (GOGC=off).
func Start(floor uint64) *Tuner {
	base := debug.SetGCPercent(100)
	debug.SetGCPercent(base)
	if floor == 0 || base < 0 {
		return nil
	}
	t := &Tuner{floor: floor, base: base, percent: base}
	t.adjust()
	t.arm()
	return t
}

// arm plants a garbage object whose finalizer, run after the collection
// that frees it, adjusts GOGC and plants the next one.
func (t *Tuner) arm() {
	s := &sentinel{}
	runtime.SetFinalizer(s, func(*sentinel) {
		if t.adjust() {
			t.arm()
		}
	})
}

// adjust sets GOGC from the live heap of the last collection; it reports
// false once the tuner is stopped.
func (t *Tuner) adjust() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	live, roots := heap()
	p := Percent(live, roots, t.floor, t.base)
	if p != t.percent {
		debug.SetGCPercent(p)
		t.percent = p
	}
	return true
}

// Percent is the GOGC that makes the runtime's next goal, live + (live +
// roots) × GOGC/100 with roots the stacks and globals it scans, the floor;
// or base if that is more. It is capped where the runtime's own minimum
// goal (4 MiB × GOGC/100) would pass the floor.
func Percent(live, roots, floor uint64, base int) int {
	if floor <= live {
		return base
	}
	scan := max(live+roots, 1)
	want := (floor - live) * 100 / scan
	want = min(want, floor*100/runtimeMinHeap)
	return max(base, int(want))
}

// Stop ends the tuning and puts back the GOGC in force at Start. A nil
// Tuner's Stop does nothing.
func (t *Tuner) Stop() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	t.stopped = true
	debug.SetGCPercent(t.base)
}

// heap is the heap the last collection found live, and the stacks and
// globals the collector scans besides, in bytes.
func heap() (live, roots uint64) {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}, {Name: "/gc/scan/globals:bytes"}}
	metrics.Read(s)
	var v [3]uint64
	for i := range s {
		if s[i].Value.Kind() == metrics.KindUint64 {
			v[i] = s[i].Value.Uint64()
		}
	}
	return v[0], v[1] + v[2]
}
