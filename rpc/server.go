package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	regentv1 "github.com/regent-registry/regent/proto/regent/v1"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/internal/registry"
	"github.com/regent-registry/regent/internal/wire"
)

// Config of the gRPC front.
type Config struct {
	// NodeName is this node's name, told to clients in HelloReply.
	NodeName string
	// Session tunes session liveness.
	Session SessionConfig
	// MaxRecvBytes caps one inbound message.
	MaxRecvBytes int
	// KeepaliveTime is how often the server pings an idle transport, and
	// KeepaliveTimeout how long it waits for the answer: this finds dead TCP
	// peers that never close.
	KeepaliveTime, KeepaliveTimeout time.Duration
	// MinClientPing is the most frequent client keepalive ping allowed.
	MinClientPing time.Duration
	// WriteInFlight bounds the writes one Write stream has in flight; a
	// client with more waits until one is answered.
	WriteInFlight int
}

// DefaultConfig returns production settings.
func DefaultConfig() Config {
	return Config{
		NodeName: "regent",
		Session:  DefaultSessionConfig(),
		// 16 MiB: a batch of 1000 instances with full metadata (8 KiB each) fits.
		MaxRecvBytes: 16 << 20,
		// A dead peer is found within 30 s + 10 s, well under the session
		// probe path's worst case for a peer that stops reading.
		KeepaliveTime:    30 * time.Second,
		KeepaliveTimeout: 10 * time.Second,
		// Clients (our SDK pings every 20 s) may ping this often; Nacos'
		// 5-minute permit made grpc-go clients get GOAWAY too_many_pings.
		MinClientPing: 5 * time.Second,
		// Each write in flight holds a goroutine until Raft commits it.
		WriteInFlight: 256,
	}
}

// Validate checks the settings.
func (c Config) Validate() error {
	if c.NodeName == "" {
		return fmt.Errorf("rpc: node name is empty")
	}
	if c.MaxRecvBytes < 1<<20 {
		return fmt.Errorf("rpc: max message size must be at least 1 MiB")
	}
	if c.KeepaliveTime <= 0 || c.KeepaliveTimeout <= 0 || c.MinClientPing <= 0 {
		return fmt.Errorf("rpc: keepalive settings must be positive")
	}
	if c.WriteInFlight < 1 {
		return fmt.Errorf("rpc: writes in flight per stream must be at least 1")
	}
	return c.Session.Validate()
}

// MembersFunc lists the cluster's members as this node sees them.
type MembersFunc func() []*regentv1.Member

// EphemeralWriter takes the ephemeral writes of the sessions this node
// holds; *ephemeral.Distro implements it.
type EphemeralWriter interface {
	// Connect: a session of the client opened here (prevNode: the node of
	// its previous session, or "").
	Connect(ctx context.Context, clientID, prevNode string)
	Register(clientID string, key naming.ServiceKey, instances []naming.Instance) bool
	Deregister(clientID string, key naming.ServiceKey, ids []naming.InstanceID) bool
	// Replace sets the client's whole instance set.
	Replace(clientID string, services map[naming.ServiceKey][]naming.Instance) bool
	// Disconnect: the client's session ended for good.
	Disconnect(clientID string)
}

var _ EphemeralWriter = (*ephemeral.Distro)(nil)

// Deps are the cores the server fronts.
type Deps struct {
	Registry *registry.Registry
	// Ephemeral takes the sessions' writes (nil: a standalone engine over
	// the registry's ephemeral store, for a node without peers).
	Ephemeral EphemeralWriter
	Limits    *LimitWatcher // nil: unlimited
	Members   MembersFunc
	// Leader names the client address of the Raft leader (this node's
	// own when it leads), when it is known (nil: never). Persistent
	// writes served here tell it to the client in the response header
	// regentv1.LeaderHeader, so that an SDK that knows that address sends
	// its next writes there, one hop shorter than forwarding.
	Leader  func() (addr string, ok bool)
	Clock   Clock // nil: wall clock
	Logger  *slog.Logger
	Metrics prometheus.Registerer // nil: no RPC metrics
}

// Server is the gRPC front of one node.
type Server struct {
	regentv1.UnimplementedRegistryServer

	cfg      Config
	reg      *registry.Registry
	eph      EphemeralWriter
	sessions *SessionManager
	members  MembersFunc
	leader   func() (string, bool)
	logger   *slog.Logger
	grpc     *grpc.Server
	health   *health.Server
	// latency is the RPC latency histogram (nil without metrics).
	latency *prometheus.HistogramVec
	// streamWrites counts writes served on Write streams.
	streamWrites atomic.Uint64
	// draining is closed when Shutdown starts: Write streams then finish
	// their writes in flight and end, which GracefulStop waits for.
	draining  chan struct{}
	drainOnce sync.Once
	// handlers counts the calls and streams being served, for Shutdown
	// (health Watch streams aside).
	handlers atomic.Int64
}

