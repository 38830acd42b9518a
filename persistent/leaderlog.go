package persistent

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// leaderLog is the Raft log store with the leader's appends written to disk
// in parallel with their replication, as the Raft thesis allows (§10.2.1)
// and etcd does. hashicorp/raft stores a new entry on the leader (one
// raft-boltdb commit, two fdatasyncs) before it sends the entry to any
// follower, which then stores it too: a commit waits for two commits in
// series. Here the leader's StoreLogs only queues its command entries, and
// one goroutine writes the queue to the store, as one commit for all that
// queued meanwhile; the leader replicates at once.
//
// Raft counts the leader's own copy in the quorum as soon as StoreLogs
// returns, so it may take an entry as committed while the leader's copy is
// still in memory. Nothing is let out on that count alone:
//
//   - The FSM applies an entry only once it is durable here
//     (WaitDurable), on the leader as everywhere, so a write is
//     acknowledged only when the leader and a follower both hold it on
//     disk: a majority of three, as before.
//   - The leader tells followers a commit index no higher than its durable
//     index (raftTransport), so no follower applies an entry that is not on
//     a majority's disks.
//   - Entries other than commands (configuration changes, the leader's
//     no-op, barriers) are stored synchronously, after the queue: raft
//     starts the next membership change once it counts the previous one
//     committed, and that count must stand for a majority's disks.
//
// A crash of the leader loses at most queued entries that nobody was told
// are committed, which Raft allows for any entry not on a majority.
//
// On a follower (any state but leader) StoreLogs writes the queue, then the
// entries, before it returns, since the follower's answer counts for the
// quorum. Every other call that reads or changes the store's index range
// writes the queue first; GetLog and LastIndex also see queued entries.
// StoreLogs is called only from raft's run goroutine (and before raft
// starts), as hashicorp/raft does.
type leaderLog struct {
	store  raft.LogStore
	leader func() bool // whether raft leads: set by raft's run goroutine, which also calls StoreLogs
	onFail func(error) // told once of a failed write of the queue (default: panic)

	mu      sync.Mutex
	cond    *sync.Cond // broadcast on every change below
	pending []*raft.Log
	writing []*raft.Log // taken by the writer, not yet in the store
	// durable: every entry at or below it that the log holds is on disk.
	durable uint64
	err     error // sticky: a failed write of the queue
	closed  bool
	done    chan struct{}

	commits, entries atomic.Uint64 // the writer's commits of the queue, and the entries they held

	flushFrom func(target uint64) // tests: told when a flush begins, under mu
}

// maxQueuedEntries bounds the leader's queue: StoreLogs waits beyond it.
const maxQueuedEntries = 8192

var (
	errLogClosed                        = errors.New("persistent: raft log store closed")
	_            raft.LogStore          = (*leaderLog)(nil)
	_            raft.MonotonicLogStore = (*leaderLog)(nil)
)

// newLeaderLog wraps store; leader reports whether raft leads (nil: not
// yet, every append is synchronous). The store's last index is durable.
func newLeaderLog(store raft.LogStore, onFail func(error)) (*leaderLog, error) {
	last, err := store.LastIndex()
	if err != nil {
		return nil, fmt.Errorf("persistent: raft log last index: %w", err)
	}
	if onFail == nil {
		onFail = func(err error) { panic(err) }
	}
	l := &leaderLog{store: store, leader: func() bool { return false }, onFail: onFail, durable: last, done: make(chan struct{})}
	l.cond = sync.NewCond(&l.mu)
	go l.run()
	return l, nil
}

// setLeader sets how the log learns whether raft leads (once raft exists).
func (l *leaderLog) setLeader(leader func() bool) {
	l.mu.Lock()
	l.leader = leader
	l.mu.Unlock()
}

func (l *leaderLog) isLeader() bool {
	l.mu.Lock()
	f := l.leader
	l.mu.Unlock()
	return f()
}

// run writes the queue to the store, all that waits as one StoreLogs.
func (l *leaderLog) run() {
	defer close(l.done)
	for {
		l.mu.Lock()
		for len(l.pending) == 0 && !l.closed {
			l.cond.Wait()
		}
		if len(l.pending) == 0 {
			l.mu.Unlock()
			return // closed, queue written
		}
		batch := l.pending
		l.pending, l.writing = nil, batch
		l.mu.Unlock()

		err := l.store.StoreLogs(batch)

		l.mu.Lock()
		l.writing = nil
		if err != nil {
			l.err = fmt.Errorf("persistent: write the leader's raft log (entries %d-%d): %w", batch[0].Index, batch[len(batch)-1].Index, err)
			err = l.err
		} else {
			l.durable = batch[len(batch)-1].Index
			l.commits.Add(1)
			l.entries.Add(uint64(len(batch)))
		}
		l.cond.Broadcast()
		l.mu.Unlock()
		if err != nil {
			l.onFail(err)
			return
		}
	}
}

// flushLocked waits until every entry queued now is in the store (not
// for entries queued meanwhile: a compaction must not wait out a leader
// that keeps appending). l.mu is held.
func (l *leaderLog) flushLocked() error {
	target := l.lastQueuedLocked()
	if l.flushFrom != nil {
		l.flushFrom(target)
	}
	for target != 0 && l.err == nil && (queuedUpTo(l.pending, target) || queuedUpTo(l.writing, target)) {
		l.cond.Wait()
	}
	return l.err
}

