package testcluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/regent-registry/regent/client"
	"github.com/regent-registry/regent/internal/daemon"
	"github.com/regent-registry/regent/internal/naming"
)

// Persistent instances written through any node's API are listed on every
// node; killing the Raft leader elects another, keeps every acknowledged
// write, and writes go on through the survivors.
func TestPersistentWritesSurviveLeaderKill(t *testing.T) {
	c := Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	svc := client.Service{Name: "tc-pers"}
	key := naming.ServiceKey{Service: svc.Name}
	leader := c.Leader(ctx)
	var ips []string
	for i := range 3 {
		cl := c.Client(t, i)
		ip := "10.62.0." + string(rune('1'+i))
		if _, err := cl.RegisterPersistent(ctx, svc, client.Instance{IP: ip, Port: 80}); err != nil {
			t.Fatalf("persistent register through %s: %v", c.Node(i).Name(), err)
		}
		ips = append(ips, ip)
	}
	for _, ip := range ips {
		if err := c.WaitListed(ctx, key, ip, 80); err != nil {
			t.Fatal(err)
		}
	}
	// members: one leader, two followers, as every node sees it.
	ms, err := c.Client(t, (leader+1)%3).Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]int{}
	for _, m := range ms {
		roles[m.Raft]++
	}
	if roles["leader"] != 1 || roles["follower"] != 2 {
		t.Fatalf("members report Raft roles %v", roles)
	}

	c.Kill(leader)
	survivors := []int{(leader + 1) % 3, (leader + 2) % 3}
	next := c.Leader(ctx)
	if next < 0 || next == leader {
		t.Fatalf("no new leader after the kill (got %d)", next)
	}
	cl := c.Client(t, survivors...)
	if _, err := cl.RegisterPersistent(ctx, svc, client.Instance{IP: "10.62.0.9", Port: 80}); err != nil {
		t.Fatalf("write after the leader was killed: %v", err)
	}
	for _, ip := range append(ips, "10.62.0.9") {
		if err := c.WaitListed(ctx, key, ip, 80, survivors...); err != nil {
			t.Fatal(err)
		}
	}
	// A linearizable read through a follower sees the last write.
	follower := survivors[0]
	if follower == next {
		follower = survivors[1]
	}
	info, err := c.Client(t, follower).GetService(ctx, svc, client.Filter{Linearizable: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(info.Instances, func(in client.Instance) bool { return in.IP == "10.62.0.9" }) {
		t.Fatalf("linearizable read on %s misses the acknowledged write: %+v", c.Node(follower).Name(), info.Instances)
	}
}

// With --bootstrap-expect 3 on every node, nobody bootstraps until three
// servers are up; then exactly one does, and all three are voters.
func TestBootstrapExpectThree(t *testing.T) {
	c := Start(t, 3, func(_ int, cfg *daemon.Config) { cfg.BootstrapExpect = 3 })
	for i := range 3 {
		voters := 0
		for _, o := range c.Nodes() {
			if r := c.Node(i).Raft().RoleOf(o.Name()); r == "leader" || r == "follower" {
				voters++
			}
		}
		if voters != 3 {
			t.Fatalf("%s sees %d voters, want 3", c.Node(i).Name(), voters)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Client(t, 2).RegisterPersistent(ctx, client.Service{Name: "tc-expect"}, client.Instance{IP: "10.62.1.1", Port: 80}); err != nil {
		t.Fatal(err)
	}
}

// Two of three nodes killed: the survivor has no quorum, its writes fail
// fast with Unavailable and change nothing it serves.
func TestPersistentWriteWithoutQuorumIsUnavailable(t *testing.T) {
	c := Start(t, 3, func(_ int, cfg *daemon.Config) { cfg.Raft.ApplyTimeout = time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.Kill(0)
	c.Kill(1)
	cl := c.Client(t, 2)
	svc := client.Service{Name: "tc-noquorum"}
	_, err := cl.RegisterPersistent(ctx, svc, client.Instance{IP: "10.62.2.1", Port: 80})
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("write without quorum: %v, want ErrUnavailable", err)
	}
	if c.Listed(2, naming.ServiceKey{Service: svc.Name}, "10.62.2.1", 80) {
		t.Fatal("the refused write is listed")
	}
}

// A subscriber is pushed persistent and ephemeral instances of a service in
// one list, whichever nodes they were written on.
func TestSubscriberGetsPersistentAndEphemeralTogether(t *testing.T) {
	c := Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc := client.Service{Name: "tc-mixed"}
	w, err := c.Client(t, 2).Watch(ctx, svc, client.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Client(t, 0).Register(ctx, svc, client.Instance{IP: "10.62.3.1", Port: 80}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client(t, 1).RegisterPersistent(ctx, svc, client.Instance{IP: "10.62.3.2", Port: 80}); err != nil {
		t.Fatal(err)
	}
	for {
		var info client.ServiceInfo
		select {
		case info = <-w.C():
		case <-ctx.Done():
			t.Fatal("no push with both instances")
		}
		kinds := map[string]bool{}
		for _, in := range info.Instances {
			kinds[in.IP] = in.Ephemeral
		}
		if e, ok := kinds["10.62.3.1"]; ok && e {
			if p, ok := kinds["10.62.3.2"]; ok && !p {
				return
			}
		}
	}
}

// A node stopped gracefully (the leader, the hardest case) hands its
// leadership over and is removed from the Raft configuration; a node killed
// is removed once dead for the clean-up time, while a quorum remains.
func TestRaftConfigurationFollowsLeaveAndDeath(t *testing.T) {
	c := Start(t, 4, func(_ int, cfg *daemon.Config) { cfg.Raft.DeadServerCleanup = 2 * time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	gone := func(name string, nodes ...int) {
		t.Helper()
		for _, i := range nodes {
			for c.Node(i).Raft().RoleOf(name) != "none" {
				select {
				case <-ctx.Done():
					t.Fatalf("%s still has %s in its Raft configuration", c.Node(i).Name(), name)
				case <-time.After(10 * time.Millisecond):
				}
			}
		}
	}
	leader := c.Leader(ctx)
	name := c.Node(leader).Name()
	c.Stop(leader)
	var rest []int
	for i := range 4 {
		if i != leader {
			rest = append(rest, i)
		}
	}
	gone(name, rest...)
	// Three voters left; kill one: it is removed after the clean-up time
	// (two healthy voters are a quorum of the two that remain).
	dead := rest[0]
	if c.Node(dead).Raft().Role() == "leader" {
		dead = rest[1]
	}
	deadName := c.Node(dead).Name()
	c.Kill(dead)
	var live []int
	for _, i := range rest {
		if i != dead {
			live = append(live, i)
		}
	}
	gone(deadName, live...)
	if _, err := c.Client(t, live...).RegisterPersistent(ctx, client.Service{Name: "tc-shrunk"}, client.Instance{IP: "10.62.4.1", Port: 80}); err != nil {
		t.Fatalf("write on the two remaining voters: %v", err)
	}
}

// An SDK that lists every node sends its persistent writes to the Raft
// leader once a follower has named it: of 20 writes through a client whose
// first server is a follower, only the first is forwarded. When the
// leader stops, the client's next write fails over and names the new
// leader, and the writes after it go there.
func TestSDKWritesGoStraightToTheLeader(t *testing.T) {
	c := Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	forwarded := func() (n uint64) {
		for _, i := range c.live() {
			n += c.Node(i).Raft().Forwarded()
		}
		return n
	}
	svc := client.Service{Name: "tc-to-leader"}
	leader := c.Leader(ctx)
	f := (leader + 1) % 3
	cl := c.Client(t, f, (f+1)%3, (f+2)%3)
	if got := cl.Leader(); got != "" {
		t.Fatalf("client names leader %q before any write", got)
	}
	write := func(ip string) {
		t.Helper()
		if _, err := cl.RegisterPersistent(ctx, svc, client.Instance{IP: ip, Port: 80}); err != nil {
			t.Fatalf("write %s: %v", ip, err)
		}
	}
	before := forwarded()
	for i := range 20 {
		write(fmt.Sprintf("10.63.0.%d", i+1))
	}
	if got := forwarded() - before; got != 1 || c.Leader(ctx) != leader {
		t.Fatalf("%d of 20 writes forwarded (leader %d, now %d), want only the first", got, leader, c.Leader(ctx))
	}
	if got, want := cl.Leader(), c.Node(leader).GRPCAddr(); got != want {
		t.Fatalf("client names leader %q, want %q", got, want)
	}

	c.Stop(leader) // hands leadership over, then stops serving
	next := c.Leader(ctx)
	if next < 0 || next == leader {
		t.Fatalf("no new leader after the stop (got %d)", next)
	}
	before = forwarded()
	for i := range 10 {
		write(fmt.Sprintf("10.63.1.%d", i+1))
	}
	if got := forwarded() - before; got > 1 {
		t.Fatalf("%d of 10 writes after the leader change forwarded, want at most the first", got)
	}
	if got, want := cl.Leader(), c.Node(next).GRPCAddr(); got != want {
		t.Fatalf("after the change the client names leader %q, want %q", got, want)
	}
	key := naming.ServiceKey{Service: svc.Name}
	for _, ip := range []string{"10.63.0.20", "10.63.1.10"} {
		if err := c.WaitListed(ctx, key, ip, 80, c.live()...); err != nil {
			t.Fatal(err)
		}
	}
}

// The SDK's persistent writes go on one Write stream, to the leader once a
// reply has named it: 40 concurrent writes through a client whose first
// server is a follower are all served on streams, at most one of them
// forwarded, and every one is listed on every node.
func TestSDKPersistentWritesGoOnAWriteStream(t *testing.T) {
	c := Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	count := func(f func(*daemon.Daemon) uint64) (n uint64) {
		for _, i := range c.live() {
			n += f(c.Node(i))
		}
		return n
	}
	leader := c.Leader(ctx)
	f := (leader + 1) % 3
	cl := c.Client(t, f, (f+1)%3, (f+2)%3)
	svc := client.Service{Name: "tc-write-stream"}
	if _, err := cl.RegisterPersistent(ctx, svc, client.Instance{IP: "10.64.0.250", Port: 80}); err != nil {
		t.Fatal(err)
	}
	streamed, forwarded := count((*daemon.Daemon).StreamWrites), count(func(d *daemon.Daemon) uint64 { return d.Raft().Forwarded() })
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Go(func() {
			if _, err := cl.RegisterPersistent(ctx, svc, client.Instance{IP: fmt.Sprintf("10.64.0.%d", i+1), Port: 80}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := count((*daemon.Daemon).StreamWrites) - streamed; got != 40 {
		t.Fatalf("%d of 40 writes served on a Write stream", got)
	}
	if got := count(func(d *daemon.Daemon) uint64 { return d.Raft().Forwarded() }) - forwarded; got != 0 {
		t.Fatalf("%d of 40 writes forwarded after the first named the leader", got)
	}
	key := naming.ServiceKey{Service: svc.Name}
	for i := range 40 {
		if err := c.WaitListed(ctx, key, fmt.Sprintf("10.64.0.%d", i+1), 80, c.live()...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.DeregisterPersistent(ctx, svc, client.Instance{IP: "10.64.0.1", Port: 80}); err != nil {
		t.Fatal(err)
	}
	if got := count((*daemon.Daemon).StreamWrites) - streamed; got != 41 {
		t.Fatalf("the deregister did not go on the stream (%d stream writes)", got)
	}
}
