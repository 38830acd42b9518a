package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regent-registry/regent/internal/naming"
)

var orders = naming.ServiceKey{Service: "orders"}

// harness is one Checker on a fake clock, a fake prober and a memStore.
type harness struct {
	t       *testing.T
	clock   *fakeClock
	prober  *fakeProber
	store   *memStore
	members *memberList
	c       *Checker
}

func newHarness(t *testing.T, mutate func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, clock: newFakeClock(), prober: newFakeProber(), store: newMemStore(), members: &memberList{names: []string{"a"}}}
	cfg := DefaultConfig()
	cfg.Self = "a"
	cfg.Members = h.members.get
	cfg.Source = h.store
	cfg.Writer = h.store
	cfg.Prober = h.prober
	cfg.Clock = h.clock
	cfg.Logger = testLogger(t, slog.LevelDebug)
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.c = c
	return h
}

func (h *harness) tick() { h.c.Tick(context.Background()) }

// tickEvery advances the clock by d and ticks, n times.
func (h *harness) tickEvery(d time.Duration, n int) {
	for range n {
		h.clock.Advance(d)
		h.tick()
	}
}

func (h *harness) wantWrites(want ...bool) {
	h.t.Helper()
	got := h.store.writeLog()
	var gotHealthy []bool
	for _, w := range got {
		gotHealthy = append(gotHealthy, w.healthy)
	}
	if fmt.Sprint(gotHealthy) != fmt.Sprint(want) && !(len(gotHealthy) == 0 && len(want) == 0) {
		h.t.Fatalf("writes = %v, want healthy values %v", got, want)
	}
}

func (h *harness) wantStored(key naming.ServiceKey, in naming.Instance, want bool) {
	h.t.Helper()
	got, ok := h.store.stored(key, in.ID())
	if !ok || got != want {
		h.t.Fatalf("stored healthy of %s = %v (found %v), want %v", in.ID(), got, ok, want)
	}
}

const defaultInterval = 5 * time.Second // naming.DefaultHealthCheck().IntervalMS

