package persistent

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/internal/registry"
	"github.com/regent-registry/regent/storage"
)

// ErrClosed is returned by writes after Close.
var ErrClosed = errors.New("persistent: store closed")

// Observer is told which services a write changed, after it is durable.
type Observer = func(changed []naming.ServiceKey)

var _ registry.Persistent = (*Local)(nil)

// Local writes persistent state straight into bbolt: a cluster of one. Every
// acknowledged write has been fsynced (unless the DB was opened with NoSync).
type Local struct {
	reader
	writes

	// mu guards observer and closed.
	mu       sync.RWMutex
	observer Observer
	closed   bool
}

// NewLocal returns a Local over an open DB.
func NewLocal(db *storage.DB) *Local {
	l := &Local{reader: reader{db}}
	l.writes = writes{l.exec}
	return l
}

// SetObserver sets the change observer (the registry's Changed).
func (l *Local) SetObserver(o Observer) {
	l.mu.Lock()
	l.observer = o
	l.mu.Unlock()
}

// Close refuses further writes; the DB is closed by its owner.
func (l *Local) Close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
}

// exec normalizes and applies one command in one bbolt transaction.
func (l *Local) exec(ctx context.Context, c Command) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	c, err := c.Normalize()
	if err != nil {
		return Result{}, err
	}
	l.mu.RLock()
	closed, obs := l.closed, l.observer
	l.mu.RUnlock()
	if closed {
		return Result{}, ErrClosed
	}
	var res Result
	var before uint64
	err = l.db.Update(func(tx *storage.Tx) error {
		before = tx.Revision(c.Key)
		var err error
		res, err = c.apply(tx)
		return err
	})
	if err != nil {
		return Result{}, fmt.Errorf("persistent: write %s: %w", c.Key, err)
	}
	if obs != nil && res.Revision != before {
		obs([]naming.ServiceKey{c.Key})
	}
	return res, nil
}
