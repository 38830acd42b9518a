package testcluster

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/regent-registry/regent/client"
	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/persistent/health"
)

func healthyOn(c *Cluster, i int, key naming.ServiceKey, ip string, port int) (healthy, found bool) {
	snap, _, err := c.Node(i).Registry().Get(key.WithDefaults(), naming.Filter{})
	if err != nil {
		return false, false
	}
	for _, in := range snap.Instances {
		if in.IP == ip && in.Port == port {
			return in.Healthy, true
		}
	}
	return false, false
}

// waitHealth waits until every given node lists ip:port with the given
// health.
func waitHealth(t *testing.T, ctx context.Context, c *Cluster, key naming.ServiceKey, ip string, port int, want bool, nodes ...int) {
	t.Helper()
	for {
		ok := true
		for _, i := range nodes {
			if h, found := healthyOn(c, i, key, ip, port); !found || h != want {
				ok = false
			}
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s:%d not healthy=%v on nodes %v", ip, port, want, nodes)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// A persistent instance whose TCP listener goes away turns unhealthy on
// every node (the verdict goes through Raft) and is left out of
// healthy-only queries; when the node that checks the service dies,
// another takes the checks over.
func TestHealthCheckThroughRaftAndTakeover(t *testing.T) {
	c := Start(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	svc := client.Service{Name: "tc-checked"}
	key := naming.ServiceKey{Service: svc.Name}.WithDefaults()
	cl := c.Client(t, 0, 1, 2)
	if err := cl.UpdateServiceMetadata(ctx, svc, client.ServiceMeta{HealthCheck: &client.HealthCheck{Type: "tcp", IntervalMS: 1000, UnhealthyThreshold: 2}}); err != nil {
		t.Fatal(err)
	}
	var ports []int
	var lis []net.Listener
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				conn.Close()
			}
		}()
		lis = append(lis, l)
		port := l.Addr().(*net.TCPAddr).Port
		ports = append(ports, port)
		if _, err := cl.RegisterPersistent(ctx, svc, client.Instance{IP: "127.0.0.1", Port: port}); err != nil {
			t.Fatal(err)
		}
	}
	all := []int{0, 1, 2}
	waitHealth(t, ctx, c, key, "127.0.0.1", ports[0], true, all...)
	waitHealth(t, ctx, c, key, "127.0.0.1", ports[1], true, all...)

	lis[0].Close()
	waitHealth(t, ctx, c, key, "127.0.0.1", ports[0], false, all...)
	if h, _ := healthyOn(c, 1, key, "127.0.0.1", ports[1]); !h {
		t.Fatal("the instance whose listener stayed turned unhealthy")
	}
	info, err := c.Client(t, 2).GetService(ctx, svc, client.Filter{HealthyOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range info.Instances {
		if in.Port == ports[0] {
			t.Fatal("a healthy-only query lists the unhealthy instance")
		}
	}

	// Kill the node that checks the service; a survivor takes over.
	owner := -1
	for i, d := range c.Nodes() {
		if d.Name() == health.Owner(key, []string{"n1", "n2", "n3"}) {
			owner = i
		}
	}
	if owner < 0 {
		t.Fatal("no owner among n1..n3")
	}
	if c.Node(owner).Health().Stats().ProbesRun == 0 {
		t.Fatalf("%s owns the service but probed nothing", c.Node(owner).Name())
	}
	c.Kill(owner)
	var survivors []int
	for _, i := range all {
		if i != owner {
			survivors = append(survivors, i)
		}
	}
	lis[1].Close()
	waitHealth(t, ctx, c, key, "127.0.0.1", ports[1], false, survivors...)
}
