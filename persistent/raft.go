package persistent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/internal/registry"
	"github.com/regent-registry/regent/storage"
)

// Errors of the Raft store. rpc maps ErrUnavailable to UNAVAILABLE and
// ErrNotLeader to FAILED_PRECONDITION.
var (
	// ErrUnavailable: the write or linearizable read cannot be served now
	// (no leader, no quorum, leadership lost while waiting, shutting down).
	ErrUnavailable = errors.New("persistent: unavailable")
	// ErrOutcomeUnknown wraps ErrUnavailable for a write that reached the
	// leader's log but was not confirmed (leadership lost, or the wait
	// gave up): it may still be applied. Such a write is never retried by
	// the store, which would risk applying it twice.
	ErrOutcomeUnknown = fmt.Errorf("%w: outcome unknown", ErrUnavailable)
	// ErrNotLeader: a forwarded write or read barrier reached a node that
	// is not the leader (the sender retries with the leader it knows).
	ErrNotLeader = errors.New("persistent: not the Raft leader")
)

// Forwarder sends what only the leader can do to the leader, over the peer
// transport. rpc.PeerTransport implements it; tests use an in-memory one.
type Forwarder interface {
	// Apply sends an encoded command to the leader (by node name) and
	// returns its result once applied there.
	Apply(ctx context.Context, leader string, cmd []byte) (Result, error)
	// ReadIndex returns the leader's commit index after it confirmed its
	// leadership with a quorum.
	ReadIndex(ctx context.Context, leader string) (uint64, error)
}

// ServerStatus is gossip's verdict on a server.
type ServerStatus int

// Server statuses, as gossip reports them.
const (
	ServerAlive ServerStatus = iota
	ServerSuspect
	ServerDead
	ServerLeft
)

// Server is one node as gossip sees it.
type Server struct {
	// ID is the node name, which is also its Raft server ID.
	ID string
	// RaftAddr is where its Raft transport listens.
	RaftAddr string
	Status   ServerStatus
	// HasState: the node holds Raft state (it bootstrapped or was added to
	// a cluster), from its gossip metadata. A node that sees another
	// with state never bootstraps.
	HasState bool
}

// Membership is what the store needs of gossip.
type Membership interface {
	// Servers returns every server gossip knows of, this node included.
	Servers() []Server
	// SetHasState announces in gossip metadata that this node holds Raft
	// state; it is called once, when that becomes true.
	SetHasState()
}

// RaftConfig configures a Raft store.
type RaftConfig struct {
	// NodeID is this node's name: its Raft server ID. Required.
	NodeID string
	// Dir holds the Raft log and stable store (raft.db, or wal/ for
	// LogStoreWAL) and snapshots/. Required.
	Dir string
	// LogStore is the store of the Raft log and stable state:
	// LogStoreBoltDB (raft-boltdb/v2, the default; "" means it) or
	// LogStoreWAL (hashicorp/raft-wal, experimental: one fdatasync per
	// append instead of two). A node keeps the store it started with.
	LogStore string
	// BindAddr is the Raft TCP listener (host:port; port 0 picks one),
	// unless Transport is set.
	BindAddr string
	// Transport replaces the TCP transport (tests: raft.InmemTransport).
	Transport raft.Transport
	// BootstrapExpect: 0 never bootstraps (the node waits to be added by
	// a leader); N >= 1 bootstraps once gossip shows N servers without
	// Raft state, from exactly one node: the one whose ID sorts first.
	BootstrapExpect int
	// NoSync skips fsync of the Raft log (tests and throwaway nodes only).
	NoSync bool
	// SerialLeaderWrite makes the leader store each entry before it
	// replicates it (hashicorp/raft's own order: two log commits in series
	// per write) instead of in parallel with replication (see leaderLog).
	// For comparison; off by default.
	SerialLeaderWrite bool
	// TransportTimeout bounds each Raft RPC's network I/O on the TCP
	// transport (raft.NetworkTransportConfig.Timeout; 0: 10 s).
	TransportTimeout time.Duration
	// Raft timings (raft.Config); see DefaultRaftConfig.
	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout, CommitTimeout time.Duration
	// SnapshotInterval, SnapshotThreshold and TrailingLogs control
	// snapshots and log compaction (raft.Config).
	SnapshotInterval  time.Duration
	SnapshotThreshold uint64
	TrailingLogs      uint64
	// ApplyTimeout bounds a write or linearizable read, forwarding and
	// waiting for a leader included.
	ApplyTimeout time.Duration
	// ReconcileInterval is how often membership and the Raft configuration
	// are reconciled (bootstrap, adding and removing servers).
	ReconcileInterval time.Duration
	// DeadServerCleanup: a voter that gossip has reported dead (or not at
	// all) for this long is removed by the leader, if a quorum of healthy
	// voters remains without it. A server that left gracefully is removed
	// at once.
	DeadServerCleanup time.Duration
	// StateSyncInterval is how often the FSM's state (opened by OpenState
	// without fsync per commit) is flushed to disk.
	StateSyncInterval time.Duration
	// StateCommitDelay is how long applied entries may wait in the
	// state's pending transaction before it commits (sooner when anything
	// reads the state); 0 commits each batch of entries at once. The
	// daemon opens the state with it (OpenStateWith).
	StateCommitDelay time.Duration
	// Forwarder reaches the leader. Required in a cluster.
	Forwarder Forwarder
	// Membership feeds the reconciler; nil for a store driven only by
	// explicit Bootstrap calls (tests).
	Membership Membership
	// Logger receives the store's and raft's logs.
	Logger *slog.Logger
	// Now is the clock of dead-server clean-up (default time.Now).
	Now func() time.Time

	// disk, if set, stands between the log and raft-boltdb (tests: a
	// disk slow to sync).
	disk func(raft.LogStore) raft.LogStore
	// fatal, if set, is told that the log could not be written, instead
	// of the node stopping (tests: a power cut).
	fatal func(error)
}

