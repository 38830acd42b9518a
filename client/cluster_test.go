package client

import (
	"context"
	"testing"
	"time"

	"github.com/regent-registry/regent/internal/daemon"
	"github.com/regent-registry/regent/internal/naming"
)

// startJoined starts a node that joins the gossip of seed (nil: the first
// node) and waits until it is ready.
func startJoined(t *testing.T, name string, seed *daemon.Daemon) *daemon.Daemon {
	t.Helper()
	cfg := daemon.DefaultLocalConfig(name, t.TempDir())
	if seed != nil {
		cfg.Join = []string{seed.GossipAddr()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := daemon.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() { stopDaemon(d) })
	waitFor(t, waitLimit, name+" ready", d.Ready)
	return d
}

func alive(d *daemon.Daemon) int {
	n := 0
	for _, m := range d.Gossip().Members() {
		if m.Status.String() == "alive" {
			n++
		}
	}
	return n
}

// TestClientMovesBetweenNodesWithoutAGap: a client registered on n1 moves
// to n2 when n1 shuts down; a watcher on n3 never sees its instances
// vanish, and ends with them owned by n2.
func TestClientMovesBetweenNodesWithoutAGap(t *testing.T) {
	n1 := startJoined(t, "n1", nil)
	n2 := startJoined(t, "n2", n1)
	n3 := startJoined(t, "n3", n1)
	waitFor(t, waitLimit, "three alive members everywhere", func() bool {
		return alive(n1) == 3 && alive(n2) == 3 && alive(n3) == 3
	})

	mover := newClient(t, n1.GRPCAddr(), n2.GRPCAddr())
	if mover.Node() != "n1" {
		t.Fatalf("client connected to %q, want n1 (first in its list)", mover.Node())
	}
	svc := Service{Name: "moving"}
	ctx := ctxT(t, 10*time.Second)
	for _, port := range []int{80, 81} {
		if err := mover.Register(ctx, svc, inst("10.7.0.1", port)); err != nil {
			t.Fatal(err)
		}
	}
	watcher := newClient(t, n3.GRPCAddr())
	w, err := watcher.Watch(ctx, svc, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	var pushes []int
	next := func(limit time.Duration) (ServiceInfo, bool) {
		select {
		case info := <-w.C():
			pushes = append(pushes, len(info.Instances))
			return info, true
		case <-time.After(limit):
			return ServiceInfo{}, false
		}
	}
	for {
		info, ok := next(waitLimit)
		if !ok {
			t.Fatal("the watcher on n3 never saw the two instances")
		}
		if len(info.Instances) == 2 {
			break
		}
	}
	pushes = nil // from here on, every push must hold both

	// n1 stops (SIGTERM's path: drain, leave gossip). The client
	// reconnects to n2, which takes it over.
	stopDaemon(n1)
	waitFor(t, waitLimit, "the client to reconnect to n2", func() bool { return mover.Node() == "n2" })
	waitFor(t, waitLimit, "n2 and n3 to own the client on n2", func() bool {
		o2, _, ok2 := n2.Distro().ClientVersion(mover.cfg.ClientID)
		o3, _, ok3 := n3.Distro().ClientVersion(mover.cfg.ClientID)
		return ok2 && ok3 && o2 == "n2" && o3 == "n2"
	})
	// Let the owner grace for the departed n1 pass, collecting pushes.
	deadline := time.Now().Add(3 * daemon.DefaultLocalConfig("x", "").Distro.OwnerGrace)
	for time.Now().Before(deadline) {
		next(50 * time.Millisecond)
	}
	for i, n := range pushes {
		if n != 2 {
			t.Fatalf("push %d on n3 held %d instances during the move (all pushes: %v)", i, n, pushes)
		}
	}
	info, err := watcher.GetService(ctx, svc, Filter{})
	if err != nil || len(info.Instances) != 2 {
		t.Fatalf("after the move n3 lists %+v (err %v), want both instances", info.Instances, err)
	}
}

// TestNodeLoadsPeersStateBeforeReady: a node joining a cluster that holds
// clients lists them as soon as it reports ready.
func TestNodeLoadsPeersStateBeforeReady(t *testing.T) {
	n1 := startJoined(t, "n1", nil)
	c := newClient(t, n1.GRPCAddr())
	svc := Service{Name: "preloaded"}
	ctx := ctxT(t, 10*time.Second)
	for port := 1; port <= 50; port++ {
		if err := c.Register(ctx, svc, inst("10.8.0.1", port)); err != nil {
			t.Fatal(err)
		}
	}
	n2 := startJoined(t, "n2", n1) // returns once n2 is ready
	snap, _, err := n2.Registry().Get(mustKey(t, svc), naming.Filter{})
	if err != nil || len(snap.Instances) != 50 {
		t.Fatalf("n2 ready with %d of 50 instances (err %v)", len(snap.Instances), err)
	}
}