// NewServer assembles the gRPC server with every interceptor, the Registry,
// health and reflection services.
func NewServer(cfg Config, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := deps.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if deps.Ephemeral == nil {
		if deps.Registry == nil {
			return nil, errors.New("rpc: a registry is required")
		}
		deps.Ephemeral = ephemeral.NewStandalone(cfg.NodeName, deps.Registry.Ephemeral())
	}
	sm, err := NewSessionManager(cfg.Session, deps.Clock, deps.Registry, deps.Ephemeral, deps.Limits, logger)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, reg: deps.Registry, eph: deps.Ephemeral, sessions: sm, members: deps.Members, leader: deps.Leader, logger: logger.With("component", "rpc"),
		draining: make(chan struct{})}

	var latency *prometheus.HistogramVec
	if deps.Metrics != nil {
		latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "regent_rpc_duration_seconds",
			Help:    "Latency of unary RPCs and of session requests, by method and code.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 18),
		}, []string{"method", "code"})
		if err := deps.Metrics.Register(latency); err != nil {
			return nil, err
		}
	}
	s.latency = latency
	s.grpc = grpc.NewServer(
		grpc.MaxRecvMsgSize(cfg.MaxRecvBytes),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: cfg.KeepaliveTime, Timeout: cfg.KeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: cfg.MinClientPing, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(s.recoverUnary, metricsUnary(latency)),
		grpc.ChainStreamInterceptor(s.recoverStream),
		wire.ServerOption(),
	)
	regentv1.RegisterRegistryServer(s.grpc, s)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	return s, nil
}

// GRPC returns the underlying server, to Serve on a listener.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Sessions returns the session manager.
func (s *Server) Sessions() *SessionManager { return s.sessions }

// SetServing flips the standard health service.
func (s *Server) SetServing(ok bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(regentv1.Registry_ServiceDesc.ServiceName, st)
}

// goAwayWait is how long Shutdown lets clients answer the graceful stop's
// GOAWAY once no call is left to finish, before it closes their
// connections.
const goAwayWait = 500 * time.Millisecond

// Shutdown drains sessions (they are told to reconnect elsewhere), then
// stops gRPC gracefully, falling back to a hard stop when ctx ends.
//
// gRPC's graceful stop also waits, on every connection, for the client to
// acknowledge its GOAWAY ping, for up to 5 s (grpc-go), even when no call
// is left on it: a client that is paused or cut off would hold the
// shutdown that long. So once no handler runs, Shutdown gives the clients
// goAwayWait to answer and then closes the connections, which then carry
// nothing that could be lost.
func (s *Server) Shutdown(ctx context.Context) {
	s.SetServing(false)
	s.drainOnce.Do(func() { close(s.draining) })
	s.sessions.Drain(ctx)
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var idleSince time.Time
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			s.stopHard(done)
			return
		case now := <-tick.C:
			switch {
			case s.handlers.Load() > 0:
				idleSince = time.Time{}
			case idleSince.IsZero():
				idleSince = now
			case now.Sub(idleSince) >= goAwayWait:
				s.stopHard(done)
				return
			}
		}
	}
}

// stopHard closes every connection and cancels every handler. One that
// ignores its context must not hold the shutdown forever (GracefulStop,
// whose end done signals, would wait for it).
func (s *Server) stopHard(done <-chan struct{}) {
	s.grpc.Stop()
	select {
	case <-done:
	case <-time.After(time.Second):
	}
}

func (s *Server) recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	s.handlers.Add(1)
	defer s.handlers.Add(-1)
	defer func() {
		if r := recover(); r != nil {
			s.logger.Error("panic in handler", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "internal error")
		}
	}()
	return h(ctx, req)
}

func (s *Server) recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	// A health Watch only waits for status changes, and Shutdown has sent
	// it the last one (NOT_SERVING): it has nothing to finish, so it does
	// not hold Shutdown's idle shortcut.
	if info.FullMethod != healthpb.Health_Watch_FullMethodName {
		s.handlers.Add(1)
		defer s.handlers.Add(-1)
	}
	defer func() {
		if r := recover(); r != nil {
			s.logger.Error("panic in stream handler", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "internal error")
		}
	}()
	return h(srv, ss)
}

func metricsUnary(h *prometheus.HistogramVec) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if h == nil {
			return handler(ctx, req)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		method := info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]
		h.WithLabelValues(method, status.Code(err).String()).Observe(time.Since(start).Seconds())
		return resp, err
	}
}
