// Package daemon wires one Regent node together: storage, the ephemeral and
// persistent sides, the registry, the gRPC front and the operator HTTP
// endpoint. cmd/regent and the tests start nodes through it, so a test can
// run several complete nodes in one process.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	regentv1 "github.com/regent-registry/regent/proto/regent/v1"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/internal/registry"
	"github.com/regent-registry/regent/membership"
	"github.com/regent-registry/regent/persistent"
	"github.com/regent-registry/regent/persistent/health"
	"github.com/regent-registry/regent/rpc"
	"github.com/regent-registry/regent/storage"
)

// Version is set at build time with -ldflags "-X .../daemon.Version=...".
var Version = "0.1.0-dev"

// Default ports; --bind IP puts every listener on IP with these.
const (
	DefaultGRPCPort   = 7400
	DefaultHTTPPort   = 7401
	DefaultPeerPort   = 7402
	DefaultGossipPort = 7403
	DefaultRaftPort   = 7404
)

// Config of one node.
type Config struct {
	// Name of the node, unique in the cluster; default the host name.
	Name string
	// DataDir holds the bbolt state; created if missing.
	DataDir string
	// GRPCAddr is the client API listener (host:port; port 0 picks one).
	GRPCAddr string
	// HTTPAddr is the operator endpoint: /metrics, /healthz, /readyz; "" = off.
	HTTPAddr string
	// PeerAddr, GossipAddr and RaftAddr are the cluster listeners.
	PeerAddr, GossipAddr, RaftAddr string
	// Join lists gossip seeds (host:port, or host with the default gossip
	// port). The node retries them until one answers, so nodes may start
	// in any order.
	Join []string
	// BootstrapExpect is the number of servers to wait for before one of
	// them bootstraps Raft with all of them. 0 means 1 for a node without
	// Join (a lone node bootstraps itself) and "wait to be added by the
	// leader" for a node with Join.
	BootstrapExpect int
	// GossipKey turns on gossip encryption (16, 24 or 32 bytes; every node
	// needs the same key).
	GossipKey []byte
	// GossipProfile is "lan" (memberlist's LAN timings) or "local" (fast
	// failure detection, for one machine and tests).
	GossipProfile string
	// Distro tunes ephemeral replication; Node is set from Name.
	Distro ephemeral.Config
	// Raft tunes the persistent side's consensus (timings, snapshots,
	// dead-server clean-up); identity, addresses and directories are set
	// from the fields above.
	Raft persistent.RaftConfig
	// Health tunes the checks of persistent instances (rescan interval,
	// probe timeout and concurrency); what it checks and who checks it is
	// set by the node.
	Health health.Config
	// HealthNetworks, when not empty, fences the health checks: only
	// persistent instances with an address in one of these networks are
	// probed; the others keep the health they were registered with.
	HealthNetworks []netip.Prefix
	// LimitsFile holds connection limit rules, reloaded on change; "" = unlimited.
	LimitsFile string
	// Pprof serves /debug/pprof on the HTTP endpoint.
	Pprof bool
	// NoSync skips fsync of bbolt commits: only for throwaway --dev nodes.
	NoSync bool
	// RPC tunes the gRPC front; Registry the push merge window.
	RPC      rpc.Config
	Registry registry.Config
	// Logger receives the node's logs.
	Logger *slog.Logger
}

// DefaultConfig returns a single node on localhost with default ports.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	if host == "" {
		host = "regent"
	}
	return Config{
		Name:          host,
		DataDir:       "regent-data",
		GRPCAddr:      fmt.Sprintf("127.0.0.1:%d", DefaultGRPCPort),
		HTTPAddr:      fmt.Sprintf("127.0.0.1:%d", DefaultHTTPPort),
		PeerAddr:      fmt.Sprintf("127.0.0.1:%d", DefaultPeerPort),
		GossipAddr:    fmt.Sprintf("127.0.0.1:%d", DefaultGossipPort),
		RaftAddr:      fmt.Sprintf("127.0.0.1:%d", DefaultRaftPort),
		RPC:           rpc.DefaultConfig(),
		Registry:      registry.DefaultConfig(),
		GossipProfile: "lan",
		Distro:        ephemeral.DefaultConfig(),
		Raft:          persistent.DefaultRaftConfig(),
		Health:        health.DefaultConfig(),
	}
}