// DefaultRaftConfig returns production settings. Raft's own defaults (1 s
// heartbeat and election timeouts) are halved: a failover then takes about
// a second on a LAN, as etcd's does.
func DefaultRaftConfig() RaftConfig {
	return RaftConfig{
		HeartbeatTimeout:   500 * time.Millisecond,
		ElectionTimeout:    500 * time.Millisecond,
		LeaderLeaseTimeout: 500 * time.Millisecond,
		CommitTimeout:      20 * time.Millisecond,
		SnapshotInterval:   2 * time.Minute,
		SnapshotThreshold:  16384,
		TrailingLogs:       10240,
		ApplyTimeout:       5 * time.Second,
		ReconcileInterval:  time.Second,
		DeadServerCleanup:  time.Minute,
		StateSyncInterval:  time.Second,
		StateCommitDelay:   DefaultStateCommitDelay,
		TransportTimeout:   10 * time.Second, // as Consul's
	}
}

// DefaultLocalRaftConfig returns fast timings for tests on one machine.
func DefaultLocalRaftConfig() RaftConfig {
	c := DefaultRaftConfig()
	c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = 200*time.Millisecond, 200*time.Millisecond, 100*time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	c.ReconcileInterval = 100 * time.Millisecond
	c.DeadServerCleanup = 5 * time.Second
	return c
}

