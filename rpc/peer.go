package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	clusterv1 "github.com/regent-registry/regent/proto/cluster/v1"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/internal/wire"
)

// DefaultPeerMaxMsgBytes caps one peer message in either direction: far
// above Distro's ~1 MiB batches and snapshot pages, so that a single large
// client state still fits, yet bounded.
const DefaultPeerMaxMsgBytes = 64 << 20

// ---------------------------------------------------------------------------
// Server: the receiving side of Distro.

// PeerServerConfig tunes the server of the node-to-node Distro service.
type PeerServerConfig struct {
	// MaxRecvBytes caps one inbound message (0: DefaultPeerMaxMsgBytes).
	MaxRecvBytes int
	// Logger receives panics recovered in handlers (nil: discarded).
	Logger *slog.Logger
	// ServerOptions are added after the server's own (TLS credentials,
	// keepalive, more interceptors).
	ServerOptions []grpc.ServerOption
	// Raft, when set, serves the Raft forwarding service (writes and read
	// barriers other nodes send this node as leader).
	Raft RaftHandler
	// StreamWorkers is how many goroutines serve calls, reused from call to
	// call (0: a new goroutine per call, gRPC's default). A unary call gives
	// its worker back at once; each peer's sync stream holds one for as long
	// as it is open; a call that finds every worker busy gets a goroutine of
	// its own. A reused goroutine keeps its grown stack, which a new one
	// grows again by copying (BenchmarkPeerServerWorkers).
	StreamWorkers int
}

// DefaultPeerServerConfig returns production settings.
func DefaultPeerServerConfig() PeerServerConfig {
	return PeerServerConfig{MaxRecvBytes: DefaultPeerMaxMsgBytes, StreamWorkers: DefaultPeerStreamWorkers}
}

// DefaultPeerStreamWorkers covers the calls a node serves at once in a
// 3-node cluster under load: syncs and verifies from each peer, and writes
// forwarded to the leader, which wait for a commit.
const DefaultPeerStreamWorkers = 32

// Validate checks the settings.
func (c PeerServerConfig) Validate() error {
	if c.MaxRecvBytes != 0 && c.MaxRecvBytes < 1<<20 {
		return fmt.Errorf("rpc: peer max message size must be at least 1 MiB, got %d", c.MaxRecvBytes)
	}
	if c.StreamWorkers < 0 || c.StreamWorkers > 1<<16 {
		return fmt.Errorf("rpc: peer stream workers must be in [0, 65536], got %d", c.StreamWorkers)
	}
	return nil
}

// PeerServer serves Distro (and the standard health service) on its own
// gRPC server, in front of an ephemeral.Handler. Each handler decodes and
// validates the whole request (see peer_convert.go), calls the engine, and
// maps its error through the one table in errors.go.
type PeerServer struct {
	clusterv1.UnimplementedDistroServer

	h      ephemeral.Handler
	logger *slog.Logger
	grpc   *grpc.Server
	health *health.Server

	// stopping is closed when Shutdown starts: it ends the sync streams,
	// which GracefulStop would otherwise wait for.
	stopping chan struct{}
	stopOnce sync.Once
	// testHookBusyAtStop, if set, runs when Shutdown finds a sync stream
	// with a batch in hand, before waiting for it.
	testHookBusyAtStop func()
}

var _ clusterv1.DistroServer = (*PeerServer)(nil)

