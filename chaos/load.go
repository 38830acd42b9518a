package chaos

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/regent-registry/regent/client"
)

// The services the load uses.
var (
	EphService  = client.Service{Name: "chaos-eph"}
	PersService = client.Service{Name: "chaos-pers"}
)

// LoadConfig sizes the load.
type LoadConfig struct {
	// LiveClients hold ephemeral instances for the whole run and keep
	// registering and deregistering them from a pool of PoolSize.
	LiveClients, PoolSize int
	// DeadClients (SDK, closed by client-close faults), CLIClients
	// (`regent register` processes, killed by client-kill faults) and
	// SilentClients (SDK behind a Blackhole, cut by client-cut faults)
	// register DeadInstances each and die mid-run.
	DeadClients, CLIClients, SilentClients, DeadInstances int
	// Writers write persistent instances: Owned each of their own, plus
	// Contended shared by every writer.
	Writers, Owned, Contended int
	// MaxOps bounds the history (every load loop stops when it is full).
	MaxOps int
}

// DefaultLoadConfig is a load for a 2-core machine.
func DefaultLoadConfig() LoadConfig {
	return LoadConfig{LiveClients: 3, PoolSize: 4, DeadClients: 2, CLIClients: 1, SilentClients: 1, DeadInstances: 2,
		Writers: 3, Owned: 2, Contended: 2, MaxOps: 200000}
}

// PersIP is the IP of persistent instance k.
func PersIP(k int) string { return fmt.Sprintf("10.200.%d.%d", k/200, k%200+1) }

func persKey(ip string) (int, bool) {
	var a, b int
	if _, err := fmt.Sscanf(ip, "10.200.%d.%d", &a, &b); err != nil {
		return 0, false
	}
	return a*200 + b - 1, true
}

// ephClient is an SDK client holding ephemeral instances.
type ephClient struct {
	name  string
	kind  string // live, sdk-close, silent
	c     *client.Client
	proxy *Blackhole
	pool  []string

	node string // silent clients: the node behind the proxy

	mu     sync.Mutex
	wish   map[string]bool
	diedAt time.Duration
	dead   bool
	gone   bool // seen gone from every node
}

func (e *ephClient) wished() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for ip, w := range e.wish {
		if w {
			out = append(out, ip)
		}
	}
	slices.Sort(out)
	return out
}

// cliClient is a `regent register` process.
type cliClient struct {
	name   string
	ip     string
	cmd    *exec.Cmd
	out    *syncBuffer
	done   chan struct{}
	diedAt time.Duration
	dead   bool
}

// Dead is a client that died during the run, with its instances.
type Dead struct {
	Name, Kind string
	IPs        []string
	DiedAt     time.Duration
	// Bound is how long after DiedAt (extended by overlapping node faults)
	// its instances may stay listed.
	Bound time.Duration
}

type watchState struct {
	node string
	c    *client.Client
	w    *client.Watcher

	mu   sync.Mutex
	last map[string]bool
	at   time.Duration
	n    int
}

func (w *watchState) latest() (map[string]bool, time.Duration, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last, w.at, w.n
}

// Load runs the clients and records what they see.
type Load struct {
	cfg     LoadConfig
	seed    uint64
	cl      *Cluster
	clock   *Clock
	hist    *History
	logf    func(string, ...any)
	servers []string

	readers  []*client.Client // one per node, only that node
	watchers []*watchState
	live     []*ephClient
	dying    []*ephClient // sdk-close and silent
	clis     []*cliClient
	writers  []*client.Client
	far      []*farClient // made by far-clients faults, on the faults' goroutine

	roundsMu sync.Mutex
	rounds   []Round

	stopChurn, stopPers, stopMon, closed chan struct{}
	churnWG, persWG, monWG, farWG        sync.WaitGroup
}

func rotate(s []string, i int) []string {
	i %= len(s)
	return append(slices.Clone(s[i:]), s[:i]...)
}

func newClient(servers []string, name string) (*client.Client, error) {
	return client.New(client.Config{Servers: servers, ClientName: name, RequestTimeout: 5 * time.Second, BackoffMax: 2 * time.Second})
}