func TestTickWritesUnhealthyAfterThresholdThenHealthyAgain(t *testing.T) {
	h := newHarness(t, nil)
	in := instance("10.0.0.1", 80, true)
	h.store.put(orders, naming.HealthCheck{}, in)
	h.prober.set(addrOf(in), errRefused)

	h.tick()
	h.wantWrites()
	h.tickEvery(defaultInterval, 1)
	h.wantWrites()
	if n := h.prober.count(addrOf(in)); n != 2 {
		t.Fatalf("probes after 2 rounds = %d, want 2", n)
	}
	h.tickEvery(defaultInterval, 1) // third consecutive failure
	h.wantWrites(false)
	h.wantStored(orders, in, false)

	h.tickEvery(defaultInterval, 3) // still failing: stored already unhealthy
	h.wantWrites(false)

	h.prober.set(addrOf(in), nil)
	h.tickEvery(defaultInterval, 1) // HealthyThreshold 1
	h.wantWrites(false, true)
	h.wantStored(orders, in, true)
	h.tickEvery(defaultInterval, 3)
	h.wantWrites(false, true)

	st := h.c.Stats()
	if st.ProbesRun != 10 || st.ProbeFailures != 6 || st.Writes != 2 || st.WriteFailures != 0 ||
		st.OwnedServices != 1 || st.CheckedInstances != 1 || st.Rounds != 10 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestTickCustomThresholds(t *testing.T) {
	h := newHarness(t, nil)
	in := instance("10.0.0.1", 80, true)
	h.store.put(orders, naming.HealthCheck{IntervalMS: 1000, UnhealthyThreshold: 5, HealthyThreshold: 2}, in)
	h.prober.set(addrOf(in), errRefused)
	h.tick()
	h.tickEvery(time.Second, 3)
	h.wantWrites()
	h.tickEvery(time.Second, 1)
	h.wantWrites(false)
	h.prober.set(addrOf(in), nil)
	h.tickEvery(time.Second, 1)
	h.wantWrites(false)
	h.tickEvery(time.Second, 1)
	h.wantWrites(false, true)
}

func TestTickAlternatingResultsNeverWrite(t *testing.T) {
	h := newHarness(t, nil)
	up := instance("10.0.0.1", 80, true)
	down := instance("10.0.0.2", 80, false)
	h.store.put(orders, naming.HealthCheck{UnhealthyThreshold: 3, HealthyThreshold: 3}, up, down)
	h.prober.setHook(func(_ context.Context, _ string, call int) error {
		if call%2 == 1 {
			return errRefused
		}
		return nil
	})
	h.tick()
	h.tickEvery(defaultInterval, 29)
	if n := h.prober.total(); n != 60 {
		t.Fatalf("probes = %d, want 60", n)
	}
	h.wantWrites()

	// The same setup does write once results agree three times in a row.
	h.prober.setHook(func(context.Context, string, int) error { return errRefused })
	h.tickEvery(defaultInterval, 3)
	h.wantWrites(false)
	if w := h.store.writeLog(); w[0].id != up.ID() {
		t.Fatalf("wrote %v, want only %s", w, up.ID())
	}
}

func TestTickRespectsInterval(t *testing.T) {
	h := newHarness(t, nil)
	fast := instance("10.0.0.1", 80, true)
	slow := instance("10.0.0.2", 80, true)
	h.store.put(orders, naming.HealthCheck{IntervalMS: 1000}, fast)
	h.store.put(naming.ServiceKey{Service: "billing"}, naming.HealthCheck{IntervalMS: 3000}, slow)

	h.tick()
	h.tick() // no time passed
	h.clock.Advance(999 * time.Millisecond)
	h.tick()
	if f, s := h.prober.count(addrOf(fast)), h.prober.count(addrOf(slow)); f != 1 || s != 1 {
		t.Fatalf("probes before the interval passed: fast %d, slow %d; want 1, 1", f, s)
	}
	h.clock.Advance(time.Millisecond)
	h.tick()
	h.tick()
	if f, s := h.prober.count(addrOf(fast)), h.prober.count(addrOf(slow)); f != 2 || s != 1 {
		t.Fatalf("probes at 1s: fast %d, slow %d; want 2, 1", f, s)
	}
	h.tickEvery(time.Second, 2)
	if f, s := h.prober.count(addrOf(fast)), h.prober.count(addrOf(slow)); f != 4 || s != 2 {
		t.Fatalf("probes at 3s: fast %d, slow %d; want 4, 2", f, s)
	}
}

func TestTickCheckNoneNeverProbes(t *testing.T) {
	h := newHarness(t, nil)
	up := instance("10.0.0.1", 80, true)
	down := instance("10.0.0.2", 80, false)
	h.store.put(orders, naming.HealthCheck{Type: naming.CheckNone}, up, down)
	h.prober.set(addrOf(up), errRefused)

	h.tick()
	h.tickEvery(defaultInterval, 10)
	if n := h.prober.total(); n != 0 {
		t.Fatalf("CheckNone service probed %d times", n)
	}
	h.wantWrites()
	if st := h.c.Stats(); st.OwnedServices != 1 || st.CheckedInstances != 0 {
		t.Fatalf("Stats = %+v, want 1 owned service and 0 checked instances", st)
	}

	// Switching the service to TCP starts checking it.
	h.store.setCheck(orders, naming.HealthCheck{Type: naming.CheckTCP, UnhealthyThreshold: 1})
	h.tickEvery(defaultInterval, 1)
	if n := h.prober.total(); n != 2 {
		t.Fatalf("after switching to TCP, probes = %d, want 2", n)
	}
	if n := len(h.store.writeLog()); n != 2 {
		t.Fatalf("after switching to TCP, %d writes, want 2", n)
	}
	h.wantStored(orders, up, false)
	h.wantStored(orders, down, true)
}

func TestTickSkipsEphemeralInstances(t *testing.T) {
	h := newHarness(t, nil)
	eph := instance("10.0.0.1", 80, true)
	eph.Ephemeral = true
	disabled := instance("10.0.0.2", 80, true)
	disabled.Enabled = false
	h.store.put(orders, naming.HealthCheck{UnhealthyThreshold: 1}, eph, disabled)
	h.prober.set(addrOf(eph), errRefused)
	h.prober.set(addrOf(disabled), errRefused)
	h.tick()
	if n := h.prober.count(addrOf(eph)); n != 0 {
		t.Errorf("ephemeral instance probed %d times", n)
	}
	if n := h.prober.count(addrOf(disabled)); n != 1 {
		t.Errorf("disabled instance probed %d times, want 1", n)
	}
	h.wantStored(orders, eph, true)
	h.wantStored(orders, disabled, false)
}

// Instances outside Probeable are never probed nor written.
func TestTickProbesOnlyProbeableAddresses(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Probeable = func(ip string) bool { return ip == "10.0.0.2" } })
	fenced := instance("10.0.0.1", 80, true)
	allowed := instance("10.0.0.2", 80, true)
	h.store.put(orders, naming.HealthCheck{UnhealthyThreshold: 1}, fenced, allowed)
	h.prober.set(addrOf(fenced), errRefused)
	h.prober.set(addrOf(allowed), errRefused)
	h.tick()
	if n := h.prober.count(addrOf(fenced)); n != 0 {
		t.Errorf("fenced instance probed %d times", n)
	}
	if n := h.prober.count(addrOf(allowed)); n != 1 {
		t.Errorf("allowed instance probed %d times, want 1", n)
	}
	h.wantStored(orders, fenced, true)
	h.wantStored(orders, allowed, false)
}