// Validate checks the settings.
func (c *RaftConfig) Validate() error {
	var errs []error
	if c.NodeID == "" {
		errs = append(errs, errors.New("node id is empty"))
	}
	if c.Dir == "" {
		errs = append(errs, errors.New("raft dir is empty"))
	}
	if c.Transport == nil {
		if _, _, err := net.SplitHostPort(c.BindAddr); err != nil {
			errs = append(errs, fmt.Errorf("raft address %q: %w", c.BindAddr, err))
		}
	}
	if c.LogStore != "" && c.LogStore != LogStoreBoltDB && c.LogStore != LogStoreWAL {
		errs = append(errs, fmt.Errorf("raft log store %q: want %q or %q", c.LogStore, LogStoreBoltDB, LogStoreWAL))
	}
	if c.BootstrapExpect < 0 {
		errs = append(errs, errors.New("bootstrap-expect must not be negative"))
	}
	if c.TransportTimeout < 0 {
		errs = append(errs, errors.New("raft transport timeout must not be negative"))
	}
	if c.StateCommitDelay < 0 || c.StateCommitDelay > c.StateSyncInterval {
		errs = append(errs, errors.New("state commit delay must be between 0 and the state sync interval"))
	}
	if c.ApplyTimeout <= 0 || c.ReconcileInterval <= 0 || c.DeadServerCleanup <= 0 || c.StateSyncInterval <= 0 {
		errs = append(errs, errors.New("apply timeout, reconcile interval, dead-server clean-up and state sync interval must be positive"))
	}
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout || c.HeartbeatTimeout <= 0 || c.ElectionTimeout < c.HeartbeatTimeout {
		errs = append(errs, errors.New("raft timeouts must satisfy 0 < leader lease <= heartbeat <= election"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("persistent: %w", err)
	}
	return nil
}

// Store is the persistent side of a cluster node: writes go through
// hashicorp/raft (forwarded to the leader when this node is not it) into
// the FSM's bbolt state, from which reads are served locally. It
// implements registry.Persistent.
type Store struct {
	reader
	writes
	cfg    RaftConfig
	logger *slog.Logger
	fsm    *FSM
	raft   *raft.Raft
	logs   logStore   // raft-boltdb or raft-wal (cfg.LogStore)
	log    *leaderLog // the log raft writes: logs, the leader's appends in parallel with replication
	trans  raft.Transport
	tcp    *raft.NetworkTransport // nil when cfg.Transport is set
	stream *streamLayer           // tcp's connections; nil when cfg.Transport is set

	// mu guards readyTerm: the term in which this node, as leader, has
	// committed an entry (a barrier), so its commit index is current.
	mu        sync.Mutex
	readyTerm uint64

	// leaderC is closed and replaced whenever raft observes a leader
	// change, so waiters for a leader wake at once (guarded by leaderMu).
	leaderMu sync.Mutex
	leaderC  chan struct{}

	cancel context.CancelFunc
	closed <-chan struct{} // closed when Close begins
	wg     sync.WaitGroup
	kick   chan struct{}
	once   sync.Once

	// bootstraps counts calls of Bootstrap and rounds the reconciler's
	// passes over membership (observability for tests).
	bootstraps atomic.Int32
	rounds     atomic.Int64
	// forwarded counts the writes this node sent to another leader.
	forwarded atomic.Uint64
}

var _ registry.Persistent = (*Store)(nil)

// OpenRaft starts the Raft store over db (the FSM's state). The node
// serves reads from db at once; it never replays the log into a state that
// already holds it.
func OpenRaft(cfg RaftConfig, db *storage.DB) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	logger = logger.With("component", "raft")
	s := &Store{reader: reader{db}, cfg: cfg, logger: logger, fsm: NewFSM(db, logger), kick: make(chan struct{}, 1), leaderC: make(chan struct{})}
	s.writes = writes{s.Exec}
	ok := false
	defer func() {
		if !ok {
			s.closeStores()
		}
	}()
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("persistent: raft dir: %w", err)
	}
	var err error
	if s.logs, err = openLogStore(cfg.Dir, cfg.LogStore, cfg.NoSync, logger); err != nil {
		return nil, err
	}
	var disk raft.LogStore = s.logs
	if cfg.disk != nil {
		disk = cfg.disk(s.logs)
	}
	fatal := cfg.fatal
	if fatal == nil {
		fatal = func(err error) {
			logger.Error("cannot write the raft log; stopping", "err", err)
			panic(err)
		}
	}
	if s.log, err = newLeaderLog(disk, fatal); err != nil {
		return nil, err
	}
	s.fsm.setDurableGate(s.log.WaitDurable, fatal)
	cached, err := raft.NewLogCache(logCacheEntries, s.log)
	if err != nil {
		return nil, fmt.Errorf("persistent: raft log cache: %w", err)
	}
	hlog := newHCLogger(logger)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, hlog)
	if err != nil {
		return nil, fmt.Errorf("persistent: snapshot store: %w", err)
	}
	if err := s.catchUpFromSnapshot(snaps); err != nil {
		return nil, err
	}
	var inner transport
	if cfg.Transport != nil {
		t, ok := cfg.Transport.(transport)
		if !ok {
			return nil, fmt.Errorf("persistent: the raft transport %T lacks Close or RequestPreVote", cfg.Transport)
		}
		inner = t
	} else {
		if s.stream, err = newStreamLayer(cfg.BindAddr); err != nil {
			return nil, fmt.Errorf("persistent: raft transport on %s: %w", cfg.BindAddr, err)
		}
		timeout := cfg.TransportTimeout
		if timeout == 0 {
			timeout = DefaultRaftConfig().TransportTimeout
		}
		s.tcp = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: s.stream, MaxPool: 3, Timeout: timeout, Logger: hlog})
		inner = s.tcp
	}
	s.trans = raftTransport{transport: inner, commitBound: s.log.Durable}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hlog
	rc.HeartbeatTimeout, rc.ElectionTimeout = cfg.HeartbeatTimeout, cfg.ElectionTimeout
	rc.LeaderLeaseTimeout, rc.CommitTimeout = cfg.LeaderLeaseTimeout, cfg.CommitTimeout
	rc.SnapshotInterval, rc.SnapshotThreshold, rc.TrailingLogs = cfg.SnapshotInterval, cfg.SnapshotThreshold, cfg.TrailingLogs
	rc.NoSnapshotRestoreOnStart = true
	rc.MaxAppendEntries = 256
	if s.raft, err = raft.NewRaft(rc, s.fsm, cached, s.logs, snaps, s.trans); err != nil {
		return nil, fmt.Errorf("persistent: start raft: %w", err)
	}
	if !cfg.SerialLeaderWrite {
		s.log.setLeader(func() bool { return s.raft.State() == raft.Leader })
	}
	ok = true
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.closed = cancel, ctx.Done()
	obs := make(chan raft.Observation, 16)
	observer := raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	s.raft.RegisterObserver(observer)
	s.wg.Add(3)
	go func() { defer s.wg.Done(); defer s.raft.DeregisterObserver(observer); s.runLeaderWatch(ctx, obs) }()
	go func() { defer s.wg.Done(); s.runReconcile(ctx) }()
	go func() { defer s.wg.Done(); s.runStateSync(ctx) }()
	return s, nil
}

