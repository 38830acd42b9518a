package rpc

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	regentv1 "github.com/regent-registry/regent/proto/regent/v1"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/internal/registry"
)

// Clock is the time source of the session manager, so that tests can move
// time by hand.
type Clock interface {
	Now() time.Time
}

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// SessionConfig tunes session liveness.
type SessionConfig struct {
	// CheckInterval is how often the manager looks at every session.
	CheckInterval time.Duration
	// IdleTimeout is how long a session may stay silent before it is probed.
	IdleTimeout time.Duration
	// ProbeTimeout is how long a probed session has to answer.
	ProbeTimeout time.Duration
	// HelloTimeout is how long a new stream may take to say Hello.
	HelloTimeout time.Duration
	// KeepaliveHint is the interval told to clients for their pings; below
	// IdleTimeout so that healthy clients are never probed.
	KeepaliveHint time.Duration
	// DrainGrace is how long Drain waits for told sessions to leave.
	DrainGrace time.Duration
	// SendQueue is the number of acks and control messages a session can
	// have waiting; a client that does not read stalls its own stream only.
	SendQueue int
}

// DefaultSessionConfig returns the Nacos ConnectionManager figures: check
// every 3 s, probe after 20 s of silence, close if the probe is not answered
// within 1 s.
func DefaultSessionConfig() SessionConfig {
	return SessionConfig{
		CheckInterval: 3 * time.Second,
		IdleTimeout:   20 * time.Second,
		ProbeTimeout:  time.Second,
		HelloTimeout:  5 * time.Second,
		KeepaliveHint: 10 * time.Second,
		DrainGrace:    5 * time.Second,
		SendQueue:     256,
	}
}

// Validate checks the settings.
func (c SessionConfig) Validate() error {
	switch {
	case c.CheckInterval <= 0, c.IdleTimeout <= 0, c.ProbeTimeout <= 0, c.HelloTimeout <= 0, c.KeepaliveHint <= 0:
		return fmt.Errorf("rpc: session intervals must be positive: %+v", c)
	case c.KeepaliveHint >= c.IdleTimeout:
		return fmt.Errorf("rpc: keepalive hint %v must be below idle timeout %v", c.KeepaliveHint, c.IdleTimeout)
	case c.SendQueue < 1:
		return fmt.Errorf("rpc: send queue must hold at least one message")
	case c.DrainGrace < 0:
		return fmt.Errorf("rpc: drain grace must not be negative")
	}
	return nil
}

// session is one live Session stream.
type session struct {
	id       string
	clientID string
	ip, app  string
	name     string
	created  time.Time

	// lastActive is the clock's UnixNano at the last message from the client.
	lastActive atomic.Int64

	// ctx ends with the session (its cause says why).
	ctx context.Context
	// handleMu is held while a request is served; ended, set under it
	// when the session ends, refuses any later request, so that nothing a
	// client sends is applied after its session's clean-up.
	handleMu sync.Mutex
	ended    bool

	// out carries acks and control messages to the sender goroutine.
	out *sendQueue
	// pushMu guards pending: the newest undelivered snapshot per service.
	pushMu  sync.Mutex
	pending map[naming.ServiceKey]registry.Snapshot
	pushCh  chan struct{}

	// subMu guards subs, the services this session subscribes to.
	subMu sync.Mutex
	subs  map[naming.ServiceKey]struct{}

	// Fields below are guarded by the manager's mu.
	probeID       uint64
	probeDeadline time.Time
	told          bool // told to reconnect (limits or drain)

	cancel context.CancelCauseFunc
}

// Deliver queues a push; it keeps only the newest snapshot per service and
// never blocks, so a slow client never holds up the pusher.
func (s *session) Deliver(sn registry.Snapshot) {
	s.pushMu.Lock()
	if old, ok := s.pending[sn.Key]; !ok || old.Revision <= sn.Revision {
		s.pending[sn.Key] = sn
	}
	s.pushMu.Unlock()
	select {
	case s.pushCh <- struct{}{}:
	default:
	}
}