// keyOwnedBy returns a service key that Owner gives to want among members.
func keyOwnedBy(t *testing.T, want string, members []string) naming.ServiceKey {
	t.Helper()
	for i := range 1000 {
		k := naming.ServiceKey{Service: fmt.Sprintf("svc-%d", i)}
		if Owner(k, members) == want {
			return k
		}
	}
	t.Fatalf("no service owned by %s among %v", want, members)
	return naming.ServiceKey{}
}

func TestTickSkipsServicesOwnedByOthers(t *testing.T) {
	h := newHarness(t, nil)
	h.members.set("a", "b")
	mine, theirs := keyOwnedBy(t, "a", []string{"a", "b"}), keyOwnedBy(t, "b", []string{"a", "b"})
	inMine, inTheirs := instance("10.0.0.1", 80, true), instance("10.0.0.2", 80, true)
	h.store.put(mine, naming.HealthCheck{}, inMine)
	h.store.put(theirs, naming.HealthCheck{}, inTheirs)
	h.prober.set(addrOf(inMine), errRefused)
	h.prober.set(addrOf(inTheirs), errRefused)

	h.tick()
	h.tickEvery(defaultInterval, 4)
	if n := h.prober.count(addrOf(inTheirs)); n != 0 {
		t.Fatalf("service owned by b probed %d times by a", n)
	}
	if n := h.prober.count(addrOf(inMine)); n != 5 {
		t.Fatalf("own service probed %d times, want 5", n)
	}
	if got, _ := h.store.stored(theirs, inTheirs.ID()); !got {
		t.Fatal("service owned by b written by a")
	}
	if st := h.c.Stats(); st.OwnedServices != 1 {
		t.Fatalf("OwnedServices = %d, want 1", st.OwnedServices)
	}

	// b dies: a takes its service over, counting from zero.
	h.members.set("a")
	h.tickEvery(defaultInterval, 2)
	if got, _ := h.store.stored(theirs, inTheirs.ID()); !got {
		t.Fatal("taken-over service written after 2 failures, want 3")
	}
	h.tickEvery(defaultInterval, 1)
	if got, _ := h.store.stored(theirs, inTheirs.ID()); got {
		t.Fatal("taken-over service not written unhealthy after 3 failures")
	}
}