// DefaultLocalConfig returns a throwaway node for tests and benchmarks:
// every listener on 127.0.0.1 with a port the system picks, no HTTP
// endpoint, no fsync, and fast gossip and Distro timings.
func DefaultLocalConfig(name, dataDir string) Config {
	c := DefaultConfig()
	c.Name, c.DataDir = name, dataDir
	c.GRPCAddr, c.HTTPAddr = "127.0.0.1:0", ""
	c.PeerAddr, c.GossipAddr, c.RaftAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	c.NoSync = true
	c.GossipProfile = "local"
	c.Distro = ephemeral.DefaultLocalConfig()
	c.Raft = persistent.DefaultLocalRaftConfig()
	c.Health.RescanInterval = 100 * time.Millisecond
	// Tests register made-up addresses; only loopback is ever probed.
	c.HealthNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	return c
}

// Bind puts every listener on ip with the default ports.
func (c *Config) Bind(ip string) {
	hp := func(p int) string { return net.JoinHostPort(ip, fmt.Sprint(p)) }
	c.GRPCAddr, c.HTTPAddr, c.PeerAddr = hp(DefaultGRPCPort), hp(DefaultHTTPPort), hp(DefaultPeerPort)
	c.GossipAddr, c.RaftAddr = hp(DefaultGossipPort), hp(DefaultRaftPort)
}

// Validate checks the settings.
func (c *Config) Validate() error {
	if c.Name == "" {
		return errors.New("daemon: node name is empty")
	}
	if c.DataDir == "" {
		return errors.New("daemon: data dir is empty")
	}
	if _, _, err := net.SplitHostPort(c.GRPCAddr); err != nil {
		return fmt.Errorf("daemon: grpc address %q: %w", c.GRPCAddr, err)
	}
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return fmt.Errorf("daemon: http address %q: %w", c.HTTPAddr, err)
		}
	}
	if c.BootstrapExpect < 0 {
		return errors.New("daemon: bootstrap-expect must not be negative")
	}
	for _, a := range []struct{ name, addr string }{{"peer", c.PeerAddr}, {"gossip", c.GossipAddr}, {"raft", c.RaftAddr}} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return fmt.Errorf("daemon: %s address %q: %w", a.name, a.addr, err)
		}
	}
	for _, j := range c.Join {
		if j == "" {
			return errors.New("daemon: empty --join address")
		}
	}
	c.RPC.NodeName = c.Name
	if err := c.RPC.Validate(); err != nil {
		return err
	}
	c.Distro.Node = c.Name
	if err := c.Distro.Validate(); err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	rc := c.raftConfig()
	rc.Transport = raftValidateOnly{} // addresses are checked above
	if err := rc.Validate(); err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	return c.Registry.Validate()
}

// raftConfig returns the Raft store's settings for this node (without its
// forwarder and membership, which need the running node).
func (c *Config) raftConfig() persistent.RaftConfig {
	rc := c.Raft
	rc.NodeID, rc.Dir, rc.BindAddr, rc.NoSync = c.Name, filepath.Join(c.DataDir, "raft"), c.RaftAddr, c.NoSync
	rc.BootstrapExpect = c.BootstrapExpect
	if rc.BootstrapExpect == 0 && len(c.Join) == 0 {
		rc.BootstrapExpect = 1
	}
	rc.Logger = c.Logger
	return rc
}

// raftValidateOnly stands for the transport in Validate, which must not
// open a listener.
type raftValidateOnly struct{ raft.Transport }