// catchUpFromSnapshot restores the newest snapshot into the FSM when the
// state on disk is older than it (a state file lost or replaced): raft,
// started with NoSnapshotRestoreOnStart, replays only the entries after
// the snapshot.
func (s *Store) catchUpFromSnapshot(snaps raft.SnapshotStore) error {
	list, err := snaps.List()
	if err != nil {
		return fmt.Errorf("persistent: list snapshots: %w", err)
	}
	if len(list) == 0 || list[0].Index <= s.fsm.AppliedIndex() {
		return nil
	}
	meta, rc, err := snaps.Open(list[0].ID)
	if err != nil {
		return fmt.Errorf("persistent: open snapshot %s: %w", list[0].ID, err)
	}
	s.logger.Warn("state is older than the newest snapshot; restoring it", "state-index", s.fsm.AppliedIndex(), "snapshot-index", meta.Index)
	return s.fsm.Restore(rc)
}

// FSM returns the state machine (for observers and tests).
func (s *Store) FSM() *FSM { return s.fsm }

// Raft returns the raft node (for tests, metrics and operators).
func (s *Store) Raft() *raft.Raft { return s.raft }

// transport is what raft finds on its transports by assertion, beside
// raft.Transport; both raft.NetworkTransport and raft.InmemTransport have
// it.
type transport interface {
	raft.Transport
	raft.WithClose
	raft.WithPreVote
}

// raftTransport is the transport raft gets. It tells followers a commit
// index no higher than the leader's durable index (see leaderLog), and
// offers no pipelined replication, which hashicorp/raft v1.8.0 can
// deadlock: when a follower answers an append
// with Success=false (or the connection breaks), the pipeline's decoder
// returns and nobody reads its responses any more; if the send loop picks
// one more trigger first, that send parks on the full in-flight channel
// for good, since the pipeline is closed only after the send loop ends.
// Replication to that follower then stops while its heartbeats go on (so
// it never calls an election), and raft.Shutdown waits forever (chaos
// finding 7; grafana/pyroscope#5518 met and fixed it the same way). Raft
// falls back to one AppendEntries call at a time, each carrying up to
// MaxAppendEntries entries.
type raftTransport struct {
	transport
	commitBound func() uint64 // the leader's durable log index
}

var _ transport = raftTransport{}

// AppendEntries sends args with its commit index cut to the leader's
// durable index: a follower applies an entry only once a majority has it
// on disk, the leader counted among them only when its copy is there.
func (t raftTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	if b := t.commitBound(); args.LeaderCommitIndex > b {
		cut := *args
		cut.LeaderCommitIndex = b
		args = &cut
	}
	return t.transport.AppendEntries(id, target, args, resp)
}

// AppendEntriesPipeline refuses: raft then replicates without a pipeline.
func (raftTransport) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}

// Addr returns the Raft transport's address.
func (s *Store) Addr() string { return string(s.trans.LocalAddr()) }

// SetObserver sets who is told of changed services (the registry's
// Changed), on every node, after the change is applied there.
func (s *Store) SetObserver(o Observer) { s.fsm.SetObserver(o) }

// HasState reports whether this node holds a Raft configuration (it
// bootstrapped, was added to a cluster, or restarted with either).
func (s *Store) HasState() bool {
	f := s.raft.GetConfiguration()
	return f.Error() == nil && len(f.Configuration().Servers) > 0
}

// Bootstrap makes this node a cluster of the given servers (ID → Raft
// address). It fails when the node already has state. The reconciler calls
// it; tests may call it directly.
func (s *Store) Bootstrap(servers map[string]string) error {
	s.bootstraps.Add(1)
	cfg := raft.Configuration{}
	for id, addr := range servers {
		cfg.Servers = append(cfg.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(addr)})
	}
	if err := s.raft.BootstrapCluster(cfg).Error(); err != nil {
		return fmt.Errorf("persistent: bootstrap: %w", err)
	}
	s.logger.Info("bootstrapped the Raft cluster", "servers", len(servers))
	return nil
}

// Role returns this node's place in the Raft configuration: "leader",
// "follower", "nonvoter" or "none"; RoleOf does the same for another node.
func (s *Store) Role() string { return s.RoleOf(s.cfg.NodeID) }