func TestTickChecksNothingWhenSelfIsNotAMember(t *testing.T) {
	h := newHarness(t, nil)
	h.members.set("b", "c")
	in := instance("10.0.0.1", 80, true)
	h.store.put(orders, naming.HealthCheck{}, in)
	h.tick()
	h.tickEvery(defaultInterval, 3)
	if n := h.prober.total(); n != 0 {
		t.Fatalf("probed %d times while not a member", n)
	}
}

func TestTickRetriesFailedWriteOnNextResult(t *testing.T) {
	h := newHarness(t, nil)
	in := instance("10.0.0.1", 80, true)
	h.store.put(orders, naming.HealthCheck{}, in)
	h.prober.set(addrOf(in), errRefused)
	h.store.failWrites = 1

	h.tick()
	h.tickEvery(defaultInterval, 2)
	if n := h.store.attemptCount(); n != 1 {
		t.Fatalf("write attempts = %d, want 1", n)
	}
	h.wantWrites()
	h.wantStored(orders, in, true)
	if st := h.c.Stats(); st.WriteFailures != 1 || st.Writes != 0 {
		t.Fatalf("Stats = %+v, want 1 write failure", st)
	}

	h.tickEvery(defaultInterval, 1) // fourth failure: retry
	if n := h.store.attemptCount(); n != 2 {
		t.Fatalf("write attempts = %d, want 2", n)
	}
	h.wantWrites(false)
	h.wantStored(orders, in, false)
	if st := h.c.Stats(); st.WriteFailures != 1 || st.Writes != 1 {
		t.Fatalf("Stats = %+v, want 1 write and 1 write failure", st)
	}
}

func TestTickFailedWriteThenRecoveryWritesNothing(t *testing.T) {
	h := newHarness(t, nil)
	in := instance("10.0.0.1", 80, true)
	h.store.put(orders, naming.HealthCheck{}, in)
	h.prober.set(addrOf(in), errRefused)
	h.store.failWrites = 1
	h.tick()
	h.tickEvery(defaultInterval, 2) // the write of "unhealthy" fails
	h.prober.set(addrOf(in), nil)
	h.tickEvery(defaultInterval, 3) // healthy again, as stored
	if n := h.store.attemptCount(); n != 1 {
		t.Fatalf("write attempts = %d, want 1", n)
	}
	h.wantStored(orders, in, true)
}

func TestTickForgetsInstancesThatGoAndServicesThatMove(t *testing.T) {
	h := newHarness(t, nil)
	in := instance("10.0.0.1", 80, true)
	h.store.put(orders, naming.HealthCheck{}, in)
	h.prober.set(addrOf(in), errRefused)

	h.tick()
	h.tickEvery(defaultInterval, 1) // 2 failures
	h.store.put(orders, naming.HealthCheck{})
	h.tickEvery(defaultInterval, 1) // gone
	if st := h.c.Stats(); st.CheckedInstances != 0 {
		t.Fatalf("CheckedInstances = %d after the instance went", st.CheckedInstances)
	}
	h.store.put(orders, naming.HealthCheck{}, in)
	h.tickEvery(defaultInterval, 2)
	h.wantWrites() // counter restarted: 2 failures
	h.tickEvery(defaultInterval, 1)
	h.wantWrites(false)

	// Ownership moves away and back: counters restart too.
	h.prober.set(addrOf(in), nil)
	h.tickEvery(defaultInterval, 1)
	h.wantWrites(false, true)
	h.prober.set(addrOf(in), errRefused)
	h.tickEvery(defaultInterval, 2)
	h.members.set("b")
	h.tickEvery(defaultInterval, 1)
	if st := h.c.Stats(); st.OwnedServices != 0 || st.CheckedInstances != 0 {
		t.Fatalf("Stats = %+v after losing the service", st)
	}
	h.members.set("a")
	h.tickEvery(defaultInterval, 2)
	h.wantWrites(false, true)
	h.tickEvery(defaultInterval, 1)
	h.wantWrites(false, true, false)
}