// newObserver is a client that only looks (readers, subscribers): its
// connection redials a restarted node within a second instead of gRPC's
// growing backoff, so what it measures is the node, not the backoff.
func newObserver(server, name string) (*client.Client, error) {
	return client.New(client.Config{Servers: []string{server}, ClientName: name, RequestTimeout: 5 * time.Second, BackoffMax: time.Second,
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 2 * time.Second,
		})}})
}

// NewLoad connects every client and registers the initial instances; it
// returns once every node lists them.
func NewLoad(ctx context.Context, cl *Cluster, cfg LoadConfig, seed uint64, logf func(string, ...any)) (*Load, error) {
	l := &Load{cfg: cfg, seed: seed, cl: cl, clock: cl.clock, hist: NewHistory(cfg.MaxOps), logf: logf, servers: cl.Servers(),
		stopChurn: make(chan struct{}), stopPers: make(chan struct{}), stopMon: make(chan struct{}), closed: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			l.Close()
		}
	}()
	for _, n := range cl.Nodes {
		c, err := newObserver(n.GRPC, "chaos-reader-"+n.Name)
		if err != nil {
			return nil, err
		}
		l.readers = append(l.readers, c)
		wc, err := newObserver(n.GRPC, "chaos-watcher-"+n.Name)
		if err != nil {
			return nil, err
		}
		ws := &watchState{node: n.Name, c: wc}
		l.watchers = append(l.watchers, ws)
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		ws.w, err = wc.Watch(wctx, EphService, client.Filter{})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("watch on %s: %w", n.Name, err)
		}
		go func() {
			for {
				var info client.ServiceInfo
				select {
				case <-l.closed:
					return
				case info = <-ws.w.C():
				}
				ips := map[string]bool{}
				for _, in := range info.Instances {
					ips[in.IP] = true
				}
				ws.mu.Lock()
				ws.last, ws.at = ips, l.clock.Now()
				ws.n++
				ws.mu.Unlock()
			}
		}()
	}
	register := func(e *ephClient, ips []string) error {
		for _, ip := range ips {
			e.wish[ip] = true
			rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			err := e.c.Register(rctx, EphService, client.Instance{IP: ip, Port: 80})
			cancel()
			if err != nil {
				return fmt.Errorf("%s: register %s: %w", e.name, ip, err)
			}
		}
		return nil
	}
	var initial []string
	for i := range cfg.LiveClients {
		c, err := newClient(rotate(l.servers, i), fmt.Sprintf("chaos-live-%d", i))
		if err != nil {
			return nil, err
		}
		e := &ephClient{name: fmt.Sprintf("live-%d", i), kind: "live", c: c, wish: map[string]bool{}}
		for j := range cfg.PoolSize {
			e.pool = append(e.pool, fmt.Sprintf("10.201.%d.%d", i, j+1))
		}
		l.live = append(l.live, e)
		half := e.pool[:(cfg.PoolSize+1)/2]
		if err := register(e, half); err != nil {
			return nil, err
		}
		initial = append(initial, half...)
	}
	for i := range cfg.DeadClients {
		c, err := newClient(rotate(l.servers, i+1), fmt.Sprintf("chaos-dead-%d", i))
		if err != nil {
			return nil, err
		}
		e := &ephClient{name: fmt.Sprintf("sdk-close-%d", i), kind: string(FaultClientClose), c: c, wish: map[string]bool{}}
		for j := range cfg.DeadInstances {
			e.pool = append(e.pool, fmt.Sprintf("10.202.%d.%d", i, j+1))
		}
		l.dying = append(l.dying, e)
		if err := register(e, e.pool); err != nil {
			return nil, err
		}
		initial = append(initial, e.pool...)
	}
	for i := range cfg.SilentClients {
		node := cl.Nodes[(i+2)%len(cl.Nodes)]
		p, err := NewBlackhole(node.GRPC)
		if err != nil {
			return nil, err
		}
		c, err := newClient([]string{p.Addr()}, fmt.Sprintf("chaos-silent-%d", i))
		if err != nil {
			p.Close()
			return nil, err
		}
		e := &ephClient{name: fmt.Sprintf("silent-%d@%s", i, node.Name), kind: string(FaultClientCut), c: c, proxy: p, node: node.Name, wish: map[string]bool{}}
		for j := range cfg.DeadInstances {
			e.pool = append(e.pool, fmt.Sprintf("10.204.%d.%d", i, j+1))
		}
		l.dying = append(l.dying, e)
		if err := register(e, e.pool); err != nil {
			return nil, err
		}
		initial = append(initial, e.pool...)
	}
	for i := range cfg.CLIClients {
		cc := &cliClient{name: fmt.Sprintf("cli-%d", i), ip: fmt.Sprintf("10.203.0.%d", i+1), out: &syncBuffer{}, done: make(chan struct{})}
		cc.cmd = exec.Command(cl.cfg.Bin, "register", "--server", strings.Join(rotate(l.servers, i), ","),
			"--service", EphService.Name, "--ip", cc.ip, "--port", "80", "--timeout", "15s")
		cc.cmd.Stdout, cc.cmd.Stderr = cc.out, cc.out
		cc.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cc.cmd.Start(); err != nil {
			return nil, err
		}
		go func() { _ = cc.cmd.Wait(); close(cc.done) }()
		l.clis = append(l.clis, cc)
		if err := waitUntil(ctx, 20*time.Second, func() bool { return strings.Contains(cc.out.String(), "registered "+cc.ip) }); err != nil {
			return nil, fmt.Errorf("%s did not register: %v\n%s", cc.name, err, cc.out.String())
		}
		initial = append(initial, cc.ip)
	}
	for w := range cfg.Writers {
		c, err := newClient(rotate(l.servers, w), fmt.Sprintf("chaos-writer-%d", w))
		if err != nil {
			return nil, err
		}
		l.writers = append(l.writers, c)
	}
	// Every node lists the initial instances before the faults begin.
	err := waitUntil(ctx, 30*time.Second, func() bool {
		r := l.Round(ctx)
		for _, n := range r.Nodes {
			if !n.OK {
				return false
			}
			for _, ip := range initial {
				if !n.IPs[ip] {
					return false
				}
			}
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("initial ephemeral instances not listed on every node: %w", err)
	}
	ok = true
	return l, nil
}

// waitUntil polls cond every 100 ms until it holds or timeout passes.
func waitUntil(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// sleep waits d or until stop closes; it reports whether to go on.
func sleep(stop <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-stop:
		return false
	case <-t.C:
		return true
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// Run starts the load loops: churn of the live clients, persistent writers,
// linearizable readers on every node and the monitor of the ephemeral
// lists.
func (l *Load) Run() {
	for i, e := range l.live {
		l.churnWG.Go(func() { l.churn(i, e) })
	}
	for w, c := range l.writers {
		l.persWG.Go(func() { l.write(w, c) })
	}
	for i, c := range l.readers {
		l.persWG.Go(func() { l.read(i, c) })
	}
	l.monWG.Go(func() {
		for sleep(l.stopMon, 500*time.Millisecond) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			l.Round(ctx)
			cancel()
		}
	})
}

func (l *Load) churn(i int, e *ephClient) {
	r := rand.New(rand.NewPCG(l.seed, uint64(1000+i)))
	for sleep(l.stopChurn, time.Duration(300+r.IntN(500))*time.Millisecond) {
		ip := e.pool[r.IntN(len(e.pool))]
		e.mu.Lock()
		want := !e.wish[ip]
		e.wish[ip] = want // the SDK keeps the wish whatever the call returns
		e.mu.Unlock()
		kind := OpERegister
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		start := l.clock.Now()
		var err error
		if want {
			err = e.c.Register(ctx, EphService, client.Instance{IP: ip, Port: 80})
		} else {
			kind = OpEDeregister
			err = e.c.Deregister(ctx, EphService, client.Instance{IP: ip, Port: 80})
		}
		cancel()
		if !l.hist.Add(Op{Kind: kind, Actor: 300 + i, ActorName: e.name, Node: e.c.Node(), Key: -1, EIP: ip, Start: start, End: l.clock.Now(), Err: errString(err)}) {
			return
		}
	}
}

// keys returns the persistent instances writer w writes.
func (l *Load) keys(w int) []int {
	var ks []int
	for j := range l.cfg.Owned {
		ks = append(ks, w*l.cfg.Owned+j)
	}
	for j := range l.cfg.Contended {
		ks = append(ks, l.cfg.Writers*l.cfg.Owned+j)
	}
	return ks
}

// PersKeys returns every persistent instance any writer (far clients
// included) writes.
func (l *Load) PersKeys() []int {
	var ks []int
	for k := range l.farKeyBase() + len(l.far) {
		ks = append(ks, k)
	}
	return ks
}

func (l *Load) write(w int, c *client.Client) {
	r := rand.New(rand.NewPCG(l.seed, uint64(2000+w)))
	keys := l.keys(w)
	name := fmt.Sprintf("writer-%d", w)
	first := rotate(l.servers, w)[0]
	pause := 50 * time.Millisecond
	for sleep(l.stopPers, pause+time.Duration(r.IntN(100))*time.Millisecond) {
		k := keys[r.IntN(len(keys))]
		in := client.Instance{IP: PersIP(k), Port: 80}
		kind := OpPRegister
		if r.IntN(2) == 0 {
			kind = OpPDeregister
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		start := l.clock.Now()
		var err error
		if kind == OpPRegister {
			_, err = c.RegisterPersistent(ctx, PersService, in)
		} else {
			_, err = c.DeregisterPersistent(ctx, PersService, in)
		}
		end := l.clock.Now()
		cancel()
		pause = 50 * time.Millisecond
		if err != nil {
			pause = 300 * time.Millisecond
		}
		if !l.hist.Add(Op{Kind: kind, Actor: w, ActorName: name, Node: first, Key: k, Start: start, End: end, Err: errString(err)}) {
			return
		}
	}
}

// ReadPersistent makes one linearizable read of the persistent service
// through c and returns the listed instances (a service not found is an
// empty list).
func ReadPersistent(ctx context.Context, c *client.Client) ([]int, error) {
	info, err := c.GetService(ctx, PersService, client.Filter{Linearizable: true})
	if errors.Is(err, client.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ks []int
	for _, in := range info.Instances {
		if k, ok := persKey(in.IP); ok && !in.Ephemeral {
			ks = append(ks, k)
		}
	}
	slices.Sort(ks)
	return ks, nil
}

func (l *Load) read(i int, c *client.Client) {
	r := rand.New(rand.NewPCG(l.seed, uint64(3000+i)))
	node := l.cl.Nodes[i].Name
	for sleep(l.stopPers, time.Duration(100+r.IntN(100))*time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		start := l.clock.Now()
		ks, err := ReadPersistent(ctx, c)
		end := l.clock.Now()
		cancel()
		if !l.hist.Add(Op{Kind: OpPRead, Actor: 100 + i, ActorName: "reader-" + node, Node: node, Key: -1, Listed: ks, Start: start, End: end, Err: errString(err)}) {
			return
		}
	}
}

// FinalReads reads the persistent service linearizably on every node,
// retrying each until it succeeds or timeout passes, and records the reads.
func (l *Load) FinalReads(ctx context.Context, timeout time.Duration) (map[string][]int, error) {
	out := map[string][]int{}
	var errs []error
	for i, c := range l.readers {
		node := l.cl.Nodes[i].Name
		err := waitUntil(ctx, timeout, func() bool {
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			start := l.clock.Now()
			ks, err := ReadPersistent(rctx, c)
			if err != nil {
				return false
			}
			l.hist.Add(Op{Kind: OpPRead, Actor: 200 + i, ActorName: "final-" + node, Node: node, Key: -1, Listed: ks, Start: start, End: l.clock.Now()})
			out[node] = ks
			return true
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("final linearizable read on %s: %w", node, err))
		}
	}
	return out, errors.Join(errs...)
}

// Round queries the ephemeral service on every node at once and records
// the answers.
func (l *Load) Round(ctx context.Context) Round {
	r := Round{Start: l.clock.Now(), Nodes: make([]NodeList, len(l.readers))}
	var wg sync.WaitGroup
	for i, c := range l.readers {
		wg.Go(func() {
			qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			info, err := c.GetService(qctx, EphService, client.Filter{})
			if errors.Is(err, client.ErrNotFound) {
				err = nil
			}
			nl := NodeList{OK: err == nil, Err: errString(err), IPs: map[string]bool{}}
			for _, in := range info.Instances {
				nl.IPs[in.IP] = true
			}
			r.Nodes[i] = nl
		})
	}
	wg.Wait()
	r.End = l.clock.Now()
	if r.AllOK() {
		for _, e := range l.dying {
			e.mu.Lock()
			if e.dead && !e.gone {
				listed := false
				for _, n := range r.Nodes {
					for _, ip := range e.pool {
						listed = listed || n.IPs[ip]
					}
				}
				e.gone = !listed
			}
			e.mu.Unlock()
		}
	}
	l.roundsMu.Lock()
	l.rounds = append(l.rounds, r)
	l.roundsMu.Unlock()
	return r
}

// Rounds returns every round so far.
func (l *Load) Rounds() []Round {
	l.roundsMu.Lock()
	defer l.roundsMu.Unlock()
	return slices.Clone(l.rounds)
}

// KillClient runs a client fault: the pick-th client of that kind dies.
// It returns the client's name.
func (l *Load) KillClient(f Fault) (string, error) {
	switch f.Kind {
	case FaultClientKill:
		var alive []*cliClient
		for _, c := range l.clis {
			if !c.dead {
				alive = append(alive, c)
			}
		}
		if len(alive) == 0 {
			return "", errors.New("no CLI client left")
		}
		c := alive[f.Pick%len(alive)]
		c.diedAt, c.dead = l.clock.Now(), true
		if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			return c.name, err
		}
		<-c.done
		return c.name, nil
	case FaultClientClose, FaultClientCut:
		var alive []*ephClient
		for _, e := range l.dying {
			if e.kind == string(f.Kind) && !e.dead {
				alive = append(alive, e)
			}
		}
		if len(alive) == 0 {
			return "", fmt.Errorf("no %s client left", f.Kind)
		}
		e := alive[f.Pick%len(alive)]
		if e.proxy != nil {
			// The cut must find a live session on a running node, or
			// the session would not end by probe: wait for one.
			n := l.cl.Node(e.node)
			_ = waitUntil(context.Background(), 60*time.Second, func() bool {
				return n.Running() && !n.Paused() && e.c.Connected()
			})
			e.proxy.Cut()
		}
		e.mu.Lock()
		e.diedAt, e.dead = l.clock.Now(), true
		e.mu.Unlock()
		return e.name, e.c.Close()
	}
	return "", fmt.Errorf("not a client fault: %s", f.Kind)
}

// Protected returns the nodes node faults must spare now: the node of a
// silent client whose traffic was cut, until its instances are gone from
// every node, so that its session ends by the server's probe and
// keepalive, not because its node died.
func (l *Load) Protected() []string {
	var out []string
	for _, e := range l.dying {
		e.mu.Lock()
		if e.node != "" && e.dead && !e.gone {
			out = append(out, e.node)
		}
		e.mu.Unlock()
	}
	return out
}

// FreezeChurn stops the live clients' changes; their wishes are final.
func (l *Load) FreezeChurn() {
	close(l.stopChurn)
	l.churnWG.Wait()
}

// StopPersistent stops the writers and readers.
func (l *Load) StopPersistent() {
	close(l.stopPers)
	l.persWG.Wait()
}

// StopMonitor stops the background rounds.
func (l *Load) StopMonitor() {
	select {
	case <-l.stopMon:
	default:
		close(l.stopMon)
	}
	l.monWG.Wait()
}

// LiveExpected returns, per live client, the instances it wishes
// registered (the SDK redoes them on every session until deregistered).
func (l *Load) LiveExpected() map[string][]string {
	out := map[string][]string{}
	for _, e := range l.live {
		out[e.name] = e.wished()
	}
	for _, f := range l.far {
		out[f.e.name] = f.e.wished()
	}
	return out
}

// LiveIPs returns every IP a live client ever used (wished or not).
func (l *Load) LiveIPs() map[string]bool {
	out := map[string]bool{}
	for _, e := range l.live {
		for _, ip := range e.pool {
			out[ip] = true
		}
	}
	for _, f := range l.far {
		for _, ip := range f.e.pool {
			out[ip] = true
		}
	}
	return out
}

// Deads returns the clients that died, with their base bounds.
func (l *Load) Deads(closeBound, silentBound time.Duration) []Dead {
	var out []Dead
	for _, e := range l.dying {
		e.mu.Lock()
		if e.dead {
			b := closeBound
			if e.kind == string(FaultClientCut) {
				b = silentBound
			}
			out = append(out, Dead{Name: e.name, Kind: e.kind, IPs: slices.Clone(e.pool), DiedAt: e.diedAt, Bound: b})
		}
		e.mu.Unlock()
	}
	for _, c := range l.clis {
		if c.dead {
			out = append(out, Dead{Name: c.name, Kind: string(FaultClientKill), IPs: []string{c.ip}, DiedAt: c.diedAt, Bound: closeBound})
		}
	}
	return out
}

// Watchers returns each node's subscriber's latest push.
func (l *Load) Watchers() map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, w := range l.watchers {
		last, _, _ := w.latest()
		out[w.node] = maps.Clone(last)
	}
	return out
}

// History returns the recorded operations.
func (l *Load) History() []Op { return l.hist.Ops() }

// Close closes every client and proxy and kills the CLI clients left.
func (l *Load) Close() {
	close(l.closed)
	var wg sync.WaitGroup
	closeC := func(c *client.Client) { wg.Go(func() { c.Close() }) }
	for _, c := range l.readers {
		closeC(c)
	}
	for _, w := range l.watchers {
		closeC(w.c)
	}
	for _, e := range l.live {
		closeC(e.c)
	}
	for _, e := range l.dying {
		if !e.dead {
			closeC(e.c)
		}
	}
	for _, c := range l.writers {
		closeC(c)
	}
	for _, f := range l.far {
		closeC(f.e.c)
	}
	wg.Wait()
	l.farWG.Wait()
	for _, e := range l.dying {
		if e.proxy != nil {
			e.proxy.Close()
		}
	}
	for _, c := range l.clis {
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// farClient is an SDK client attached to one node alone, made by a
// far-clients fault while that node was cut off from the majority; it
// stays on (a live client) after the heal.
type farClient struct {
	e   *ephClient
	key int // its persistent instance
}

// FarResult is what a far-clients fault saw while its side was cut off.
type FarResult struct {
	Client string
	// Node the client is attached to; Side every node of its minority.
	Node string
	Side []string
	IPs  []string
	// Registered is when its last register was acknowledged (-1: never);
	// Listed how long after that every node of its side listed all its
	// instances (-1: never before the heal).
	Registered, Listed time.Duration
	// Writes it made that ended before the heal, by outcome.
	Writes, WritesOK, WritesUnavailable, WritesDeadline, WritesOther int
	Violations                                                       []string
}

// Summary is the fault's note in the report.
func (r FarResult) Summary() string {
	listed := "never"
	if r.Listed >= 0 {
		listed = ms(r.Listed)
	}
	return fmt.Sprintf("%s: listed on %s after %s; p-writes before the heal %d: ok %d, unavailable %d, deadline %d, other %d",
		r.Client, strings.Join(r.Side, "+"), listed, r.Writes, r.WritesOK, r.WritesUnavailable, r.WritesDeadline, r.WritesOther)
}

// farRun is a far-clients fault's clients at work.
type farRun struct {
	l      *Load
	fc     *farClient
	side   []int
	res    FarResult
	stop   chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	writes []Op
	// first all listed, and the first sample after it that was not
	firstListed, flap time.Duration
	flapWhy           string
}

// farKeyBase is the first persistent instance of the far clients, after
// every writer's.
func (l *Load) farKeyBase() int { return l.cfg.Writers*l.cfg.Owned + l.cfg.Contended }

// StartFar attaches a new SDK client to node n alone (n and the other
// nodes of side are cut off from the majority), registers its ephemeral
// instances there and keeps writing its persistent instance through it
// until Stop. It returns once the registers were answered.
func (l *Load) StartFar(ctx context.Context, n *Node, side []int) *farRun {
	j := len(l.far)
	name := fmt.Sprintf("far-%d@%s", j, n.Name)
	fr := &farRun{l: l, side: side, stop: make(chan struct{}), firstListed: -1, flap: -1}
	fr.res = FarResult{Client: name, Node: n.Name, Registered: -1, Listed: -1}
	for _, i := range side {
		fr.res.Side = append(fr.res.Side, l.cl.Nodes[i].Name)
	}
	c, err := newClient([]string{n.GRPC}, "chaos-"+name)
	if err != nil {
		fr.res.Violations = append(fr.res.Violations, fmt.Sprintf("far-clients: %s: %v", name, err))
		return fr
	}
	e := &ephClient{name: name, kind: "far", c: c, wish: map[string]bool{}}
	for k := range 2 {
		e.pool = append(e.pool, fmt.Sprintf("10.205.%d.%d", j, k+1))
	}
	fr.fc = &farClient{e: e, key: l.farKeyBase() + j}
	l.far = append(l.far, fr.fc)
	fr.res.IPs = slices.Clone(e.pool)
	registered := true
	for _, ip := range e.pool {
		e.mu.Lock()
		e.wish[ip] = true // the SDK keeps the wish whatever the call returns
		e.mu.Unlock()
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		start := l.clock.Now()
		err := c.Register(rctx, EphService, client.Instance{IP: ip, Port: 80})
		cancel()
		l.hist.Add(Op{Kind: OpERegister, Actor: 400 + j, ActorName: name, Node: n.Name, Key: -1, EIP: ip, Start: start, End: l.clock.Now(), Err: errString(err)})
		if err != nil {
			registered = false
			fr.res.Violations = append(fr.res.Violations, fmt.Sprintf("far-clients: %s could not register %s on %s, which it reaches: %v", name, ip, n.Name, err))
		}
	}
	if registered {
		fr.res.Registered = l.clock.Now()
	}
	l.farWG.Go(fr.write) // waited by Close: a write in flight at the heal is not judged
	if registered {
		fr.wg.Go(fr.watch)
	}
	return fr
}

// FarWriteTimeout bounds a far client's persistent write: the server's
// own bound (persistent ApplyTimeout, 5 s: then it answers UNAVAILABLE)
// plus slack; a write without an answer by then is a violation.
const FarWriteTimeout = 10 * time.Second

// FarHoldMin is the shortest hold of a far-clients fault, so that at
// least one write gets the server's verdict before the heal.
const FarHoldMin = 7 * time.Second

// write keeps writing the far client's persistent instance, a register
// and a deregister in turn, each bounded by FarWriteTimeout.
func (fr *farRun) write() {
	l, fc := fr.l, fr.fc
	in := client.Instance{IP: PersIP(fc.key), Port: 80}
	for i := 0; ; i++ {
		select {
		case <-fr.stop:
			return
		default:
		}
		kind := OpPRegister
		if i%2 == 1 {
			kind = OpPDeregister
		}
		ctx, cancel := context.WithTimeout(context.Background(), FarWriteTimeout)
		start := l.clock.Now()
		var err error
		if kind == OpPRegister {
			_, err = fc.e.c.RegisterPersistent(ctx, PersService, in)
		} else {
			_, err = fc.e.c.DeregisterPersistent(ctx, PersService, in)
		}
		cancel()
		op := Op{Kind: kind, Actor: 500 + fc.key, ActorName: fc.e.name, Node: fr.res.Node, Key: fc.key, Start: start, End: l.clock.Now(), Err: errString(err)}
		if err != nil {
			switch {
			case errors.Is(err, client.ErrUnavailable):
				op.Err = "unavailable: " + op.Err
			case errors.Is(err, context.DeadlineExceeded):
				op.Err = "deadline: " + op.Err
			}
		}
		l.hist.Add(op)
		fr.mu.Lock()
		fr.writes = append(fr.writes, op)
		fr.mu.Unlock()
		if !sleep(fr.stop, 100*time.Millisecond) {
			return
		}
	}
}

// watch samples the side's nodes every 200 ms: once every one of them
// lists all the far client's instances, none may stop listing them
// before the heal.
func (fr *farRun) watch() {
	l := fr.l
	for {
		all, why := true, ""
		for _, i := range fr.side {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			info, err := l.readers[i].GetService(ctx, EphService, client.Filter{})
			cancel()
			name := l.cl.Nodes[i].Name
			if err != nil {
				all, why = false, fmt.Sprintf("%s did not answer: %v", name, err)
				continue
			}
			listed := map[string]bool{}
			for _, in := range info.Instances {
				listed[in.IP] = true
			}
			for _, ip := range fr.res.IPs {
				if !listed[ip] {
					all, why = false, fmt.Sprintf("%s does not list %s", name, ip)
				}
			}
		}
		now := l.clock.Now()
		fr.mu.Lock()
		switch {
		case all && fr.firstListed < 0:
			fr.firstListed = now
		case !all && fr.firstListed >= 0 && fr.flap < 0:
			fr.flap, fr.flapWhy = now, why
		}
		fr.mu.Unlock()
		if !sleep(fr.stop, 200*time.Millisecond) {
			return
		}
	}
}

// Stop ends the far client's writes and sampling at the heal (healAt)
// and judges them: its instances listed on every node of its side (and
// staying listed), and no persistent write that ended before the heal
// acknowledged (its side had no quorum), every one failed as unavailable
// or out of time, never with an unclear error.
func (fr *farRun) Stop(healAt time.Duration) FarResult {
	if fr.fc == nil {
		return fr.res
	}
	close(fr.stop)
	fr.wg.Wait()
	r := fr.res
	if fr.firstListed >= 0 && r.Registered >= 0 {
		r.Listed = max(0, fr.firstListed-r.Registered)
	}
	switch {
	case r.Registered >= 0 && fr.firstListed < 0:
		r.Violations = append(r.Violations, fmt.Sprintf("far-clients: %s's instances were never listed on every node of its side %v before the heal", r.Client, r.Side))
	case fr.flap >= 0 && fr.flap < healAt:
		r.Violations = append(r.Violations, fmt.Sprintf("far-clients: %s's instances stopped being listed at +%v on its side: %s", r.Client, ms(fr.flap), fr.flapWhy))
	}
	// The writer is still running (a write in flight at the heal is
	// waited for by Close, not here): read what it recorded under its lock.
	fr.mu.Lock()
	writes := slices.Clone(fr.writes)
	fr.mu.Unlock()
	for _, op := range writes {
		if op.End > healAt {
			continue // it may have reached the healed cluster
		}
		r.Writes++
		switch {
		case op.OK():
			r.WritesOK++
			r.Violations = append(r.Violations, fmt.Sprintf("far-clients: %s %s through %s, cut off from the majority, was acknowledged at [+%v, +%v]",
				op.Kind, PersIP(op.Key), r.Node, ms(op.Start), ms(op.End)))
		case strings.HasPrefix(op.Err, "unavailable: "):
			r.WritesUnavailable++
		case strings.HasPrefix(op.Err, "deadline: "):
			r.WritesDeadline++
			r.Violations = append(r.Violations, fmt.Sprintf("far-clients: %s %s through %s got no answer within %v (the server's bound is 5 s): %s", op.Kind, PersIP(op.Key), r.Node, FarWriteTimeout, op.Err))
		default:
			r.WritesOther++
			r.Violations = append(r.Violations, fmt.Sprintf("far-clients: %s %s through %s failed with an unclear error: %s", op.Kind, PersIP(op.Key), r.Node, op.Err))
		}
	}
	return r
}