// RoleOf returns id's role in the configuration as this node knows it.
func (s *Store) RoleOf(id string) string {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return "none"
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) != id {
			continue
		}
		if srv.Suffrage != raft.Voter {
			return "nonvoter"
		}
		if _, lid := s.raft.LeaderWithID(); string(lid) == id {
			return "leader"
		}
		return "follower"
	}
	return "none"
}

// Leader returns the leader's ID as this node knows it, or "".
func (s *Store) Leader() string {
	_, id := s.raft.LeaderWithID()
	return string(id)
}

// ---------------------------------------------------------------------------
// Writes.

// Exec validates and encodes a command (refusing bad or oversized ones
// before they reach the log), proposes it on the leader, here or by
// forwarding, and returns once it is applied on the leader. Without a
// leader it waits for one within ApplyTimeout, then fails with
// ErrUnavailable; a write that fails has not been applied or, if the
// leader was lost while it was in flight, may still be applied later (as
// with any consensus system).
func (s *Store) Exec(ctx context.Context, c Command) (Result, error) {
	data, err := c.Encode()
	if err != nil {
		return Result{}, err
	}
	return viaLeader(s, ctx, "write", func(ctx context.Context) (Result, error) { return s.applyLocal(ctx, data) },
		func(ctx context.Context, leader string) (Result, error) {
			s.forwarded.Add(1)
			return s.cfg.Forwarder.Apply(ctx, leader, data)
		})
}

// LeaderLogWrites returns how many raft-boltdb commits wrote this node's
// queued appends as leader, and how many entries they held
// (regent_raft_leader_log_commits_total, _entries_total).
func (s *Store) LeaderLogWrites() (commits, entries uint64) { return s.log.QueueWrites() }

// Forwarded counts the writes this node has sent to the leader on behalf
// of its clients (each attempt once): what clients that write to the
// leader directly save (regent_raft_forwarded_writes_total).
func (s *Store) Forwarded() uint64 { return s.forwarded.Load() }

// HandleApply serves a write forwarded by another node (peer input,
// validated again here).
func (s *Store) HandleApply(ctx context.Context, data []byte) (Result, error) {
	if _, err := DecodeCommand(data); err != nil {
		return Result{}, err
	}
	if s.raft.State() != raft.Leader {
		return Result{}, fmt.Errorf("%w (leader is %q)", ErrNotLeader, s.Leader())
	}
	return s.applyLocal(ctx, data)
}

func (s *Store) applyLocal(ctx context.Context, data []byte) (Result, error) {
	timeout := s.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	if err := ctx.Err(); err != nil || timeout <= 0 {
		// The caller (for a forwarded write, its sender) has given up
		// already: proposing it now could append it after a write the
		// caller made next. raft.Apply would also read a timeout <= 0 as
		// no bound at all.
		return Result{}, fmt.Errorf("%w: the write's deadline passed before it was proposed: not applied", ErrUnavailable)
	}
	f := s.raft.Apply(data, timeout)
	if err := s.await(ctx, f, nil); err != nil {
		return Result{}, err
	}
	r, ok := f.Response().(applyResult)
	if !ok {
		return Result{}, fmt.Errorf("persistent: unexpected apply response %T", f.Response())
	}
	return r.Result, r.Err
}

// await waits for a raft future, but not past ctx nor, if closing is not
// nil, past it: raft may never answer a future it holds when it shuts down
// (a VerifyLeader still in its buffered channel, an entry committed but not
// yet applied), and its Error would then block forever. Raft's errors are
// mapped by raftError; giving up is ErrUnavailable. Writes pass no closing
// channel: raft may still answer them while it shuts down, and an early,
// ambiguous failure would be retried by the follower that forwarded the
// write, applying it twice.
func (s *Store) await(ctx context.Context, f raft.Future, closing <-chan struct{}) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if err != nil {
			return raftError(err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: gave up waiting for raft (the operation may or may not take effect): %w", ErrOutcomeUnknown, context.Cause(ctx))
	case <-closing:
		return fmt.Errorf("%w: the store is closing: %w", ErrUnavailable, raft.ErrRaftShutdown)
	}
}

// raftError maps raft's errors to the store's.
func raftError(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader):
		return fmt.Errorf("%w: %w", ErrNotLeader, err)
	case errors.Is(err, raft.ErrLeadershipLost):
		return fmt.Errorf("%w: leadership lost while writing (no quorum?); the write may or may not be applied: %w", ErrOutcomeUnknown, err)
	case errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, raft.ErrRaftShutdown), errors.Is(err, raft.ErrAbortedByRestore):
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return fmt.Errorf("persistent: raft: %w", err)
}

