package compare

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/regent-registry/regent/internal/bench/load"
)

// zkSystem drives the ZooKeeper ensemble as ZooKeeper-based registries
// (Dubbo's, Curator's service discovery) use it: a znode per service with
// a child znode per instance, ephemeral for live instances, each client
// with a session of its own on one server.
type zkSystem struct {
	servers []string
	self    string
	procs   []int
}

func (s *zkSystem) name() string { return "zookeeper" }

func (s *zkSystem) pids() []int { return s.procs }

// ephemeralSession is the session timeout of the ephemeral workloads, as
// etcd's lease TTL there; removalSession is the shortest ZooKeeper allows
// (two ticks), as etcd's removal TTL is the shortest it grants.
const (
	ephemeralSession = ephemeralTTL * time.Second
	removalSession   = 2 * zkTick
)

type zkQuiet struct{}

func (zkQuiet) Printf(string, ...any) {}

var zkACL = zk.WorldACL(zk.PermAll)

// zkConnect opens a session on server alone and waits until it is
// established.
func zkConnect(ctx context.Context, server string, timeout time.Duration) (*zk.Conn, error) {
	c, events, err := zk.Connect([]string{server}, timeout, zk.WithLogger(zkQuiet{}), zk.WithLogInfo(false))
	if err != nil {
		return nil, err
	}
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		select {
		case ev := <-events:
			if ev.State == zk.StateHasSession {
				return c, nil
			}
		case <-deadline.C:
			c.Close()
			return nil, fmt.Errorf("zookeeper session on %s not established after 10 s", server)
		case <-ctx.Done():
			c.Close()
			return nil, ctx.Err()
		}
	}
}