// NewPeerServer builds the peer server in front of h (a *ephemeral.Distro).
// It serves nothing until Serve.
func NewPeerServer(h ephemeral.Handler, cfg PeerServerConfig) (*PeerServer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if h == nil {
		return nil, errors.New("rpc: peer server needs a handler")
	}
	if cfg.MaxRecvBytes == 0 {
		cfg.MaxRecvBytes = DefaultPeerMaxMsgBytes
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &PeerServer{h: h, logger: logger.With("component", "rpc-peer"), stopping: make(chan struct{})}
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(cfg.MaxRecvBytes),
		grpc.ChainUnaryInterceptor(s.recoverUnary),
		wire.ServerOption(),
	}
	if cfg.StreamWorkers > 0 {
		opts = append(opts, grpc.NumStreamWorkers(uint32(cfg.StreamWorkers)))
	}
	s.grpc = grpc.NewServer(append(opts, cfg.ServerOptions...)...)
	clusterv1.RegisterDistroServer(s.grpc, s)
	if cfg.Raft != nil {
		clusterv1.RegisterRaftServer(s.grpc, raftServer{h: cfg.Raft})
	}
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(clusterv1.Distro_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	return s, nil
}

// GRPC returns the underlying server.
func (s *PeerServer) GRPC() *grpc.Server { return s.grpc }

// Serve accepts peer connections on lis until Shutdown; it returns nil after
// Shutdown and the listener's error otherwise.
func (s *PeerServer) Serve(lis net.Listener) error { return s.grpc.Serve(lis) }

// PeerStopGrace bounds the graceful part of PeerServer.Shutdown: a peer
// call is short (a sync, a verify, a forwarded write), and every one is
// retried or reported as of unknown outcome, while grpc-go's GracefulStop
// also waits for every connection to go, which a paused peer's never does
// (it answers no GOAWAY ping and closes nothing).
const PeerStopGrace = 2 * time.Second

// Shutdown marks the server NOT_SERVING, then stops it gracefully (calls in
// flight finish), falling back to a hard stop after PeerStopGrace or when
// ctx ends, whichever comes first: every connection is closed and every
// call's context cancelled. After the hard stop it returns without
// waiting for handlers that ignore their context (grpc-go's GracefulStop
// would wait for them forever). It is safe to call more than once.
func (s *PeerServer) Shutdown(ctx context.Context) {
	s.health.Shutdown()
	s.stopOnce.Do(func() { close(s.stopping) })
	ctx, cancel := context.WithTimeout(ctx, PeerStopGrace)
	defer cancel()
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.grpc.Stop()
	}
}

func (s *PeerServer) recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.logger.Error("panic in peer handler", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
			resp, err = nil, status.Error(codes.Internal, "internal error")
		}
	}()
	return h(ctx, req)
}