// Daemon is one running node.
type Daemon struct {
	cfg      Config
	logger   *slog.Logger
	db       *storage.DB
	raft     *persistent.Store
	health   *health.Checker
	servers  raftMembers
	peerBook peerBook
	reg      *registry.Registry
	distro   *ephemeral.Distro
	gossip   *membership.Cluster
	peerTr   *rpc.PeerTransport
	peerSrv  *rpc.PeerServer
	peerLis  net.Listener
	rpc      *rpc.Server
	limits   *rpc.LimitWatcher
	grpcLis  net.Listener
	httpLis  net.Listener
	httpSrv  *http.Server
	metrics  *prometheus.Registry
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
	ready    atomic.Bool
}

// Start opens the node's data and starts serving. The node runs until
// Shutdown; ctx only bounds start-up.
func Start(ctx context.Context, cfg Config) (_ *Daemon, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("node", cfg.Name)
	d := &Daemon{cfg: cfg, logger: logger, metrics: prometheus.NewRegistry()}
	defer func() {
		if err != nil {
			d.closeAll()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("daemon: data dir: %w", err)
	}
	if d.db, err = persistent.OpenStateWith(filepath.Join(cfg.DataDir, "state.db"), logger, cfg.Raft.StateCommitDelay); err != nil {
		return nil, fmt.Errorf("daemon: open state: %w", err)
	}
	if d.peerTr, err = rpc.NewPeerTransport(rpc.PeerTransportConfig{Resolve: d.peerAddr, Metrics: d.metrics}); err != nil {
		return nil, err
	}
	// The persistent side: Raft over the bbolt state. It serves reads
	// from disk at once; writes wait for a leader.
	rc := cfg.raftConfig()
	rc.Logger = logger
	rc.Forwarder = d.peerTr
	rc.Membership = &d.servers
	if d.raft, err = persistent.OpenRaft(rc, d.db); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	store := ephemeral.NewStore(nil)
	// The registry makes itself the Raft store's observer (it caches
	// persistent states until the FSM reports them changed).
	if d.reg, err = registry.New(cfg.Registry, store, d.raft); err != nil {
		return nil, err
	}
	hc := cfg.Health
	hc.Self, hc.Members, hc.Source, hc.Writer = cfg.Name, d.servers.aliveNames, healthSource{d.raft}, d.raft
	hc.Logger = logger
	if nets := cfg.HealthNetworks; len(nets) > 0 {
		hc.Probeable = func(ip string) bool {
			a, err := netip.ParseAddr(ip)
			return err == nil && slices.ContainsFunc(nets, func(p netip.Prefix) bool { return p.Contains(a.Unmap()) })
		}
	}
	if d.health, err = health.New(hc); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	if cfg.LimitsFile != "" {
		if d.limits, err = rpc.NewLimitWatcher(cfg.LimitsFile, logger); err != nil {
			return nil, fmt.Errorf("daemon: limits file: %w", err)
		}
	}
	if d.grpcLis, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
		return nil, fmt.Errorf("daemon: grpc listener: %w", err)
	}
	if d.peerLis, err = net.Listen("tcp", cfg.PeerAddr); err != nil {
		return nil, fmt.Errorf("daemon: peer listener: %w", err)
	}

	// Cluster: gossip membership, the peer transport and Distro.
	mcfg := membership.DefaultConfig()
	mcfg.Name = cfg.Name
	mcfg.BindAddr = cfg.GossipAddr
	mcfg.SecretKey = cfg.GossipKey
	mcfg.Profile = cfg.GossipProfile
	mcfg.Logger = logger
	mcfg.Meta = membership.Meta{GRPCAddr: d.grpcLis.Addr().String(), PeerAddr: d.peerLis.Addr().String(), RaftAddr: d.raft.Addr(),
		Version: Version, Role: "server", HasRaftState: d.raft.HasState()}
	if d.gossip, err = membership.New(mcfg); err != nil {
		return nil, fmt.Errorf("daemon: gossip: %w", err)
	}
	d.servers.set(d.gossip)
	dcfg := cfg.Distro
	dcfg.Node = cfg.Name
	dcfg.Logger = logger
	dcfg.OwnershipLost = func(clientID string) {
		if s := d.rpc; s != nil {
			s.Sessions().Moved(clientID)
		}
	}
	if d.distro, err = ephemeral.New(dcfg, store, d.peerTr); err != nil {
		return nil, err
	}
	pcfg := rpc.DefaultPeerServerConfig()
	pcfg.Logger = logger
	pcfg.Raft = d.raft
	if d.peerSrv, err = rpc.NewPeerServer(d.distro, pcfg); err != nil {
		return nil, err
	}
	d.reg.SetGate(d.distro.LoadedCh())

	if d.rpc, err = rpc.NewServer(cfg.RPC, rpc.Deps{
		Registry:  d.reg,
		Ephemeral: d.distro,
		Limits:    d.limits,
		Members:   d.members,
		Leader:    d.leaderAddr,
		Logger:    logger,
		Metrics:   d.metrics,
	}); err != nil {
		return nil, err
	}
	d.registerMetrics()
	if cfg.HTTPAddr != "" {
		if d.httpLis, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return nil, fmt.Errorf("daemon: http listener: %w", err)
		}
		d.httpSrv = &http.Server{Handler: d.httpHandler(), ReadHeaderTimeout: 10 * time.Second}
	}

	runCtx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.distro.Start(runCtx)
	d.peerBook.path = filepath.Join(cfg.DataDir, "peers.json")
	d.gossip.Subscribe(memberFollower{d.distro, d.raft, d})
	d.goFunc(func() { d.reg.Run(runCtx) })
	d.goFunc(func() { d.health.Run(runCtx) })
	d.goFunc(func() { d.rpc.Sessions().Run(runCtx) })
	if d.limits != nil {
		d.goFunc(func() { d.limits.Run(runCtx, time.Second) })
	}
	d.goFunc(func() {
		if err := d.peerSrv.Serve(d.peerLis); err != nil {
			logger.Error("peer server stopped", "err", err)
		}
	})
	d.goFunc(func() {
		if err := d.rpc.GRPC().Serve(d.grpcLis); err != nil {
			logger.Error("grpc server stopped", "err", err)
		}
	})
	if d.httpSrv != nil {
		d.goFunc(func() {
			if err := d.httpSrv.Serve(d.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.Error("http server stopped", "err", err)
			}
		})
	}
	d.rpc.SetServing(true)
	d.goFunc(func() { d.joinAndLoad(runCtx) })
	logger.Info("regent started", "version", Version, "go", runtime.Version(), "grpc-addr", d.GRPCAddr(), "http-addr", d.HTTPAddr(),
		"peer-addr", d.peerLis.Addr().String(), "gossip-addr", d.gossip.Local().Addr, "join", cfg.Join, "data-dir", cfg.DataDir)
	return d, nil
}

