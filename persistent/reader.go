package persistent

import (
	"context"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/internal/registry"
	"github.com/regent-registry/regent/storage"
)

// reader serves the read side of registry.Persistent from bbolt: the same
// for Local and for the Raft store, whose FSM keeps its state there.
type reader struct{ db *storage.DB }

// Service reads a service's persistent state in one read transaction.
func (l reader) Service(key naming.ServiceKey) (ps registry.PersistentService, err error) {
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
func (l reader) ServiceKeys(namespace, group, after string, limit int) ([]naming.ServiceKey, error) {
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

// ServiceRevisions lists every service with persistent state, in every
// namespace, with its revision, in one read transaction that decodes no
// instance.
func (l reader) ServiceRevisions() (map[naming.ServiceKey]uint64, error) {
	revs := make(map[naming.ServiceKey]uint64)
	err := l.db.View(func(tx *storage.Tx) error {
		return tx.ForEachServiceRevision(func(k naming.ServiceKey, rev uint64) error {
			revs[k] = rev
			return nil
		})
	})
	return revs, err
}

// Services lists every service with persistent state, in every namespace.
func (l reader) Services() ([]naming.ServiceKey, error) {
	var keys []naming.ServiceKey
	err := l.db.View(func(tx *storage.Tx) error {
		return tx.ForEachService(func(k naming.ServiceKey) error {
			keys = append(keys, k)
			return nil
		})
	})
	return keys, err
}

// writes builds the write side of registry.Persistent (and the health
// checker's Writer) over one way of executing a command: straight into
// bbolt for Local, through the Raft log for Store.
type writes struct {
	exec func(context.Context, Command) (Result, error)
}

// Register writes instances of one service, all or none.
func (w writes) Register(ctx context.Context, key naming.ServiceKey, ins []naming.Instance) (uint64, error) {
	res, err := w.exec(ctx, Command{Op: OpRegister, Key: key, Instances: ins})
	return res.Revision, err
}

// Deregister removes one instance; a missing one is not an error.
func (w writes) Deregister(ctx context.Context, key naming.ServiceKey, id naming.InstanceID) (uint64, error) {
	res, err := w.exec(ctx, Command{Op: OpDeregister, Key: key, ID: id})
	return res.Revision, err
}

// UpdateMeta replaces a service's metadata and returns it as stored.
func (w writes) UpdateMeta(ctx context.Context, key naming.ServiceKey, m naming.ServiceMeta) (naming.ServiceMeta, error) {
	res, err := w.exec(ctx, Command{Op: OpMeta, Key: key, Meta: m})
	return res.Meta, err
}

// SetHealthy records a health check's verdict on a persistent instance; a
// missing instance is not an error.
func (w writes) SetHealthy(ctx context.Context, key naming.ServiceKey, id naming.InstanceID, healthy bool) error {
	_, err := w.exec(ctx, Command{Op: OpHealth, Key: key, ID: id, Healthy: healthy})
	return err
}