func TestTickCheckChangeRestartsCounters(t *testing.T) {
	h := newHarness(t, nil)
	in := instance("10.0.0.1", 80, true)
	h.store.put(orders, naming.HealthCheck{}, in)
	h.prober.set(addrOf(in), errRefused)
	h.tick()
	h.tickEvery(defaultInterval, 1)
	h.store.setCheck(orders, naming.HealthCheck{Type: naming.CheckHTTP, HTTPPath: "/health"})
	h.tickEvery(defaultInterval, 2)
	h.wantWrites()
	h.tickEvery(defaultInterval, 1)
	h.wantWrites(false)
	// An interval change alone keeps the counters.
	h.prober.set(addrOf(in), nil)
	h.store.setCheck(orders, naming.HealthCheck{Type: naming.CheckHTTP, HTTPPath: "/health", IntervalMS: 1000, HealthyThreshold: 2})
	h.tickEvery(defaultInterval, 1)
	h.store.setCheck(orders, naming.HealthCheck{Type: naming.CheckHTTP, HTTPPath: "/health", IntervalMS: 2000, HealthyThreshold: 2})
	h.tickEvery(defaultInterval, 1)
	h.wantWrites(false, true)
}

func TestTickPassesTheServiceCheck(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ProbeTimeout = time.Hour })
	in := instance("10.0.0.1", 8080, true)
	h.store.put(orders, naming.HealthCheck{Type: naming.CheckHTTP, HTTPPath: "/health", IntervalMS: 1000}, in)
	var deadlineLeft atomic.Int64
	h.prober.setHook(func(ctx context.Context, _ string, _ int) error {
		if d, ok := ctx.Deadline(); ok {
			deadlineLeft.Store(max(int64(time.Until(d)), 1))
		}
		return nil
	})
	h.tick()
	h.prober.mu.Lock()
	checks := h.prober.checks
	h.prober.mu.Unlock()
	want := naming.HealthCheck{Type: naming.CheckHTTP, HTTPPath: "/health", ExpectedStatus: 200, IntervalMS: 1000, UnhealthyThreshold: 3, HealthyThreshold: 1}
	if len(checks) != 1 || checks[0] != want {
		t.Fatalf("prober got %+v, want [%+v]", checks, want)
	}
	// The probe gets a deadline no later than the interval (1s), even with a
	// ProbeTimeout of an hour.
	if left := time.Duration(deadlineLeft.Load()); left == 0 || left > time.Second {
		t.Fatalf("probe deadline %v away, want one within the 1s interval", left)
	}
}

func TestTickSkipsRoundWhenServicesCannotBeListed(t *testing.T) {
	h := newHarness(t, nil)
	in := instance("10.0.0.1", 80, true)
	h.store.put(orders, naming.HealthCheck{}, in)
	h.prober.set(addrOf(in), errRefused)
	h.tick()
	h.tickEvery(defaultInterval, 1)
	h.store.mu.Lock()
	h.store.servicesErr = errors.New("fake: disk on fire")
	h.store.mu.Unlock()
	h.tickEvery(defaultInterval, 3)
	if n := h.prober.total(); n != 2 {
		t.Fatalf("probes while the source fails = %d, want 2", n)
	}
	h.store.mu.Lock()
	h.store.servicesErr = nil
	h.store.mu.Unlock()
	h.tickEvery(defaultInterval, 1) // third failure: counters were kept
	h.wantWrites(false)
}

