package persistent

import (
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
