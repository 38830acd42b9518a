package persistent

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/storage"
)

// FSM is the Raft state machine of persistent state. Its state lives in
// bbolt, and the index of the last applied entry is written in the same
// transaction as the entry's changes, so the state on disk is always the
// state after some prefix of the log. That makes it a persistent FSM: on a
// restart the node serves what is on disk at once, and entries Raft
// replays that are already in the state are skipped (raft's
// NoSnapshotRestoreOnStart).
//
// Apply and Snapshot are called from Raft's FSM goroutine; Persist of a
// snapshot runs beside later applies.
type FSM struct {
	db     *storage.DB
	logger *slog.Logger

	applied atomic.Uint64 // mirrors the index stored in bbolt

	// durable, if set, waits until the Raft log holds an index on disk:
	// raft may hand the leader's FSM an entry it counted committed while
	// the leader's own copy is still being written (see leaderLog). Set
	// before raft starts.
	durable func(index uint64) error
	fatal   func(error) // told when durable fails; stops the node

	// mu guards observer; waitMu and waiters implement WaitApplied.
	mu       sync.RWMutex
	observer Observer
	waitMu   sync.Mutex
	waiters  map[chan struct{}]uint64
}

var (
	_ raft.FSM         = (*FSM)(nil)
	_ raft.BatchingFSM = (*FSM)(nil)
)

// NewFSM returns the state machine over db.
func NewFSM(db *storage.DB, logger *slog.Logger) *FSM {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	f := &FSM{db: db, logger: logger, waiters: map[chan struct{}]uint64{}}
	f.applied.Store(f.readApplied())
	return f
}

// setDurableGate makes ApplyBatch wait, before it applies a batch, until
// wait says the batch's last index is on the log's disk; if wait fails,
// fatal is told (it stops the node) and the batch is not applied. Call it
// before raft starts.
func (f *FSM) setDurableGate(wait func(index uint64) error, fatal func(error)) {
	f.durable, f.fatal = wait, fatal
}

// stop stops the node for a failure of the state: through fatal when the
// store set it, else by a panic.
func (f *FSM) stop(err error) {
	if f.fatal != nil {
		f.fatal(err)
		return
	}
	panic(err)
}

func (f *FSM) readApplied() uint64 {
	var i uint64
	_ = f.db.View(func(tx *storage.Tx) error { i = tx.AppliedIndex(); return nil })
	return i
}

// SetObserver sets who is told which services an apply changed (the
// registry's Changed). It is called after the change is committed, from
// the FSM goroutine, so it must not block.
func (f *FSM) SetObserver(o Observer) {
	f.mu.Lock()
	f.observer = o
	f.mu.Unlock()
}

// AppliedIndex returns the index of the last entry in the state.
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// WaitApplied returns a channel closed once the state holds index i.
func (f *FSM) WaitApplied(i uint64) <-chan struct{} {
	ch := make(chan struct{})
	f.waitMu.Lock()
	defer f.waitMu.Unlock()
	if f.applied.Load() >= i {
		close(ch)
		return ch
	}
	f.waiters[ch] = i
	return ch
}

func (f *FSM) setApplied(i uint64) {
	f.applied.Store(i)
	f.waitMu.Lock()
	for ch, want := range f.waiters {
		if want <= i {
			close(ch)
			delete(f.waiters, ch)
		}
	}
	f.waitMu.Unlock()
}

// applyResult is what Apply returns for one entry (raft hands it back
// through ApplyFuture.Response).
type applyResult struct {
	Result
	Err error
}

// Apply applies one entry.
func (f *FSM) Apply(l *raft.Log) any { return f.ApplyBatch([]*raft.Log{l})[0] }