// viaLeader runs local when this node leads and remote on the leader
// otherwise, waiting for a leader and following leader changes until
// ApplyTimeout.
func viaLeader[T any](s *Store, ctx context.Context, what string, local func(context.Context) (T, error), remote func(context.Context, string) (T, error)) (T, error) {
	var zero T
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ApplyTimeout)
	defer cancel()
	wait := 5 * time.Millisecond
	var last error
	for {
		changed := s.leaderChanged()
		if s.raft.State() == raft.Leader {
			v, err := local(ctx)
			if !errors.Is(err, ErrNotLeader) {
				return v, err
			}
			last = err
		} else if leader := s.Leader(); leader != "" && leader != s.cfg.NodeID {
			if s.cfg.Forwarder == nil {
				return zero, fmt.Errorf("%w: %s: not the leader and no way to reach %s", ErrUnavailable, what, leader)
			}
			v, err := remote(ctx, leader)
			if !errors.Is(err, ErrNotLeader) && (!errors.Is(err, ErrUnavailable) || errors.Is(err, ErrOutcomeUnknown)) {
				return v, err
			}
			last = err
		}
		select {
		case <-ctx.Done():
			if err := context.Cause(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return zero, err
			}
			if last == nil {
				last = errors.New("no Raft leader is known: the cluster has no quorum or is still electing")
			}
			return zero, fmt.Errorf("%w: %s not served within %v: %w", ErrUnavailable, what, s.cfg.ApplyTimeout, last)
		case <-changed:
		case <-time.After(wait):
			wait = min(2*wait, 100*time.Millisecond)
		}
	}
}

// ---------------------------------------------------------------------------
// Linearizable reads.

// Barrier returns once this node's state holds every write acknowledged
// before Barrier was called (the read-index method): the leader confirms
// its leadership with a quorum and names its commit index; this node waits
// until it has applied that. A read of local state after Barrier is
// linearizable.
func (s *Store) Barrier(ctx context.Context) error {
	idx, err := viaLeader(s, ctx, "linearizable read", s.readIndex,
		func(ctx context.Context, leader string) (uint64, error) {
			return s.cfg.Forwarder.ReadIndex(ctx, leader)
		})
	if err != nil {
		return err
	}
	select {
	case <-s.fsm.WaitApplied(idx):
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: waiting to apply index %d: %w", ErrUnavailable, idx, ctx.Err())
	case <-s.closed:
		return fmt.Errorf("%w: the store is closing: %w", ErrUnavailable, raft.ErrRaftShutdown)
	}
}

// HandleReadIndex serves a read barrier for another node.
func (s *Store) HandleReadIndex(ctx context.Context) (uint64, error) {
	if s.raft.State() != raft.Leader {
		return 0, fmt.Errorf("%w (leader is %q)", ErrNotLeader, s.Leader())
	}
	return s.readIndex(ctx)
}

// readIndex, on the leader: once per term it commits a barrier entry (a
// new leader's commit index covers what earlier leaders committed only
// once it committed an entry of its own term); then it takes its commit
// index and confirms its leadership with a quorum. Every write committed
// before the read began is at or below that index: acknowledged, or not
// yet but already applied, and so seen, on some follower, whose FSM can
// run ahead of the leader's. (The leader's own applied index is not
// enough: it may lag what a follower has already served.) The index
// returned is that of the last entry at or below the commit index that
// the FSM applies, so every node's FSM reaches it (raft's commit index
// may point at entries the FSM never sees: barriers, no-ops).
func (s *Store) readIndex(ctx context.Context) (uint64, error) {
	term := s.raft.CurrentTerm()
	s.mu.Lock()
	ready := s.readyTerm == term
	s.mu.Unlock()
	if !ready {
		if err := s.await(ctx, s.raft.Barrier(s.cfg.ApplyTimeout), s.closed); err != nil {
			return 0, err
		}
		s.mu.Lock()
		s.readyTerm = term
		s.mu.Unlock()
	}
	commit := s.raft.CommitIndex()
	if err := s.await(ctx, s.raft.VerifyLeader(), s.closed); err != nil {
		return 0, err
	}
	if s.raft.CurrentTerm() != term {
		return 0, fmt.Errorf("%w: term changed during a read barrier", ErrNotLeader)
	}
	return s.lastFSMEntry(commit)
}

// lastFSMEntry returns the index of the last entry at or below i that the
// FSM applies (a command or a configuration), or the FSM's applied index
// when that is already past i.
func (s *Store) lastFSMEntry(i uint64) (uint64, error) {
	for ; i > s.fsm.AppliedIndex(); i-- {
		var l raft.Log
		if err := s.logs.GetLog(i, &l); err != nil {
			if a := s.fsm.AppliedIndex(); a >= i {
				return a, nil // applied, then compacted away meanwhile
			}
			return 0, fmt.Errorf("%w: read barrier: log entry %d: %w", ErrUnavailable, i, err)
		}
		if l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			return i, nil
		}
	}
	return s.fsm.AppliedIndex(), nil
}

