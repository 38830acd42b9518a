package compare

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/regent-registry/regent/chaos"
	"github.com/regent-registry/regent/client"
	"github.com/regent-registry/regent/internal/bench/load"
	"github.com/regent-registry/regent/internal/wire"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"
)

// regentSystem is a 3-node Regent cluster of real `regent server`
// processes on 127.0.0.1-3 (the chaos harness starts them: fsync on,
// bootstrap-expect 3).
type regentSystem struct {
	cluster *chaos.Cluster
	servers []string
	self    string
	// profileDir: see Options.ProfileDir.
	profileDir string
}

func startRegent(ctx context.Context, o Options, logf func(string, ...any)) (*regentSystem, error) {
	args := o.RegentArgs
	if o.ProfileDir != "" {
		if err := os.MkdirAll(o.ProfileDir, 0o755); err != nil {
			return nil, err
		}
		args = append(slices.Clip(args), "--pprof")
	}
	c, err := chaos.NewCluster(chaos.ClusterConfig{Nodes: 3, Bin: o.RegentBin, Dir: o.Dir + "/regent", LogLevel: "warn", ExtraArgs: args})
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		c.Stop()
		return nil, err
	}
	leader, err := c.WaitFormed(ctx, 60*time.Second)
	if err != nil {
		c.Stop()
		return nil, err
	}
	logf("regent up at %v, Raft leader %s", c.Servers(), leader)
	return &regentSystem{cluster: c, servers: c.Servers(), self: o.Self, profileDir: o.ProfileDir}, nil
}

func (s *regentSystem) stop() { s.cluster.Stop() }

func (s *regentSystem) name() string { return "regent" }

func (s *regentSystem) pids() []int {
	if s.cluster == nil {
		return nil
	}
	var out []int
	for _, n := range s.cluster.Nodes {
		if pid := n.PID(); pid != 0 {
			out = append(out, pid)
		}
	}
	return out
}

// clients opens n SDK clients, client i on node i%3 (shifted by node).
func (s *regentSystem) clients(ctx context.Context, n, node int) ([]*client.Client, error) {
	return s.open(ctx, n, node, false)
}

// open opens n SDK clients, client i on node (i+node)%3; with every, each
// also lists the other nodes after its own, as an application configures
// its SDK (its session stays on the first).
func (s *regentSystem) open(ctx context.Context, n, node int, every bool) ([]*client.Client, error) {
	out := make([]*client.Client, 0, n)
	for i := range n {
		servers := []string{s.servers[(i+node)%len(s.servers)]}
		if every {
			servers = rotated(s.servers, i+node)
		}
		c, err := client.New(client.Config{Servers: servers, RequestTimeout: 10 * time.Second})
		if err == nil {
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = c.WaitConnected(wctx)
			cancel()
		}
		if err != nil {
			closeAll(out)
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func closeAll(cs []*client.Client) {
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() { c.Close() })
	}
	wg.Wait()
}

func ipOf(seq int) string { return fmt.Sprintf("10.%d.%d.%d", seq>>16&255, seq>>8&255, seq&255) }

func svcName(workload string, clients, round, worker int) string {
	return fmt.Sprintf("cmp-%s-c%d-r%d-w%d", workload, clients, round, worker)
}

func (s *regentSystem) measure(ctx context.Context, w string, clients, round int, d time.Duration) (load.Sample, error) {
	if s.profileDir != "" {
		defer s.profile(ctx, fmt.Sprintf("%s-c%d-r%d", w, clients, round), d)()
	}
	switch w {
	case Ephemeral:
		return s.sessionPerInstance(ctx, clients, round, d)
	case Shared, Persistent:
		// Persistent writers list every node, so that the SDK sends its
		// writes to the Raft leader once a node has named it.
		cs, err := s.open(ctx, clients, 0, w == Persistent)
		if err != nil {
			return load.Sample{}, err
		}
		defer closeAll(cs)
		return load.Run(ctx, clients, d, func(ctx context.Context, worker, seq int) error {
			svc := client.Service{Name: svcName(w, clients, round, worker)}
			in := client.Instance{IP: ipOf(seq), Port: 8080, Metadata: map[string]string{"version": "1.0.0"}}
			if w == Shared {
				return cs[worker].Register(ctx, svc, in)
			}
			_, err := cs[worker].RegisterPersistent(ctx, svc, in)
			return err
		}), nil
	case Noop:
		cs, err := s.clients(ctx, clients, 0)
		if err != nil {
			return load.Sample{}, err
		}
		defer closeAll(cs)
		return load.Run(ctx, clients, d, func(ctx context.Context, worker, _ int) error {
			return cs[worker].Ping(ctx)
		}), nil
	case Lookup, Watched:
		return s.lookup(ctx, clients, round, d, w == Watched)
	case Notify:
		return s.notify(ctx, clients, round, d)
	case Removal:
		return s.removal(ctx, clients, round)
	}
	return load.Sample{}, fmt.Errorf("unknown workload %q", w)
}

// profile starts a CPU profile of every node for about d (the setup of a
// measurement is short beside it) and returns a func that waits for the
// profiles and writes them to profileDir; a failed profile is logged in
// the file's place, not fatal.
func (s *regentSystem) profile(ctx context.Context, name string, d time.Duration) (wait func()) {
	var wg sync.WaitGroup
	secs := max(1, int(d.Round(time.Second)/time.Second))
	for _, n := range s.cluster.Nodes {
		wg.Go(func() {
			path := filepath.Join(s.profileDir, fmt.Sprintf("%s-%s.pprof", name, n.Name))
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", n.HTTP, secs), nil)
			var body []byte
			if err == nil {
				var resp *http.Response
				if resp, err = http.DefaultClient.Do(req); err == nil {
					body, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("%s: %s", resp.Status, body)
					}
				}
			}
			if err != nil {
				path, body = path+".err", []byte(err.Error()+"\n")
			}
			_ = os.WriteFile(path, body, 0o644)
		})
	}
	return wg.Wait
}