// ApplyBatch applies a batch of entries in the state's pending bbolt
// transaction, which batches that follow join until it commits (see
// OpenStateWith): one commit for many entries, which is what keeps the
// daemon near bare Raft's speed under many writers. Entries at or below
// the stored applied index are skipped (a replay after restart). A command
// that does not decode or validate changes nothing and answers its error;
// every node decides that alike. A failure of the storage itself stops the node (panic): its state
// could no longer follow the log, and Raft has no way to retry an entry.
//
// A batch is applied only once its entries are on the Raft log's disk on
// this node (the durable gate), so an entry in the state, and the answer
// to its write, stand for a majority's disks. A log that cannot get there
// stops the node as a storage failure does.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	if f.durable != nil && len(logs) > 0 {
		if err := f.durable(logs[len(logs)-1].Index); err != nil {
			f.logger.Error("cannot apply the Raft log: it is not on disk; stopping", "err", err)
			f.fatal(err)
			for i := range out {
				out[i] = applyResult{Err: fmt.Errorf("%w: the raft log is not on disk: %w", ErrUnavailable, err)}
			}
			return out
		}
	}
	var changed map[naming.ServiceKey]struct{}
	var last uint64
	// Deferred: the batch joins the state's pending transaction, which
	// commits within its delay or before anything reads the state.
	err := f.db.UpdateDeferred(func(tx *storage.Tx) error {
		applied := tx.AppliedIndex()
		changed = make(map[naming.ServiceKey]struct{})
		for i, l := range logs {
			if l.Index <= applied {
				out[i] = applyResult{Err: fmt.Errorf("persistent: entry %d already applied", l.Index)}
				continue
			}
			last = l.Index
			if l.Type != raft.LogCommand {
				out[i] = applyResult{}
				continue
			}
			c, err := DecodeCommand(l.Data)
			if err != nil {
				f.logger.Warn("refused a log entry", "index", l.Index, "err", err)
				out[i] = applyResult{Err: err}
				continue
			}
			before := tx.Revision(c.Key)
			res, err := c.apply(tx)
			if err != nil {
				return fmt.Errorf("%w: entry %d (%s %s): %w", errApply, l.Index, c.Op, c.Key, err)
			}
			if res.Revision != before {
				changed[c.Key] = struct{}{}
			}
			out[i] = applyResult{Result: res}
		}
		if last == 0 {
			return nil
		}
		return tx.SetAppliedIndex(last)
	})
	if err != nil {
		f.logger.Error("cannot apply the Raft log to the state; stopping", "err", err)
		panic(err)
	}
	// The observer first: it drops the registry's cached states of these
	// services, and a linearizable read waiting for this index (setApplied
	// wakes it) must not find them cached.
	f.notify(changed)
	if last != 0 {
		f.setApplied(last)
	}
	return out
}

func (f *FSM) notify(changed map[naming.ServiceKey]struct{}) {
	if len(changed) == 0 {
		return
	}
	f.mu.RLock()
	obs := f.observer
	f.mu.RUnlock()
	if obs == nil {
		return
	}
	keys := make([]naming.ServiceKey, 0, len(changed))
	for k := range changed {
		keys = append(keys, k)
	}
	obs(keys)
}

// Snapshot returns a snapshot of the state. Persist writes a consistent
// bbolt copy taken when it runs; the copy holds its own applied index, so
// it may include entries after the snapshot's index, which a node restoring
// it then skips when Raft replays them.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) { return fsmSnapshot{f.db}, nil }

// Restore replaces the state with a snapshot (a bbolt file). The old state
// stays if the snapshot is refused. Every service is reported changed, so
// subscribers get pushed the restored lists.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var before []naming.ServiceKey
	_ = f.db.View(func(tx *storage.Tx) error {
		return tx.ForEachService(func(k naming.ServiceKey) error { before = append(before, k); return nil })
	})
	if err := f.db.Restore(rc); err != nil {
		return fmt.Errorf("persistent: restore snapshot: %w", err)
	}
	changed := make(map[naming.ServiceKey]struct{}, len(before))
	for _, k := range before {
		changed[k] = struct{}{}
	}
	_ = f.db.View(func(tx *storage.Tx) error {
		return tx.ForEachService(func(k naming.ServiceKey) error { changed[k] = struct{}{}; return nil })
	})
	f.notify(changed) // before the waiters wake, as in ApplyBatch
	f.setApplied(f.readApplied())
	return nil
}

type fsmSnapshot struct{ db *storage.DB }

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.db.Snapshot(sink); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (fsmSnapshot) Release() {}
