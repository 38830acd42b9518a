// Package testcluster starts a cluster of complete Regent nodes in one
// process, for tests and benchmarks: every node is a daemon on 127.0.0.1
// with system-picked ports (daemon.DefaultLocalConfig), joined through the
// first node's gossip address.
//
// Nodes are numbered from 0 in Go fashion; node i is named "n<i+1>", so
// Node(0) is "n1".
package testcluster

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regent-registry/regent/client"
	"github.com/regent-registry/regent/internal/daemon"
	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/membership"
)

// StartTimeout bounds how long Start waits for the cluster to form.
const StartTimeout = 30 * time.Second

// Cluster is a set of running nodes.
type Cluster struct {
	nodes []*daemon.Daemon

	mu     sync.Mutex
	killed []bool
}

// Start starts n nodes, named n1..nN, each joining n1's gossip address
// (n1 bootstraps Raft alone and adds the others as they appear, unless mut
// sets BootstrapExpect). mut, if not nil, adjusts node i's configuration
// before it starts (it sees the defaults and the Join list). Start returns
// once every node is ready (it loaded its peers' state), sees n alive
// members, has every other node as a live Distro peer and is a Raft voter
// that knows the leader; it fails tb otherwise. Cleanup shuts every node
// down.
func Start(tb testing.TB, n int, mut func(i int, cfg *daemon.Config)) *Cluster {
	tb.Helper()
	if n < 1 {
		tb.Fatalf("testcluster: %d nodes", n)
	}
	c := &Cluster{killed: make([]bool, n)}
	// TempDir first: cleanups run last-registered first, so the nodes shut
	// down before their directory is removed (the other order let a node
	// still writing make RemoveAll fail on CI).
	dir := tb.TempDir()
	tb.Cleanup(c.shutdown)
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		cfg := daemon.DefaultLocalConfig(name, filepath.Join(dir, name))
		if i > 0 {
			cfg.Join = []string{c.nodes[0].GossipAddr()}
		}
		if mut != nil {
			mut(i, &cfg)
		}
		d, err := daemon.Start(context.Background(), cfg)
		if err != nil {
			tb.Fatalf("testcluster: start %s: %v", name, err)
		}
		c.nodes = append(c.nodes, d)
	}
	deadline := time.Now().Add(StartTimeout)
	for {
		why := c.formed()
		if why == "" {
			return c
		}
		if time.Now().After(deadline) {
			tb.Fatalf("testcluster: %d nodes not formed after %v: %s", n, StartTimeout, why)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// formed returns why the cluster is not formed yet, or "".
func (c *Cluster) formed() string {
	n := len(c.nodes)
	for _, d := range c.nodes {
		if !d.Ready() {
			return d.Name() + " is not ready"
		}
		alive := 0
		for _, m := range d.Gossip().Members() {
			if m.Status == membership.StatusAlive {
				alive++
			}
		}
		if alive != n {
			return fmt.Sprintf("%s sees %d alive members", d.Name(), alive)
		}
		up := 0
		for _, p := range d.Distro().Peers() {
			if p.Up {
				up++
			}
		}
		if up != n-1 {
			return fmt.Sprintf("%s has %d live Distro peers", d.Name(), up)
		}
		for _, o := range c.nodes {
			if role := d.Raft().RoleOf(o.Name()); role != "leader" && role != "follower" {
				return fmt.Sprintf("%s sees %s as Raft %s", d.Name(), o.Name(), role)
			}
		}
		if d.Raft().Leader() == "" {
			return d.Name() + " knows no Raft leader"
		}
	}
	return ""
}

// Leader returns the index of the node that is Raft leader as the live
// nodes see it, waiting for one until ctx ends (-1 then).
func (c *Cluster) Leader(ctx context.Context) int {
	for {
		for _, i := range c.live() {
			if c.nodes[i].Raft().Role() == "leader" {
				return i
			}
		}
		select {
		case <-ctx.Done():
			return -1
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (c *Cluster) shutdown() {
	var wg sync.WaitGroup
	for i, d := range c.nodes {
		if c.isKilled(i) {
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			d.Shutdown(ctx)
		})
	}
	wg.Wait()
}

func (c *Cluster) isKilled(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.killed[i]
}

// Node returns node i (named n<i+1>).
func (c *Cluster) Node(i int) *daemon.Daemon { return c.nodes[i] }

// Nodes returns every node, killed ones included.
func (c *Cluster) Nodes() []*daemon.Daemon { return c.nodes }

// Kill stops node i as abruptly as the daemon allows in one process: its
// gossip stops without a Leave, so the other nodes detect a failure
// (suspect, then dead) rather than a departure; then the node shuts down
// with an expired context, so every client session and peer connection is
// cut at once, and it deletes none of its clients (as a crashed process
// would not). The one trace of a graceful stop left is the best-effort
// Reconnect notice each session is sent just before it is cut, which the SDK
// treats exactly like a broken stream: it moves on to its next server.
func (c *Cluster) Kill(i int) {
	c.mu.Lock()
	c.killed[i] = true
	c.mu.Unlock()
	d := c.nodes[i]
	_ = d.Gossip().Shutdown()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d.Shutdown(ctx)
}

// Stop shuts node i down gracefully, as SIGTERM does: sessions are told to
// move, a Raft leader hands over, and gossip announces the leave.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	c.killed[i] = true
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.nodes[i].Shutdown(ctx)
}

// Addrs returns the gRPC addresses of the given nodes, or of every node
// when none is given.
func (c *Cluster) Addrs(nodes ...int) []string {
	if len(nodes) == 0 {
		nodes = c.all()
	}
	out := make([]string, len(nodes))
	for j, i := range nodes {
		out[j] = c.nodes[i].GRPCAddr()
	}
	return out
}

func (c *Cluster) all() []int {
	out := make([]int, len(c.nodes))
	for i := range out {
		out[i] = i
	}
	return out
}

func (c *Cluster) live() []int {
	var out []int
	for i := range c.nodes {
		if !c.isKilled(i) {
			out = append(out, i)
		}
	}
	return out
}

// Client returns an SDK client of the given nodes' gRPC addresses, in that
// order (every node when none is given), closed at cleanup. It does not
// wait for a session.
func (c *Cluster) Client(tb testing.TB, servers ...int) *client.Client {
	tb.Helper()
	cl, err := client.New(client.Config{Servers: c.Addrs(servers...)})
	if err != nil {
		tb.Fatalf("testcluster: client: %v", err)
	}
	tb.Cleanup(func() { _ = cl.Close() })
	return cl
}

// Listed reports whether node i lists the instance ip:port in key (any
// cluster).
func (c *Cluster) Listed(i int, key naming.ServiceKey, ip string, port int) bool {
	snap, _, err := c.nodes[i].Registry().Get(key.WithDefaults(), naming.Filter{})
	if err != nil {
		return false
	}
	for _, in := range snap.Instances {
		if in.IP == ip && in.Port == port {
			return true
		}
	}
	return false
}

// WaitListed waits until every given node (every live node when none is
// given) lists the instance ip:port in key, polling each node's registry.
// It returns an error naming the nodes that do not when ctx ends first.
func (c *Cluster) WaitListed(ctx context.Context, key naming.ServiceKey, ip string, port int, nodes ...int) error {
	return c.wait(ctx, key, ip, port, true, nodes)
}

// WaitGone is WaitListed's opposite: it waits until no given node (no live
// node when none is given) lists the instance.
func (c *Cluster) WaitGone(ctx context.Context, key naming.ServiceKey, ip string, port int, nodes ...int) error {
	return c.wait(ctx, key, ip, port, false, nodes)
}

func (c *Cluster) wait(ctx context.Context, key naming.ServiceKey, ip string, port int, want bool, nodes []int) error {
	if len(nodes) == 0 {
		nodes = c.live()
	}
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		var wrong []string
		for _, i := range nodes {
			if c.Listed(i, key, ip, port) != want {
				wrong = append(wrong, c.nodes[i].Name())
			}
		}
		if len(wrong) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			what := "listed"
			if !want {
				what = "gone"
			}
			return fmt.Errorf("testcluster: %s:%d in %s not %s on %s: %w", ip, port, key.WithDefaults(), what, strings.Join(wrong, ", "), ctx.Err())
		case <-t.C:
		}
	}
}
