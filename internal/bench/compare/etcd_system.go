package compare

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/regent-registry/regent/internal/bench/load"
)

// etcdSystem drives the etcd cluster as etcd-based registries use it:
// one key per instance under a per-service prefix.
type etcdSystem struct {
	endpoints []string
	self      string
	ttl       int64 // removal lease TTL, seconds
	procs     []int
	// keepHistory leaves etcd's history alone between measurements
	// (-etcd-keep-history): each workload then meets whatever the ones
	// before it left behind.
	keepHistory bool
	compacted   int64 // the revision of the last compaction
}

func (s *etcdSystem) name() string { return "etcd" }

func (s *etcdSystem) pids() []int { return s.procs }

// clients opens n clients, client i on member (i+node)%3 only.
func (s *etcdSystem) clients(n, node int) ([]*clientv3.Client, error) {
	return s.open(n, node, false)
}

// open opens n clients, client i on member (i+node)%3; with every, each
// lists every member, its own first, as an application configures
// clientv3 (which then spreads its calls over them).
func (s *etcdSystem) open(n, node int, every bool) ([]*clientv3.Client, error) {
	out := make([]*clientv3.Client, 0, n)
	for i := range n {
		eps := []string{s.endpoints[(i+node)%len(s.endpoints)]}
		if every {
			eps = rotated(s.endpoints, i+node)
		}
		c, err := newEtcdClient(eps)
		if err != nil {
			closeEtcd(out)
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func closeEtcd(cs []*clientv3.Client) {
	for _, c := range cs {
		c.Close()
	}
}

func prefixOf(workload string, clients, round, worker int) string {
	return "/registry/" + svcName(workload, clients, round, worker) + "/"
}

// instanceID is the key of the seq-th instance under its service's prefix.
func instanceID(seq int) string { return ipOf(seq) + ":8080" }

// keyOf is the etcd key of a worker's seq-th instance.
func keyOf(workload string, clients, round, worker, seq int) string {
	return prefixOf(workload, clients, round, worker) + instanceID(seq)
}

// ephemeralTTL is the lease TTL of the ephemeral registration workload:
// a registry's usual order of magnitude; the leases are revoked after the
// measurement.
const ephemeralTTL = 10

func (s *etcdSystem) measure(ctx context.Context, w string, clients, round int, d time.Duration) (load.Sample, error) {
	if !s.keepHistory {
		if err := s.compact(ctx); err != nil {
			return load.Sample{}, err
		}
	}
	switch w {
	case Ephemeral:
		return s.ephemeral(ctx, clients, round, d)
	case Shared:
		return s.sharedLease(ctx, clients, round, d)
	case Persistent:
		cs, err := s.open(clients, 0, true) // as Regent's writers
		if err != nil {
			return load.Sample{}, err
		}
		defer closeEtcd(cs)
		return load.Run(ctx, clients, d, func(ctx context.Context, worker, seq int) error {
			_, err := cs[worker].Put(ctx, keyOf(w, clients, round, worker, seq), instanceValue(ipOf(seq)))
			return err
		}), nil
	case Noop:
		cs, err := s.clients(clients, 0)
		if err != nil {
			return load.Sample{}, err
		}
		defer closeEtcd(cs)
		hc := make([]healthpb.HealthClient, len(cs))
		for i, c := range cs {
			hc[i] = healthpb.NewHealthClient(c.ActiveConnection())
		}
		return load.Run(ctx, clients, d, func(ctx context.Context, worker, _ int) error {
			r, err := hc[worker].Check(ctx, &healthpb.HealthCheckRequest{})
			if err == nil && r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				err = fmt.Errorf("health: %v", r.GetStatus())
			}
			return err
		}), nil
	case Lookup, Watched:
		return s.lookup(ctx, clients, round, d)
	case Notify:
		return s.notify(ctx, clients, round, d)
	case Removal:
		return s.removal(ctx, clients, round)
	}
	return load.Sample{}, fmt.Errorf("unknown workload %q", w)
}

// compact discards etcd's history up to its current revision, untimed,
// as a maintained etcd does: etcd keeps every revision of every key until
// it is compacted (Debian's etcd has no auto-compaction; etcd's docs call
// for it, and Kubernetes compacts every 5 minutes). Without it a workload
// meets the history of those measured before it: a serializable range
// after the registration workloads cost etcd 315 µs of server CPU instead
// of 132 µs (stop 16), which flattered Regent's lookup ratio. The
// compaction is physical (its answer waits until the backend has dropped
// the old revisions); Regent keeps no history and ZooKeeper none that a
// read goes through.
func (s *etcdSystem) compact(ctx context.Context) error {
	cs, err := s.clients(1, 0)
	if err != nil {
		return err
	}
	defer closeEtcd(cs)
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	r, err := cs[0].Get(ctx, "/", clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("etcd revision: %w", err)
	}
	rev := r.Header.Revision
	if rev <= s.compacted {
		return nil
	}
	if _, err := cs[0].Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		return fmt.Errorf("etcd compact to %d: %w", rev, err)
	}
	s.compacted = rev
	return nil
}

// ephemeral: lease grant, put with the lease, keep-alive, per instance.
func (s *etcdSystem) ephemeral(ctx context.Context, clients, round int, d time.Duration) (load.Sample, error) {
	cs, err := s.clients(clients, 0)
	if err != nil {
		return load.Sample{}, err
	}
	defer closeEtcd(cs)
	kctx, stopKeepAlive := context.WithCancel(ctx)
	var mu sync.Mutex
	var leases []clientv3.LeaseID
	sample := load.Run(ctx, clients, d, func(ctx context.Context, worker, seq int) error {
		c := cs[worker]
		l, err := c.Grant(ctx, ephemeralTTL)
		if err != nil {
			return err
		}
		if _, err := c.Put(ctx, keyOf(Ephemeral, clients, round, worker, seq), instanceValue(ipOf(seq)), clientv3.WithLease(l.ID)); err != nil {
			return err
		}
		if _, err := c.KeepAlive(kctx, l.ID); err != nil { // responses are dropped by the client when unread
			return err
		}
		mu.Lock()
		leases = append(leases, l.ID)
		mu.Unlock()
		return nil
	})
	stopKeepAlive()
	// Not timed: revoke, so that expiries do not load the next measurement.
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			for j := i; j < len(leases); j += len(cs) {
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				c.Revoke(rctx, leases[j])
				cancel()
			}
		})
	}
	wg.Wait()
	return sample, nil
}