// lastQueuedLocked returns the index of the newest entry not yet in the
// store (0: none). l.mu is held.
func (l *leaderLog) lastQueuedLocked() uint64 {
	switch {
	case len(l.pending) > 0:
		return l.pending[len(l.pending)-1].Index
	case len(l.writing) > 0:
		return l.writing[len(l.writing)-1].Index
	}
	return 0
}

// queuedUpTo reports whether run holds an entry at or below index.
func queuedUpTo(run []*raft.Log, index uint64) bool { return len(run) > 0 && run[0].Index <= index }

func (l *leaderLog) flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.flushLocked()
}

// StoreLogs queues the leader's command entries, and writes anything else
// (a follower's entries, or entries that are not all commands) before it
// returns.
func (l *leaderLog) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	if allCommands(logs) && l.isLeader() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for len(l.pending) >= maxQueuedEntries && l.err == nil && !l.closed {
			l.cond.Wait()
		}
		switch {
		case l.err != nil:
			return l.err
		case l.closed:
			return errLogClosed
		}
		l.pending = append(l.pending, logs...)
		l.cond.Broadcast()
		return nil
	}
	if err := l.flush(); err != nil {
		return err
	}
	// The queue is empty and only this goroutine adds to it: the store
	// gets these entries after every queued one.
	if err := l.store.StoreLogs(logs); err != nil {
		return err
	}
	l.mu.Lock()
	l.durable = logs[len(logs)-1].Index
	l.cond.Broadcast()
	l.mu.Unlock()
	return nil
}

// StoreLog stores one entry as StoreLogs does.
func (l *leaderLog) StoreLog(log *raft.Log) error { return l.StoreLogs([]*raft.Log{log}) }

// IsMonotonic passes on whether the store refuses gaps in its indexes
// (raft.MonotonicLogStore, as raft-wal does): raft then empties the log
// after installing a snapshot, where it would otherwise leave a gap before
// the next append. The queue itself only ever appends in order.
func (l *leaderLog) IsMonotonic() bool {
	m, ok := l.store.(raft.MonotonicLogStore)
	return ok && m.IsMonotonic()
}

func allCommands(logs []*raft.Log) bool {
	for _, e := range logs {
		if e.Type != raft.LogCommand {
			return false
		}
	}
	return true
}

// GetLog returns an entry, queued or stored.
func (l *leaderLog) GetLog(index uint64, out *raft.Log) error {
	l.mu.Lock()
	e := findEntry(l.pending, index)
	if e == nil {
		e = findEntry(l.writing, index)
	}
	l.mu.Unlock()
	if e != nil {
		*out = *e
		return nil
	}
	return l.store.GetLog(index, out)
}

// findEntry finds index in a run of consecutive entries.
func findEntry(run []*raft.Log, index uint64) *raft.Log {
	if len(run) == 0 || index < run[0].Index {
		return nil
	}
	if i := index - run[0].Index; i < uint64(len(run)) && run[i].Index == index {
		return run[i]
	}
	return nil
}

// LastIndex returns the last entry's index, queued or stored.
func (l *leaderLog) LastIndex() (uint64, error) {
	l.mu.Lock()
	last := l.lastQueuedLocked()
	l.mu.Unlock()
	if last != 0 {
		return last, nil
	}
	return l.store.LastIndex()
}

// FirstIndex returns the first entry's index, once the queue is stored.
func (l *leaderLog) FirstIndex() (uint64, error) {
	if err := l.flush(); err != nil {
		return 0, err
	}
	return l.store.FirstIndex()
}

// DeleteRange removes entries min..max, once the queue is stored. A
// removed tail (a follower's conflicting entries) is no longer durable.
func (l *leaderLog) DeleteRange(min, max uint64) error {
	if err := l.flush(); err != nil {
		return err
	}
	if err := l.store.DeleteRange(min, max); err != nil {
		return err
	}
	l.mu.Lock()
	if min <= l.durable && max >= l.durable {
		l.durable = min - 1
	}
	l.cond.Broadcast()
	l.mu.Unlock()
	return nil
}

// QueueWrites returns how many commits wrote the leader's queue, and how
// many entries they held: their ratio is the group commit's batch.
func (l *leaderLog) QueueWrites() (commits, entries uint64) {
	return l.commits.Load(), l.entries.Load()
}

// Durable returns the index up to which the log is on disk.
func (l *leaderLog) Durable() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.durable
}

// WaitDurable waits until the log holds index on disk. It fails only if
// the queue's write failed (the node is then stopped by onFail) or the
// log closed with index still not on disk.
func (l *leaderLog) WaitDurable(index uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.durable < index && l.err == nil && !(l.closed && len(l.pending) == 0 && l.writing == nil) {
		l.cond.Wait()
	}
	switch {
	case l.durable >= index:
		return nil
	case l.err != nil:
		return l.err
	}
	return fmt.Errorf("%w before entry %d was on disk", errLogClosed, index)
}

// Close writes the queue and stops the writer; the store stays open (its
// owner closes it).
func (l *leaderLog) Close() error {
	l.mu.Lock()
	l.closed = true
	l.cond.Broadcast()
	l.mu.Unlock()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}
