package membership

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Cluster is this node's membership in a gossip cluster: a memberlist
// instance plus this package's view of the members and its listeners.
// All methods are safe for concurrent use.
type Cluster struct {
	name   string
	cfg    Config
	logger *slog.Logger
	ml     *memberlist.Memberlist

	// queue carries memberlist's notifications and the state polls to the
	// dispatcher goroutine (runDispatch), the single owner of table.
	queue *inputQueue

	// tableMu guards table: written by the dispatcher, read by Members.
	tableMu sync.RWMutex
	table   *table

	// metaMu guards meta and metaBytes, the local node's metadata as last
	// set by New or UpdateMeta; NodeMeta serves metaBytes to memberlist.
	metaMu    sync.RWMutex
	meta      Meta
	metaBytes []byte

	// updateMu serialises UpdateMeta calls.
	updateMu sync.Mutex

	// subsMu guards subs, the listeners.
	subsMu sync.Mutex
	subs   []*subscription

	// lifeMu orders calls into memberlist with Shutdown (memberlist.Leave
	// panics after memberlist.Shutdown): they hold it for reading and
	// check stopped; Shutdown holds it for writing to set stopped.
	lifeMu  sync.RWMutex
	stopped bool

	// left is set by Leave; memberlist cannot rejoin after it.
	left atomic.Bool
	// conflicts counts conflicts about this node's name (conflictDelegate).
	conflicts atomic.Uint64

	shutdownCh   chan struct{}
	shutdownOnce sync.Once
	shutdownErr  error
	// wg tracks the goroutines started by goFunc.
	wg sync.WaitGroup
}

// subscription is one Subscribe call.
type subscription struct {
	l      Listener
	active atomic.Bool
}

// New validates cfg, starts memberlist listening on cfg.BindAddr (or
// cfg.Transport) and returns the Cluster, in which the local node is alive
// and alone until Join. Bind failures wrap ErrBind, invalid configurations
// ErrConfig.
func New(cfg Config) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	metaBytes, err := encodeMeta(cfg.Meta)
	if err != nil { // checked by Validate
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "membership")
	cfg.SecretKey = bytes.Clone(cfg.SecretKey)

	c := &Cluster{
		name:       cfg.Name,
		cfg:        cfg,
		logger:     logger,
		queue:      newInputQueue(),
		table:      newTable(cfg.Name, cfg.DeadRetention, logger),
		meta:       cfg.Meta,
		metaBytes:  metaBytes,
		shutdownCh: make(chan struct{}),
	}

	mlLogger := newMemberlistLogger(logger)
	mlc := memberlist.DefaultLANConfig()
	if cfg.Profile == ProfileLocal {
		mlc = memberlist.DefaultLocalConfig()
	}
	mlc.Name = cfg.Name
	mlc.Delegate = &delegate{c: c}
	mlc.Events = &eventDelegate{c: c}
	mlc.Conflict = &conflictDelegate{c: c}
	mlc.Logger = mlLogger
	mlc.SecretKey = cfg.SecretKey
	ownTransport, err := setTransport(&cfg, mlc, mlLogger)
	if err != nil {
		return nil, err
	}
	if cfg.tune != nil {
		cfg.tune(mlc)
	}

	c.goFunc(c.runDispatch)
	ml, err := memberlist.Create(mlc)
	if err != nil {
		c.stop()
		if ownTransport != nil {
			_ = ownTransport.Shutdown() // no-op if memberlist already shut it down
		}
		return nil, fmt.Errorf("membership: start memberlist: %w", err)
	}
	c.ml = ml
	// The local node's NotifyJoin, queued by Create, is in the table before
	// New returns, so Local works at once.
	c.barrier()
	c.goFunc(c.runPoll)
	c.goFunc(c.runReconnect)

	if !layoutOK() {
		logger.Warn("cannot read memberlist node states: suspect status unavailable, departures reported as dead", "err", layoutErr)
	}
	logger.Info("gossip started", "gossip-addr", c.Local().Addr, "profile", cfg.Profile, "encrypted", len(cfg.SecretKey) > 0)
	return c, nil
}

