package storage

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// pending is the write transaction that UpdateDeferred leaves open
// (Options.CommitDelay), as etcd's backend keeps a batch transaction: a
// bbolt commit spills and writes every page the transaction dirtied, so
// many small writes in one commit cost far less than one commit each.
// Lock order: DB.mu, then pending.mu.
type pending struct {
	mu    sync.Mutex
	tx    *bolt.Tx // nil when nothing is pending
	n     int      // UpdateDeferred calls in tx
	gen   uint64   // counts the transactions opened, for the timer
	timer *time.Timer

	open atomic.Bool           // tx != nil, read without mu by the fast path
	lost atomic.Pointer[error] // set once deferred writes were lost

	writes, commits atomic.Uint64 // for DeferredStats
}

// DeferredStats returns how many UpdateDeferred calls joined a pending
// transaction, and how many pending transactions were committed: their
// ratio is how many writes a commit carried (regent_state_*_total).
func (db *DB) DeferredStats() (writes, commits uint64) {
	return db.pend.writes.Load(), db.pend.commits.Load()
}

// UpdateDeferred runs fn in the pending write transaction, opening one if
// none is, and returns without committing it: the transaction commits
// Options.CommitDelay after it was opened, or as soon as anything else
// uses the database (View, Update, Snapshot, Sync, Restore, Close), so that
// every read sees every write UpdateDeferred returned from. A process that
// dies first loses the pending writes, as one that opened the file with
// NoSync loses what the disk did not get: for a state rebuilt from a log
// (the Raft FSM), which replays them.
//
// If fn fails, the pending transaction is rolled back. When fn was its
// first write nothing else is lost and the error is fn's; otherwise the
// writes of earlier calls are lost with it, and the error wraps
// ErrDeferredLost, as does every later call but Close: the caller cannot
// go on as if they were stored. fn must not call the DB.
//
// With CommitDelay 0 it is Update.
func (db *DB) UpdateDeferred(fn func(tx *Tx) error) error {
	if db.opts.CommitDelay <= 0 {
		return db.Update(fn)
	}
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.bolt == nil {
		return ErrClosed
	}
	p := &db.pend
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.lostErr(); err != nil {
		return err
	}
	if p.tx == nil {
		btx, err := db.bolt.Begin(true)
		if err != nil {
			return fmt.Errorf("storage: begin: %w", err)
		}
		p.tx, p.n = btx, 0
		p.gen++
		gen := p.gen
		p.open.Store(true)
		p.timer = time.AfterFunc(db.opts.CommitDelay, func() { db.commitTimed(gen) })
	}
	if err := fn(&Tx{btx: p.tx}); err != nil {
		first := p.n == 0
		p.close(p.tx.Rollback)
		if first {
			return err
		}
		return p.fail(fmt.Errorf("%w: the pending transaction was rolled back: %w", ErrDeferredLost, err))
	}
	p.n++
	p.writes.Add(1)
	return nil
}

// commitTimed commits the transaction gen when its delay ends, unless
// something committed it first.
func (db *DB) commitTimed(gen uint64) {
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.bolt == nil {
		return
	}
	p := &db.pend
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tx != nil && p.gen == gen {
		_ = p.commitLocked() // a failure is kept and returned by every later call
	}
}

// flushPending commits the pending transaction, if any, and reports
// whether deferred writes were ever lost. db.mu is held.
func (db *DB) flushPending() error {
	p := &db.pend
	if !p.open.Load() {
		return p.lostErr()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.commitLocked()
}

// commitLocked commits tx if there is one. p.mu is held.
func (p *pending) commitLocked() error {
	if err := p.lostErr(); err != nil {
		return err
	}
	if p.tx == nil {
		return nil
	}
	tx := p.tx
	var err error
	p.close(func() error { err = tx.Commit(); return err })
	if err != nil {
		return p.fail(fmt.Errorf("%w: commit: %w", ErrDeferredLost, err))
	}
	p.commits.Add(1)
	return nil
}

// close ends tx with end (its Commit or Rollback). p.mu is held.
func (p *pending) close(end func() error) {
	p.timer.Stop()
	_ = end()
	p.tx, p.n = nil, 0
	p.open.Store(false)
}

func (p *pending) fail(err error) error {
	p.lost.CompareAndSwap(nil, &err)
	return *p.lost.Load()
}

func (p *pending) lostErr() error {
	if e := p.lost.Load(); e != nil {
		return *e
	}
	return nil
}
