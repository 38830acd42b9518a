package ephemeral

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"

	"github.com/regent-registry/regent/internal/naming"
)

var svcA = naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "a"}
var svcB = naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "b"}

func inst(ip string, port int) naming.Instance {
	return naming.Instance{IP: ip, Port: port, Cluster: "DEFAULT", Weight: 1, Healthy: true, Enabled: true}
}

type recorder struct {
	mu      sync.Mutex
	changed []naming.ServiceKey
}

func (r *recorder) observe(keys []naming.ServiceKey) {
	r.mu.Lock()
	r.changed = append(r.changed, keys...)
	r.mu.Unlock()
}

func (r *recorder) take() []naming.ServiceKey {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.changed
	r.changed = nil
	return out
}

func TestRegisterManyInstancesPerClient(t *testing.T) {
	rec := &recorder{}
	s := NewStore(rec.observe)
	s.Register("c1", "n1", svcA, []naming.Instance{inst("10.0.0.1", 80), inst("10.0.0.1", 81)})
	s.Register("c1", "n1", svcA, []naming.Instance{inst("10.0.0.2", 80)})
	s.Register("c1", "n1", svcB, []naming.Instance{inst("10.0.0.1", 80)})
	list, _ := s.Instances(svcA)
	if len(list) != 3 {
		t.Fatalf("service a has %d instances, want 3 (a session holds many per service)", len(list))
	}
	for _, in := range list {
		if !in.Ephemeral {
			t.Fatalf("instance not marked ephemeral: %+v", in)
		}
	}
	if list, _ := s.Instances(svcB); len(list) != 1 {
		t.Fatalf("service b has %d instances, want 1", len(list))
	}
	if got := rec.take(); len(got) != 3 {
		t.Fatalf("observer saw %d changes, want 3", len(got))
	}
}

func TestRegisterIsIdempotent(t *testing.T) {
	rec := &recorder{}
	s := NewStore(rec.observe)
	r1, _ := s.Register("c1", "n1", svcA, []naming.Instance{inst("10.0.0.1", 80)})
	rev1 := s.Revision(svcA)
	rec.take()
	r2, _ := s.Register("c1", "n1", svcA, []naming.Instance{inst("10.0.0.1", 80)})
	if r1 != r2 || s.Revision(svcA) != rev1 {
		t.Fatalf("identical register changed revisions: %d->%d, svc %d->%d", r1, r2, rev1, s.Revision(svcA))
	}
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("identical register notified %v", got)
	}
	// A changed weight is an update in place, not a second instance.
	changed := inst("10.0.0.1", 80)
	changed.Weight = 5
	s.Register("c1", "n1", svcA, []naming.Instance{changed})
	list, rev := s.Instances(svcA)
	if len(list) != 1 || list[0].Weight != 5 {
		t.Fatalf("update in place: %+v", list)
	}
	if rev <= rev1 {
		t.Fatalf("revision did not grow: %d -> %d", rev1, rev)
	}
}

func TestDeregister(t *testing.T) {
	s := NewStore(nil)
	s.Register("c1", "n1", svcA, []naming.Instance{inst("10.0.0.1", 80), inst("10.0.0.2", 80)})
	s.Register("c2", "n1", svcA, []naming.Instance{inst("10.0.0.3", 80)})
	s.Deregister("c1", svcA, []naming.InstanceID{{IP: "10.0.0.1", Port: 80, Cluster: "DEFAULT"}})
	list, _ := s.Instances(svcA)
	if len(list) != 2 || list[0].IP != "10.0.0.2" || list[1].IP != "10.0.0.3" {
		t.Fatalf("after deregister: %+v", list)
	}
	// Deregistering what is not held, or by another client, changes nothing.
	rev := s.Revision(svcA)
	s.Deregister("c2", svcA, []naming.InstanceID{{IP: "10.0.0.2", Port: 80, Cluster: "DEFAULT"}})
	s.Deregister("nobody", svcA, []naming.InstanceID{{IP: "10.0.0.2", Port: 80, Cluster: "DEFAULT"}})
	if list, r := s.Instances(svcA); len(list) != 2 || r != rev {
		t.Fatalf("foreign deregister changed the service: %+v rev %d->%d", list, rev, r)
	}
}