// setTransport sets the transport and addresses of mlc from cfg. Without
// cfg.Transport it binds memberlist's net transport itself, to report bind
// failures as ErrBind; it returns that transport.
func setTransport(cfg *Config, mlc *memberlist.Config, mlLogger *log.Logger) (*memberlist.NetTransport, error) {
	var own *memberlist.NetTransport
	boundPort := 0
	if cfg.Transport != nil {
		mlc.Transport = cfg.Transport
	} else {
		host, port, _ := splitIPPort(cfg.BindAddr) // checked by Validate
		if host == "" {
			host = "0.0.0.0"
		}
		nc := &memberlist.NetTransportConfig{BindAddrs: []string{host}, BindPort: port, Logger: mlLogger}
		// With port 0 the kernel picks a free TCP port, which may be taken
		// for UDP: retry a few times, as memberlist.Create does.
		attempts := 1
		if port == 0 {
			attempts = 10
		}
		var err error
		for range attempts {
			if own, err = memberlist.NewNetTransport(nc); err == nil || !strings.Contains(err.Error(), "address already in use") {
				break
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%w %s: %w", ErrBind, cfg.BindAddr, err)
		}
		boundPort = own.GetAutoBindPort()
		mlc.Transport = own
		mlc.BindAddr = host
		mlc.BindPort = boundPort // also the default port of seeds given without one
		mlc.AdvertisePort = boundPort
	}
	if cfg.AdvertiseAddr != "" {
		host, port, _ := splitIPPort(cfg.AdvertiseAddr) // checked by Validate
		if port == 0 {
			port = boundPort
		}
		mlc.AdvertiseAddr = host
		mlc.AdvertisePort = port
	}
	return own, nil
}

// goFunc runs f in a goroutine that Shutdown waits for. Only New calls it.
func (c *Cluster) goFunc(f func()) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
}

// stop ends the goroutines and drops queued inputs.
func (c *Cluster) stop() {
	c.lifeMu.Lock()
	c.stopped = true
	close(c.shutdownCh)
	c.lifeMu.Unlock()
	c.queue.close()
	c.wg.Wait()
}

// runDispatch is the dispatcher: it applies queued inputs to the table and
// calls the listeners, one event at a time, in order.
func (c *Cluster) runDispatch() {
	for {
		select {
		case <-c.shutdownCh:
			return
		case <-c.queue.ready:
		}
		for _, in := range c.queue.take() {
			select {
			case <-c.shutdownCh:
				return
			default:
			}
			c.process(in)
		}
	}
}

func (c *Cluster) process(in input) {
	if in.kind == inBarrier {
		close(in.done)
		return
	}
	c.tableMu.Lock()
	evs := c.table.apply(in, time.Now())
	c.tableMu.Unlock()
	if len(evs) == 0 {
		return
	}
	c.subsMu.Lock()
	subs := slices.Clone(c.subs)
	c.subsMu.Unlock()
	for _, ev := range evs {
		c.logEvent(ev)
		if ev.Member.Name == c.name {
			continue // listeners follow the other nodes (see Subscribe)
		}
		for _, s := range subs {
			if s.active.Load() {
				s.l.MemberChanged(ev)
			}
		}
	}
}

func (c *Cluster) logEvent(ev Event) {
	level := slog.LevelInfo
	switch ev.Type {
	case EventUpdate:
		level = slog.LevelDebug
	case EventDead:
		level = slog.LevelWarn
	}
	c.logger.Log(context.Background(), level, "member "+ev.Type.String(),
		"member", ev.Member.Name, "member-addr", ev.Member.Addr, "status", ev.Member.Status.String())
}

// barrier returns once the dispatcher has processed every input queued
// before the call (or at Shutdown).
func (c *Cluster) barrier() {
	done := make(chan struct{})
	c.queue.push(input{kind: inBarrier, done: done})
	select {
	case <-done:
	case <-c.shutdownCh:
	}
}

// runReconnect contacts, every ReconnectInterval, one member this node
// holds dead (in turn, when there are several) with a push-pull join:
// if it is alive, it learns that it was declared dead and refutes it, and
// both sides see each other alive again within a gossip round. A member
// that left is not contacted (it rejoins by itself when it restarts).
func (c *Cluster) runReconnect() {
	if c.cfg.ReconnectInterval <= 0 {
		return
	}
	t := time.NewTicker(c.cfg.ReconnectInterval)
	defer t.Stop()
	next := 0
	for {
		select {
		case <-c.shutdownCh:
			return
		case <-t.C:
		}
		var dead []Member
		for _, m := range c.Members() {
			if m.Status == StatusDead && m.Name != c.name && m.Addr != "" {
				dead = append(dead, m)
			}
		}
		if len(dead) == 0 {
			continue
		}
		m := dead[next%len(dead)]
		next++
		if _, err := c.Join([]string{m.Addr}); err != nil {
			if errors.Is(err, ErrLeft) || errors.Is(err, ErrShutdown) {
				return
			}
			c.logger.Debug("reconnect to a dead member failed", "member", m.Name, "member-addr", m.Addr, "err", err)
			continue
		}
		c.logger.Info("reconnected to a member held dead", "member", m.Name, "member-addr", m.Addr)
	}
}