// ---------------------------------------------------------------------------
// Membership: bootstrap and the leader's reconciliation.

// Kick asks the reconciler to run now (on a membership change).
func (s *Store) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *Store) runReconcile(ctx context.Context) {
	t := time.NewTicker(s.cfg.ReconcileInterval)
	defer t.Stop()
	leaderCh := s.raft.LeaderCh()
	announced := false
	deadSince := map[string]time.Time{}
	for {
		if s.cfg.Membership != nil {
			if !announced && s.HasState() {
				s.cfg.Membership.SetHasState()
				announced = true
			}
			if !announced {
				s.maybeBootstrap()
			} else if s.raft.State() == raft.Leader {
				s.reconcile(deadSince)
			} else {
				clear(deadSince)
			}
			s.rounds.Add(1)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		case <-leaderCh:
		}
	}
}

// maybeBootstrap bootstraps when gossip shows BootstrapExpect alive
// servers, none with Raft state, and this node's ID sorts first among them.
func (s *Store) maybeBootstrap() {
	if s.cfg.BootstrapExpect == 0 {
		return
	}
	var alive []Server
	for _, srv := range s.cfg.Membership.Servers() {
		if srv.HasState && srv.ID != s.cfg.NodeID {
			return // a cluster exists: its leader adds this node
		}
		if srv.Status == ServerAlive && srv.RaftAddr != "" {
			alive = append(alive, srv)
		}
	}
	if len(alive) < s.cfg.BootstrapExpect {
		return
	}
	slices.SortFunc(alive, func(a, b Server) int { return strings.Compare(a.ID, b.ID) })
	if alive[0].ID != s.cfg.NodeID {
		return
	}
	servers := map[string]string{}
	for _, srv := range alive[:s.cfg.BootstrapExpect] {
		servers[srv.ID] = srv.RaftAddr
	}
	servers[s.cfg.NodeID] = s.Addr()
	if err := s.Bootstrap(servers); err != nil {
		s.logger.Error("bootstrap failed", "err", err)
	}
}

// reconcile, on the leader: adds alive servers missing from the
// configuration as voters, removes servers that left, and removes servers
// dead for DeadServerCleanup while a quorum of healthy voters remains.
func (s *Store) reconcile(deadSince map[string]time.Time) {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	cfg := f.Configuration()
	known := map[string]Server{}
	for _, srv := range s.cfg.Membership.Servers() {
		known[srv.ID] = srv
	}
	inConfig := map[string]raft.Server{}
	for _, srv := range cfg.Servers {
		inConfig[string(srv.ID)] = srv
	}
	for id, srv := range known {
		if srv.Status != ServerAlive || srv.RaftAddr == "" {
			continue
		}
		if cur, ok := inConfig[id]; ok && string(cur.Address) == srv.RaftAddr && cur.Suffrage == raft.Voter {
			continue
		}
		s.logger.Info("adding a Raft voter", "server", id, "addr", srv.RaftAddr)
		if err := s.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(srv.RaftAddr), 0, s.cfg.ApplyTimeout).Error(); err != nil {
			s.logger.Warn("adding a Raft voter failed", "server", id, "err", err)
		}
	}
	now := s.cfg.Now()
	voters, healthy := 0, 0
	var failed []string
	for id, srv := range inConfig {
		if srv.Suffrage == raft.Voter {
			voters++
		}
		g, ok := known[id]
		switch {
		case id == s.cfg.NodeID || (ok && (g.Status == ServerAlive || g.Status == ServerSuspect)):
			delete(deadSince, id)
			if srv.Suffrage == raft.Voter {
				healthy++
			}
		case ok && g.Status == ServerLeft:
			s.logger.Info("removing a Raft server that left", "server", id)
			if err := s.raft.RemoveServer(srv.ID, 0, s.cfg.ApplyTimeout).Error(); err != nil {
				s.logger.Warn("removing a Raft server failed", "server", id, "err", err)
			}
			delete(deadSince, id)
			voters--
		default:
			if _, seen := deadSince[id]; !seen {
				deadSince[id] = now
			}
			if now.Sub(deadSince[id]) >= s.cfg.DeadServerCleanup {
				failed = append(failed, id)
			}
		}
	}
	for _, id := range failed {
		// The configuration after the removal must keep a quorum of
		// healthy voters.
		if healthy < (voters-1)/2+1 {
			s.logger.Warn("not removing a dead Raft server: too few healthy voters would remain", "server", id, "voters", voters, "healthy", healthy)
			return
		}
		s.logger.Info("removing a dead Raft server", "server", id, "dead-for", now.Sub(deadSince[id]))
		if err := s.raft.RemoveServer(raft.ServerID(id), 0, s.cfg.ApplyTimeout).Error(); err != nil {
			s.logger.Warn("removing a dead Raft server failed", "server", id, "err", err)
			return
		}
		delete(deadSince, id)
		voters--
	}
}

