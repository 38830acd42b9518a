package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/internal/wire"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"
)

// Version is the SDK version sent in Hello.
const Version = "0.1.0"

// Config of a Client.
type Config struct {
	// Servers are host:port gRPC addresses of Regent nodes; required.
	Servers []string
	// ClientID is the stable identity of this client process; default a new
	// random id. Two live clients must not share one.
	ClientID string
	// ClientName and Labels describe the client; the label "app" is matched
	// by per-app connection limits.
	ClientName string
	Labels     map[string]string
	// RequestTimeout bounds a call whose ctx has no deadline.
	RequestTimeout time.Duration
	// HelloTimeout bounds the session handshake.
	HelloTimeout time.Duration
	// BackoffMin and BackoffMax bound the wait between reconnect attempts.
	BackoffMin, BackoffMax time.Duration
	// RedoInterval is how often failed redo work is retried while connected.
	RedoInterval time.Duration
	// Logger gets the client's logs; default discards.
	Logger *slog.Logger
	// DialOptions are added to every connection (e.g. TLS credentials).
	DialOptions []grpc.DialOption
}

func (c *Config) setDefaults() error {
	if len(c.Servers) == 0 {
		return fmt.Errorf("%w: no servers given", ErrInvalid)
	}
	if c.ClientID == "" {
		c.ClientID = uuid.NewString()
	}
	if err := naming.ValidateClientID(c.ClientID); err != nil {
		return invalid(err)
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 5 * time.Second
	}
	if c.HelloTimeout <= 0 {
		c.HelloTimeout = 3 * time.Second
	}
	if c.BackoffMin <= 0 {
		c.BackoffMin = 100 * time.Millisecond
	}
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = 5 * time.Second
	}
	if c.RedoInterval <= 0 {
		c.RedoInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Client is a Regent client: one session, automatic reconnect and redo.
type Client struct {
	cfg    Config
	logger *slog.Logger

	conns []*grpc.ClientConn

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// mu guards everything below.
	mu   sync.Mutex
	sess *liveSession // nil while disconnected
	// lastNode is the node of the latest session, told to the next one
	// so that it can fetch this client's state while it moves.
	lastNode  string
	connected chan struct{}
	regs      map[string]*regEntry
	subs      map[naming.ServiceKey]*subState

	nextReq atomic.Uint64
	gens    atomic.Uint64 // session generations
	current atomic.Int64  // index of the server in use
	// leader is the index of the server that the latest persistent write
	// learnt leads Raft, or -1 (see write).
	leader atomic.Int64

	// wsMu guards ws, the Write stream persistent writes go on (nil until
	// the first); noWriteStream is set once a server lacks Write.
	wsMu          sync.Mutex
	ws            *writeStream
	noWriteStream atomic.Bool
}

type regEntry struct {
	key  naming.ServiceKey
	inst Instance
	// want is the caller's wish: registered (true) or not (false). A
	// deregister sets it false and wins over any redo in flight.
	want bool
	// done is true once the current session confirmed the wish.
	done bool
	// ver counts the caller's changes to the entry, so that an outcome of
	// an older wish never overwrites a newer one.
	ver uint64
}

type liveSession struct {
	gen     uint64
	server  int
	node    string
	stream  regentv1.Registry_SessionClient
	sendMu  sync.Mutex
	pending sync.Map // request id -> chan *regentv1.Ack
	cancel  context.CancelFunc
	// lookups: the node takes get_service requests on the session.
	lookups bool
}

func (s *liveSession) send(m *regentv1.ClientMessage) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.stream.Send(m)
}

// New creates a client and starts its session in the background. It does
// not wait for a server: use WaitConnected for that.
func New(cfg Config) (*Client, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	c := &Client{
		cfg:       cfg,
		logger:    cfg.Logger.With("component", "regent-client", "client-id", cfg.ClientID),
		connected: make(chan struct{}),
		regs:      make(map[string]*regEntry),
		subs:      make(map[naming.ServiceKey]*subState),
	}
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		wire.DialOption(),
		// Finds a dead server within 20 s + 5 s even when TCP says nothing;
		// the server permits pings every 5 s.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
	}, cfg.DialOptions...)
	for _, addr := range cfg.Servers {
		conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
		if err != nil {
			c.closeConns()
			return nil, fmt.Errorf("%w: server %q: %v", ErrInvalid, addr, err)
		}
		c.conns = append(c.conns, conn)
	}
	c.leader.Store(-1)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.wg.Add(1)
	go func() { defer c.wg.Done(); c.run() }()
	return c, nil
}

