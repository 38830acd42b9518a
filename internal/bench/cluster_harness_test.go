package bench

// The cluster measurements behind cluster_bench_test.go: each starts a
// 3-node cluster in this process (internal/testcluster) and measures one
// thing beside its baseline from the same run.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	clusterv1 "github.com/regent-registry/regent/proto/cluster/v1"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"

	"github.com/regent-registry/regent/client"
	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/daemon"
	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/internal/testcluster"
	"github.com/regent-registry/regent/membership"
)

// productionDistro gives every node the production Distro settings
// (ephemeral.DefaultConfig: 5 ms sync delay, 5 s verify, 3 s owner grace)
// instead of DefaultLocalConfig's short test timings; gossip keeps the
// "local" profile (loopback).
func productionDistro(_ int, cfg *daemon.Config) { cfg.Distro = ephemeral.DefaultConfig() }

// ---------------------------------------------------------------------------
// A subscriber over a raw Session stream that timestamps every push.

func instKey(service, ip string, port int) string {
	return service + "|" + ip + ":" + strconv.Itoa(port)
}

// watcher holds one session on one node, subscribed to some services, and
// records when each instance first appeared in a push and when it first
// disappeared from one.
type watcher struct {
	node   string
	w      *worker
	sendMu sync.Mutex
	acks   atomic.Int64
	done   chan struct{}

	mu   sync.Mutex
	cur  map[string]map[string]struct{} // service -> instKeys in the latest push
	seen map[string]time.Time
	gone map[string]time.Time
}

func newWatcher(tb testing.TB, d *daemon.Daemon, id int, runID int64, services []string) *watcher {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := dial(ctx, d.GRPCAddr(), id, runID)
	if err != nil {
		tb.Fatalf("watcher on %s: %v", d.Name(), err)
	}
	x := &watcher{node: d.Name(), w: w, done: make(chan struct{}),
		cur: map[string]map[string]struct{}{}, seen: map[string]time.Time{}, gone: map[string]time.Time{}}
	tb.Cleanup(func() { w.close(); <-x.done })
	go x.recvLoop()
	for i, s := range services {
		x.send(&regentv1.ClientMessage{RequestId: uint64(i + 1), Body: &regentv1.ClientMessage_Subscribe{Subscribe: &regentv1.Subscribe{Service: &regentv1.ServiceRef{Service: s}}}})
	}
	for x.acks.Load() < int64(len(services)) {
		select {
		case <-ctx.Done():
			tb.Fatalf("watcher on %s: %d of %d subscriptions acknowledged", d.Name(), x.acks.Load(), len(services))
		case <-x.done:
			tb.Fatalf("watcher on %s: session ended while subscribing", d.Name())
		case <-time.After(time.Millisecond):
		}
	}
	return x
}

func (x *watcher) send(m *regentv1.ClientMessage) {
	x.sendMu.Lock()
	defer x.sendMu.Unlock()
	_ = x.w.stream.Send(m)
}

func (x *watcher) recvLoop() {
	defer close(x.done)
	for {
		m, err := x.w.stream.Recv()
		if err != nil {
			return
		}
		now := time.Now()
		switch b := m.GetBody().(type) {
		case *regentv1.ServerMessage_Ack:
			x.acks.Add(1)
		case *regentv1.ServerMessage_Push:
			x.apply(now, b.Push.GetSnapshot())
		case *regentv1.ServerMessage_Probe:
			x.send(&regentv1.ClientMessage{Body: &regentv1.ClientMessage_ProbeReply{ProbeReply: &regentv1.ProbeReply{ProbeId: b.Probe.GetProbeId()}}})
		}
	}
}