// Sync applies a peer's batch of changes and deletes.
func (s *PeerServer) Sync(ctx context.Context, p *clusterv1.SyncRequest) (*clusterv1.SyncResponse, error) {
	req, err := syncRequestFromProto(p)
	if err != nil {
		return nil, toStatus(err)
	}
	rep, err := s.h.HandleSync(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return syncReplyToProto(rep), nil
}

// Verify checks a peer's claim on its clients.
func (s *PeerServer) Verify(ctx context.Context, p *clusterv1.VerifyRequest) (*clusterv1.VerifyResponse, error) {
	req, err := verifyRequestFromProto(p)
	if err != nil {
		return nil, toStatus(err)
	}
	rep, err := s.h.HandleVerify(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return verifyReplyToProto(rep), nil
}

// Snapshot returns one page of everything this node holds.
func (s *PeerServer) Snapshot(ctx context.Context, p *clusterv1.SnapshotRequest) (*clusterv1.SnapshotResponse, error) {
	req, err := snapshotRequestFromProto(p)
	if err != nil {
		return nil, toStatus(err)
	}
	page, err := s.h.HandleSnapshot(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return snapshotPageToProto(page), nil
}

// Query returns the states of the clients asked for that this node holds.
func (s *PeerServer) Query(ctx context.Context, p *clusterv1.QueryRequest) (*clusterv1.QueryResponse, error) {
	req, err := queryRequestFromProto(p)
	if err != nil {
		return nil, toStatus(err)
	}
	rep, err := s.h.HandleQuery(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return queryReplyToProto(rep), nil
}

// ---------------------------------------------------------------------------
// Transport: the sending side of Distro.

// PeerTransportConfig tunes the gRPC transport between Distro engines.
type PeerTransportConfig struct {
	// Resolve maps a node name to its peer address, a gRPC target
	// ("host:port", or with a scheme such as "passthrough:///..."); ok is
	// false for a node it does not know. The daemon feeds it from gossip
	// metadata. Required.
	Resolve func(node string) (addr string, ok bool)
	// DialOptions are added after the transport's own (insecure
	// credentials and message size limits), so they can replace them.
	DialOptions []grpc.DialOption
	// CallTimeout bounds every call, also when ctx has a later deadline or
	// none (0: DefaultPeerCallTimeout).
	CallTimeout time.Duration
	// MaxMsgBytes caps one message in either direction (0:
	// DefaultPeerMaxMsgBytes).
	MaxMsgBytes int
	// UnaryFallback is how long a peer that answered UNIMPLEMENTED to
	// SyncStream (a node from before it) gets unary Syncs before the
	// stream is tried again, as after that node's upgrade (0:
	// DefaultPeerUnaryFallback).
	UnaryFallback time.Duration
	// Metrics, when set, receives regent_distro_sent_messages_total and
	// regent_distro_sent_bytes_total by kind. Transports sharing one
	// registerer share the counters.
	Metrics prometheus.Registerer
}

// DefaultPeerCallTimeout bounds a peer call whose context has no earlier
// deadline; the engine sets its own, shorter ones (SyncTimeout).
const DefaultPeerCallTimeout = 10 * time.Second

// DefaultPeerUnaryFallback is PeerTransportConfig.UnaryFallback's default.
const DefaultPeerUnaryFallback = time.Minute

// PeerTraffic counts what a transport sent of one kind: messages handed to
// gRPC (whether or not the call then succeeded) and their encoded size
// (proto.Size of the request, without gRPC framing).
type PeerTraffic struct {
	Messages uint64
	Bytes    uint64
}

// Kinds of peer messages, as in PeerTransport.Sent and the metrics' kind
// label.
const (
	PeerKindSync       = "sync"
	PeerKindVerify     = "verify"
	PeerKindVerifyList = "verify_list"
	PeerKindSnapshot   = "snapshot"
	PeerKindQuery      = "query"
)

var peerKinds = [...]string{PeerKindSync, PeerKindVerify, PeerKindVerifyList, PeerKindSnapshot, PeerKindQuery}

const (
	kindSync = iota
	kindVerify
	kindVerifyList
	kindSnapshot
	kindQuery
)

// PeerTransport sends Distro messages to peers over gRPC, one
// *grpc.ClientConn per peer. It implements ephemeral.Transport.
type PeerTransport struct {
	resolve  func(string) (string, bool)
	dialOpts []grpc.DialOption
	timeout  time.Duration
	// unaryFallback is PeerTransportConfig.UnaryFallback.
	unaryFallback time.Duration

	// mu guards conns and closed.
	mu     sync.Mutex
	conns  map[string]*peerConn // by node name
	closed bool

	msgs, bytes       [len(peerKinds)]atomic.Uint64
	promMsgs, promLen [len(peerKinds)]prometheus.Counter // nil without Metrics
}

type peerConn struct {
	addr   string
	cc     *grpc.ClientConn
	client clusterv1.DistroClient
	raft   clusterv1.RaftClient

	syncMu     sync.Mutex
	stream     *syncStream // the open sync stream, if any (see sync)
	unaryUntil time.Time   // the peer answered UNIMPLEMENTED to SyncStream: unary until then
}

var _ ephemeral.Transport = (*PeerTransport)(nil)

// NewPeerTransport builds a transport; it dials nothing until the first
// call to each peer.
func NewPeerTransport(cfg PeerTransportConfig) (*PeerTransport, error) {
	if cfg.Resolve == nil {
		return nil, errors.New("rpc: peer transport needs a Resolve function")
	}
	if cfg.CallTimeout < 0 || cfg.MaxMsgBytes < 0 || cfg.UnaryFallback < 0 {
		return nil, errors.New("rpc: peer transport call timeout, message size and unary fallback must not be negative")
	}
	if cfg.CallTimeout == 0 {
		cfg.CallTimeout = DefaultPeerCallTimeout
	}
	if cfg.UnaryFallback == 0 {
		cfg.UnaryFallback = DefaultPeerUnaryFallback
	}
	if cfg.MaxMsgBytes == 0 {
		cfg.MaxMsgBytes = DefaultPeerMaxMsgBytes
	}
	t := &PeerTransport{
		resolve:       cfg.Resolve,
		timeout:       cfg.CallTimeout,
		unaryFallback: cfg.UnaryFallback,
		conns:         make(map[string]*peerConn),
	}
	t.dialOpts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		wire.DialOption(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(cfg.MaxMsgBytes), grpc.MaxCallSendMsgSize(cfg.MaxMsgBytes)),
		// Reconnect within the engine's own retry period (RetryMax 3 s):
		// with gRPC's default backoff (up to 120 s) a peer that comes back
		// would go unreached meanwhile, every call failing fast.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}, cfg.DialOptions...)
	if cfg.Metrics != nil {
		msgs, err := registerCounterVec(cfg.Metrics, prometheus.CounterOpts{
			Name: "regent_distro_sent_messages_total",
			Help: "Distro messages sent to peers, by kind.",
		})
		if err != nil {
			return nil, err
		}
		size, err := registerCounterVec(cfg.Metrics, prometheus.CounterOpts{
			Name: "regent_distro_sent_bytes_total",
			Help: "Encoded size of the Distro messages sent to peers, by kind.",
		})
		if err != nil {
			return nil, err
		}
		for i, k := range peerKinds {
			t.promMsgs[i] = msgs.WithLabelValues(k)
			t.promLen[i] = size.WithLabelValues(k)
		}
	}
	return t, nil
}

// registerCounterVec registers a counter by kind, or reuses the one already
// registered under the same name.
func registerCounterVec(r prometheus.Registerer, opts prometheus.CounterOpts) (*prometheus.CounterVec, error) {
	v := prometheus.NewCounterVec(opts, []string{"kind"})
	if err := r.Register(v); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return old, nil
			}
		}
		return nil, fmt.Errorf("rpc: register %s: %w", opts.Name, err)
	}
	return v, nil
}

// Sent returns what the transport sent so far, by kind ("sync", "verify",
// "verify_list", "snapshot", "query"); every kind is present.
func (t *PeerTransport) Sent() map[string]PeerTraffic {
	out := make(map[string]PeerTraffic, len(peerKinds))
	for i, k := range peerKinds {
		out[k] = PeerTraffic{Messages: t.msgs[i].Load(), Bytes: t.bytes[i].Load()}
	}
	return out
}

// Close closes the connection to every peer; calls after it fail with
// ephemeral.ErrUnreachable. It is idempotent.
func (t *PeerTransport) Close() error {
	t.mu.Lock()
	conns := t.conns
	t.conns, t.closed = make(map[string]*peerConn), true
	t.mu.Unlock()
	var errs []error
	for _, c := range conns {
		if err := c.cc.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// conn returns the client for a node, dialling it on first use and again
// when its resolved address has changed (the old connection is closed; a
// call still on it fails and the engine retries).
func (t *PeerTransport) conn(node string) (*peerConn, error) {
	addr, ok := t.resolve(node)
	if !ok || addr == "" {
		return nil, fmt.Errorf("%w: unknown node %q", ephemeral.ErrUnreachable, node)
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, fmt.Errorf("%w: peer transport closed", ephemeral.ErrUnreachable)
	}
	old := t.conns[node]
	if old != nil && old.addr == addr {
		t.mu.Unlock()
		return old, nil
	}
	cc, err := grpc.NewClient(addr, t.dialOpts...)
	if err != nil {
		t.mu.Unlock()
		return nil, fmt.Errorf("%w: node %q at %q: %w", ephemeral.ErrUnreachable, node, addr, err)
	}
	c := &peerConn{addr: addr, cc: cc, client: clusterv1.NewDistroClient(cc), raft: clusterv1.NewRaftClient(cc)}
	t.conns[node] = c
	t.mu.Unlock()
	if old != nil {
		_ = old.cc.Close()
	}
	return c, nil
}

func (t *PeerTransport) count(kind int, req proto.Message) {
	n := uint64(proto.Size(req))
	t.msgs[kind].Add(1)
	t.bytes[kind].Add(n)
	if t.promMsgs[kind] != nil {
		t.promMsgs[kind].Inc()
		t.promLen[kind].Add(float64(n))
	}
}

// peerCall sends one request to a node and maps the error (peerError).
func peerCall[Req proto.Message, Rep any](ctx context.Context, t *PeerTransport, to string, kind int, req Req,
	call func(clusterv1.DistroClient, context.Context, Req, ...grpc.CallOption) (Rep, error),
) (Rep, error) {
	var zero Rep
	pc, err := t.conn(to)
	if err != nil {
		return zero, err
	}
	t.count(kind, req)
	cctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	rep, err := call(pc.client, cctx, req)
	if err != nil {
		return zero, peerError(ctx, to, peerKinds[kind], err)
	}
	return rep, nil
}

// peerError maps a failed call back to sentinels, keeping the gRPC status
// reachable with status.FromError: Unavailable and DeadlineExceeded (and
// Canceled while the caller's ctx is live: the connection was closed under
// the call) wrap ephemeral.ErrUnreachable, InvalidArgument wraps
// naming.ErrInvalid. When the caller's ctx is done, its error is wrapped
// too, and so is context.DeadlineExceeded for a DeadlineExceeded status
// (the peer may hit the propagated deadline a moment before the caller).
func peerError(ctx context.Context, to, kind string, err error) error {
	ctxErr := ctx.Err()
	if ctxErr == nil && status.Code(err) == codes.DeadlineExceeded {
		ctxErr = context.DeadlineExceeded
	}
	if ctxErr != nil {
		err = fmt.Errorf("%w: %w", ctxErr, err)
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return fmt.Errorf("%w: %s to %s: %w", ephemeral.ErrUnreachable, kind, to, err)
	case codes.Canceled:
		if ctxErr == nil {
			return fmt.Errorf("%w: %s to %s: %w", ephemeral.ErrUnreachable, kind, to, err)
		}
	case codes.InvalidArgument:
		return fmt.Errorf("%w: %s to %s refused: %w", naming.ErrInvalid, kind, to, err)
	}
	return fmt.Errorf("rpc: %s to %s: %w", kind, to, err)
}

// peerReplyError marks a reply that failed validation.
func peerReplyError(to, kind string, err error) error {
	return fmt.Errorf("rpc: bad %s reply from %s: %w", kind, to, err)
}

// Sync sends a batch of changes, deltas and deletes to a peer.
func (t *PeerTransport) Sync(ctx context.Context, to string, req *ephemeral.SyncRequest) (*ephemeral.SyncReply, error) {
	pc, err := t.conn(to)
	if err != nil {
		return nil, err
	}
	preq := syncRequestToProto(req)
	rep, err := pc.sync(ctx, t.timeout, t.unaryFallback, preq, func() { t.count(kindSync, preq) })
	if err != nil {
		return nil, peerError(ctx, to, peerKinds[kindSync], err)
	}
	out, err := syncReplyFromProto(rep)
	if err != nil {
		return nil, peerReplyError(to, peerKinds[kindSync], err)
	}
	return out, nil
}

// Verify sends a digest, or a list of client versions, to a peer.
func (t *PeerTransport) Verify(ctx context.Context, to string, req *ephemeral.VerifyRequest) (*ephemeral.VerifyReply, error) {
	kind := kindVerify
	if req.List {
		kind = kindVerifyList
	}
	rep, err := peerCall(ctx, t, to, kind, verifyRequestToProto(req), clusterv1.DistroClient.Verify)
	if err != nil {
		return nil, err
	}
	out, err := verifyReplyFromProto(rep)
	if err != nil {
		return nil, peerReplyError(to, peerKinds[kind], err)
	}
	return out, nil
}

// Snapshot asks a peer for one page of everything it holds.
func (t *PeerTransport) Snapshot(ctx context.Context, to string, req *ephemeral.SnapshotRequest) (*ephemeral.SnapshotPage, error) {
	rep, err := peerCall(ctx, t, to, kindSnapshot, snapshotRequestToProto(req), clusterv1.DistroClient.Snapshot)
	if err != nil {
		return nil, err
	}
	out, err := snapshotPageFromProto(rep)
	if err != nil {
		return nil, peerReplyError(to, PeerKindSnapshot, err)
	}
	return out, nil
}

// Query asks a peer for the current state of some clients.
func (t *PeerTransport) Query(ctx context.Context, to string, req *ephemeral.QueryRequest) (*ephemeral.QueryReply, error) {
	rep, err := peerCall(ctx, t, to, kindQuery, queryRequestToProto(req), clusterv1.DistroClient.Query)
	if err != nil {
		return nil, err
	}
	out, err := queryReplyFromProto(rep)
	if err != nil {
		return nil, peerReplyError(to, PeerKindQuery, err)
	}
	return out, nil
}