func TestTickProbesConcurrentlyWithinTheBound(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxConcurrentProbes = 4 })
	var ins []naming.Instance
	for i := range 10 {
		ins = append(ins, instance(fmt.Sprintf("10.0.0.%d", i+1), 80, true))
	}
	h.store.put(orders, naming.HealthCheck{}, ins...)
	gate := make(chan struct{})
	var mu sync.Mutex
	inFlight, maxInFlight := 0, 0
	h.prober.setHook(func(ctx context.Context, _ string, _ int) error {
		mu.Lock()
		inFlight++
		maxInFlight = max(maxInFlight, inFlight)
		mu.Unlock()
		defer func() {
			mu.Lock()
			inFlight--
			mu.Unlock()
		}()
		select {
		case <-gate:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.tick()
	}()
	waitFor(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if inFlight != 4 {
			return fmt.Errorf("%d probes in flight, want 4", inFlight)
		}
		return nil
	})
	close(gate)
	<-done
	if maxInFlight != 4 {
		t.Fatalf("at most %d probes in flight, want 4", maxInFlight)
	}
	if st := h.c.Stats(); st.ProbesRun != 10 || st.ProbeFailures != 0 {
		t.Fatalf("Stats = %+v, want 10 successful probes", st)
	}
}

func TestTickHungProbeDoesNotHoldTheOthers(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ProbeTimeout = 20 * time.Millisecond })
	hung := instance("10.0.0.1", 80, true)
	var others []naming.Instance
	for i := range 5 {
		others = append(others, instance(fmt.Sprintf("10.0.1.%d", i+1), 80, true))
	}
	h.store.put(orders, naming.HealthCheck{UnhealthyThreshold: 1}, append([]naming.Instance{hung}, others...)...)
	release := make(chan struct{})
	h.prober.setHook(func(ctx context.Context, addr string, _ int) error {
		if addr != addrOf(hung) {
			return nil
		}
		<-release // held until the others are done
		<-ctx.Done()
		return ctx.Err()
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.tick()
	}()
	waitFor(t, 10*time.Second, func() error {
		if n := h.c.Stats().ProbesRun; n != 5 {
			return fmt.Errorf("%d probes done while one hangs, want 5", n)
		}
		return nil
	})
	close(release)
	<-done
	// The hung probe ended at its deadline: a failure, written at threshold 1.
	h.wantStored(orders, hung, false)
	for _, in := range others {
		h.wantStored(orders, in, true)
	}
}

func TestTickSlowWriterDoesNotBlock(t *testing.T) {
	h := newHarness(t, nil)
	bad := instance("10.0.0.1", 80, true)
	var good []naming.Instance
	for i := range 5 {
		good = append(good, instance(fmt.Sprintf("10.0.1.%d", i+1), 80, false))
	}
	h.store.put(orders, naming.HealthCheck{UnhealthyThreshold: 1}, append([]naming.Instance{bad}, good...)...)
	h.prober.set(addrOf(bad), errRefused)

	release := make(chan struct{})
	var entered atomic.Int32
	h.c.cfg.Writer = writerFunc(func(ctx context.Context, key naming.ServiceKey, id naming.InstanceID, healthy bool) error {
		_ = h.c.Stats() // a Writer may call back into the Checker
		if id == bad.ID() {
			entered.Add(1)
			<-release
		}
		return h.store.SetHealthy(ctx, key, id, healthy)
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.tick()
	}()
	// While one write hangs, the other probes and writes complete.
	waitFor(t, 10*time.Second, func() error {
		if entered.Load() != 1 || len(h.store.writeLog()) != 5 {
			return fmt.Errorf("hanging writes %d, writes done %d; want 1, 5", entered.Load(), len(h.store.writeLog()))
		}
		return nil
	})
	if st := h.c.Stats(); st.ProbesRun != 6 {
		t.Fatalf("Stats during a hung write = %+v, want 6 probes", st)
	}
	close(release)
	<-done
	h.wantStored(orders, bad, false)
}

func TestTickWriteTimeoutIsRetried(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.WriteTimeout = 20 * time.Millisecond })
	in := instance("10.0.0.1", 80, true)
	h.store.put(orders, naming.HealthCheck{UnhealthyThreshold: 1}, in)
	h.prober.set(addrOf(in), errRefused)
	var slow atomic.Bool
	slow.Store(true)
	h.c.cfg.Writer = writerFunc(func(ctx context.Context, key naming.ServiceKey, id naming.InstanceID, healthy bool) error {
		if slow.Load() {
			<-ctx.Done() // a Raft cluster without a leader
			return ctx.Err()
		}
		return h.store.SetHealthy(ctx, key, id, healthy)
	})
	h.tick()
	if st := h.c.Stats(); st.WriteFailures != 1 || st.Writes != 0 {
		t.Fatalf("Stats = %+v, want 1 write failure", st)
	}
	h.wantStored(orders, in, true)
	slow.Store(false)
	h.tickEvery(defaultInterval, 1)
	h.wantStored(orders, in, false)
}