// ClientID returns the stable client id.
func (c *Client) ClientID() string { return c.cfg.ClientID }

func (c *Client) closeConns() {
	for _, conn := range c.conns {
		conn.Close()
	}
}

// Close ends the session (the server then removes this client's ephemeral
// instances at once) and releases connections.
func (c *Client) Close() error {
	c.cancel()
	c.wg.Wait()
	c.closeConns()
	return nil
}

// Connected reports whether a session is up.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sess != nil
}

// Node returns the name of the node holding the session, or "".
func (c *Client) Node() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == nil {
		return ""
	}
	return c.sess.node
}

// WaitConnected blocks until a session is up or ctx ends.
func (c *Client) WaitConnected(ctx context.Context) error {
	_, err := c.session(ctx)
	return err
}

func (c *Client) session(ctx context.Context) (*liveSession, error) {
	for {
		c.mu.Lock()
		s, ch := c.sess, c.connected
		c.mu.Unlock()
		if s != nil {
			return s, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: no session: %v", ErrUnavailable, ctx.Err())
		case <-c.ctx.Done():
			return nil, ErrClosed
		}
	}
}

// run keeps a session up until Close.
func (c *Client) run() {
	backoff := c.cfg.BackoffMin
	next := 0
	for c.ctx.Err() == nil {
		idx := next % len(c.conns)
		suggested, err := c.runSession(idx)
		if c.ctx.Err() != nil {
			return
		}
		if err == nil {
			backoff = c.cfg.BackoffMin
		} else {
			c.logger.Debug("session failed", "server", c.cfg.Servers[idx], "err", err)
		}
		next = idx + 1
		if suggested >= 0 {
			next = suggested
		}
		// Wait a jittered backoff before the next attempt; it grows while
		// attempts keep failing and resets after a session that worked.
		wait := backoff/2 + rand.N(backoff/2+1)
		if err != nil {
			backoff = min(backoff*2, c.cfg.BackoffMax)
		}
		t := time.NewTimer(wait)
		select {
		case <-c.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// runSession holds one session on server idx until it ends. It returns the
// index of a server the node suggested (or -1) and nil when a session was
// established, or the error of a failed attempt.
func (c *Client) runSession(idx int) (suggested int, err error) {
	suggested = -1
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	stream, err := regentv1.NewRegistryClient(c.conns[idx]).Session(ctx)
	if err != nil {
		return suggested, err
	}
	c.mu.Lock()
	prev := c.lastNode
	c.mu.Unlock()
	err = stream.Send(&regentv1.ClientMessage{Body: &regentv1.ClientMessage_Hello{Hello: &regentv1.Hello{
		ClientId: c.cfg.ClientID, ClientName: c.cfg.ClientName, SdkVersion: Version, Labels: c.cfg.Labels,
		PreviousNode: prev,
	}}})
	if err != nil {
		return suggested, err
	}
	type first struct {
		m   *regentv1.ServerMessage
		err error
	}
	fc := make(chan first, 1)
	go func() { m, err := stream.Recv(); fc <- first{m, err} }()
	var reply *regentv1.HelloReply
	select {
	case f := <-fc:
		if f.err != nil {
			return suggested, fromStatus(f.err)
		}
		if reply = f.m.GetHelloReply(); reply == nil {
			return suggested, errors.New("regent: server did not answer Hello")
		}
	case <-time.After(c.cfg.HelloTimeout):
		return suggested, fmt.Errorf("%w: no HelloReply within %v", ErrUnavailable, c.cfg.HelloTimeout)
	case <-ctx.Done():
		return suggested, ctx.Err()
	}

	s := &liveSession{gen: c.gens.Add(1), server: idx, node: reply.GetNode(), stream: stream, cancel: cancel, lookups: reply.GetSessionLookups()}
	c.current.Store(int64(idx))
	c.mu.Lock()
	c.sess = s
	c.lastNode = s.node
	for _, e := range c.regs {
		e.done = false
	}
	for _, st := range c.subs {
		st.done = false
	}
	close(c.connected)
	c.connected = make(chan struct{})
	c.mu.Unlock()
	c.logger.Info("session up", "server", c.cfg.Servers[idx], "node", s.node, "session-id", reply.GetSessionId())

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.redoLoop(ctx, s) }()
	keep := time.Duration(reply.GetKeepaliveMs()) * time.Millisecond
	go func() { defer wg.Done(); c.pingLoop(ctx, s, keep) }()

	recvErr := c.recvLoop(s, &suggested)
	cancel()
	c.mu.Lock()
	c.sess = nil
	c.mu.Unlock()
	s.pending.Range(func(k, v any) bool {
		close(v.(chan *regentv1.Ack))
		s.pending.Delete(k)
		return true
	})
	wg.Wait()
	c.logger.Info("session down", "server", c.cfg.Servers[idx], "err", recvErr)
	return suggested, nil
}

func (c *Client) recvLoop(s *liveSession, suggested *int) error {
	for {
		m, err := s.stream.Recv()
		if err != nil {
			return err
		}
		switch b := m.GetBody().(type) {
		case *regentv1.ServerMessage_Ack:
			if ch, ok := s.pending.LoadAndDelete(b.Ack.GetRequestId()); ok {
				ch.(chan *regentv1.Ack) <- b.Ack
			}
		case *regentv1.ServerMessage_Push:
			c.onPush(b.Push.GetSnapshot())
		case *regentv1.ServerMessage_Probe:
			_ = s.send(&regentv1.ClientMessage{Body: &regentv1.ClientMessage_ProbeReply{ProbeReply: &regentv1.ProbeReply{ProbeId: b.Probe.GetProbeId()}}})
		case *regentv1.ServerMessage_Reconnect:
			c.logger.Info("server asked to reconnect elsewhere", "reason", b.Reconnect.GetReason())
			if addr := b.Reconnect.GetSuggestedServer(); addr != "" {
				if i := slices.Index(c.cfg.Servers, addr); i >= 0 {
					*suggested = i
				}
			}
			return fmt.Errorf("reconnect requested: %s", b.Reconnect.GetReason())
		}
	}
}

// pingLoop keeps the session active so the server never has to probe it.
func (c *Client) pingLoop(ctx context.Context, s *liveSession, every time.Duration) {
	if every <= 0 {
		every = 10 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = s.send(&regentv1.ClientMessage{Body: &regentv1.ClientMessage_Ping{Ping: &regentv1.Ping{}}})
		}
	}
}

// call sends a request over session s and waits for its ack.
func (c *Client) call(ctx context.Context, s *liveSession, m *regentv1.ClientMessage) error {
	return c.callBuilt(ctx, s, func() *regentv1.ClientMessage { return m })
}

// callBuilt is call with the request built while the session's send lock is
// held, so that requests built from shared state go out in the order that
// state was read.
func (c *Client) callBuilt(ctx context.Context, s *liveSession, build func() *regentv1.ClientMessage) error {
	a, err := c.roundTrip(ctx, s, build)
	if err != nil {
		return err
	}
	return fromAck(a)
}

// roundTrip sends the request build makes over session s and returns its
// ack; the error is the session's or ctx's, never the ack's.
func (c *Client) roundTrip(ctx context.Context, s *liveSession, build func() *regentv1.ClientMessage) (*regentv1.Ack, error) {
	r, err := c.send(s, build)
	if err != nil {
		return nil, err
	}
	return r.await(ctx)
}

// request is a request sent on a session, its ack still to come.
type request struct {
	s  *liveSession
	id uint64
	ch chan *regentv1.Ack
}

// send sends the request build makes over session s, without waiting for
// its ack (request.await does): requests sent one after another are
// answered in one round trip.
func (c *Client) send(s *liveSession, build func() *regentv1.ClientMessage) (request, error) {
	r := request{s: s, id: c.nextReq.Add(1), ch: make(chan *regentv1.Ack, 1)}
	s.pending.Store(r.id, r.ch)
	s.sendMu.Lock()
	m := build()
	m.RequestId = r.id
	err := s.stream.Send(m)
	s.sendMu.Unlock()
	if err != nil {
		s.pending.Delete(r.id)
		return request{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return r, nil
}

// await waits for the request's ack; the error is the session's or ctx's,
// never the ack's.
func (r request) await(ctx context.Context) (*regentv1.Ack, error) {
	select {
	case a, ok := <-r.ch:
		if !ok {
			return nil, fmt.Errorf("%w: session ended before the answer", ErrUnavailable)
		}
		return a, nil
	case <-ctx.Done():
		r.s.pending.Delete(r.id)
		return nil, ctx.Err()
	}
}

func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.cfg.RequestTimeout)
}

// Ping sends a no-op over the session and waits for its ack: the round trip
// of the framework without registry work.
func (c *Client) Ping(ctx context.Context) error {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	s, err := c.session(ctx)
	if err != nil {
		return err
	}
	return c.call(ctx, s, &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Ping{Ping: &regentv1.Ping{}}})
}