func TestRemoveClientRemovesEverythingAndNotifies(t *testing.T) {
	rec := &recorder{}
	s := NewStore(rec.observe)
	s.Register("c1", "n1", svcA, []naming.Instance{inst("10.0.0.1", 80)})
	s.Register("c1", "n1", svcB, []naming.Instance{inst("10.0.0.1", 80)})
	s.Register("c2", "n1", svcB, []naming.Instance{inst("10.0.0.2", 80)})
	revB := s.Revision(svcB)
	rec.take()
	if !s.RemoveClient("c1") {
		t.Fatal("RemoveClient reported an unknown client")
	}
	got := rec.take()
	slices.SortFunc(got, func(a, b naming.ServiceKey) int {
		if a.String() < b.String() {
			return -1
		}
		return 1
	})
	if !slices.Equal(got, []naming.ServiceKey{svcA, svcB}) {
		t.Fatalf("observer saw %v, want both services", got)
	}
	if list, _ := s.Instances(svcA); len(list) != 0 {
		t.Fatalf("service a still lists %+v", list)
	}
	if list, r := s.Instances(svcB); len(list) != 1 || r <= revB {
		t.Fatalf("service b: %+v rev %d (was %d)", list, r, revB)
	}
	if _, ok := s.Client("c1"); ok {
		t.Fatal("client c1 still known")
	}
	if st := s.Stats(); st != (Stats{Clients: 1, Services: 1, Instances: 1}) {
		t.Fatalf("stats %+v", st)
	}
	if s.RemoveClient("c1") {
		t.Fatal("second RemoveClient reported a client")
	}
}

func TestServiceRevisionGrowsAcrossRemoval(t *testing.T) {
	s := NewStore(nil)
	s.Register("c1", "n1", svcA, []naming.Instance{inst("10.0.0.1", 80)})
	r1 := s.Revision(svcA)
	s.RemoveClient("c1")
	s.Register("c2", "n1", svcA, []naming.Instance{inst("10.0.0.1", 80)})
	if r2 := s.Revision(svcA); r2 <= r1 {
		t.Fatalf("revision went from %d to %d after the service emptied and refilled", r1, r2)
	}
}

func TestConcurrentUse(t *testing.T) {
	s := NewStore(func([]naming.ServiceKey) {})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("c%d", w)
			for i := 0; i < 200; i++ {
				s.Register(id, "n1", svcA, []naming.Instance{inst("10.0.0.1", 1000*w+i+1)})
				s.Instances(svcA)
				if i%3 == 0 {
					s.Deregister(id, svcA, []naming.InstanceID{{IP: "10.0.0.1", Port: 1000*w + i + 1, Cluster: "DEFAULT"}})
				}
			}
		}()
	}
	wg.Wait()
	list, _ := s.Instances(svcA)
	if want := 8 * (200 - 67); len(list) != want {
		t.Fatalf("got %d instances, want %d", len(list), want)
	}
	if st := s.Stats(); st.Instances != len(list) {
		t.Fatalf("stats count %d, list %d", st.Instances, len(list))
	}
}

// BenchmarkMemoryPerInstance measures the heap one ephemeral instance costs
// at 100,000 clients x 10 instances (1,000,000 instances) in the store
// itself, without gRPC streams. Target: <= 1 KiB per instance.
func BenchmarkMemoryPerInstance(b *testing.B) {
	perInst := heapPerInstance(b, 100_000, 10)
	b.ReportMetric(perInst/1024, "KiB/instance")
}

// BenchmarkMemoryPerSessionInstance is BenchmarkMemoryPerInstance for a
// session per instance: 200,000 clients of one instance each, the shape of
// the bench-compare ephemeral workload (and of an app that registers
// itself), where a client's own bookkeeping is not shared.
func BenchmarkMemoryPerSessionInstance(b *testing.B) {
	heapPerInstance(b, 200_000, 1)
}

