package testcluster

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/regent-registry/regent/client"
	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/membership"
)

func aliveNames(ms []membership.Member) []string {
	var out []string
	for _, m := range ms {
		if m.Status == membership.StatusAlive {
			out = append(out, m.Name)
		}
	}
	return out
}

// A 3-node cluster forms; an instance an SDK client registers on n1 is
// listed on n2 and n3 (owned by n1), and goes from all three once the
// client closes.
func TestClusterReplicatesRegistrationAndRemoval(t *testing.T) {
	c := Start(t, 3, nil)
	for i, d := range c.Nodes() {
		if got, want := d.Name(), []string{"n1", "n2", "n3"}[i]; got != want {
			t.Fatalf("node %d is named %q, want %q", i, got, want)
		}
		if got := aliveNames(d.Gossip().Members()); !slices.Equal(got, []string{"n1", "n2", "n3"}) {
			t.Fatalf("%s sees alive members %v, want n1 n2 n3", d.Name(), got)
		}
	}

	svc := client.Service{Name: "tc-orders"}
	key := naming.ServiceKey{Service: svc.Name}
	const ip, port = "10.61.0.1", 8080
	for i := range 3 {
		if c.Listed(i, key, ip, port) {
			t.Fatalf("%s lists the instance before it was registered", c.Node(i).Name())
		}
	}
	cl := c.Client(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.Register(ctx, svc, client.Instance{IP: ip, Port: port}); err != nil {
		t.Fatal(err)
	}
	if node := cl.Node(); node != "n1" {
		t.Fatalf("the client's session is on %q, want n1", node)
	}
	if err := c.WaitListed(ctx, key, ip, port, 1, 2); err != nil {
		t.Fatal(err)
	}
	if !c.Listed(0, key, ip, port) {
		t.Fatal("n1, where the instance was registered, does not list it")
	}
	for i := range 3 {
		owner, _, ok := c.Node(i).Distro().ClientVersion(cl.ClientID())
		if !ok || owner != "n1" {
			t.Fatalf("%s: client owned by %q (known %v), want n1", c.Node(i).Name(), owner, ok)
		}
	}

	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitGone(ctx, key, ip, port); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, _, ok := c.Node(i).Distro().ClientVersion(cl.ClientID()); ok {
			t.Fatalf("%s still holds the closed client", c.Node(i).Name())
		}
	}
}

// Kill stops a node without a Leave: the survivors see it fail; a client
// that knows the other servers moves and stays listed, owned by a survivor,
// while one that knows only the killed node is removed after the owner
// grace.
func TestKillMovesClientsToSurvivors(t *testing.T) {
	c := Start(t, 3, nil)
	svc := client.Service{Name: "tc-mover"}
	key := naming.ServiceKey{Service: svc.Name}
	const ip, port, stayIP = "10.61.0.2", 8080, "10.61.0.3"
	mover := c.Client(t, 0, 1, 2)
	stayer := c.Client(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := mover.Register(ctx, svc, client.Instance{IP: ip, Port: port}); err != nil {
		t.Fatal(err)
	}
	if err := stayer.Register(ctx, svc, client.Instance{IP: stayIP, Port: port}); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitListed(ctx, key, ip, port); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitListed(ctx, key, stayIP, port); err != nil {
		t.Fatal(err)
	}

	c.Kill(0)
	if c.Node(0).Ready() {
		t.Fatal("the killed node still reports ready")
	}
	for !movedOff(c, mover.ClientID(), "n1") {
		select {
		case <-ctx.Done():
			t.Fatalf("the client did not move off n1 (session on %q)", mover.Node())
		case <-time.After(5 * time.Millisecond):
		}
	}
	if err := c.WaitListed(ctx, key, ip, port, 1, 2); err != nil {
		t.Fatal(err)
	}
	// The killed node deleted none of its clients on the way down: the
	// one that cannot move is still listed on the survivors, well after
	// a deletion would have been replicated.
	for _, i := range []int{1, 2} {
		if !c.Listed(i, key, stayIP, port) {
			t.Fatalf("%s dropped the stranded client right after the kill", c.Node(i).Name())
		}
	}
	// Gossip sees a failure, not a graceful leave.
	for _, i := range []int{1, 2} {
		for {
			st := statusOf(c.Node(i).Gossip().Members(), "n1")
			if st == membership.StatusDead {
				break
			}
			if st == membership.StatusLeft {
				t.Fatalf("%s sees n1 as left: Kill left the cluster gracefully", c.Node(i).Name())
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%s does not see n1 dead (status %v)", c.Node(i).Name(), st)
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	// The client that could not move goes once n1's owner grace is over
	// (Kill deleted nothing: only the grace removes it); the one that
	// moved stays.
	if err := c.WaitGone(ctx, key, stayIP, port, 1, 2); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{1, 2} {
		if !c.Listed(i, key, ip, port) {
			t.Fatalf("%s dropped the client that moved", c.Node(i).Name())
		}
	}
}

func movedOff(c *Cluster, clientID, from string) bool {
	for _, i := range []int{1, 2} {
		owner, _, ok := c.Node(i).Distro().ClientVersion(clientID)
		if !ok || owner == from || owner == "" {
			return false
		}
	}
	return true
}

func statusOf(ms []membership.Member, name string) membership.Status {
	for _, m := range ms {
		if m.Name == name {
			return m.Status
		}
	}
	return 0
}