type writerFunc func(ctx context.Context, key naming.ServiceKey, id naming.InstanceID, healthy bool) error

func (f writerFunc) SetHealthy(ctx context.Context, key naming.ServiceKey, id naming.InstanceID, healthy bool) error {
	return f(ctx, key, id, healthy)
}

func TestTickCanceledContextRecordsNothing(t *testing.T) {
	h := newHarness(t, func(c *Config) {})
	in := instance("10.0.0.1", 80, true)
	h.store.put(orders, naming.HealthCheck{UnhealthyThreshold: 1}, in)
	ctx, cancel := context.WithCancel(context.Background())
	h.prober.setHook(func(context.Context, string, int) error {
		cancel() // Run stops while the probe is in flight
		return errRefused
	})
	h.c.Tick(ctx)
	if st := h.c.Stats(); st.ProbesRun != 0 || st.Writes != 0 || h.store.attemptCount() != 0 {
		t.Fatalf("Stats = %+v, attempts %d: a probe cut short by stopping counted", st, h.store.attemptCount())
	}
	h.c.Tick(ctx)
	if n := h.prober.total(); n != 1 {
		t.Fatalf("Tick with a done context probed (%d probes)", n)
	}
}

func TestRunTicksOnTheClockAndStops(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.RescanInterval = time.Second })
	in := instance("10.0.0.1", 80, true)
	h.store.put(orders, naming.HealthCheck{IntervalMS: 1000}, in)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.c.Run(ctx)
	}()
	probes := func(want int) func() error {
		return func() error {
			if n := h.prober.total(); n != want {
				return fmt.Errorf("%d probes, want %d", n, want)
			}
			if h.clock.Waiters() != 1 {
				return errors.New("Run is not waiting for the next round")
			}
			return nil
		}
	}
	waitFor(t, 10*time.Second, probes(1)) // the first round runs at once
	h.clock.Advance(999 * time.Millisecond)
	waitFor(t, 10*time.Second, probes(1))
	h.clock.Advance(time.Millisecond)
	waitFor(t, 10*time.Second, probes(2))
	h.clock.Advance(time.Second)
	waitFor(t, 10*time.Second, probes(3))
	if st := h.c.Stats(); st.OwnedServices != 1 || st.Rounds != 3 {
		t.Fatalf("Stats = %+v, want 1 owned service after 3 rounds", st)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if st := h.c.Stats(); st.OwnedServices != 0 || st.CheckedInstances != 0 {
		t.Fatalf("Stats after Run = %+v, want the state forgotten", st)
	}
}