// runPoll reads memberlist's node states every StatePollInterval, to
// notice suspect and refuted nodes, and ticks DeadRetention.
func (c *Cluster) runPoll() {
	t := time.NewTicker(c.cfg.StatePollInterval)
	defer t.Stop()
	for {
		select {
		case <-c.shutdownCh:
			return
		case <-t.C:
		}
		// Queued while memberlist's node lock is held, so the snapshot
		// lands in the queue in order with the callbacks.
		ok := snapshot(c.ml, func(states []nodeStatus) {
			c.queue.push(input{kind: inPoll, states: states})
		})
		if !ok {
			c.queue.push(input{kind: inPoll})
		}
	}
}

// localMeta returns the encoded local metadata for NodeMeta.
func (c *Cluster) localMeta() []byte {
	c.metaMu.RLock()
	defer c.metaMu.RUnlock()
	return bytes.Clone(c.metaBytes)
}

// current returns m, with the local node's entry brought up to date: its
// metadata and a Leave show at once, before memberlist's notification
// about them has been dispatched.
func (c *Cluster) current(m Member) Member {
	if m.Name != c.name {
		return m
	}
	c.metaMu.RLock()
	m.Meta = c.meta
	c.metaMu.RUnlock()
	if c.left.Load() {
		m.Status = StatusLeft
	}
	return m
}

// Join contacts the seeds (gossip host:port addresses; a seed without port
// uses this node's bind port) once and merges state with each that
// answers. It returns the number of seeds contacted. It fails, wrapping
// ErrJoinFailed, if none answered, and with ErrNameConflict if an alive
// node at another address has this node's name.
func (c *Cluster) Join(seeds []string) (int, error) {
	if len(seeds) == 0 {
		return 0, fmt.Errorf("%w: no seeds given", ErrJoinFailed)
	}
	c.lifeMu.RLock()
	defer c.lifeMu.RUnlock()
	if c.stopped {
		return 0, ErrShutdown
	}
	if c.left.Load() {
		return 0, ErrLeft
	}
	before := c.conflicts.Load()
	n, err := c.ml.Join(seeds)
	if c.conflicts.Load() != before {
		return n, fmt.Errorf("%w: %q, seen while joining %v", ErrNameConflict, c.name, seeds)
	}
	if err != nil {
		return n, fmt.Errorf("%w: %w", ErrJoinFailed, err)
	}
	// memberlist reported the merged members through the event delegate
	// during the join; make Members and Peers show them before returning,
	// so a caller can act on the cluster it just joined.
	c.barrier()
	return n, nil
}

// RetryJoin calls Join every RetryJoinInterval until a seed answers
// (returns nil), ctx ends (returns an error wrapping ctx.Err()), or
// RetryJoinMax attempts failed (returns the last error, which wraps
// ErrJoinFailed). It gives up at once on ErrNameConflict, ErrLeft and
// ErrShutdown. An attempt in progress is not interrupted by ctx; it is
// bounded by memberlist's TCP timeout per seed.
func (c *Cluster) RetryJoin(ctx context.Context, seeds []string) error {
	if len(seeds) == 0 {
		return fmt.Errorf("%w: no seeds given", ErrJoinFailed)
	}
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("membership: retry join: %w", err)
		}
		n, err := c.Join(seeds)
		if err == nil {
			c.logger.Info("joined cluster", "seeds", seeds, "contacted", n, "attempt", attempt)
			return nil
		}
		if !errors.Is(err, ErrJoinFailed) {
			return err
		}
		if c.cfg.RetryJoinMax > 0 && attempt >= c.cfg.RetryJoinMax {
			c.logger.Warn("join attempt failed; giving up", "seeds", seeds, "attempt", attempt, "err", err)
			return fmt.Errorf("membership: retry join gave up after %d attempts: %w", attempt, err)
		}
		level := slog.LevelDebug
		if attempt == 1 || attempt%10 == 0 {
			level = slog.LevelWarn
		}
		c.logger.Log(ctx, level, "join attempt failed; will retry", "seeds", seeds, "attempt", attempt, "retry-in", c.cfg.RetryJoinInterval, "err", err)

		t := time.NewTimer(c.cfg.RetryJoinInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("membership: retry join: %w", ctx.Err())
		case <-c.shutdownCh:
			t.Stop()
			return ErrShutdown
		case <-t.C:
		}
	}
}

