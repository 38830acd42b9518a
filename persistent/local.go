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
	db *storage.DB

	// mu guards observer and closed.
	mu       sync.RWMutex
	observer Observer
	closed   bool
}

// NewLocal returns a Local over an open DB.
func NewLocal(db *storage.DB) *Local { return &Local{db: db} }

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

func (l *Local) write(ctx context.Context, key naming.ServiceKey, fn func(tx *storage.Tx) error) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	l.mu.RLock()
	closed, obs := l.closed, l.observer
	l.mu.RUnlock()
	if closed {
		return 0, ErrClosed
	}
	var rev uint64
	var before uint64
	err := l.db.Update(func(tx *storage.Tx) error {
		before = tx.Revision(key)
		if err := fn(tx); err != nil {
			return err
		}
		rev = tx.Revision(key)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("persistent: write %s: %w", key, err)
	}
	if obs != nil && rev != before {
		obs([]naming.ServiceKey{key})
	}
	return rev, nil
}

// Register writes instances, all or none.
func (l *Local) Register(ctx context.Context, key naming.ServiceKey, ins []naming.Instance) (uint64, error) {
	return l.write(ctx, key, func(tx *storage.Tx) error {
		for _, in := range ins {
			in.Ephemeral = false
			if _, err := tx.PutInstance(key, in); err != nil {
				return err
			}
		}
		return nil
	})
}

// Deregister removes one instance; a missing one is not an error.
func (l *Local) Deregister(ctx context.Context, key naming.ServiceKey, id naming.InstanceID) (uint64, error) {
	return l.write(ctx, key, func(tx *storage.Tx) error {
		_, err := tx.DeleteInstance(key, id)
		return err
	})
}

// UpdateMeta replaces a service's metadata.
func (l *Local) UpdateMeta(ctx context.Context, key naming.ServiceKey, m naming.ServiceMeta) (naming.ServiceMeta, error) {
	_, err := l.write(ctx, key, func(tx *storage.Tx) error { return tx.PutMeta(key, m) })
	return m, err
}

// Service reads a service's persistent state in one read transaction.
func (l *Local) Service(key naming.ServiceKey) (ps registry.PersistentService, err error) {
	err = l.db.View(func(tx *storage.Tx) error {
		if ps.Instances, err = tx.Instances(key); err != nil {
			return err
		}
		ps.Revision = tx.Revision(key)
		ps.Meta, ps.HasMeta, err = tx.Meta(key)
		return err
	})
	return ps, err
}

// ServiceKeys lists services of a namespace in key order.
func (l *Local) ServiceKeys(namespace, group, after string, limit int) ([]naming.ServiceKey, error) {
	var keys []naming.ServiceKey
	err := l.db.View(func(tx *storage.Tx) error {
		infos, err := tx.Services(namespace, group, after, limit)
		for _, i := range infos {
			keys = append(keys, i.Key)
		}
		return err
	})
	return keys, err
}