// open opens n sessions, session i on server (i+node)%3.
func (s *zkSystem) open(ctx context.Context, n, node int, timeout time.Duration) ([]*zk.Conn, error) {
	out := make([]*zk.Conn, 0, n)
	for i := range n {
		c, err := zkConnect(ctx, s.servers[(i+node)%len(s.servers)], timeout)
		if err != nil {
			closeZK(out)
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// closeZK closes sessions, a few at a time (each close is a write through
// the ensemble's leader).
func closeZK(cs []*zk.Conn) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, c := range cs {
		sem <- struct{}{}
		wg.Go(func() {
			c.Close()
			<-sem
		})
	}
	wg.Wait()
}

// zkPath is the znode of a service; its instances are its children.
func zkPath(workload string, clients, round, worker int) string {
	return "/registry/" + svcName(workload, clients, round, worker)
}

// ensure creates path and its parents as persistent znodes if missing.
func ensure(c *zk.Conn, path string) error {
	for i := 1; i <= len(path); i++ {
		if i < len(path) && path[i] != '/' {
			continue
		}
		if _, err := c.Create(path[:i], nil, 0, zkACL); err != nil && !errors.Is(err, zk.ErrNodeExists) {
			return fmt.Errorf("create %s: %w", path[:i], err)
		}
	}
	return nil
}

// ensureAll creates the service znodes of every worker (not timed).
func ensureAll(c *zk.Conn, workload string, clients, round int) error {
	for w := range clients {
		if err := ensure(c, zkPath(workload, clients, round, w)); err != nil {
			return err
		}
	}
	return nil
}

func (s *zkSystem) measure(ctx context.Context, w string, clients, round int, d time.Duration) (load.Sample, error) {
	switch w {
	case Ephemeral:
		return s.ephemeral(ctx, clients, round, d)
	case Shared, Persistent:
		cs, err := s.open(ctx, clients, 0, ephemeralSession)
		if err != nil {
			return load.Sample{}, err
		}
		defer closeZK(cs)
		if err := ensureAll(cs[0], w, clients, round); err != nil {
			return load.Sample{}, err
		}
		var flags int32
		if w == Shared {
			flags = zk.FlagEphemeral
		}
		return load.Run(ctx, clients, d, func(ctx context.Context, worker, seq int) error {
			_, err := cs[worker].Create(zkPath(w, clients, round, worker)+"/"+instanceID(seq), []byte(instanceValue(ipOf(seq))), flags, zkACL)
			return err
		}), nil
	case Noop:
		cs, err := s.open(ctx, clients, 0, ephemeralSession)
		if err != nil {
			return load.Sample{}, err
		}
		defer closeZK(cs)
		return load.Run(ctx, clients, d, func(ctx context.Context, worker, _ int) error {
			_, _, err := cs[worker].Exists("/")
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

// ephemeral: a new session on the client's server and an ephemeral znode
// on it, per instance; the sessions stay open until the measurement ends,
// as etcd's leases are kept alive.
func (s *zkSystem) ephemeral(ctx context.Context, clients, round int, d time.Duration) (load.Sample, error) {
	setup, err := zkConnect(ctx, s.servers[0], ephemeralSession)
	if err != nil {
		return load.Sample{}, err
	}
	defer setup.Close()
	if err := ensureAll(setup, Ephemeral, clients, round); err != nil {
		return load.Sample{}, err
	}
	var mu sync.Mutex
	var open []*zk.Conn
	sample := load.Run(ctx, clients, d, func(ctx context.Context, worker, seq int) error {
		c, err := zkConnect(ctx, s.servers[worker%len(s.servers)], ephemeralSession)
		if err != nil {
			return err
		}
		mu.Lock()
		open = append(open, c)
		mu.Unlock()
		_, err = c.Create(zkPath(Ephemeral, clients, round, worker)+"/"+instanceID(seq), []byte(instanceValue(ipOf(seq))), zk.FlagEphemeral, zkACL)
		return err
	})
	closeZK(open) // not timed
	return sample, nil
}

// lookup: one service of 10 instances; each worker lists its children on
// its own server (as Dubbo's registry does: an instance is its child's
// name), a local read on every server.
func (s *zkSystem) lookup(ctx context.Context, clients, round int, d time.Duration) (load.Sample, error) {
	cs, err := s.open(ctx, clients, 0, ephemeralSession)
	if err != nil {
		return load.Sample{}, err
	}
	defer closeZK(cs)
	path := zkPath(Lookup, clients, round, 0)
	if err := ensure(cs[0], path); err != nil {
		return load.Sample{}, err
	}
	for i := range lookupInstances {
		if _, err := cs[0].Create(path+"/"+instanceID(i), []byte(instanceValue(ipOf(i))), 0, zkACL); err != nil && !errors.Is(err, zk.ErrNodeExists) {
			return load.Sample{}, err
		}
	}
	for _, c := range cs[:min(len(cs), len(s.servers))] {
		err := waitFor(ctx, 10*time.Second, func() bool {
			kids, _, err := c.Children(path)
			return err == nil && len(kids) == lookupInstances
		})
		if err != nil {
			return load.Sample{}, fmt.Errorf("lookup znodes not on a server: %w", err)
		}
	}
	return load.Run(ctx, clients, d, func(ctx context.Context, worker, _ int) error {
		kids, _, err := cs[worker].Children(path)
		if err == nil && len(kids) != lookupInstances {
			err = fmt.Errorf("listed %d children, want %d", len(kids), lookupInstances)
		}
		return err
	}), nil
}

// awaitChild waits up to 10 s until the children of path do (present) or
// do not list name: it reads them with a watch set and waits for the
// watch to fire between reads, as a ZooKeeper registry client follows a
// service (watches fire once).
func awaitChild(ctx context.Context, c *zk.Conn, path, name string, present bool) error {
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		kids, _, ch, err := c.ChildrenW(path)
		if err != nil {
			return err
		}
		if slices.Contains(kids, name) == present {
			return nil
		}
		select {
		case <-ch:
		case <-timeout.C:
			return fmt.Errorf("%s/%s %w (present=%v)", path, name, errNotSeen, present)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// notify: worker w creates on server w%3 and watches on server (w+1)%3.
// Before each create, untimed, the worker's previous instance is deleted
// and seen gone, as on the other systems.
func (s *zkSystem) notify(ctx context.Context, clients, round int, d time.Duration) (load.Sample, error) {
	writers, err := s.open(ctx, clients, 0, ephemeralSession)
	if err != nil {
		return load.Sample{}, err
	}
	defer closeZK(writers)
	readers, err := s.open(ctx, clients, 1, ephemeralSession)
	if err != nil {
		return load.Sample{}, err
	}
	defer closeZK(readers)
	if err := ensureAll(writers[0], Notify, clients, round); err != nil {
		return load.Sample{}, err
	}
	prep := func(ctx context.Context, worker, seq int) error {
		if seq == 0 {
			return nil
		}
		path, prev := zkPath(Notify, clients, round, worker), instanceID(seq-1)
		if err := writers[worker].Delete(path+"/"+prev, -1); err != nil {
			return err
		}
		return awaitChild(ctx, readers[worker], path, prev, false)
	}
	return load.RunPacedPrep(ctx, clients, d, NotifyPace, prep, func(ctx context.Context, worker, seq int) error {
		path, name := zkPath(Notify, clients, round, worker), instanceID(seq)
		if _, err := writers[worker].Create(path+"/"+name, []byte(instanceValue(ipOf(seq))), zk.FlagEphemeral, zkACL); err != nil {
			return err
		}
		return awaitChild(ctx, readers[worker], path, name, true)
	}), nil
}

// removal: one client process per worker holds an ephemeral znode on a
// session of the shortest timeout ZooKeeper allows; it is killed, and a
// watch on another server times the znode's removal (the session expiry).
func (s *zkSystem) removal(ctx context.Context, clients, round int) (load.Sample, error) {
	readers, err := s.open(ctx, clients, 1, ephemeralSession)
	if err != nil {
		return load.Sample{}, err
	}
	defer closeZK(readers)
	if err := ensureAll(readers[0], Removal, clients, round); err != nil {
		return load.Sample{}, err
	}
	kids := make([]*child, clients)
	defer func() {
		for _, k := range kids {
			if k != nil {
				k.kill()
			}
		}
	}()
	for i := range clients {
		path := zkPath(Removal, clients, round, i)
		if kids[i], err = startChild(ctx, s.self, "zookeeper", s.servers[i%len(s.servers)], path+"/"+instanceID(i), ipOf(i),
			"-ttl", fmt.Sprint(int64(removalSession/time.Second))); err != nil {
			return load.Sample{}, err
		}
		if err := awaitChild(ctx, readers[i], path, instanceID(i), true); err != nil {
			return load.Sample{}, err
		}
	}
	return killAndTime(ctx, kids, func(ctx context.Context, i int) error {
		return awaitChild(ctx, readers[i], zkPath(Removal, clients, round, i), instanceID(i), false)
	}), nil
}
