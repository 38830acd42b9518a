// Package daemon wires one Regent node together: storage, the ephemeral and
// persistent sides, the registry, the gRPC front and the operator HTTP
// endpoint. cmd/regent and the tests start nodes through it, so a test can
// run several complete nodes in one process.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	regentv1 "github.com/regent-registry/regent/proto/regent/v1"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/registry"
	"github.com/regent-registry/regent/persistent"
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
	// Join lists gossip seeds; BootstrapExpect the servers to wait for.
	Join            []string
	BootstrapExpect int
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
		Name:       host,
		DataDir:    "regent-data",
		GRPCAddr:   fmt.Sprintf("127.0.0.1:%d", DefaultGRPCPort),
		HTTPAddr:   fmt.Sprintf("127.0.0.1:%d", DefaultHTTPPort),
		PeerAddr:   fmt.Sprintf("127.0.0.1:%d", DefaultPeerPort),
		GossipAddr: fmt.Sprintf("127.0.0.1:%d", DefaultGossipPort),
		RaftAddr:   fmt.Sprintf("127.0.0.1:%d", DefaultRaftPort),
		RPC:        rpc.DefaultConfig(),
		Registry:   registry.DefaultConfig(),
	}
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
	if len(c.Join) > 0 || c.BootstrapExpect > 1 {
		return errors.New("daemon: clustering (--join, --bootstrap-expect > 1) is not available in this build yet; start a cluster of one")
	}
	c.RPC.NodeName = c.Name
	if err := c.RPC.Validate(); err != nil {
		return err
	}
	return c.Registry.Validate()
}

// Daemon is one running node.
type Daemon struct {
	cfg      Config
	logger   *slog.Logger
	db       *storage.DB
	local    *persistent.Local
	reg      *registry.Registry
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
	if d.db, err = storage.Open(filepath.Join(cfg.DataDir, "state.db"), storage.Options{NoSync: cfg.NoSync}); err != nil {
		return nil, fmt.Errorf("daemon: open state: %w", err)
	}
	d.local = persistent.NewLocal(d.db)
	if d.reg, err = registry.New(cfg.Registry, ephemeral.NewStore(nil), d.local); err != nil {
		return nil, err
	}
	d.local.SetObserver(d.reg.Changed)
	if cfg.LimitsFile != "" {
		if d.limits, err = rpc.NewLimitWatcher(cfg.LimitsFile, logger); err != nil {
			return nil, fmt.Errorf("daemon: limits file: %w", err)
		}
	}
	if d.grpcLis, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
		return nil, fmt.Errorf("daemon: grpc listener: %w", err)
	}
	if d.rpc, err = rpc.NewServer(cfg.RPC, rpc.Deps{
		Registry: d.reg,
		Limits:   d.limits,
		Members:  d.members,
		Logger:   logger,
		Metrics:  d.metrics,
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
	d.goFunc(func() { d.reg.Run(runCtx) })
	d.goFunc(func() { d.rpc.Sessions().Run(runCtx) })
	if d.limits != nil {
		d.goFunc(func() { d.limits.Run(runCtx, time.Second) })
	}
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
	d.ready.Store(true)
	logger.Info("regent started", "version", Version, "go", runtime.Version(), "grpc-addr", d.GRPCAddr(), "http-addr", d.HTTPAddr(), "data-dir", cfg.DataDir)
	return d, nil
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

func (d *Daemon) members() []*regentv1.Member {
	return []*regentv1.Member{{Name: d.cfg.Name, Addr: d.GRPCAddr(), Status: "alive", Raft: "none"}}
}

// Shutdown drains sessions (they are told to reconnect elsewhere), stops
// serving and closes the data. It is idempotent.
func (d *Daemon) Shutdown(ctx context.Context) {
	d.stopOnce.Do(func() {
		d.logger.Info("regent shutting down")
		d.rpc.Shutdown(ctx)
		if d.httpSrv != nil {
			_ = d.httpSrv.Shutdown(ctx)
		}
		d.cancel()
		d.wg.Wait()
		d.closeAll()
	})
}

func (d *Daemon) closeAll() {
	if d.local != nil {
		d.local.Close()
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
	d.metrics.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		gauge("regent_sessions", "Live client sessions on this node.", func() float64 { return float64(d.rpc.Sessions().Count()) }),
		gauge("regent_ephemeral_clients", "Clients holding ephemeral instances.", func() float64 { return float64(eph.Stats().Clients) }),
		gauge("regent_ephemeral_instances", "Ephemeral instances.", func() float64 { return float64(eph.Stats().Instances) }),
		gauge("regent_ephemeral_services", "Services with ephemeral instances.", func() float64 { return float64(eph.Stats().Services) }),
		gauge("regent_subscriptions", "Live (service, session) subscriptions.", func() float64 { return float64(d.reg.Subscriptions()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regent_pushes_total", Help: "Snapshots pushed to subscribers."}, func() float64 { return float64(d.reg.Pushes()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regent_sessions_closed_total", Help: "Sessions ended, for any reason."}, func() float64 { return float64(d.rpc.Sessions().Closed()) }),
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