// sessionPerInstance: each operation opens a new session on the worker's
// connection (a Session stream and its Hello) and registers one instance
// on it; the sessions stay open, each holding its instance, until the
// measurement ends, as etcd's leases are kept alive.
func (s *regentSystem) sessionPerInstance(ctx context.Context, clients, round int, d time.Duration) (load.Sample, error) {
	conns := make([]*grpc.ClientConn, clients)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range conns {
		c, err := grpc.NewClient("passthrough:///"+s.servers[i%len(s.servers)], grpc.WithTransportCredentials(insecure.NewCredentials()), wire.DialOption())
		if err != nil {
			return load.Sample{}, err
		}
		conns[i] = c
	}
	var mu sync.Mutex
	var open []context.CancelFunc
	defer func() {
		for _, cancel := range open {
			cancel()
		}
	}()
	return load.Run(ctx, clients, d, func(ctx context.Context, worker, seq int) error {
		sctx, cancel := context.WithCancel(context.Background())
		mu.Lock()
		open = append(open, cancel)
		mu.Unlock()
		st, err := regentv1.NewRegistryClient(conns[worker]).Session(sctx)
		if err != nil {
			return err
		}
		id := fmt.Sprintf("cmp-r%d-c%d-w%d-%d", round, clients, worker, seq)
		if err := st.Send(&regentv1.ClientMessage{Body: &regentv1.ClientMessage_Hello{Hello: &regentv1.Hello{ClientId: id, ClientName: "regent-compare"}}}); err != nil {
			return err
		}
		// The register follows the Hello at once: a session serves what
		// comes after its Hello once it is open, in order.
		reg := &regentv1.ClientMessage{RequestId: 1, Body: &regentv1.ClientMessage_Register{Register: &regentv1.RegisterEphemeral{
			Service:   &regentv1.ServiceRef{Service: svcName(Ephemeral, clients, round, worker)},
			Instances: []*regentv1.Instance{{Ip: ipOf(seq), Port: 8080, Metadata: map[string]string{"version": "1.0.0"}}},
		}}}
		if err := st.Send(reg); err != nil {
			return err
		}
		if m, err := st.Recv(); err != nil || m.GetHelloReply() == nil {
			return fmt.Errorf("no HelloReply: %v", err)
		}
		for {
			m, err := st.Recv()
			if err != nil {
				return err
			}
			if a := m.GetAck(); a != nil && a.GetRequestId() == 1 {
				if a.GetCode() != 0 {
					return fmt.Errorf("register refused: code %d: %s", a.GetCode(), a.GetMessage())
				}
				return nil
			}
		}
	}), nil
}

const lookupInstances = 10

// lookup: one service of 10 instances, listed on every node first; each
// worker lists it on its own node, or, watched, subscribes first and is
// answered by its SDK from the pushes.
func (s *regentSystem) lookup(ctx context.Context, clients, round int, d time.Duration, watched bool) (load.Sample, error) {
	owner, err := s.clients(ctx, 1, 0)
	if err != nil {
		return load.Sample{}, err
	}
	defer closeAll(owner)
	svc := client.Service{Name: svcName(Lookup, clients, round, 0)}
	if watched {
		svc.Name = svcName(Watched, clients, round, 0)
	}
	for i := range lookupInstances {
		if err := owner[0].Register(ctx, svc, client.Instance{IP: ipOf(i), Port: 8080}); err != nil {
			return load.Sample{}, err
		}
	}
	cs, err := s.clients(ctx, clients, 0)
	if err != nil {
		return load.Sample{}, err
	}
	defer closeAll(cs)
	count := func(c *client.Client) int {
		info, err := c.GetService(ctx, svc, client.Filter{})
		if err != nil {
			return -1
		}
		return len(info.Instances)
	}
	for _, c := range cs[:min(len(cs), len(s.servers))] {
		if err := waitFor(ctx, 10*time.Second, func() bool { return count(c) == lookupInstances }); err != nil {
			return load.Sample{}, fmt.Errorf("lookup service not listed on %s: %w", c.Node(), err)
		}
	}
	if watched {
		for _, c := range cs {
			w, err := c.Watch(ctx, svc, client.Filter{})
			if err != nil {
				return load.Sample{}, err
			}
			defer w.Stop()
		}
	}
	return load.Run(ctx, clients, d, func(ctx context.Context, worker, _ int) error {
		info, err := cs[worker].GetService(ctx, svc, client.Filter{})
		if err == nil && len(info.Instances) != lookupInstances {
			err = fmt.Errorf("listed %d instances, want %d", len(info.Instances), lookupInstances)
		}
		return err
	}), nil
}

