package health

import (
	"context"
	"fmt"
	"testing"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/storage"
)

// boltSource is the daemon's Source over bbolt (as persistent's reader
// serves it), without Raft: revisions from the revisions bucket, instances
// decoded from their records. withRevisions false reports 0 for every
// service, as a Source without revisions would: the checker then reads
// every service every round, as it did before revisions.
type boltSource struct {
	db            *storage.DB
	withRevisions bool
}

func (s boltSource) Services() (map[naming.ServiceKey]uint64, error) {
	revs := map[naming.ServiceKey]uint64{}
	err := s.db.View(func(tx *storage.Tx) error {
		return tx.ForEachServiceRevision(func(k naming.ServiceKey, rev uint64) error {
			if !s.withRevisions {
				rev = 0
			}
			revs[k] = rev
			return nil
		})
	})
	return revs, err
}

func (s boltSource) Service(key naming.ServiceKey) (ins []naming.Instance, check naming.HealthCheck, err error) {
	err = s.db.View(func(tx *storage.Tx) error {
		if ins, err = tx.Instances(key); err != nil {
			return err
		}
		check = naming.DefaultHealthCheck()
		return nil
	})
	return ins, check, err
}

// BenchmarkRescanQuiet: one checker round over 100,000 persistent
// instances in 100 services, none changed since the last round (the
// steady state of a registry), none probeable (so the round is the rescan
// alone). "revisions" skips the unchanged services; "every-instance", its
// baseline in the same run, reads and decodes every instance every round,
// as the checker did before, which is what a node did every second.
func BenchmarkRescanQuiet(b *testing.B) {
	db := storage.OpenTest(b)
	const services, perService = 100, 1000
	err := db.Update(func(tx *storage.Tx) error {
		for s := range services {
			key := naming.ServiceKey{Namespace: naming.DefaultNamespace, Group: naming.DefaultGroup, Service: fmt.Sprintf("svc-%d", s)}
			for i := range perService {
				in := instance(fmt.Sprintf("10.%d.%d.%d", s, i>>8, i&255), 8080, true)
				in.Metadata = map[string]string{"version": "1.0.0"}
				if _, err := tx.PutInstance(key, in); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	for _, withRevisions := range []bool{true, false} {
		name := map[bool]string{true: "revisions", false: "every-instance"}[withRevisions]
		b.Run(name, func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.Self = "a"
			cfg.Members = func() []string { return []string{"a"} }
			cfg.Source = boltSource{db: db, withRevisions: withRevisions}
			cfg.Writer = newMemStore()
			cfg.Prober = newFakeProber()
			cfg.Clock = newFakeClock()
			cfg.Probeable = func(string) bool { return false }
			c, err := New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			c.Tick(context.Background()) // the first round reads everything
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				c.Tick(context.Background())
			}
			b.StopTimer()
			b.ReportMetric(float64(services*perService), "instances")
		})
	}
}
