package registry_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/internal/registry"
	"github.com/regent-registry/regent/persistent"
	"github.com/regent-registry/regent/storage"
)

// BenchmarkGetPersistent: a lookup of a service of 10 persistent
// instances over bbolt (persistent.Local), with the registry's cache of
// persistent states beside none (the baseline: a bbolt read transaction
// and a decode per lookup).
func BenchmarkGetPersistent(b *testing.B) {
	for _, size := range []int{0, registry.DefaultConfig().PersistentCache} {
		b.Run(fmt.Sprintf("cache=%d", size), func(b *testing.B) {
			local := persistent.NewLocal(storage.OpenTest(b))
			cfg := registry.DefaultConfig()
			cfg.PersistentCache = size
			r, err := registry.New(cfg, ephemeral.NewStore(nil), local)
			if err != nil {
				b.Fatal(err)
			}
			k := naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "orders"}
			var ins []naming.Instance
			for i := range 10 {
				ins = append(ins, naming.Instance{IP: fmt.Sprintf("10.0.0.%d", i+1), Port: 8080, Cluster: naming.DefaultCluster, Weight: 1,
					Healthy: true, Enabled: true, Metadata: map[string]string{"version": "1.0.0"}})
			}
			if _, err := local.Register(context.Background(), k, ins); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				s, _, err := r.Get(k, naming.Filter{})
				if err != nil || len(s.Instances) != 10 {
					b.Fatalf("Get: %d instances, %v", len(s.Instances), err)
				}
			}
		})
	}
}

// A write through persistent.Local is seen by the next lookup: Local
// reports its changes, so the cache never answers with a replaced state.
func TestPersistentCacheFollowsLocal(t *testing.T) {
	local := persistent.NewLocal(storage.OpenTest(t))
	r, err := registry.New(registry.DefaultConfig(), ephemeral.NewStore(nil), local)
	if err != nil {
		t.Fatal(err)
	}
	k := naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "orders"}
	ctx := context.Background()
	for i := range 5 {
		in := naming.Instance{IP: fmt.Sprintf("10.0.0.%d", i+1), Port: 8080, Cluster: naming.DefaultCluster, Weight: 1, Healthy: true, Enabled: true}
		if _, err := local.Register(ctx, k, []naming.Instance{in}); err != nil {
			t.Fatal(err)
		}
		if s, _, err := r.Get(k, naming.Filter{}); err != nil || len(s.Instances) != i+1 {
			t.Fatalf("after %d writes Get lists %d: %v", i+1, len(s.Instances), err)
		}
	}
	if _, err := local.Deregister(ctx, k, naming.InstanceID{IP: "10.0.0.1", Port: 8080, Cluster: naming.DefaultCluster}); err != nil {
		t.Fatal(err)
	}
	if s, _, _ := r.Get(k, naming.Filter{}); len(s.Instances) != 4 {
		t.Fatalf("after a deregister Get lists %d, want 4", len(s.Instances))
	}
	meta := naming.ServiceMeta{ProtectThreshold: 0.5}
	if _, err := local.UpdateMeta(ctx, k, meta); err != nil {
		t.Fatal(err)
	}
	if _, m, _ := r.Get(k, naming.Filter{}); m.ProtectThreshold != 0.5 {
		t.Fatalf("after a metadata update Get has %+v", m)
	}
}