func TestConfigValidate(t *testing.T) {
	valid := func() Config {
		c := DefaultConfig()
		c.Self = "a"
		c.Members = func() []string { return []string{"a"} }
		c.Source = newMemStore()
		c.Writer = newMemStore()
		return c
	}
	base := valid()
	if err := base.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mutate := range map[string]func(*Config){
		"Self":                func(c *Config) { c.Self = "" },
		"Members":             func(c *Config) { c.Members = nil },
		"Source":              func(c *Config) { c.Source = nil },
		"Writer":              func(c *Config) { c.Writer = nil },
		"RescanInterval":      func(c *Config) { c.RescanInterval = 0 },
		"ProbeTimeout":        func(c *Config) { c.ProbeTimeout = -time.Second },
		"WriteTimeout":        func(c *Config) { c.WriteTimeout = 0 },
		"MaxConcurrentProbes": func(c *Config) { c.MaxConcurrentProbes = 0 },
	} {
		c := valid()
		mutate(&c)
		err := c.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.HasPrefix(err.Error(), "health: ") || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: Validate = %v, want ErrInvalidConfig naming %s", name, err, name)
		}
		if _, err := New(c); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: New = %v, want ErrInvalidConfig", name, err)
		}
	}

	c, err := New(valid())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.cfg.Prober.(*NetProber); !ok {
		t.Errorf("default Prober is %T, want *NetProber", c.cfg.Prober)
	}
	if c.cfg.Clock == nil || c.log == nil {
		t.Error("New left the Clock or the Logger nil")
	}
	d := DefaultConfig()
	if d.RescanInterval != time.Second || d.ProbeTimeout != 2*time.Second || d.MaxConcurrentProbes != 64 {
		t.Errorf("DefaultConfig = %+v", d)
	}
}

func (s *memStore) readCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads
}

// A round reads a service's instances only when its revision moved: the
// cost of a quiet round is O(services), not O(instances). A change, and
// the checker's own verdict (a write moves the revision), are read at the
// next round; a Source without revisions is read every round.
func TestRescanReadsOnlyChangedServices(t *testing.T) {
	h := newHarness(t, nil)
	payments := naming.ServiceKey{Service: "payments"}
	a, b := instance("10.0.0.1", 80, true), instance("10.0.0.2", 80, true)
	h.store.put(orders, naming.HealthCheck{}, a)
	h.store.put(payments, naming.HealthCheck{}, b)
	h.prober.set(addrOf(a), errRefused)

	h.tick()
	if n := h.store.readCount(); n != 2 {
		t.Fatalf("first round read %d services, want 2", n)
	}
	h.tickEvery(time.Second, 3) // quiet rounds: nothing changed
	if n := h.store.readCount(); n != 2 {
		t.Fatalf("after 3 quiet rounds %d reads, want still 2", n)
	}
	// A change to one service: only it is read again, and its new
	// instance is checked.
	c := instance("10.0.0.3", 80, true)
	h.store.put(payments, naming.HealthCheck{}, b, c)
	h.tick()
	if n := h.store.readCount(); n != 3 {
		t.Fatalf("after a change to payments %d reads, want 3", n)
	}
	if st := h.c.Stats(); st.CheckedInstances != 3 {
		t.Fatalf("checked %d instances, want 3", st.CheckedInstances)
	}
	// a fails its third probe: the verdict is written, which moves the
	// revision of orders; the next round reads it (seeing the stored
	// verdict) and writes nothing more while a keeps failing.
	h.tickEvery(defaultInterval, 2)
	h.wantWrites(false)
	before := h.store.readCount()
	h.tickEvery(defaultInterval, 3)
	if n := h.store.readCount() - before; n != 1 {
		t.Fatalf("after the verdict %d reads, want 1 (orders, once)", n)
	}
	h.wantWrites(false)

	h.store.mu.Lock()
	h.store.noRevisions = true
	h.store.mu.Unlock()
	before = h.store.readCount()
	h.tickEvery(time.Second, 2)
	if n := h.store.readCount() - before; n != 4 {
		t.Fatalf("without revisions 2 rounds read %d services, want 4 (both, each round)", n)
	}
}