// sharedLease: each client grants one lease and keeps it alive; an
// operation puts one more key with it.
func (s *etcdSystem) sharedLease(ctx context.Context, clients, round int, d time.Duration) (load.Sample, error) {
	cs, err := s.clients(clients, 0)
	if err != nil {
		return load.Sample{}, err
	}
	defer closeEtcd(cs)
	kctx, stopKeepAlive := context.WithCancel(ctx)
	defer stopKeepAlive()
	leases := make([]clientv3.LeaseID, clients)
	for i, c := range cs {
		l, err := c.Grant(ctx, ephemeralTTL)
		if err != nil {
			return load.Sample{}, err
		}
		if _, err := c.KeepAlive(kctx, l.ID); err != nil {
			return load.Sample{}, err
		}
		leases[i] = l.ID
	}
	sample := load.Run(ctx, clients, d, func(ctx context.Context, worker, seq int) error {
		_, err := cs[worker].Put(ctx, keyOf(Shared, clients, round, worker, seq), instanceValue(ipOf(seq)), clientv3.WithLease(leases[worker]))
		return err
	})
	stopKeepAlive()
	for i, c := range cs { // not timed
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c.Revoke(rctx, leases[i])
		cancel()
	}
	return sample, nil
}

// lookup: 10 keys under one prefix; a serializable range over it (served
// by the member the client talks to, as Regent serves lists locally).
func (s *etcdSystem) lookup(ctx context.Context, clients, round int, d time.Duration) (load.Sample, error) {
	cs, err := s.clients(clients, 0)
	if err != nil {
		return load.Sample{}, err
	}
	defer closeEtcd(cs)
	prefix := prefixOf(Lookup, clients, round, 0)
	for i := range lookupInstances {
		if _, err := cs[0].Put(ctx, prefix+instanceID(i), instanceValue(ipOf(i))); err != nil {
			return load.Sample{}, err
		}
	}
	for _, c := range cs[:min(len(cs), len(s.endpoints))] {
		err := waitFor(ctx, 10*time.Second, func() bool {
			r, err := c.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithSerializable(), clientv3.WithCountOnly())
			return err == nil && r.Count == lookupInstances
		})
		if err != nil {
			return load.Sample{}, fmt.Errorf("lookup keys not on a member: %w", err)
		}
	}
	return load.Run(ctx, clients, d, func(ctx context.Context, worker, _ int) error {
		r, err := cs[worker].Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithSerializable())
		if err == nil && len(r.Kvs) != lookupInstances {
			err = fmt.Errorf("range gave %d keys, want %d", len(r.Kvs), lookupInstances)
		}
		return err
	}), nil
}