// joinAndLoad joins the cluster through the seeds and loads the peers'
// ephemeral state; the node is ready when that is done. A node whose
// seeds do not answer at first is a cluster of one for now (ready at once)
// and keeps retrying in the background; verify rounds bring it the others'
// state once it joins.
func (d *Daemon) joinAndLoad(ctx context.Context) {
	if seeds := d.seeds(); len(seeds) > 0 {
		if n, err := d.gossip.Join(seeds); err != nil {
			d.logger.Warn("no gossip seed answered yet; serving alone and retrying", "join", seeds, "err", err)
			d.goFunc(func() {
				if err := d.gossip.RetryJoin(ctx, seeds); err == nil {
					d.logger.Info("joined the cluster", "join", seeds)
				}
			})
		} else {
			d.logger.Info("joined the cluster", "seeds-contacted", n)
		}
	}
	// Membership events reach Distro asynchronously; give it the members
	// known now so the load sees every peer.
	for _, m := range d.gossip.Peers() {
		d.distro.PeerUp(m.Name)
	}
	if err := d.distro.Load(ctx); err != nil {
		return // shutting down
	}
	d.ready.Store(true)
	d.logger.Info("node is ready")
}

// seeds returns the gossip addresses to join: --join, then the peers this
// node knew when it last ran (a node the others saw leave is never
// contacted by them again, so a restarted node must call them; serf keeps
// the same kind of snapshot), without this node's own address (joining
// oneself "succeeds" and would leave the node alone).
func (d *Daemon) seeds() []string {
	self := d.gossip.Local().Addr
	var out []string
	for _, a := range append(slices.Clone(d.cfg.Join), d.peerBook.load(d.logger)...) {
		if a != self && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// memberFollower feeds gossip's verdicts to Distro, wakes Raft's
// reconciler and keeps the peer book.
type memberFollower struct {
	distro *ephemeral.Distro
	raft   *persistent.Store
	d      *Daemon
}

func (f memberFollower) MemberChanged(ev membership.Event) {
	f.raft.Kick()
	if ev.Type == membership.EventJoin || ev.Type == membership.EventUpdate {
		f.d.peerBook.save(f.d.gossip, f.d.logger)
	}
	switch ev.Type {
	case membership.EventJoin, membership.EventUpdate:
		f.distro.PeerUp(ev.Member.Name)
	case membership.EventDead, membership.EventLeft:
		f.distro.PeerDown(ev.Member.Name)
	}
}

// peerAddr resolves a node name to its peer address from gossip metadata.
func (d *Daemon) peerAddr(node string) (string, bool) {
	for _, m := range d.gossip.Members() {
		if m.Name == node && m.Meta.PeerAddr != "" {
			return m.Meta.PeerAddr, true
		}
	}
	return "", false
}

func (d *Daemon) goFunc(f func()) {
	d.wg.Add(1)
	go func() { defer d.wg.Done(); f() }()
}

// GRPCAddr returns the client API address actually listened on.
func (d *Daemon) GRPCAddr() string { return d.grpcLis.Addr().String() }

// HTTPAddr returns the operator endpoint address, or "".
func (d *Daemon) HTTPAddr() string {
	if d.httpLis == nil {
		return ""
	}
	return d.httpLis.Addr().String()
}

// Name returns the node's name.
func (d *Daemon) Name() string { return d.cfg.Name }

// Registry returns the node's registry (for tests and benchmarks).
func (d *Daemon) Registry() *registry.Registry { return d.reg }

// Sessions returns the node's session manager.
func (d *Daemon) Sessions() *rpc.SessionManager { return d.rpc.Sessions() }

// StreamWrites counts the persistent writes this node served on Write
// streams.
func (d *Daemon) StreamWrites() uint64 { return d.rpc.StreamWrites() }

// Distro returns the node's ephemeral replication engine.
func (d *Daemon) Distro() *ephemeral.Distro { return d.distro }

// Raft returns the node's persistent store (Raft over bbolt).
func (d *Daemon) Raft() *persistent.Store { return d.raft }

// Health returns the node's checker of persistent instances.
func (d *Daemon) Health() *health.Checker { return d.health }

// Gossip returns the node's membership.
func (d *Daemon) Gossip() *membership.Cluster { return d.gossip }

// GossipAddr returns the gossip address actually listened on.
func (d *Daemon) GossipAddr() string { return d.gossip.Local().Addr }

// Ready reports whether the node has loaded the cluster's state.
func (d *Daemon) Ready() bool { return d.ready.Load() }

func (d *Daemon) members() []*regentv1.Member {
	ms := d.gossip.Members()
	out := make([]*regentv1.Member, 0, len(ms))
	for _, m := range ms {
		addr := m.Meta.GRPCAddr
		if addr == "" {
			addr = m.Addr
		}
		out = append(out, &regentv1.Member{Name: m.Name, Addr: addr, Status: m.Status.String(), Raft: d.raft.RoleOf(m.Name)})
	}
	return out
}

// leaderAddr is the client address of the Raft leader (this node's own
// when it leads), when gossip knows it.
func (d *Daemon) leaderAddr() (string, bool) {
	id := d.raft.Leader()
	if id == "" {
		return "", false
	}
	if id == d.cfg.Name {
		return d.GRPCAddr(), true
	}
	m, ok := d.gossip.Member(id)
	if !ok || m.Meta.GRPCAddr == "" {
		return "", false
	}
	return m.Meta.GRPCAddr, true
}

// Shutdown drains sessions (they are told to reconnect elsewhere), stops
// serving and closes the data. It is idempotent.
func (d *Daemon) Shutdown(ctx context.Context) {
	d.stopOnce.Do(func() {
		d.logger.Info("regent shutting down")
		d.ready.Store(false)
		// Sessions are told to reconnect elsewhere; their clients stay
		// (the node they reach takes them over, fetching their state from
		// here), and peers remove the ones that never come back once this
		// node has left.
		d.distro.Drain()
		if ctx.Err() == nil {
			// A leader hands over first, so writes do not wait out an
			// election; an expired ctx (a simulated crash) skips it.
			d.raft.Leave()
		}
		d.rpc.Shutdown(ctx)
		if err := d.gossip.Leave(2 * time.Second); err != nil {
			d.logger.Warn("leaving the cluster", "err", err)
		}
		d.peerSrv.Shutdown(ctx)
		if d.httpSrv != nil {
			_ = d.httpSrv.Shutdown(ctx)
		}
		d.cancel()
		d.distro.Stop()
		d.wg.Wait()
		d.closeAll()
	})
}

func (d *Daemon) closeAll() {
	if d.gossip != nil {
		_ = d.gossip.Shutdown()
	}
	if d.peerTr != nil {
		d.peerTr.Close()
	}
	if d.peerLis != nil && d.peerSrv == nil {
		d.peerLis.Close()
	}
	if d.raft != nil {
		if err := d.raft.Close(); err != nil {
			d.logger.Warn("stopping raft", "err", err)
		}
	}
	if d.grpcLis != nil && d.rpc == nil {
		d.grpcLis.Close()
	}
	if d.httpLis != nil && d.httpSrv == nil {
		d.httpLis.Close()
	}
	if d.db != nil {
		if err := d.db.Close(); err != nil {
			d.logger.Error("closing state", "err", err)
		}
	}
}

func (d *Daemon) registerMetrics() {
	eph := d.reg.Ephemeral()
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	counter := func(name, help string, f func(ephemeral.DistroStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(f(d.distro.Stats())) })
	}
	d.metrics.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		gauge("regent_sessions", "Live client sessions on this node.", func() float64 { return float64(d.rpc.Sessions().Count()) }),
		gauge("regent_ephemeral_clients", "Clients holding ephemeral instances.", func() float64 { return float64(eph.Stats().Clients) }),
		gauge("regent_ephemeral_instances", "Ephemeral instances.", func() float64 { return float64(eph.Stats().Instances) }),
		gauge("regent_ephemeral_services", "Services with ephemeral instances.", func() float64 { return float64(eph.Stats().Services) }),
		gauge("regent_subscriptions", "Live (service, session) subscriptions.", func() float64 { return float64(d.reg.Subscriptions()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regent_raft_forwarded_writes_total", Help: "Persistent writes this node sent to the Raft leader for its clients."}, func() float64 { return float64(d.raft.Forwarded()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regent_raft_leader_log_commits_total", Help: "Raft log commits that wrote this node's appends as leader, each holding all that queued meanwhile."}, func() float64 { c, _ := d.raft.LeaderLogWrites(); return float64(c) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regent_raft_leader_log_entries_total", Help: "Entries those leader log commits held."}, func() float64 { _, e := d.raft.LeaderLogWrites(); return float64(e) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regent_state_deferred_applies_total", Help: "FSM applies that joined the state's pending bbolt transaction (--state-commit-delay)."}, func() float64 { w, _ := d.db.DeferredStats(); return float64(w) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regent_state_commits_total", Help: "Commits of the state's pending transaction, each holding the applies since the one before."}, func() float64 { _, c := d.db.DeferredStats(); return float64(c) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regent_stream_writes_total", Help: "Persistent writes served on Write streams."}, func() float64 { return float64(d.rpc.StreamWrites()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regent_pushes_total", Help: "Snapshots pushed to subscribers."}, func() float64 { return float64(d.reg.Pushes()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regent_registry_persistent_cache_hits_total", Help: "Lookups of a service's persistent state answered from the registry's cache."}, func() float64 { return float64(d.reg.PersistentCache().Hits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regent_registry_persistent_cache_misses_total", Help: "Lookups of a service's persistent state that read the state database."}, func() float64 { return float64(d.reg.PersistentCache().Misses) }),
		gauge("regent_registry_persistent_cache_entries", "Services whose persistent state the registry's cache holds.", func() float64 { return float64(d.reg.PersistentCache().Entries) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regent_sessions_closed_total", Help: "Sessions ended, for any reason."}, func() float64 { return float64(d.rpc.Sessions().Closed()) }),
		gauge("regent_distro_native_clients", "Clients whose session this node holds (it owns them).", func() float64 { return float64(d.distro.Stats().Native) }),
		gauge("regent_distro_tombstones", "Deleted clients remembered to refuse late changes.", func() float64 { return float64(d.distro.Stats().Tombstones) }),
		gauge("regent_distro_loaded", "1 once the node has loaded its peers' state.", func() float64 {
			if d.distro.Loaded() {
				return 1
			}
			return 0
		}),
		gauge("regent_distro_peers_up", "Peers gossip reports alive.", func() float64 {
			n := 0
			for _, p := range d.distro.Peers() {
				if p.Up {
					n++
				}
			}
			return float64(n)
		}),
		gauge("regent_distro_pending", "Client changes queued for peers, summed over peers.", func() float64 {
			n := 0
			for _, p := range d.distro.Peers() {
				n += p.Pending
			}
			return float64(n)
		}),
		counter("regent_distro_sync_messages_total", "Batched sync messages sent to peers.", func(s ephemeral.DistroStats) uint64 { return s.SyncMessages }),
		counter("regent_distro_sync_deltas_total", "Client changes sent to peers as deltas rather than whole states.", func(s ephemeral.DistroStats) uint64 { return s.SyncDeltas }),
		counter("regent_distro_deltas_refused_total", "Deltas a peer could not apply (its copy was not at their base); their whole states followed.", func(s ephemeral.DistroStats) uint64 { return s.DeltasRefused }),
		counter("regent_distro_sync_failures_total", "Sync messages that failed (retried with backoff).", func(s ephemeral.DistroStats) uint64 { return s.SyncFailures }),
		counter("regent_distro_verify_messages_total", "Verify digests sent to peers.", func(s ephemeral.DistroStats) uint64 { return s.VerifyMessages }),
		counter("regent_distro_verify_lists_total", "Verify lists sent after a digest mismatch.", func(s ephemeral.DistroStats) uint64 { return s.VerifyListMsgs }),
		counter("regent_distro_repairs_total", "Clients re-sent because a peer lacked them.", func(s ephemeral.DistroStats) uint64 { return s.Repairs }),
		counter("regent_distro_applied_total", "Peer changes applied here.", func(s ephemeral.DistroStats) uint64 { return s.Applied }),
		counter("regent_distro_expired_total", "Replicated clients removed because their owner stopped confirming them.", func(s ephemeral.DistroStats) uint64 { return s.Expired }),
		counter("regent_distro_purged_total", "Replicated clients removed after their owner died or left.", func(s ephemeral.DistroStats) uint64 { return s.Purged }),
	)
}

func (d *Daemon) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !d.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	if d.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// raftMembers shows the Raft store the servers gossip knows of. The gossip
// cluster is set once it is created, after the store (whose address its
// metadata carries); until then it reports none.
type raftMembers struct {
	gossip atomic.Pointer[membership.Cluster]
	once   sync.Once
}

func (r *raftMembers) set(c *membership.Cluster) { r.gossip.Store(c) }

// Servers implements persistent.Membership.
func (r *raftMembers) Servers() []persistent.Server {
	g := r.gossip.Load()
	if g == nil {
		return nil
	}
	ms := g.Members()
	out := make([]persistent.Server, 0, len(ms))
	for _, m := range ms {
		if m.Meta.Role != "server" {
			continue
		}
		st := persistent.ServerDead
		switch m.Status {
		case membership.StatusAlive:
			st = persistent.ServerAlive
		case membership.StatusSuspect:
			st = persistent.ServerSuspect
		case membership.StatusLeft:
			st = persistent.ServerLeft
		}
		out = append(out, persistent.Server{ID: m.Name, RaftAddr: m.Meta.RaftAddr, Status: st, HasState: m.Meta.HasRaftState})
	}
	return out
}

// SetHasState implements persistent.Membership: it gossips the flag.
func (r *raftMembers) SetHasState() {
	g := r.gossip.Load()
	if g == nil {
		return
	}
	r.once.Do(func() {
		meta := g.Local().Meta
		meta.HasRaftState = true
		// The update applies locally at once; the broadcast is best
		// effort (a lone node has nobody to tell).
		_ = g.UpdateMeta(meta, time.Second)
	})
}

// aliveNames lists the servers gossip reports alive: the nodes among which
// the health checks of persistent instances are shared.
func (r *raftMembers) aliveNames() []string {
	var out []string
	for _, s := range r.Servers() {
		if s.Status == persistent.ServerAlive {
			out = append(out, s.ID)
		}
	}
	return out
}

// healthSource shows the health checker the persistent state with each
// service's check settings.
type healthSource struct{ st *persistent.Store }

func (h healthSource) Services() (map[naming.ServiceKey]uint64, error) {
	return h.st.ServiceRevisions()
}

func (h healthSource) Service(key naming.ServiceKey) ([]naming.Instance, naming.HealthCheck, error) {
	ps, err := h.st.Service(key)
	if err != nil {
		return nil, naming.HealthCheck{}, err
	}
	check := naming.DefaultHealthCheck()
	if ps.HasMeta {
		check = ps.Meta.HealthCheck.WithDefaults()
	}
	return ps.Instances, check, nil
}

// peerBook remembers, in the data dir, the gossip addresses of the peers
// seen alive, so that a restarted node can rejoin them.
type peerBook struct {
	path string
	mu   sync.Mutex
}

func (b *peerBook) save(g *membership.Cluster, logger *slog.Logger) {
	self := g.Local().Name
	var addrs []string
	for _, m := range g.Members() {
		if m.Name != self && m.Status == membership.StatusAlive {
			addrs = append(addrs, m.Addr)
		}
	}
	if len(addrs) == 0 {
		return // keep the last list rather than forget everyone
	}
	slices.Sort(addrs)
	data, _ := json.Marshal(addrs)
	b.mu.Lock()
	defer b.mu.Unlock()
	tmp := b.path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err == nil {
		err = os.Rename(tmp, b.path)
		if err != nil {
			logger.Warn("saving the peer book", "err", err)
		}
	}
}

func (b *peerBook) load(logger *slog.Logger) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	data, err := os.ReadFile(b.path)
	if err != nil {
		return nil
	}
	var addrs []string
	if err := json.Unmarshal(data, &addrs); err != nil {
		logger.Warn("ignoring an unreadable peer book", "path", b.path, "err", err)
		return nil
	}
	return addrs
}