// ---------------------------------------------------------------------------

// runLeaderWatch wakes the waiters for a leader on every leader change.
func (s *Store) runLeaderWatch(ctx context.Context, obs <-chan raft.Observation) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-obs:
			s.leaderMu.Lock()
			close(s.leaderC)
			s.leaderC = make(chan struct{})
			s.leaderMu.Unlock()
		}
	}
}

// leaderChanged returns a channel closed at the next leader change.
func (s *Store) leaderChanged() <-chan struct{} {
	s.leaderMu.Lock()
	defer s.leaderMu.Unlock()
	return s.leaderC
}

// runStateSync flushes the FSM's state to disk every StateSyncInterval.
func (s *Store) runStateSync(ctx context.Context) {
	t := time.NewTicker(s.cfg.StateSyncInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			err := s.db.Sync()
			switch {
			case errors.Is(err, storage.ErrDeferredLost):
				// Applied entries never reached the state: it can no
				// longer follow the log (raft replays them on start).
				s.logger.Error("the state lost applied entries; stopping", "err", err)
				s.fsm.stop(err)
				return
			case err != nil && !errors.Is(err, storage.ErrClosed):
				s.logger.Warn("syncing the state to disk", "err", err)
			}
		}
	}
}

// Leave, on a graceful stop: a leader hands leadership over first, so the
// cluster does not wait out an election; the new leader removes this node
// once gossip reports it left.
func (s *Store) Leave() {
	if s.raft.State() != raft.Leader || !s.hasOtherVoter() {
		return // a lone node has nobody to hand over to
	}
	if err := s.raft.LeadershipTransfer().Error(); err != nil {
		s.logger.Warn("leadership transfer failed", "err", err)
	}
}

// hasOtherVoter reports whether the configuration names a voter besides
// this node.
func (s *Store) hasOtherVoter() bool {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage == raft.Voter && string(srv.ID) != s.cfg.NodeID {
			return true
		}
	}
	return false
}

// Close stops the node; the state stays on disk. It is idempotent.
func (s *Store) Close() error {
	var err error
	s.once.Do(func() {
		if s.cancel != nil {
			s.cancel()
		}
		s.wg.Wait()
		if s.raft != nil {
			err = s.shutdownRaft()
		}
		if serr := s.db.Sync(); serr != nil && !errors.Is(serr, storage.ErrClosed) {
			err = errors.Join(err, serr)
		}
		s.closeStores()
	})
	return err
}

// raftShutdownWait is how long Close lets raft stop by itself before it
// cuts the connections raft dialed (see streamLayer).
const raftShutdownWait = time.Second

// shutdownRaft shuts raft down; if it has not stopped after
// raftShutdownWait (a replication or heartbeat RPC waits on a peer that
// does not read), it cuts raft's outbound connections so that it can.
func (s *Store) shutdownRaft() error {
	f := s.raft.Shutdown()
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-time.After(raftShutdownWait):
	}
	if s.stream != nil {
		s.logger.Warn("raft has not stopped; cutting its connections to peers", "after", raftShutdownWait)
		s.stream.abort()
	}
	return <-done
}

func (s *Store) closeStores() {
	if s.tcp != nil {
		_ = s.tcp.Close()
	}
	if s.log != nil {
		_ = s.log.Close() // writes what the leader queued
	}
	if s.logs != nil {
		_ = s.logs.Close()
	}
}

// logCacheEntries is how many recent log entries stay in memory, so that
// the leader replicates them without reading them back from bbolt (and
// decoding them), as Consul and Nomad configure raft.
const logCacheEntries = 512

// EncodeResult encodes a result for a forwarded write's reply.
func EncodeResult(r Result) ([]byte, error) { return json.Marshal(r) }

// DecodeResult decodes a forwarded write's reply (peer input: the
// metadata it carries back to the client is validated as a write's is).
func DecodeResult(b []byte) (Result, error) {
	var r Result
	if err := json.Unmarshal(b, &r); err != nil {
		return Result{}, fmt.Errorf("persistent: bad apply result: %w", err)
	}
	if !reflect.DeepEqual(r.Meta, naming.ServiceMeta{}) {
		m, err := naming.NormalizeMeta(r.Meta)
		if err != nil {
			return Result{}, fmt.Errorf("persistent: bad apply result: %w", err)
		}
		r.Meta = m
	}
	return r, nil
}
