package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/regent-registry/regent/internal/daemon"
	"github.com/regent-registry/regent/internal/naming"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"
)

// ---- helpers ----

const waitLimit = 15 * time.Second

func startDaemon(t testing.TB, name, addr string) *daemon.Daemon {
	t.Helper()
	cfg := daemon.DefaultLocalConfig(name, t.TempDir())
	if addr != "" {
		cfg.GRPCAddr = addr
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var d *daemon.Daemon
	var err error
	// A port just released may take a moment to be free again.
	deadline := time.Now().Add(5 * time.Second)
	for {
		d, err = daemon.Start(ctx, cfg)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("start daemon %s: %v", name, err)
	}
	t.Cleanup(func() { stopDaemon(d) })
	return d
}

func stopDaemon(d *daemon.Daemon) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d.Shutdown(ctx)
}

func testConfig(servers ...string) Config {
	return Config{
		Servers:        servers,
		BackoffMin:     20 * time.Millisecond,
		BackoffMax:     200 * time.Millisecond,
		RedoInterval:   50 * time.Millisecond,
		RequestTimeout: 2 * time.Second,
	}
}

func newClient(t testing.TB, servers ...string) *Client {
	t.Helper()
	c, err := New(testConfig(servers...))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatalf("WaitConnected: %v", err)
	}
	return c
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond every 10ms until it holds or the limit passes.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// addrs returns the sorted "ip:port" of a list.
func addrs(list []Instance) []string {
	out := make([]string, 0, len(list))
	for _, in := range list {
		out = append(out, fmt.Sprintf("%s:%d", in.IP, in.Port))
	}
	sort.Strings(out)
	return out
}

// listed asks the server (through c) for svc's instances; nil on NotFound.
func listed(t *testing.T, c *Client, svc Service) ([]string, error) {
	t.Helper()
	info, err := c.GetService(ctxT(t, 2*time.Second), svc, Filter{})
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return addrs(info.Instances), nil
}