func (s *session) takePending() []registry.Snapshot {
	s.pushMu.Lock()
	defer s.pushMu.Unlock()
	if len(s.pending) == 0 {
		return nil
	}
	out := make([]registry.Snapshot, 0, len(s.pending))
	for _, sn := range s.pending {
		out = append(out, sn)
	}
	clear(s.pending)
	return out
}

// trySend queues a control message without blocking; false when full.
func (s *session) trySend(m *regentv1.ServerMessage) bool { return s.out.tryPush(m) }

// sendQueue is a session's queue of acks and control messages for its
// sender: first in, first out, at most max messages. It grows as needed:
// a channel of that capacity would allocate it whole for every session
// (2 KiB at the default 256), and the garbage collector would scan it.
type sendQueue struct {
	mu   sync.Mutex
	msgs []*regentv1.ServerMessage
	// spare is the slice take returned last time, reused once the
	// sender calls take again (it is done with it then).
	spare []*regentv1.ServerMessage
	max   int
	ready chan struct{} // holds a token while messages wait
	space chan struct{} // gets a token when the sender takes messages
}

func newSendQueue(max int) *sendQueue {
	return &sendQueue{max: max, ready: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// tryPush queues m unless the queue is full.
func (q *sendQueue) tryPush(m *regentv1.ServerMessage) bool {
	q.mu.Lock()
	if len(q.msgs) >= q.max {
		q.mu.Unlock()
		return false
	}
	q.msgs = append(q.msgs, m)
	q.mu.Unlock()
	signal(q.ready)
	return true
}

// push queues m, waiting while the queue is full (the client reads
// nothing) until ctx ends.
func (q *sendQueue) push(ctx context.Context, m *regentv1.ServerMessage) error {
	for !q.tryPush(m) {
		select {
		case <-q.space:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	return nil
}

// take removes and returns every queued message, oldest first. The
// slice is the caller's until its next take (one consumer: the sender).
func (q *sendQueue) take() []*regentv1.ServerMessage {
	q.mu.Lock()
	msgs := q.msgs
	clear(q.spare) // sent: nothing to keep alive
	q.msgs, q.spare = q.spare[:0], msgs
	q.mu.Unlock()
	signal(q.space)
	return msgs
}

func (s *session) info() SessionInfo {
	return SessionInfo{ID: s.id, IP: s.ip, App: s.app, Created: s.created}
}

// SessionManager tracks live sessions, probes silent ones, enforces limits
// and ends sessions, removing their ephemeral instances and subscriptions.
type SessionManager struct {
	cfg    SessionConfig
	clock  Clock
	eph    EphemeralWriter
	reg    *registry.Registry
	limits *LimitWatcher
	logger *slog.Logger

	// mu guards sessions, byClient and nextProbe, and the probe fields of
	// every session.
	mu        sync.Mutex
	sessions  map[string]*session
	byClient  map[string]*session
	counts    SessionCounts // of sessions, for the limits
	nextProbe uint64
	draining  bool

	closed atomic.Uint64
}

// NewSessionManager builds a manager; limits may be nil (unlimited).
func NewSessionManager(cfg SessionConfig, clock Clock, reg *registry.Registry, eph EphemeralWriter, limits *LimitWatcher, logger *slog.Logger) (*SessionManager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if clock == nil {
		clock = wallClock{}
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &SessionManager{
		cfg: cfg, clock: clock, eph: eph, reg: reg, limits: limits,
		logger:   logger.With("component", "sessions"),
		sessions: make(map[string]*session),
		byClient: make(map[string]*session),
	}, nil
}

// Count returns the number of live sessions.
func (m *SessionManager) Count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sessions)
}

// Closed counts sessions ended so far.
func (m *SessionManager) Closed() uint64 { return m.closed.Load() }

func (m *SessionManager) rules() LimitRules {
	if m.limits == nil {
		return LimitRules{}
	}
	return m.limits.Rules()
}

func (m *SessionManager) liveInfos() []SessionInfo {
	out := make([]SessionInfo, 0, len(m.sessions))
	for _, s := range m.sessions {
		out = append(out, s.info())
	}
	return out
}

// add admits a new session or refuses it with a *LimitExceededError. A
// session of a client that already has one supersedes the old session: the
// old one is closed, but the client's instances stay, now held by the new
// session, so a reconnect leaves no gap.
func (m *SessionManager) add(s *session) error {
	m.mu.Lock()
	if m.draining {
		m.mu.Unlock()
		return fmt.Errorf("%w: node is draining", ErrUnavailable)
	}
	old := m.byClient[s.clientID]
	if old != nil {
		// The old session of the same client does not count against the
		// new one: it is being replaced.
		m.counts.Add(old.info(), -1)
	}
	err := m.rules().AdmitCounts(m.counts, s.info())
	if old != nil {
		m.counts.Add(old.info(), 1)
	}
	if err != nil {
		m.mu.Unlock()
		return err
	}
	s.lastActive.Store(m.clock.Now().UnixNano())
	m.sessions[s.id] = s
	m.byClient[s.clientID] = s
	m.counts.Add(s.info(), 1)
	m.mu.Unlock()
	if old != nil {
		old.cancel(fmt.Errorf("%w: superseded by session %s of the same client", ErrFailedPrecondition, s.id))
	}
	return nil
}

// remove ends a session's bookkeeping: its subscriptions always go, and its
// ephemeral instances go unless a newer session of the same client holds
// them now.
func (m *SessionManager) remove(s *session, cause error) {
	m.mu.Lock()
	if _, ok := m.sessions[s.id]; !ok {
		m.mu.Unlock()
		return
	}
	delete(m.sessions, s.id)
	m.counts.Add(s.info(), -1)
	owner := m.byClient[s.clientID] == s
	if owner {
		delete(m.byClient, s.clientID)
		// Under mu: a new session of the same client cannot be admitted
		// (and register) before the old session's instances are gone, so
		// this clean-up never removes what the new session registered.
		m.eph.Disconnect(s.clientID)
	}
	m.mu.Unlock()
	m.closed.Add(1)

	s.subMu.Lock()
	subs := s.subs
	s.subs = map[naming.ServiceKey]struct{}{}
	s.subMu.Unlock()
	for k := range subs {
		m.reg.Unsubscribe(k, s)
	}
	m.logger.Info("session ended", "session-id", s.id, "client-id", s.clientID, "ip", s.ip, "cause", cause)
}

// Moved ends the session of a client that another node has taken over: the
// client reconnected there, so this session is stale. The client's
// instances stay (they belong to the new node now).
func (m *SessionManager) Moved(clientID string) {
	m.mu.Lock()
	s := m.byClient[clientID]
	m.mu.Unlock()
	if s != nil {
		s.cancel(fmt.Errorf("%w: client %s moved to another node", ErrFailedPrecondition, clientID))
	}
}

// touch records activity from the client.
func (m *SessionManager) touch(s *session) {
	s.lastActive.Store(m.clock.Now().UnixNano())
}

// probeAnswered clears an outstanding probe.
func (m *SessionManager) probeAnswered(s *session, id uint64) {
	m.mu.Lock()
	if s.probeID == id {
		s.probeID = 0
		s.probeDeadline = time.Time{}
	}
	m.mu.Unlock()
	m.touch(s)
}

// Check runs one pass of the check loop: sessions whose probe went
// unanswered are closed, silent sessions are probed, and, when limits are
// lower than the live count, the excess sessions are told to reconnect
// elsewhere. It returns whether any probe is now outstanding.
func (m *SessionManager) Check() (probing bool) {
	now := m.clock.Now()
	var expired []*session
	m.mu.Lock()
	for _, s := range m.sessions {
		if s.probeID != 0 {
			if now.After(s.probeDeadline) {
				expired = append(expired, s)
			} else {
				probing = true
			}
			continue
		}
		if now.Sub(time.Unix(0, s.lastActive.Load())) >= m.cfg.IdleTimeout {
			m.nextProbe++
			id := m.nextProbe
			if s.trySend(&regentv1.ServerMessage{Body: &regentv1.ServerMessage_Probe{Probe: &regentv1.Probe{ProbeId: id}}}) {
				s.probeID = id
				s.probeDeadline = now.Add(m.cfg.ProbeTimeout)
				probing = true
			} else {
				// Its queue is full: the client is not reading at all.
				expired = append(expired, s)
			}
		}
	}
	var excess []SessionInfo
	if r := m.rules(); !r.WithinCounts(m.counts) {
		excess = r.Excess(m.liveInfos())
	}
	var tell []*session
	for _, e := range excess {
		if s := m.sessions[e.ID]; s != nil && !s.told {
			s.told = true
			tell = append(tell, s)
		}
	}
	m.mu.Unlock()
	for _, s := range expired {
		s.cancel(fmt.Errorf("%w: probe not answered within %v", ErrUnavailable, m.cfg.ProbeTimeout))
	}
	for _, s := range tell {
		m.logger.Info("telling session to reconnect elsewhere: over connection limit", "session-id", s.id, "ip", s.ip, "app", s.app)
		s.trySend(reconnectMsg("connection limit lowered on this node", ""))
	}
	return probing
}

func reconnectMsg(reason, server string) *regentv1.ServerMessage {
	return &regentv1.ServerMessage{Body: &regentv1.ServerMessage_Reconnect{Reconnect: &regentv1.Reconnect{Reason: reason, SuggestedServer: server}}}
}

// Run runs the check loop until ctx ends. After a pass that sent probes it
// checks again once the probe timeout has passed, so an unanswered probe
// closes its session after ProbeTimeout, not a whole interval later.
func (m *SessionManager) Run(ctx context.Context) {
	ticker := time.NewTicker(m.cfg.CheckInterval)
	defer ticker.Stop()
	var probeTimer *time.Timer
	var probeC <-chan time.Time
	defer func() {
		if probeTimer != nil {
			probeTimer.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-probeC:
			probeC = nil
		}
		if m.Check() && probeC == nil {
			probeTimer = time.NewTimer(m.cfg.ProbeTimeout + 10*time.Millisecond)
			probeC = probeTimer.C
		}
	}
}

// Drain tells every session to reconnect elsewhere, refuses new ones, waits
// up to DrainGrace (or ctx) for them to leave, and closes the rest.
func (m *SessionManager) Drain(ctx context.Context) {
	m.mu.Lock()
	m.draining = true
	all := make([]*session, 0, len(m.sessions))
	for _, s := range m.sessions {
		s.told = true
		all = append(all, s)
	}
	m.mu.Unlock()
	for _, s := range all {
		s.trySend(reconnectMsg("node draining", ""))
	}
	grace := time.NewTimer(m.cfg.DrainGrace)
	defer grace.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
wait:
	for m.Count() > 0 {
		select {
		case <-ctx.Done():
			break wait
		case <-grace.C:
			break wait
		case <-tick.C:
		}
	}
	m.mu.Lock()
	left := make([]*session, 0, len(m.sessions))
	for _, s := range m.sessions {
		left = append(left, s)
	}
	m.mu.Unlock()
	for _, s := range left {
		s.cancel(fmt.Errorf("%w: node shut down", ErrUnavailable))
	}
}

// SessionSummary describes a live session for operators.
type SessionSummary struct {
	ID, ClientID, Name, IP, App string
	Created                     time.Time
}

// Sessions lists live sessions, oldest first.
func (m *SessionManager) Sessions() []SessionSummary {
	m.mu.Lock()
	out := make([]SessionSummary, 0, len(m.sessions))
	for _, s := range m.sessions {
		out = append(out, SessionSummary{ID: s.id, ClientID: s.clientID, Name: s.name, IP: s.ip, App: s.app, Created: s.created})
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}