// heapPerInstance fills a store with clients of per instances each (one
// metadata entry each, 1,000 services), reports the heap it holds per
// instance and returns it.
func heapPerInstance(b *testing.B, clients, per int) float64 {
	var perInst float64
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		s := NewStore(nil)
		for c := 0; c < clients; c++ {
			key := naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: fmt.Sprintf("svc-%d", c%1000)}
			list := make([]naming.Instance, per)
			for i := range list {
				list[i] = inst(fmt.Sprintf("10.%d.%d.%d", c>>16&255, c>>8&255, c&255), 8000+i)
				list[i].Metadata = map[string]string{"version": "1.0"}
			}
			s.Register(fmt.Sprintf("client-%06d", c), "node-1", key, list)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perInst = float64(after.HeapAlloc-before.HeapAlloc) / float64(clients*per)
		runtime.KeepAlive(s)
	}
	b.ReportMetric(perInst, "heap-bytes/instance")
	return perInst
}

func TestRevisionNeverGoesBack(t *testing.T) {
	s := NewStore(nil)
	base := s.Revision(svcA)
	if base == 0 {
		t.Fatal("an unknown service has revision 0; it must start at the store's base")
	}
	s.Register("c1", "n1", svcA, []naming.Instance{inst("10.0.0.1", 80)})
	r1 := s.Revision(svcA)
	s.RemoveClient("c1")
	_, r2 := s.Instances(svcA)
	if r2 < r1 || r1 <= base {
		t.Fatalf("revisions base %d, registered %d, emptied %d", base, r1, r2)
	}
	if got := s.Services(); len(got) != 0 {
		t.Fatalf("an emptied service is still listed: %v", got)
	}
}

// statsByWalk counts what Stats reports by walking every service, as Stats
// did before it kept the totals.
func statsByWalk(s *Store) Stats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := Stats{Clients: len(s.clients)}
	for _, svc := range s.services {
		if len(svc.clients) > 0 {
			st.Services++
		}
		for _, n := range svc.clients {
			st.Instances += n
		}
	}
	return st
}

// The totals Stats keeps match a walk of the store after every operation
// of a random mix of registers, deregisters, replaces and removals.
func TestStatsKeptMatchAWalk(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	s := NewStore(nil)
	key := func() naming.ServiceKey {
		return naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: fmt.Sprintf("s%d", rng.IntN(5))}
	}
	inst := func() naming.Instance {
		return naming.Instance{IP: fmt.Sprintf("10.0.0.%d", rng.IntN(6)), Port: 80, Cluster: "DEFAULT", Weight: 1, Healthy: true, Enabled: true}
	}
	for i := range 5000 {
		id := fmt.Sprintf("c%d", rng.IntN(8))
		switch rng.IntN(4) {
		case 0:
			s.Register(id, "n1", key(), []naming.Instance{inst(), inst()})
		case 1:
			in := inst()
			s.Deregister(id, key(), []naming.InstanceID{in.ID()})
		case 2:
			svcs := map[naming.ServiceKey][]naming.Instance{}
			for range rng.IntN(3) {
				svcs[key()] = []naming.Instance{inst()}
			}
			s.ReplaceClient(id, "n2", svcs)
		case 3:
			s.RemoveClient(id)
		}
		if got, want := s.Stats(), statsByWalk(s); got != want {
			t.Fatalf("after operation %d: Stats %+v, a walk gives %+v", i, got, want)
		}
	}
}

// BenchmarkStats: Stats (three calls per metrics scrape, under the store's
// lock) at 1,000,000 instances in 10,000 services, beside the walk of
// every service that it did before (its baseline).
func BenchmarkStats(b *testing.B) {
	s := NewStore(nil)
	for c := range 100000 {
		var list []naming.Instance
		for i := range 10 {
			list = append(list, naming.Instance{IP: fmt.Sprintf("10.%d.%d.%d", c>>8&255, c&255, i), Port: 80, Cluster: "DEFAULT", Weight: 1, Healthy: true, Enabled: true})
		}
		s.Register(fmt.Sprintf("c%d", c), "n1", naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: fmt.Sprintf("s%d", c%10000)}, list)
	}
	if st := s.Stats(); st.Instances != 1000000 || st.Services != 10000 {
		b.Fatalf("stats %+v", st)
	}
	b.Run("kept", func(b *testing.B) {
		for b.Loop() {
			s.Stats()
		}
	})
	b.Run("walk", func(b *testing.B) {
		for b.Loop() {
			statsByWalk(s)
		}
	})
}