func waitListed(t *testing.T, c *Client, svc Service, want ...string) {
	t.Helper()
	sort.Strings(want)
	var got []string
	var err error
	deadline := time.Now().Add(waitLimit)
	for {
		got, err = listed(t, c, svc)
		if err == nil && slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("service %s: got %v (err %v), want %v", svc.Name, got, err, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitWatch reads w until an update satisfies ok.
func waitWatch(t *testing.T, w *Watcher, what string, ok func(ServiceInfo) bool) ServiceInfo {
	t.Helper()
	timer := time.NewTimer(waitLimit)
	defer timer.Stop()
	var last ServiceInfo
	for {
		select {
		case info := <-w.C():
			last = info
			if ok(info) {
				return info
			}
		case <-timer.C:
			t.Fatalf("watcher: timed out waiting for %s; last update %+v", what, last)
		}
	}
}

func hasAddrs(want ...string) func(ServiceInfo) bool {
	sort.Strings(want)
	return func(info ServiceInfo) bool { return slices.Equal(addrs(info.Instances), want) }
}

func inst(ip string, port int) Instance { return Instance{IP: ip, Port: port} }

// ---- 1. register, deregister, close ----

func TestRegisterDeregisterClose(t *testing.T) {
	d := startDaemon(t, "n1", "")
	a := newClient(t, d.GRPCAddr())
	obs := newClient(t, d.GRPCAddr())
	orders, users := Service{Name: "orders"}, Service{Name: "users"}

	ctx := ctxT(t, 5*time.Second)
	for _, r := range []struct {
		svc Service
		in  Instance
	}{{orders, inst("10.0.0.1", 80)}, {orders, inst("10.0.0.2", 80)}, {users, inst("10.0.1.1", 9000)}} {
		if err := a.Register(ctx, r.svc, r.in); err != nil {
			t.Fatalf("Register %v: %v", r.in, err)
		}
	}
	waitListed(t, obs, orders, "10.0.0.1:80", "10.0.0.2:80")
	waitListed(t, obs, users, "10.0.1.1:9000")

	info, err := obs.GetService(ctx, orders, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range info.Instances {
		if !in.Ephemeral || !in.Healthy || !in.Enabled || in.Weight != 1 {
			t.Errorf("instance %+v: want ephemeral, healthy, enabled, weight 1", in)
		}
	}
	if info.FromCache {
		t.Error("FromCache set on a server answer")
	}

	if err := a.Deregister(ctx, orders, inst("10.0.0.1", 80)); err != nil {
		t.Fatalf("Deregister: %v", err)
	}
	waitListed(t, obs, orders, "10.0.0.2:80")
	a.mu.Lock()
	n := len(a.regs)
	a.mu.Unlock()
	if n != 2 {
		t.Errorf("client keeps %d registrations after a deregister, want 2", n)
	}

	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitListed(t, obs, orders)
	waitListed(t, obs, users)
	// An emptied service answers NotFound or an empty list, never an error
	// of another kind.
	if info, err := obs.GetService(ctx, users, Filter{}); (err != nil && !errors.Is(err, ErrNotFound)) || len(info.Instances) != 0 {
		t.Errorf("GetService after Close: %+v, err %v; want no instances", info, err)
	}
	if err := a.Register(ctx, orders, inst("10.0.0.9", 80)); !errors.Is(err, ErrClosed) {
		t.Errorf("Register after Close: err %v, want ErrClosed", err)
	}
}

// ---- 2. redo after a restart ----

func TestRedoAfterServerRestart(t *testing.T) {
	addr := freeAddr(t)
	d1 := startDaemon(t, "n1", addr)
	c := newClient(t, addr)
	svc, watched := Service{Name: "api"}, Service{Name: "db"}
	ctx := ctxT(t, 30*time.Second)
	if err := c.Register(ctx, svc, inst("10.1.0.1", 8080)); err != nil {
		t.Fatal(err)
	}
	w, err := c.Watch(ctx, watched, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	stopDaemon(d1)
	waitFor(t, waitLimit, "client to notice the shutdown", func() bool { return !c.Connected() })

	d2 := startDaemon(t, "n2", addr)
	waitFor(t, waitLimit, "client to reconnect", func() bool { return c.Node() == "n2" })
	obs := newClient(t, d2.GRPCAddr())
	waitListed(t, obs, svc, "10.1.0.1:8080")

	// The subscription was redone: a registration by a third client on the
	// new node reaches the watcher.
	third := newClient(t, d2.GRPCAddr())
	waitFor(t, waitLimit, "re-subscription", func() bool { return d2.Registry().Subscriptions() == 1 })
	if err := third.Register(ctx, watched, inst("10.2.0.1", 5432)); err != nil {
		t.Fatal(err)
	}
	waitWatch(t, w, "push from the new node", hasAddrs("10.2.0.1:5432"))
}

// ---- 3. a deregister while disconnected wins over the redo ----

func TestDeregisterWhileDisconnectedWins(t *testing.T) {
	addr := freeAddr(t)
	d1 := startDaemon(t, "n1", addr)
	c := newClient(t, addr)
	svc := Service{Name: "pay"}
	gone, control := inst("10.3.0.1", 80), inst("10.3.0.2", 80)
	ctx := ctxT(t, 30*time.Second)
	for _, in := range []Instance{gone, control} {
		if err := c.Register(ctx, svc, in); err != nil {
			t.Fatal(err)
		}
	}

	stopDaemon(d1)
	waitFor(t, waitLimit, "client to notice the shutdown", func() bool { return !c.Connected() })
	dctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	err := c.Deregister(dctx, svc, gone)
	cancel()
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Deregister while disconnected: err %v, want ErrUnavailable", err)
	}

	d2 := startDaemon(t, "n2", addr)
	waitFor(t, waitLimit, "client to reconnect", c.Connected)
	obs := newClient(t, d2.GRPCAddr())
	// The control instance comes back: the redo ran.
	waitListed(t, obs, svc, "10.3.0.2:80")
	// And the deregistered one never shows up.
	end := time.Now().Add(time.Second)
	for time.Now().Before(end) {
		got, err := listed(t, obs, svc)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(got, "10.3.0.1:80") {
			t.Fatalf("deregistered instance was registered again: %v", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitFor(t, waitLimit, "the deregister to be settled", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, pending := c.regs[regID(mustKey(t, svc), gone)]
		return !pending
	})
}

func mustKey(t *testing.T, svc Service) naming.ServiceKey {
	t.Helper()
	k, err := svc.key()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// ---- 4. local cache while disconnected ----

func TestGetServiceFromCacheWhileDisconnected(t *testing.T) {
	d := startDaemon(t, "n1", "")
	c := newClient(t, d.GRPCAddr())
	other := newClient(t, d.GRPCAddr())
	svc := Service{Name: "cache"}
	ctx := ctxT(t, 30*time.Second)
	if err := other.Register(ctx, svc, inst("10.4.0.1", 1)); err != nil {
		t.Fatal(err)
	}
	if err := other.Register(ctx, svc, inst("10.4.0.2", 2)); err != nil {
		t.Fatal(err)
	}
	w, err := c.Watch(ctx, svc, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	waitWatch(t, w, "initial list", hasAddrs("10.4.0.1:1", "10.4.0.2:2"))
	info, err := c.GetService(ctx, svc, Filter{})
	if err != nil || info.FromCache || !slices.Equal(addrs(info.Instances), []string{"10.4.0.1:1", "10.4.0.2:2"}) {
		t.Fatalf("connected GetService: %+v, %v", info, err)
	}

	stopDaemon(d)
	waitFor(t, waitLimit, "client to notice the shutdown", func() bool { return !c.Connected() })
	info, err = c.GetService(ctxT(t, 3*time.Second), svc, Filter{})
	if err != nil {
		t.Fatalf("GetService while disconnected: %v", err)
	}
	if !info.FromCache {
		t.Error("FromCache not set while disconnected")
	}
	if got := addrs(info.Instances); !slices.Equal(got, []string{"10.4.0.1:1", "10.4.0.2:2"}) {
		t.Errorf("cached list %v", got)
	}
	// Not subscribed: no cache, so the error shows.
	if _, err := c.GetService(ctxT(t, 3*time.Second), Service{Name: "nocache"}, Filter{}); err == nil {
		t.Error("GetService of an unwatched service succeeded with no server")
	}
}

// A server that accepts connections but never answers makes calls end with
// a deadline, not Unavailable; the cache must still answer.
func TestGetServiceFromCacheWhenServerHangs(t *testing.T) {
	d := startDaemon(t, "n1", "")
	hang, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hang.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			conn, err := hang.Accept()
			if err != nil {
				return
			}
			held = append(held, conn)
		}
	}()
	c := newClient(t, d.GRPCAddr(), hang.Addr().String())
	svc := Service{Name: "hang"}
	ctx := ctxT(t, 30*time.Second)
	if err := c.Register(ctx, svc, inst("10.4.1.1", 1)); err != nil {
		t.Fatal(err)
	}
	w, err := c.Watch(ctx, svc, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	waitWatch(t, w, "initial list", hasAddrs("10.4.1.1:1"))
	stopDaemon(d)
	waitFor(t, waitLimit, "client to notice the shutdown", func() bool { return !c.Connected() })
	info, err := c.GetService(ctxT(t, 500*time.Millisecond), svc, Filter{})
	if err != nil {
		t.Fatalf("GetService with a hanging server: %v", err)
	}
	if !info.FromCache || !slices.Equal(addrs(info.Instances), []string{"10.4.1.1:1"}) {
		t.Errorf("got %+v, want the cached list", info)
	}
}

// ---- 5. failover ----

func TestFailoverToSecondServer(t *testing.T) {
	a := startDaemon(t, "node-a", "")
	b := startDaemon(t, "node-b", "")
	c := newClient(t, a.GRPCAddr(), b.GRPCAddr())
	if got := c.Node(); got != "node-a" {
		t.Fatalf("Node() = %q, want node-a", got)
	}
	svc := Service{Name: "fo"}
	ctx := ctxT(t, 30*time.Second)
	if err := c.Register(ctx, svc, inst("10.5.0.1", 80)); err != nil {
		t.Fatal(err)
	}
	obsB := newClient(t, b.GRPCAddr())
	waitListed(t, obsB, svc) // not on B yet

	stopDaemon(a)
	waitFor(t, waitLimit, "session on node-b", func() bool { return c.Node() == "node-b" })
	waitListed(t, obsB, svc, "10.5.0.1:80")
	// Unary calls follow the session.
	members, err := c.Members(ctx)
	if err != nil || len(members) != 1 || members[0].Name != "node-b" {
		t.Errorf("Members after failover: %+v, %v", members, err)
	}
}

// ---- 6. typed errors ----

func TestTypedErrors(t *testing.T) {
	d := startDaemon(t, "n1", "")
	c := newClient(t, d.GRPCAddr())
	ctx := ctxT(t, 10*time.Second)
	svc := Service{Name: "typed"}

	err := c.Register(ctx, svc, inst("10.6.0.1", 0))
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("Register port 0: err %v, want ErrInvalid", err)
	}
	err = c.Register(ctx, Service{Name: "bad name!"}, inst("10.6.0.1", 1))
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("Register bad service: err %v, want ErrInvalid", err)
	}
	c.mu.Lock()
	n := len(c.regs)
	c.mu.Unlock()
	if n != 0 {
		t.Errorf("%d invalid registrations kept for redo, want 0", n)
	}

	_, err = c.GetService(ctx, Service{Name: "nobody"}, Filter{})
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("GetService unknown: err %v, want ErrNotFound", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Code.String() != "NotFound" {
		t.Errorf("GetService unknown: err %T %v, want *Error with code NotFound", err, err)
	}
	if errors.Is(err, ErrInvalid) {
		t.Error("NotFound error matches ErrInvalid")
	}

	_, err = c.RegisterPersistent(ctx, svc, inst("not an ip!", 80))
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("RegisterPersistent bad ip: err %v, want ErrInvalid", err)
	}
	_, err = c.RegisterPersistent(ctx, svc, inst("10.6.0.1", 70000))
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("RegisterPersistent port 70000: err %v, want ErrInvalid", err)
	}

	// A deregister the server refuses is not redone forever.
	err = c.Deregister(ctx, svc, inst("not an ip!", 80))
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("Deregister bad ip: err %v, want ErrInvalid", err)
	}
	c.mu.Lock()
	n = len(c.regs)
	c.mu.Unlock()
	if n != 0 {
		t.Errorf("%d refused deregistrations kept for redo, want 0", n)
	}

	if _, err := New(Config{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("New without servers: err %v, want ErrInvalid", err)
	}
	if _, err := New(Config{Servers: []string{"127.0.0.1:1"}, ClientID: "bad id with spaces"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("New with bad client id: err %v, want ErrInvalid", err)
	}
}

// ---- 7. local watch filters ----

func TestWatchFiltersLocally(t *testing.T) {
	d := startDaemon(t, "n1", "")
	c := newClient(t, d.GRPCAddr())
	reg := newClient(t, d.GRPCAddr())
	svc := Service{Name: "filt"}
	ctx := ctxT(t, 30*time.Second)
	for _, in := range []Instance{inst("10.7.0.1", 1), inst("10.7.0.2", 2), {IP: "10.7.0.3", Port: 3, Unhealthy: true}} {
		if err := reg.Register(ctx, svc, in); err != nil {
			t.Fatal(err)
		}
	}
	healthy, err := c.Watch(ctx, svc, Filter{HealthyOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer healthy.Stop()
	all, err := c.Watch(ctx, svc, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer all.Stop()
	if n := d.Registry().Subscriptions(); n != 1 {
		t.Errorf("server holds %d subscriptions for two watchers, want 1", n)
	}
	info := waitWatch(t, healthy, "healthy view", hasAddrs("10.7.0.1:1", "10.7.0.2:2"))
	if info.ProtectionTriggered {
		t.Error("protection triggered without a threshold")
	}
	waitWatch(t, all, "full view", hasAddrs("10.7.0.1:1", "10.7.0.2:2", "10.7.0.3:3"))

	// GetService of a watched service answers from the cache with the
	// filter applied.
	got, err := c.GetService(ctx, svc, Filter{HealthyOnly: true})
	if err != nil || !slices.Equal(addrs(got.Instances), []string{"10.7.0.1:1", "10.7.0.2:2"}) {
		t.Errorf("GetService healthy-only: %+v, %v", got, err)
	}

	if err := c.UpdateServiceMetadata(ctx, svc, ServiceMeta{ProtectThreshold: 0.9}); err != nil {
		t.Fatal(err)
	}
	if err := reg.Register(ctx, svc, inst("10.7.0.4", 4)); err != nil {
		t.Fatal(err)
	}
	info = waitWatch(t, healthy, "protected view", hasAddrs("10.7.0.1:1", "10.7.0.2:2", "10.7.0.3:3", "10.7.0.4:4"))
	if !info.ProtectionTriggered {
		t.Error("healthy-only watcher: ProtectionTriggered false with 3/4 healthy and threshold 0.9")
	}
	info = waitWatch(t, all, "full view after change", hasAddrs("10.7.0.1:1", "10.7.0.2:2", "10.7.0.3:3", "10.7.0.4:4"))
	if info.ProtectionTriggered {
		t.Error("unfiltered watcher reports protection")
	}

	// The last Stop ends the server subscription.
	healthy.Stop()
	if n := d.Registry().Subscriptions(); n != 1 {
		t.Errorf("after one Stop: %d subscriptions, want 1", n)
	}
	all.Stop()
	waitFor(t, waitLimit, "unsubscribe", func() bool { return d.Registry().Subscriptions() == 0 })
}

// ---- 8. pickWeighted ----

func TestPickWeighted(t *testing.T) {
	a := Instance{IP: "10.8.0.1", Port: 1, Weight: 1, Healthy: true, Enabled: true}
	b := Instance{IP: "10.8.0.2", Port: 2, Weight: 3, Healthy: true, Enabled: true}
	zero := Instance{IP: "10.8.0.3", Port: 3, Weight: 0, Healthy: true, Enabled: true}
	sick := Instance{IP: "10.8.0.4", Port: 4, Weight: 5, Healthy: false, Enabled: true}
	list := []Instance{zero, a, sick, b}
	for _, tc := range []struct {
		r    float64
		want Instance
	}{{0, a}, {0.1, a}, {0.2499, a}, {0.25, b}, {0.5, b}, {0.9999999, b}} {
		got, err := pickWeighted(list, func() float64 { return tc.r })
		if err != nil {
			t.Fatalf("r=%v: %v", tc.r, err)
		}
		if got.IP != tc.want.IP {
			t.Errorf("r=%v: picked %s, want %s", tc.r, got.IP, tc.want.IP)
		}
	}
	if _, err := pickWeighted([]Instance{zero, sick}, func() float64 { return 0 }); !errors.Is(err, ErrNotFound) {
		t.Errorf("no pickable instance: err %v, want ErrNotFound", err)
	}
	if _, err := pickWeighted(nil, rand.Float64); !errors.Is(err, ErrNotFound) {
		t.Errorf("empty list: err %v, want ErrNotFound", err)
	}

	const n = 10000
	first := 0
	for range n {
		got, err := pickWeighted(list, rand.Float64)
		if err != nil {
			t.Fatal(err)
		}
		switch got.IP {
		case a.IP:
			first++
		case b.IP:
		default:
			t.Fatalf("picked %s, which has weight 0 or is unhealthy", got.IP)
		}
	}
	if share := float64(first) / n; share < 0.2 || share > 0.3 {
		t.Errorf("weight-1 instance got %.3f of the picks, want about 0.25", share)
	}
}

func TestPickOne(t *testing.T) {
	d := startDaemon(t, "n1", "")
	c := newClient(t, d.GRPCAddr())
	svc := Service{Name: "pick"}
	ctx := ctxT(t, 10*time.Second)
	if err := c.Register(ctx, svc, Instance{IP: "10.8.1.1", Port: 1, Unhealthy: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.Register(ctx, svc, Instance{IP: "10.8.1.2", Port: 2, Weight: 2}); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		got, err := c.PickOne(ctx, svc)
		if err != nil {
			t.Fatal(err)
		}
		if got.IP != "10.8.1.2" {
			t.Fatalf("PickOne picked %+v", got)
		}
	}
}

// ---- 9. persistent, listing, members ----

func TestPersistentListMembers(t *testing.T) {
	d := startDaemon(t, "solo", "")
	c := newClient(t, d.GRPCAddr())
	ctx := ctxT(t, 10*time.Second)
	svc := Service{Name: "per"}

	rev1, err := c.RegisterPersistent(ctx, svc, inst("10.9.0.1", 80))
	if err != nil {
		t.Fatal(err)
	}
	if rev1 == 0 {
		t.Error("RegisterPersistent returned revision 0")
	}
	info, err := c.GetService(ctx, svc, Filter{})
	if err != nil || len(info.Instances) != 1 || info.Instances[0].Ephemeral {
		t.Fatalf("GetService: %+v, %v; want one persistent instance", info, err)
	}

	rev2, err := c.BatchRegisterPersistent(ctx, svc, []Instance{inst("10.9.0.2", 80), inst("10.9.0.3", 80)})
	if err != nil {
		t.Fatal(err)
	}
	if rev2 <= rev1 {
		t.Errorf("batch revision %d not above %d", rev2, rev1)
	}
	waitListed(t, c, svc, "10.9.0.1:80", "10.9.0.2:80", "10.9.0.3:80")

	// All or none: a batch with one bad instance writes nothing.
	if _, err := c.BatchRegisterPersistent(ctx, svc, []Instance{inst("10.9.0.4", 80), inst("10.9.0.5", 0)}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad batch: err %v, want ErrInvalid", err)
	}
	waitListed(t, c, svc, "10.9.0.1:80", "10.9.0.2:80", "10.9.0.3:80")

	rev3, err := c.DeregisterPersistent(ctx, svc, inst("10.9.0.1", 80))
	if err != nil {
		t.Fatal(err)
	}
	if rev3 <= rev2 {
		t.Errorf("deregister revision %d not above %d", rev3, rev2)
	}
	waitListed(t, c, svc, "10.9.0.2:80", "10.9.0.3:80")
	if _, err := c.DeregisterPersistent(ctx, svc, inst("10.9.0.1", 80)); err != nil {
		t.Errorf("second DeregisterPersistent: %v (want idempotent)", err)
	}

	// Listing: persistent and ephemeral services, groups, namespaces.
	if _, err := c.RegisterPersistent(ctx, Service{Group: "g2", Name: "other"}, inst("10.9.1.1", 80)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RegisterPersistent(ctx, Service{Namespace: "ns2", Name: "elsewhere"}, inst("10.9.2.1", 80)); err != nil {
		t.Fatal(err)
	}
	if err := c.Register(ctx, Service{Name: "eph"}, inst("10.9.3.1", 80)); err != nil {
		t.Fatal(err)
	}
	list, err := c.ListServices(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range list {
		names = append(names, s.Service.Group+"/"+s.Service.Name)
		if s.Service.Name == "per" && (s.Instances != 2 || s.Healthy != 2) {
			t.Errorf("summary of per: %+v", s)
		}
	}
	sort.Strings(names)
	if want := []string{"DEFAULT_GROUP/eph", "DEFAULT_GROUP/per", "g2/other"}; !slices.Equal(names, want) {
		t.Errorf("ListServices(public) = %v, want %v", names, want)
	}
	list, err = c.ListServices(ctx, "", "g2")
	if err != nil || len(list) != 1 || list[0].Service.Name != "other" {
		t.Errorf("ListServices(group g2) = %+v, %v", list, err)
	}
	list, err = c.ListServices(ctx, "ns2", "")
	if err != nil || len(list) != 1 || list[0].Service.Name != "elsewhere" {
		t.Errorf("ListServices(ns2) = %+v, %v", list, err)
	}

	members, err := c.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 1 || members[0].Name != "solo" || members[0].Status != "alive" || members[0].Addr != d.GRPCAddr() {
		t.Errorf("Members = %+v", members)
	}
	if err := c.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

// serverIndex matches the address a node names as leader against the
// configured servers, host:port as such; anything else is -1.
func TestServerIndex(t *testing.T) {
	c := &Client{cfg: Config{Servers: []string{"127.0.0.1:9101", "Node-B.example:9101", "[::1]:09103"}}}
	for addr, want := range map[string]int{
		"127.0.0.1:9101":      0,
		"127.0.0.1:9102":      -1,
		"node-b.example:9101": 1,
		"[::1]:9103":          2,
		"::1:9103":            -1,
		"127.0.0.2:9101":      -1,
		"":                    -1,
		"127.0.0.1":           -1,
	} {
		if got := c.serverIndex(addr); got != want {
			t.Errorf("serverIndex(%q) = %d, want %d", addr, got, want)
		}
	}
}

// A lookup of a service the client does not watch goes over its session
// when it has one, with the same answers and errors as the unary call;
// linearizable lookups use the unary GetService.
func TestGetServiceOverTheSession(t *testing.T) {
	d := startDaemon(t, "n1", "")
	var unary atomic.Int64
	cfg := testConfig(d.GRPCAddr())
	cfg.DialOptions = []grpc.DialOption{grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == regentv1.Registry_GetService_FullMethodName {
			unary.Add(1)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := ctxT(t, 20*time.Second)
	svc := Service{Name: "looked-up"}
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Register(ctx, svc, inst("10.5.0.1", 80)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RegisterPersistent(ctx, svc, Instance{IP: "10.5.0.2", Port: 81, Cluster: "east"}); err != nil {
		t.Fatal(err)
	}
	unary.Store(0)
	info, err := c.GetService(ctx, svc, Filter{})
	if err != nil || info.FromCache || !slices.Equal(addrs(info.Instances), []string{"10.5.0.1:80", "10.5.0.2:81"}) {
		t.Fatalf("lookup over the session: %+v, %v", info, err)
	}
	info, err = c.GetService(ctx, svc, Filter{Clusters: []string{"east"}})
	if err != nil || !slices.Equal(addrs(info.Instances), []string{"10.5.0.2:81"}) {
		t.Fatalf("filtered lookup over the session: %+v, %v", info, err)
	}
	if _, err := c.GetService(ctx, Service{Name: "nobody"}, Filter{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lookup of an unknown service over the session: %v, want ErrNotFound", err)
	}
	if _, err := c.GetService(ctx, svc, Filter{Clusters: []string{"bad cluster!"}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("lookup with a bad cluster: %v, want ErrInvalid", err)
	}
	if n := unary.Load(); n != 0 {
		t.Fatalf("%d lookups went unary with a session up", n)
	}
	if _, err := c.GetService(ctx, svc, Filter{Linearizable: true}); err != nil {
		t.Fatal(err)
	}
	if n := unary.Load(); n != 1 {
		t.Fatalf("linearizable lookup: %d unary calls, want 1", n)
	}
}