// Members returns every node as this node sees it, sorted by name: itself,
// alive and suspect nodes, and dead or left nodes for DeadRetention after
// they went (unless they came back).
func (c *Cluster) Members() []Member {
	c.tableMu.RLock()
	ms := c.table.members()
	c.tableMu.RUnlock()
	for i := range ms {
		ms[i] = c.current(ms[i])
	}
	return ms
}

// Member returns the node called name as this node sees it (see Members);
// ok is false for a node it does not know.
func (c *Cluster) Member(name string) (m Member, ok bool) {
	c.tableMu.RLock()
	e := c.table.entries[name]
	if e != nil {
		m = e.member
	}
	c.tableMu.RUnlock()
	if e == nil {
		return Member{}, false
	}
	return c.current(m), true
}

// Local returns this node's own entry: alive, or left after Leave.
func (c *Cluster) Local() Member {
	var m Member
	c.tableMu.RLock()
	if e := c.table.entries[c.name]; e != nil {
		m = e.member
	}
	c.tableMu.RUnlock()
	m.Name = c.name
	return c.current(m)
}

// Peers returns the members other than this node whose status is alive or
// suspect, sorted by name: the nodes to talk to.
func (c *Cluster) Peers() []Member {
	return slices.DeleteFunc(c.Members(), func(m Member) bool {
		return m.Name == c.name || (m.Status != StatusAlive && m.Status != StatusSuspect)
	})
}

// Subscribe adds a listener, which receives the events about other nodes
// dispatched after Subscribe returns. Changes of the local node (its
// UpdateMeta, its Leave) are not sent: its own calls make them, and Local
// shows them. To follow the membership without a gap, call Subscribe, then
// Members: an event may then repeat what Members already showed. cancel
// removes the listener; a call to it already in progress may finish after
// cancel returns.
func (c *Cluster) Subscribe(l Listener) (cancel func()) {
	s := &subscription{l: l}
	s.active.Store(true)
	c.subsMu.Lock()
	c.subs = append(c.subs, s)
	c.subsMu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.active.Store(false)
			c.subsMu.Lock()
			c.subs = slices.DeleteFunc(c.subs, func(x *subscription) bool { return x == s })
			c.subsMu.Unlock()
		})
	}
}

// UpdateMeta replaces this node's metadata and gossips it (memberlist's
// UpdateNode). It blocks until the update was broadcast to a member, or
// for at most timeout (0: no limit), and fails with ErrTimeout after it;
// the new metadata applies locally either way (Local shows it at once).
// Other nodes get EventUpdate.
func (c *Cluster) UpdateMeta(m Meta, timeout time.Duration) error {
	b, err := encodeMeta(m)
	if err != nil {
		return err
	}
	c.updateMu.Lock()
	defer c.updateMu.Unlock()
	c.lifeMu.RLock()
	defer c.lifeMu.RUnlock()
	if c.stopped {
		return ErrShutdown
	}
	if c.left.Load() {
		return ErrLeft
	}
	c.metaMu.Lock()
	c.meta, c.metaBytes = m, b
	c.metaMu.Unlock()
	// memberlist.UpdateNode fails only on the timeout.
	if err := c.ml.UpdateNode(timeout); err != nil {
		return fmt.Errorf("%w: update meta: %w", ErrTimeout, err)
	}
	return nil
}

// Leave announces that this node leaves: other nodes see it "left" (not
// dead) and get EventLeft. It blocks until the announcement was broadcast
// to a member, or for at most timeout (0: no limit), and fails with
// ErrTimeout after it. Local shows "left" at once. The node keeps
// gossiping until Shutdown, but cannot join again. Calling Leave again does
// nothing.
func (c *Cluster) Leave(timeout time.Duration) error {
	c.lifeMu.RLock()
	defer c.lifeMu.RUnlock()
	if c.stopped {
		return ErrShutdown
	}
	c.left.Store(true)
	// memberlist.Leave fails only on the timeout.
	if err := c.ml.Leave(timeout); err != nil {
		return fmt.Errorf("%w: leave: %w", ErrTimeout, err)
	}
	c.logger.Info("left the cluster")
	return nil
}

// Shutdown stops the poller and the dispatcher (events not yet delivered
// are dropped), then memberlist. Without a prior Leave the other nodes
// detect a failure: suspect, then dead. It first waits for a Join,
// UpdateMeta or Leave in progress (each bounded by its timeout). It is
// idempotent and must not be called from a Listener.
func (c *Cluster) Shutdown() error {
	c.shutdownOnce.Do(func() {
		c.stop()
		if err := c.ml.Shutdown(); err != nil {
			c.shutdownErr = fmt.Errorf("membership: shutdown memberlist: %w", err)
		}
		c.logger.Info("gossip stopped")
	})
	return c.shutdownErr
}