// watch opens a watch on prefix and waits until etcd has created it.
func watch(ctx context.Context, c *clientv3.Client, prefix string) (clientv3.WatchChan, error) {
	wc := c.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	select {
	case r, ok := <-wc:
		if !ok || !r.Created {
			return nil, fmt.Errorf("watch on %s not created: %v", prefix, r.Err())
		}
		return wc, nil
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("watch on %s not created after 10 s", prefix)
	}
}

// awaitEvent waits up to timeout for an event of type t on key.
func awaitEvent(ctx context.Context, wc clientv3.WatchChan, key string, t mvccpb.Event_EventType, timeout time.Duration) error {
	tm := time.NewTimer(timeout)
	defer tm.Stop()
	for {
		select {
		case r, ok := <-wc:
			if !ok {
				return fmt.Errorf("watch closed: %w", ctx.Err())
			}
			for _, ev := range r.Events {
				if ev.Type == t && string(ev.Kv.Key) == key {
					return nil
				}
			}
		case <-tm.C:
			return fmt.Errorf("%s %s %w", t, key, errNotSeen)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// notify: worker w puts on member w%3 and watches on member (w+1)%3.
func (s *etcdSystem) notify(ctx context.Context, clients, round int, d time.Duration) (load.Sample, error) {
	writers, err := s.clients(clients, 0)
	if err != nil {
		return load.Sample{}, err
	}
	defer closeEtcd(writers)
	readers, err := s.clients(clients, 1)
	if err != nil {
		return load.Sample{}, err
	}
	defer closeEtcd(readers)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	chans := make([]clientv3.WatchChan, clients)
	for i, r := range readers {
		if chans[i], err = watch(wctx, r, prefixOf(Notify, clients, round, i)); err != nil {
			return load.Sample{}, err
		}
	}
	// Before each put, untimed, the worker's previous key is deleted and
	// seen gone, as the Regent side deregisters its previous instance.
	prep := func(ctx context.Context, worker, seq int) error {
		if seq == 0 {
			return nil
		}
		prev := keyOf(Notify, clients, round, worker, seq-1)
		if _, err := writers[worker].Delete(ctx, prev); err != nil {
			return err
		}
		return awaitEvent(ctx, chans[worker], prev, mvccpb.DELETE, 10*time.Second)
	}
	return load.RunPacedPrep(ctx, clients, d, NotifyPace, prep, func(ctx context.Context, worker, seq int) error {
		key := keyOf(Notify, clients, round, worker, seq)
		if _, err := writers[worker].Put(ctx, key, instanceValue(ipOf(seq))); err != nil {
			return err
		}
		return awaitEvent(ctx, chans[worker], key, mvccpb.PUT, 10*time.Second)
	}), nil
}

// removal: one client process per worker holds a key on a lease of TTL
// s.ttl that it keeps alive; it is killed, and a watch on another member
// times the DELETE of the key.
func (s *etcdSystem) removal(ctx context.Context, clients, round int) (load.Sample, error) {
	readers, err := s.clients(clients, 1)
	if err != nil {
		return load.Sample{}, err
	}
	defer closeEtcd(readers)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	chans := make([]clientv3.WatchChan, clients)
	keys := make([]string, clients)
	kids := make([]*child, clients)
	defer func() {
		for _, k := range kids {
			if k != nil {
				k.kill()
			}
		}
	}()
	for i := range clients {
		prefix := prefixOf(Removal, clients, round, i)
		keys[i] = prefix + instanceID(i)
		if chans[i], err = watch(wctx, readers[i], prefix); err != nil {
			return load.Sample{}, err
		}
		if kids[i], err = startChild(ctx, s.self, "etcd", s.endpoints[i%len(s.endpoints)], keys[i], ipOf(i), "-ttl", fmt.Sprint(s.ttl)); err != nil {
			return load.Sample{}, err
		}
		if err := awaitEvent(ctx, chans[i], keys[i], mvccpb.PUT, 10*time.Second); err != nil {
			return load.Sample{}, err
		}
	}
	timeout := time.Duration(3*s.ttl)*time.Second + 10*time.Second
	return killAndTime(ctx, kids, func(ctx context.Context, i int) error {
		return awaitEvent(ctx, chans[i], keys[i], mvccpb.DELETE, timeout)
	}), nil
}
