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
type Observer func(changed []naming.ServiceKey)

var _ registry.Persistent = (*Local)(nil)

// Local writes persistent state straight into bbolt: a cluster of one. Every
// acknowledged write has been fsynced (unless the DB was opened with NoSync).
type Local struct {
	reader

	// mu guards observer and closed.
	mu       sync.RWMutex
	observer Observer
	closed   bool
}

// NewLocal returns a Local over an open DB.
func NewLocal(db *storage.DB) *Local { return &Local{reader: reader{db}} }

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

// Register writes instances, all or none.
func (l *Local) Register(ctx context.Context, key naming.ServiceKey, ins []naming.Instance) (uint64, error) {
	res, err := l.exec(ctx, Command{Op: OpRegister, Key: key, Instances: ins})
	return res.Revision, err
}

// Deregister removes one instance; a missing one is not an error.
func (l *Local) Deregister(ctx context.Context, key naming.ServiceKey, id naming.InstanceID) (uint64, error) {
	res, err := l.exec(ctx, Command{Op: OpDeregister, Key: key, ID: id})
	return res.Revision, err
}

// UpdateMeta replaces a service's metadata.
func (l *Local) UpdateMeta(ctx context.Context, key naming.ServiceKey, m naming.ServiceMeta) (naming.ServiceMeta, error) {
	res, err := l.exec(ctx, Command{Op: OpMeta, Key: key, Meta: m})
	return res.Meta, err
}

// SetHealthy sets a persistent instance's health flag (a health check's
// verdict); a missing instance is not an error.
func (l *Local) SetHealthy(ctx context.Context, key naming.ServiceKey, id naming.InstanceID, healthy bool) error {
	_, err := l.exec(ctx, Command{Op: OpHealth, Key: key, ID: id, Healthy: healthy})
	return err
}