func (x *watcher) apply(now time.Time, sn *regentv1.ServiceSnapshot) {
	svc := sn.GetService().GetService()
	next := make(map[string]struct{}, len(sn.GetInstances()))
	for _, in := range sn.GetInstances() {
		next[instKey(svc, in.GetIp(), int(in.GetPort()))] = struct{}{}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for k := range next {
		if _, ok := x.seen[k]; !ok {
			x.seen[k] = now
		}
	}
	for k := range x.cur[svc] {
		if _, still := next[k]; !still {
			if _, ok := x.gone[k]; !ok {
				x.gone[k] = now
			}
		}
	}
	x.cur[svc] = next
}

// at returns when key was first seen (or gone, with gone set).
func (x *watcher) at(key string, gone bool) (time.Time, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	m := x.seen
	if gone {
		m = x.gone
	}
	t, ok := m[key]
	return t, ok
}

// waitAll waits until every key was seen (or is gone) on every watcher and
// returns how many (watcher, key) pairs are still missing at the deadline.
func waitAll(ws []*watcher, keys []string, gone bool, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		missing := 0
		for _, x := range ws {
			for _, k := range keys {
				if _, ok := x.at(k, gone); !ok {
					missing++
				}
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			return missing
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// Percentiles.

// dist summarises N samples.
type dist struct {
	N             int
	P50, P99, Max time.Duration
}

func distOf(l []time.Duration) dist {
	if len(l) == 0 {
		return dist{}
	}
	c := append([]time.Duration(nil), l...)
	return dist{N: len(l), P50: pct(c, 0.5), P99: pct(c, 0.99), Max: pct(c, 1)}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// ---------------------------------------------------------------------------
// a. Convergence: register on A, visible on B and C.

type convOptions struct {
	Rate     int           // registrations per second, all workers together
	Duration time.Duration // of the paced load
	Workers  int           // sessions on A, each its own client
	Services int           // registrations spread over this many services
}

type convResult struct {
	Registered int
	Rate       float64 // achieved
	Local      dist    // register ack on A -> push from A (may be < 0: the push can beat the ack)
	Replicated dist    // register ack on A -> push from both B and C
	Missing    int     // (node, instance) pairs never pushed within the deadline
}

// runConvergence registers new ephemeral instances over raw Session streams
// on node 0 at a paced rate and timestamps, for each, the register ack on
// node 0 and the first push listing it from subscribers on nodes 0, 1 and
// 2 (raw Subscribe sessions, one per node, on every service used).
func runConvergence(tb testing.TB, c *testcluster.Cluster, o convOptions) convResult {
	tb.Helper()
	runID := time.Now().UnixNano()
	services := make([]string, o.Services)
	for i := range services {
		services[i] = fmt.Sprintf("conv-%d", i)
	}
	var ws []*watcher
	for i := range 3 {
		ws = append(ws, newWatcher(tb, c.Node(i), 900_000+i, runID, services))
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.Duration+30*time.Second)
	defer cancel()
	workers := make([]*worker, o.Workers)
	for i := range workers {
		w, err := dial(ctx, c.Node(0).GRPCAddr(), i, runID)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(w.close)
		workers[i] = w
	}

	type reg struct {
		key string
		ack time.Time
	}
	regs := make([][]reg, o.Workers)
	errs := make([]error, o.Workers)
	period := time.Duration(o.Workers) * time.Second / time.Duration(o.Rate)
	start := time.Now().Add(20 * time.Millisecond)
	end := start.Add(o.Duration)
	var wg sync.WaitGroup
	for wi, w := range workers {
		wg.Go(func() {
			offset := period * time.Duration(wi) / time.Duration(o.Workers)
			for k := 0; ; k++ {
				at := start.Add(offset + time.Duration(k)*period)
				if !at.Before(end) {
					return
				}
				time.Sleep(time.Until(at))
				svc := services[(wi*7+k)%len(services)]
				ip := fmt.Sprintf("10.%d.%d.%d", 1+wi/250, k>>8&255, k&255)
				port := 1000 + wi%250
				m := &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Register{Register: &regentv1.RegisterEphemeral{
					Service: &regentv1.ServiceRef{Service: svc}, Instances: []*regentv1.Instance{{Ip: ip, Port: uint32(port)}},
				}}}
				if err := w.roundTrip(m); err != nil {
					errs[wi] = err
					return
				}
				regs[wi] = append(regs[wi], reg{instKey(svc, ip, port), time.Now()})
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		tb.Fatalf("registering: %v", err)
	}
	var all []reg
	last := start
	for _, l := range regs {
		all = append(all, l...)
		for _, r := range l {
			if r.ack.After(last) {
				last = r.ack
			}
		}
	}
	keys := make([]string, len(all))
	for i, r := range all {
		keys[i] = r.key
	}
	res := convResult{Registered: len(all), Rate: float64(len(all)) / last.Sub(start).Seconds()}
	res.Missing = waitAll(ws, keys, false, 20*time.Second)
	var local, repl []time.Duration
	for _, r := range all {
		if t, ok := ws[0].at(r.key, false); ok {
			local = append(local, t.Sub(r.ack))
		}
		tb1, ok1 := ws[1].at(r.key, false)
		tb2, ok2 := ws[2].at(r.key, false)
		if ok1 && ok2 {
			repl = append(repl, max(tb1.Sub(r.ack), tb2.Sub(r.ack)))
		}
	}
	res.Local, res.Replicated = distOf(local), distOf(repl)
	return res
}

// ---------------------------------------------------------------------------
// b. Removal: a session ends, the instance goes from every node.

type removalResult struct {
	Runs       int
	Local      dist // session end -> push without it from A (the owner)
	Replicated dist // session end -> push without it from all of A, B and C
}

// cutDialer dials TCP and keeps the connections, so that the test can cut
// them under the client; after cut it refuses to dial.
type cutDialer struct {
	mu    sync.Mutex
	conns []net.Conn
	cut   bool
}

func (d *cutDialer) dial(ctx context.Context, addr string) (net.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cut {
		return nil, errors.New("network cut")
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err == nil {
		d.conns = append(d.conns, conn)
	}
	return conn, err
}

func (d *cutDialer) cutAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cut = true
	for _, c := range d.conns {
		c.Close()
	}
}

// runRemoval repeats: an SDK client connected to node 0 registers one
// instance; once subscribers on all three nodes list it, its session ends
// - mode "close": client.Close; mode "cut": its TCP connection is closed
// under it and it cannot reconnect - and the push without it is timed on
// each node.
func runRemoval(tb testing.TB, c *testcluster.Cluster, mode string, runs int) removalResult {
	tb.Helper()
	svc := "removal-" + mode
	runID := time.Now().UnixNano()
	var ws []*watcher
	for i := range 3 {
		ws = append(ws, newWatcher(tb, c.Node(i), 910_000+i, runID, []string{svc}))
	}
	var local, repl []time.Duration
	for r := range runs {
		cfg := client.Config{Servers: c.Addrs(0)}
		var cd cutDialer
		if mode == "cut" {
			cfg.DialOptions = []grpc.DialOption{grpc.WithContextDialer(cd.dial)}
		}
		cl, err := client.New(cfg)
		if err != nil {
			tb.Fatal(err)
		}
		ip := fmt.Sprintf("10.77.%d.%d", r/250, 1+r%250)
		key := instKey(svc, ip, 9000)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = cl.Register(ctx, client.Service{Name: svc}, client.Instance{IP: ip, Port: 9000})
		cancel()
		if err != nil {
			cl.Close()
			tb.Fatalf("run %d: register: %v", r, err)
		}
		if n := waitAll(ws, []string{key}, false, 10*time.Second); n > 0 {
			cl.Close()
			tb.Fatalf("run %d: instance not listed on %d nodes", r, n)
		}
		t0 := time.Now()
		switch mode {
		case "close":
			cl.Close()
		case "cut":
			cd.cutAll()
		default:
			tb.Fatalf("mode %q", mode)
		}
		n := waitAll(ws, []string{key}, true, 10*time.Second)
		cl.Close()
		if n > 0 {
			tb.Fatalf("run %d (%s): instance still listed on %d nodes after 10 s", r, mode, n)
		}
		ga, _ := ws[0].at(key, true)
		g1, _ := ws[1].at(key, true)
		g2, _ := ws[2].at(key, true)
		local = append(local, ga.Sub(t0))
		repl = append(repl, max(ga.Sub(t0), g1.Sub(t0), g2.Sub(t0)))
	}
	return removalResult{Runs: runs, Local: distOf(local), Replicated: distOf(repl)}
}

// ---------------------------------------------------------------------------
// c. Verify cost with many clients on one node.

type verifyResult struct {
	Clients int
	Rounds  float64 // verify intervals in the measured window
	// What node 0 sent, of every kind (sync, verify, verify_list,
	// snapshot, query), per peer per round.
	Msgs, Bytes float64
	// The Nacos scheme over the same clients: one verify request per
	// client per peer per round.
	NacosMsgs, NacosBytes float64
}

const verifyInterval = 200 * time.Millisecond

// scrapeSent reads node d's regent_distro_sent_{messages,bytes}_total,
// summed over kinds, from its /metrics.
func scrapeSent(tb testing.TB, d *daemon.Daemon) (msgs, bytes map[string]float64) {
	tb.Helper()
	resp, err := http.Get("http://" + d.HTTPAddr() + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	msgs, bytes = map[string]float64{}, map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var into map[string]float64
		switch {
		case strings.HasPrefix(line, "regent_distro_sent_messages_total{"):
			into = msgs
		case strings.HasPrefix(line, "regent_distro_sent_bytes_total{"):
			into = bytes
		default:
			continue
		}
		_, rest, _ := strings.Cut(line, `kind="`)
		kind, rest, _ := strings.Cut(rest, `"}`)
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			tb.Fatalf("metrics line %q: %v", line, err)
		}
		into[kind] = v
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	if len(msgs) == 0 {
		tb.Fatal("no regent_distro_sent_messages_total in /metrics")
	}
	return msgs, bytes
}

func sum(m map[string]float64) float64 {
	s := 0.0
	for _, v := range m {
		s += v
	}
	return s
}

// runVerifyCost puts n clients (one instance each) on node 0 of a fresh
// 3-node cluster with a 200 ms verify interval, calling Distro.Register in
// process, waits until both peers hold them all and verify rounds send no
// list any more, then measures what node 0 sends over `rounds` verify
// intervals, from its /metrics counters (proto.Size of each request).
func runVerifyCost(tb testing.TB, n, rounds int) verifyResult {
	tb.Helper()
	c := testcluster.Start(tb, 3, func(_ int, cfg *daemon.Config) {
		cfg.HTTPAddr = "127.0.0.1:0"
		cfg.Distro.VerifyInterval = verifyInterval // DefaultLocalConfig's expiry (3 s) stays above two intervals
	})
	a := c.Node(0)
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("verify-client-%07d", i)
		key := naming.ServiceKey{Namespace: naming.DefaultNamespace, Group: naming.DefaultGroup, Service: fmt.Sprintf("verify-svc-%d", i%1000)}
		in := naming.Instance{IP: fmt.Sprintf("10.%d.%d.%d", 100+i>>16, i>>8&255, i&255), Port: 8080, Cluster: naming.DefaultCluster,
			Weight: naming.DefaultWeight, Healthy: true, Enabled: true, Ephemeral: true}
		a.Distro().Register(ids[i], key, []naming.Instance{in})
	}
	deadline := time.Now().Add(2 * time.Minute)
	for c.Node(1).Distro().Stats().Clients != n || c.Node(2).Distro().Stats().Clients != n {
		if time.Now().After(deadline) {
			tb.Fatalf("peers hold %d and %d of %d clients after 2 minutes", c.Node(1).Distro().Stats().Clients, c.Node(2).Distro().Stats().Clients, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Converged when three intervals in a row send only digests.
	quiet := func(m map[string]float64) float64 { return sum(m) - m["verify"] }
	prev, _ := scrapeSent(tb, a)
	for {
		if time.Now().After(deadline) {
			tb.Fatal("verify rounds still send lists or syncs after 2 minutes")
		}
		time.Sleep(3 * verifyInterval)
		cur, _ := scrapeSent(tb, a)
		if quiet(cur) == quiet(prev) {
			break
		}
		prev = cur
	}

	m1, b1 := scrapeSent(tb, a)
	t1 := time.Now()
	time.Sleep(time.Duration(rounds) * verifyInterval)
	m2, b2 := scrapeSent(tb, a)
	res := verifyResult{Clients: n, Rounds: float64(time.Since(t1)) / float64(verifyInterval)}
	const peers = 2
	res.Msgs = (sum(m2) - sum(m1)) / peers / res.Rounds
	res.Bytes = (sum(b2) - sum(b1)) / peers / res.Rounds

	// Nacos: every round, one verify per client to each peer, carrying
	// that client's id and version.
	res.NacosMsgs = float64(n)
	for _, id := range ids {
		_, v, ok := a.Distro().ClientVersion(id)
		if !ok {
			tb.Fatalf("client %s missing on its owner", id)
		}
		res.NacosBytes += float64(proto.Size(&clusterv1.VerifyRequest{From: a.Name(), List: true,
			Clients: []*clusterv1.ClientVersion{{Id: id, Version: &clusterv1.Version{Epoch: v.Epoch, Seq: v.Seq}}}}))
	}
	return res
}

// ---------------------------------------------------------------------------
// d. Owner killed.

type killResult struct {
	Clients int
	// Kill of node 0 -> the client's instance listed on nodes 1 and 2,
	// owned there by a node other than node 0.
	Moved dist
	// Kill of node 0 -> the client's SDK holds a session on another node.
	Reconnected dist
	// KillTook is how long Kill itself took; GossipDead when gossip on
	// both survivors had declared node 0 dead (context: the clients move
	// without waiting for it).
	KillTook, GossipDead time.Duration
}

// runOwnerKilled connects k SDK clients to node 0 of a fresh cluster (each
// knowing all three servers, node 0 first), each registering one instance,
// kills node 0 (testcluster.Kill) and polls nodes 1 and 2 in process every
// 2 ms.
func runOwnerKilled(tb testing.TB, k int) killResult {
	tb.Helper()
	c := testcluster.Start(tb, 3, productionDistro)
	const svc = "failover"
	key := naming.ServiceKey{Service: svc}
	dead := c.Node(0).Name()
	cls := make([]*client.Client, k)
	ips := make([]string, k)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range k {
		cls[i] = c.Client(tb, 0, 1, 2)
		ips[i] = fmt.Sprintf("10.88.%d.%d", i/250, 1+i%250)
		if err := cls[i].Register(ctx, client.Service{Name: svc}, client.Instance{IP: ips[i], Port: 7000}); err != nil {
			tb.Fatal(err)
		}
	}
	for i := range k {
		if err := c.WaitListed(ctx, key, ips[i], 7000, 1, 2); err != nil {
			tb.Fatal(err)
		}
		if n := cls[i].Node(); n != dead {
			tb.Fatalf("client %d is on %q, want %s", i, n, dead)
		}
	}

	listed := func(node int) map[string]bool {
		out := map[string]bool{}
		snap, _, err := c.Node(node).Registry().Get(key.WithDefaults(), naming.Filter{})
		if err == nil {
			for _, in := range snap.Instances {
				out[in.IP] = true
			}
		}
		return out
	}
	moved := make([]time.Duration, k)
	reconn := make([]time.Duration, k)
	kctx, kcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer kcancel()
	t0 := time.Now()
	c.Kill(0)
	killTook := time.Since(t0)
	left := 2 * k
	for left > 0 {
		l1, l2 := listed(1), listed(2)
		for i, cl := range cls {
			if reconn[i] == 0 {
				if n := cl.Node(); n != "" && n != dead {
					reconn[i] = time.Since(t0)
					left--
				}
			}
			if moved[i] == 0 && l1[ips[i]] && l2[ips[i]] {
				o1, _, ok1 := c.Node(1).Distro().ClientVersion(cl.ClientID())
				o2, _, ok2 := c.Node(2).Distro().ClientVersion(cl.ClientID())
				if ok1 && ok2 && o1 != dead && o2 != dead {
					moved[i] = time.Since(t0) // when seen: an upper bound, within one poll
					left--
				}
			}
		}
		if kctx.Err() != nil {
			tb.Fatalf("%d of %d client figures (moved, reconnected) missing 30 s after the kill", left, 2*k)
		}
		time.Sleep(2 * time.Millisecond)
	}
	res := killResult{Clients: k, Moved: distOf(moved), Reconnected: distOf(reconn), KillTook: killTook}
	for res.GossipDead == 0 && kctx.Err() == nil {
		if deadOn(c.Node(1), dead) && deadOn(c.Node(2), dead) {
			res.GossipDead = time.Since(t0)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return res
}

func deadOn(d *daemon.Daemon, name string) bool {
	for _, m := range d.Gossip().Members() {
		if m.Name == name {
			return m.Status == membership.StatusDead
		}
	}
	return false
}
