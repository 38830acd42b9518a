package health

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/regent-registry/regent/internal/naming"
)

// countingProber counts the probes it passes to the real prober, by address.
type countingProber struct {
	next  Prober
	mu    sync.Mutex
	calls map[string]int
}

func newCountingProber(next Prober) *countingProber {
	return &countingProber{next: next, calls: make(map[string]int)}
}

func (p *countingProber) Probe(ctx context.Context, check naming.HealthCheck, ip string, port int) error {
	p.mu.Lock()
	p.calls[addrOf(naming.Instance{IP: ip, Port: port})]++
	p.mu.Unlock()
	return p.next.Probe(ctx, check, ip, port)
}

func (p *countingProber) counts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.calls)
}

// runner runs a Checker in the background until stop.
type runner struct {
	c      *Checker
	prober *countingProber
	cancel context.CancelFunc
	done   chan struct{}
}

// startChecker starts a Checker on the real clock and network, with short
// rounds.
func startChecker(t *testing.T, self string, members func() []string, store *memStore) *runner {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Self = self
	cfg.Members = members
	cfg.Source = store
	cfg.Writer = store.writer(self)
	prober := newCountingProber(NewNetProber(cfg.ProbeTimeout))
	cfg.Prober = prober
	cfg.RescanInterval = 20 * time.Millisecond
	cfg.Logger = testLogger(t, slog.LevelInfo)
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{c: c, prober: prober, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		c.Run(ctx)
	}()
	t.Cleanup(r.stop)
	return r
}

// stop cancels Run and waits for it to return.
func (r *runner) stop() {
	r.cancel()
	<-r.done
}

var fastCheck = naming.HealthCheck{Type: naming.CheckTCP, IntervalMS: 50}

func TestRunMarksAnInstanceWhoseListenerWentUnhealthy(t *testing.T) {
	store := newMemStore()
	dying, staying := listenTCP(t), listenTCP(t)
	inDying, inStaying := dying.instance(true), staying.instance(true)
	store.put(orders, fastCheck, inDying, inStaying)
	r := startChecker(t, "a", func() []string { return []string{"a"} }, store)

	waitFor(t, 10*time.Second, func() error {
		if n := r.prober.counts()[addrOf(inDying)]; n < 3 {
			return fmt.Errorf("listening instance probed %d times, want 3", n)
		}
		return nil
	})
	if w := store.writeLog(); len(w) != 0 {
		t.Fatalf("writes while both instances listen: %v", w)
	}

	dying.Close()
	waitFor(t, 10*time.Second, func() error {
		if healthy, _ := store.stored(orders, inDying.ID()); healthy {
			return fmt.Errorf("closed listener's instance still healthy")
		}
		return nil
	})
	// Keep running a while (counted in probes, not time): the other
	// instance is probed and never written.
	base := r.prober.counts()[addrOf(inStaying)]
	waitFor(t, 10*time.Second, func() error {
		if n := r.prober.counts()[addrOf(inStaying)]; n < base+5 {
			return fmt.Errorf("listening instance probed %d more times, want 5", n-base)
		}
		return nil
	})
	r.stop()
	w := store.writeLog()
	if len(w) != 1 || w[0].id != inDying.ID() || w[0].healthy {
		t.Fatalf("writes = %v, want only %s unhealthy", w, inDying.ID())
	}
	if healthy, _ := store.stored(orders, inStaying.ID()); !healthy {
		t.Fatal("listening instance stored unhealthy")
	}
	if st := r.c.Stats(); st.Writes != 1 || st.WriteFailures != 0 {
		t.Fatalf("Stats = %+v, want exactly 1 write", st)
	}
}

func TestRunAnotherNodeTakesOverWhenTheCheckerDies(t *testing.T) {
	both := []string{"a", "b"}
	members := &memberList{names: both}
	store := newMemStore()

	// Two services per node, each with one listening instance.
	type svc struct {
		key   naming.ServiceKey
		owner string
		ln    *tcpListener
		in    naming.Instance
	}
	var svcs []*svc
	owned := map[string]int{}
	for i := 0; owned["a"] < 2 || owned["b"] < 2; i++ {
		key := naming.ServiceKey{Service: fmt.Sprintf("svc-%d", i)}
		owner := Owner(key, both)
		if owned[owner] == 2 {
			continue
		}
		owned[owner]++
		ln := listenTCP(t)
		s := &svc{key: key, owner: owner, ln: ln, in: ln.instance(true)}
		store.put(key, fastCheck, s.in)
		svcs = append(svcs, s)
	}
	runners := map[string]*runner{
		"a": startChecker(t, "a", members.get, store),
		"b": startChecker(t, "b", members.get, store),
	}

	// Every service is probed, by its owner only.
	waitFor(t, 10*time.Second, func() error {
		for _, s := range svcs {
			if n := runners[s.owner].prober.counts()[addrOf(s.in)]; n < 3 {
				return fmt.Errorf("%v probed %d times by its owner %s, want 3", s.key, n, s.owner)
			}
		}
		return nil
	})
	for _, s := range svcs {
		for name, r := range runners {
			if name != s.owner && r.prober.counts()[addrOf(s.in)] != 0 {
				t.Fatalf("%v (owner %s) probed by %s", s.key, s.owner, name)
			}
		}
	}
	if w := store.writeLog(); len(w) != 0 {
		t.Fatalf("writes while everything listens: %v", w)
	}

	// The owner of the first service dies: it leaves the member list and
	// stops checking.
	victim := svcs[0].owner
	survivor := slices.DeleteFunc(slices.Clone(both), func(m string) bool { return m == victim })[0]
	members.set(survivor)
	runners[victim].stop()
	victimCounts := runners[victim].prober.counts()

	// Then the first service's instance goes away: the survivor finds out.
	svcs[0].ln.Close()
	waitFor(t, 10*time.Second, func() error {
		if healthy, _ := store.stored(svcs[0].key, svcs[0].in.ID()); healthy {
			return fmt.Errorf("instance of %v still healthy", svcs[0].key)
		}
		return nil
	})
	// The survivor now probes every service, the dead node's ones included.
	waitFor(t, 10*time.Second, func() error {
		for _, s := range svcs {
			if n := runners[survivor].prober.counts()[addrOf(s.in)]; n < 3 {
				return fmt.Errorf("%v probed %d times by the survivor %s, want 3", s.key, n, survivor)
			}
		}
		return nil
	})
	runners[survivor].stop()

	w := store.writeLog()
	if len(w) != 1 || w[0].by != survivor || w[0].key.WithDefaults() != svcs[0].key.WithDefaults() || w[0].healthy {
		t.Fatalf("writes = %+v, want one unhealthy write of %v by %s", w, svcs[0].key, survivor)
	}
	for _, s := range svcs[1:] {
		if healthy, _ := store.stored(s.key, s.in.ID()); !healthy {
			t.Errorf("%v stored unhealthy", s.key)
		}
	}
	if got := runners[victim].prober.counts(); !maps.Equal(got, victimCounts) {
		t.Errorf("the stopped node probed after Run returned: %v, then %v", victimCounts, got)
	}
	if st := runners[survivor].c.Stats(); st.Writes != 1 {
		t.Errorf("survivor Stats = %+v, want 1 write", st)
	}
}
