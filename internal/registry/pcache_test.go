package registry

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
)

// notifying is memPersistent that reports its writes, as persistent.Store
// does, counts its reads, and can hold a read until released.
type notifying struct {
	*memPersistent
	obs   func([]naming.ServiceKey)
	reads atomic.Int64
	hold  chan chan struct{} // a read sends on it and waits for the reply
}

func (n *notifying) SetObserver(f func([]naming.ServiceKey)) { n.obs = f }

func (n *notifying) Register(ctx context.Context, k naming.ServiceKey, ins []naming.Instance) (uint64, error) {
	rev, err := n.memPersistent.Register(ctx, k, ins)
	n.obs([]naming.ServiceKey{k})
	return rev, err
}

func (n *notifying) Service(k naming.ServiceKey) (PersistentService, error) {
	n.reads.Add(1)
	ps, err := n.memPersistent.Service(k)
	if n.hold != nil {
		done := make(chan struct{})
		n.hold <- done
		<-done
	}
	return ps, err
}

func persistentInst(ip string) naming.Instance {
	return naming.Instance{IP: ip, Port: 80, Cluster: naming.DefaultCluster, Weight: 1, Healthy: true, Enabled: true}
}

// A persistent side that reports its changes is read once per change: the
// registry answers from its cache until the service changes, and then from
// the new state.
func TestPersistentCacheServesUntilAChange(t *testing.T) {
	per := &notifying{memPersistent: newMem()}
	r, err := New(DefaultConfig(), ephemeral.NewStore(nil), per)
	if err != nil {
		t.Fatal(err)
	}
	k := naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "cached"}
	ctx := context.Background()
	if _, err := per.Register(ctx, k, []naming.Instance{persistentInst("10.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if s, _, err := r.Get(k, naming.Filter{}); err != nil || len(s.Instances) != 1 {
			t.Fatalf("Get: %+v %v", s, err)
		}
	}
	if n := per.reads.Load(); n != 1 {
		t.Fatalf("5 lookups read the persistent side %d times, want 1", n)
	}
	if st := r.PersistentCache(); st != (CacheStats{Hits: 4, Misses: 1, Entries: 1}) {
		t.Fatalf("cache stats after 5 lookups: %+v, want 4 hits, 1 miss, 1 entry", st)
	}
	if _, err := per.Register(ctx, k, []naming.Instance{persistentInst("10.0.0.2")}); err != nil {
		t.Fatal(err)
	}
	s, _, err := r.Get(k, naming.Filter{})
	if err != nil || len(s.Instances) != 2 {
		t.Fatalf("Get after a write: %+v %v, want both instances", s, err)
	}
	if n := per.reads.Load(); n != 2 {
		t.Fatalf("reads %d, want 2", n)
	}
	if st := r.PersistentCache(); st.Misses != 2 || st.Hits != 4 {
		t.Fatalf("cache stats after a change: %+v, want the lookup after it counted a miss", st)
	}
	// A change to an ephemeral instance of the service does not
	// invalidate anything it needs; the answer still merges both sides.
	r.Ephemeral().Register("c1", "node", k, []naming.Instance{{IP: "10.0.1.1", Port: 80, Cluster: naming.DefaultCluster, Weight: 1, Healthy: true, Enabled: true}})
	if s, _, err := r.Get(k, naming.Filter{}); err != nil || len(s.Instances) != 3 {
		t.Fatalf("Get after an ephemeral register: %+v %v", s, err)
	}
}

// A read that overlaps a reported change is not kept: the next lookup
// reads again and sees the change.
func TestPersistentCacheKeepsNoReadOlderThanAChange(t *testing.T) {
	per := &notifying{memPersistent: newMem(), hold: make(chan chan struct{})}
	r, err := New(DefaultConfig(), ephemeral.NewStore(nil), per)
	if err != nil {
		t.Fatal(err)
	}
	k := naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "raced"}
	per.memPersistent.Register(context.Background(), k, []naming.Instance{persistentInst("10.0.0.1")})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, _, err := r.Get(k, naming.Filter{}); err != nil {
			t.Error(err)
		}
	}()
	release := <-per.hold // the read has the old state and waits
	per.memPersistent.Register(context.Background(), k, []naming.Instance{persistentInst("10.0.0.2")})
	r.Changed([]naming.ServiceKey{k}) // reported while the read is in flight
	close(release)
	wg.Wait()
	per.hold = nil
	s, _, err := r.Get(k, naming.Filter{})
	if err != nil || len(s.Instances) != 2 {
		t.Fatalf("Get after the overlapping change: %+v %v, want both instances", s, err)
	}
	if n := per.reads.Load(); n != 2 {
		t.Fatalf("reads %d, want 2: the overlapping read must not be kept", n)
	}
}

// The cache holds at most its size; a persistent side that does not report
// changes is never cached.
func TestPersistentCacheBounds(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PersistentCache = 3
	per := &notifying{memPersistent: newMem()}
	r, err := New(cfg, ephemeral.NewStore(nil), per)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b", "c", "d", "e"} {
		k := naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: name}
		per.Register(context.Background(), k, []naming.Instance{persistentInst("10.0.0.1")})
		if _, _, err := r.Get(k, naming.Filter{}); err != nil {
			t.Fatal(err)
		}
	}
	if n := r.pcache.len(); n != 3 {
		t.Fatalf("cache holds %d services, want 3", n)
	}
	silent, err := New(DefaultConfig(), ephemeral.NewStore(nil), newMem())
	if err != nil {
		t.Fatal(err)
	}
	if silent.pcache != nil {
		t.Fatal("a persistent side that reports nothing got a cache")
	}
	cfg.PersistentCache = -1
	if _, err := New(cfg, ephemeral.NewStore(nil), per); err == nil {
		t.Fatal("a negative cache size was accepted")
	}
}