// notify: worker w registers on node w%3, its subscriber sits on node
// (w+1)%3; an operation is a register of a new instance until the
// subscriber's push lists it. Before each one, untimed, the worker's
// previous instance is deregistered and seen gone, so that the service
// holds one instance whatever the run's length.
func (s *regentSystem) notify(ctx context.Context, clients, round int, d time.Duration) (load.Sample, error) {
	writers, err := s.clients(ctx, clients, 0)
	if err != nil {
		return load.Sample{}, err
	}
	defer closeAll(writers)
	readers, err := s.clients(ctx, clients, 1)
	if err != nil {
		return load.Sample{}, err
	}
	defer closeAll(readers)
	watchers := make([]*client.Watcher, clients)
	for i, r := range readers {
		if watchers[i], err = r.Watch(ctx, client.Service{Name: svcName(Notify, clients, round, i)}, client.Filter{}); err != nil {
			return load.Sample{}, err
		}
		defer watchers[i].Stop()
	}
	svc := func(worker int) client.Service { return client.Service{Name: svcName(Notify, clients, round, worker)} }
	prep := func(ctx context.Context, worker, seq int) error {
		if seq == 0 {
			return nil
		}
		prev := ipOf(seq - 1)
		if err := writers[worker].Deregister(ctx, svc(worker), client.Instance{IP: prev, Port: 8080}); err != nil {
			return err
		}
		return awaitList(ctx, watchers[worker], prev, false)
	}
	return load.RunPacedPrep(ctx, clients, d, NotifyPace, prep, func(ctx context.Context, worker, seq int) error {
		ip := ipOf(seq)
		if err := writers[worker].Register(ctx, svc(worker), client.Instance{IP: ip, Port: 8080}); err != nil {
			return err
		}
		return awaitList(ctx, watchers[worker], ip, true)
	}), nil
}

// awaitList waits up to 10 s for a push that lists ip (present) or does
// not (gone).
func awaitList(ctx context.Context, w *client.Watcher, ip string, present bool) error {
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case info := <-w.C():
			if slices.ContainsFunc(info.Instances, func(in client.Instance) bool { return in.IP == ip }) == present {
				return nil
			}
		case <-timeout.C:
			return fmt.Errorf("%s %w (present=%v)", ip, errNotSeen, present)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// removal: one client process per worker registers an instance on node
// i%3 and is then killed (SIGKILL); a subscriber on node (i+1)%3 times
// how long until the instance is gone.
func (s *regentSystem) removal(ctx context.Context, clients, round int) (load.Sample, error) {
	readers, err := s.clients(ctx, clients, 1)
	if err != nil {
		return load.Sample{}, err
	}
	defer closeAll(readers)
	watchers := make([]*client.Watcher, clients)
	kids := make([]*child, clients)
	defer func() {
		for _, k := range kids {
			if k != nil {
				k.kill()
			}
		}
	}()
	for i := range clients {
		svc := client.Service{Name: svcName(Removal, clients, round, i)}
		if watchers[i], err = readers[i].Watch(ctx, svc, client.Filter{}); err != nil {
			return load.Sample{}, err
		}
		defer watchers[i].Stop()
		if kids[i], err = startChild(ctx, s.self, "regent", s.servers[i%len(s.servers)], svc.Name, ipOf(i)); err != nil {
			return load.Sample{}, err
		}
		if err := awaitList(ctx, watchers[i], ipOf(i), true); err != nil {
			return load.Sample{}, err
		}
	}
	return killAndTime(ctx, kids, func(ctx context.Context, i int) error {
		return awaitList(ctx, watchers[i], ipOf(i), false)
	}), nil
}

// killAndTime kills every child at once and returns, per child, the time
// from its kill until gone(i) returns.
func killAndTime(ctx context.Context, kids []*child, gone func(ctx context.Context, i int) error) load.Sample {
	lats := make([]time.Duration, len(kids))
	errs := make([]error, len(kids))
	var wg sync.WaitGroup
	start := time.Now()
	for i, k := range kids {
		t0 := time.Now()
		k.kill()
		wg.Go(func() {
			errs[i] = gone(ctx, i)
			lats[i] = time.Since(t0)
		})
	}
	wg.Wait()
	var s load.Sample
	s.Elapsed = time.Since(start)
	for i, err := range errs {
		if err != nil {
			if s.Errors++; s.FirstErr == "" {
				s.FirstErr = err.Error()
			}
			continue
		}
		s.Ops++
		s.Latencies = append(s.Latencies, lats[i])
	}
	slices.Sort(s.Latencies)
	return s
}

func waitFor(ctx context.Context, d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return errNotSeen
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}
