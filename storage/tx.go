package storage

import (
	"bytes"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/regent-registry/regent/internal/naming"
)

// Tx is one transaction, valid only inside the function given to DB.Update
// or DB.View. Write methods fail in a View transaction.
type Tx struct {
	btx *bolt.Tx
}

// ServiceInfo summarizes one service for listings.
type ServiceInfo struct {
	Key       naming.ServiceKey
	Instances int
	Healthy   int
	HasMeta   bool
	Revision  uint64
}

// instanceKey is an instance's key in bucketInstances: its service's key,
// a 0 byte, and its ID.
func instanceKey(sk []byte, id string) []byte {
	return append(instancePrefix(sk), id...)
}

// instancePrefix starts the keys of every instance of the service sk.
func instancePrefix(sk []byte) []byte {
	p := make([]byte, 0, len(sk)+1+32)
	return append(append(p, sk...), 0)
}

// bumpRevision increments the service's revision (creating it at 1).
func (tx *Tx) bumpRevision(svc naming.ServiceKey, sk []byte) error {
	rb := tx.btx.Bucket(bucketRevisions)
	rev, err := readRevision(rb.Get(sk))
	if err != nil {
		return fmt.Errorf("storage: service %s: %w", svc, err)
	}
	if err := rb.Put(sk, encodeUint64(rev+1)); err != nil {
		return fmt.Errorf("storage: service %s: bump revision: %w", svc, err)
	}
	return nil
}

func readRevision(v []byte) (uint64, error) {
	if v == nil {
		return 0, nil
	}
	rev, err := decodeUint64(v)
	if err != nil {
		return 0, fmt.Errorf("revision: %w", err)
	}
	return rev, nil
}

// PutInstance inserts in, or replaces the instance with the same ID. The
// service's revision is bumped only if the stored data changed; changed
// reports whether it did. An empty Metadata map is stored as nil.
func (tx *Tx) PutInstance(svc naming.ServiceKey, in naming.Instance) (changed bool, err error) {
	sk, err := serviceBucketKey(svc)
	if err != nil {
		return false, err
	}
	val, err := encodeInstance(in)
	if err != nil {
		return false, err
	}
	ib := tx.btx.Bucket(bucketInstances)
	key := instanceKey(sk, in.ID().String())
	if old := ib.Get(key); old != nil && bytes.Equal(old, val) {
		return false, nil
	}
	if err := ib.Put(key, val); err != nil {
		return false, fmt.Errorf("storage: put instance %s/%s: %w", svc, in.ID(), err)
	}
	if err := tx.bumpRevision(svc, sk); err != nil {
		return false, err
	}
	return true, nil
}

// DeleteInstance removes an instance; existed reports whether it was there.
// The revision is bumped only if it existed. The service bucket (and its
// revision) is kept even when no instance is left.
func (tx *Tx) DeleteInstance(svc naming.ServiceKey, id naming.InstanceID) (existed bool, err error) {
	sk, err := serviceBucketKey(svc)
	if err != nil {
		return false, err
	}
	ib := tx.btx.Bucket(bucketInstances)
	key := instanceKey(sk, id.String())
	if ib.Get(key) == nil {
		return false, nil
	}
	if err := ib.Delete(key); err != nil {
		return false, fmt.Errorf("storage: delete instance %s/%s: %w", svc, id, err)
	}
	if err := tx.bumpRevision(svc, sk); err != nil {
		return false, err
	}
	return true, nil
}

// Instance returns one instance, and whether it exists.
func (tx *Tx) Instance(svc naming.ServiceKey, id naming.InstanceID) (naming.Instance, bool, error) {
	sk, err := serviceBucketKey(svc)
	if err != nil {
		return naming.Instance{}, false, err
	}
	key := instanceKey(sk, id.String())
	v := tx.btx.Bucket(bucketInstances).Get(key)
	if v == nil {
		return naming.Instance{}, false, nil
	}
	in, err := decodeInstanceAt(svc, key[len(sk)+1:], v)
	if err != nil {
		return naming.Instance{}, false, err
	}
	return in, true, nil
}

// decodeInstanceAt decodes an instance stored under the ID key (its key in
// bucketInstances after the service prefix) and checks that its ID matches.
func decodeInstanceAt(svc naming.ServiceKey, key, v []byte) (naming.Instance, error) {
	in, err := decodeInstance(v)
	if err != nil {
		return naming.Instance{}, fmt.Errorf("storage: %s/%s: %w", svc, key, err)
	}
	if got := in.ID().String(); got != string(key) {
		return naming.Instance{}, fmt.Errorf("storage: %s/%s: instance id %s does not match its key: %w", svc, key, got, ErrCorrupt)
	}
	return in, nil
}

// Instances returns the service's instances in key order (by the
// InstanceID string). The result is a fresh copy; nil if there are none.
func (tx *Tx) Instances(svc naming.ServiceKey) ([]naming.Instance, error) {
	sk, err := serviceBucketKey(svc)
	if err != nil {
		return nil, err
	}
	var out []naming.Instance
	err = tx.forEachInstance(svc, sk, func(in naming.Instance) error {
		out = append(out, in)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// forEachInstance calls fn for every instance of the service sk, in key
// order, stopping at fn's first error, which it returns.
func (tx *Tx) forEachInstance(svc naming.ServiceKey, sk []byte, fn func(naming.Instance) error) error {
	prefix := instancePrefix(sk)
	c := tx.btx.Bucket(bucketInstances).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		in, err := decodeInstanceAt(svc, k[len(prefix):], v)
		if err != nil {
			return err
		}
		if err := fn(in); err != nil {
			return err
		}
	}
	return nil
}

// PutMeta stores the service's metadata and bumps its revision.
func (tx *Tx) PutMeta(svc naming.ServiceKey, m naming.ServiceMeta) error {
	sk, err := serviceBucketKey(svc)
	if err != nil {
		return err
	}
	val, err := encodeMeta(m)
	if err != nil {
		return err
	}
	if err := tx.btx.Bucket(bucketServiceMeta).Put(sk, val); err != nil {
		return fmt.Errorf("storage: put meta %s: %w", svc, err)
	}
	return tx.bumpRevision(svc, sk)
}

// Meta returns the service's metadata, and whether it has been set.
func (tx *Tx) Meta(svc naming.ServiceKey) (naming.ServiceMeta, bool, error) {
	sk, err := serviceBucketKey(svc)
	if err != nil {
		return naming.ServiceMeta{}, false, err
	}
	v := tx.btx.Bucket(bucketServiceMeta).Get(sk)
	if v == nil {
		return naming.ServiceMeta{}, false, nil
	}
	m, err := decodeMeta(v)
	if err != nil {
		return naming.ServiceMeta{}, false, fmt.Errorf("storage: %s: %w", svc, err)
	}
	return m, true, nil
}

// Revision returns the service's revision: 0 for an unknown service (or an
// invalid key, or an unreadable value), otherwise a counter bumped by every
// change and never reset.
func (tx *Tx) Revision(svc naming.ServiceKey) uint64 {
	sk, err := serviceBucketKey(svc)
	if err != nil {
		return 0
	}
	rev, _ := readRevision(tx.btx.Bucket(bucketRevisions).Get(sk))
	return rev
}

// Services lists the services of namespace (of every group if group is
// empty, else of that group) whose key string is greater than after, in
// key-string order, at most limit of them (all if limit <= 0). Services
// with neither metadata nor instances are left out. Pass the last returned
// Key.String() as after to get the next page.
func (tx *Tx) Services(namespace, group string, after string, limit int) ([]ServiceInfo, error) {
	prefix := namespace + "/"
	if group != "" {
		prefix += group + "/"
	}
	start := prefix
	if after > start {
		start = after
	}
	var out []ServiceInfo
	c := tx.btx.Bucket(bucketRevisions).Cursor()
	for k, v := c.Seek([]byte(start)); k != nil && strings.HasPrefix(string(k), prefix); k, v = c.Next() {
		if string(k) <= after {
			continue
		}
		if limit > 0 && len(out) >= limit {
			break
		}
		info, ok, err := tx.serviceInfo(k, v)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, info)
		}
	}
	return out, nil
}

// serviceInfo summarizes the service whose revision entry is k, v; ok is
// false for a service with neither metadata nor instances.
func (tx *Tx) serviceInfo(k, v []byte) (ServiceInfo, bool, error) {
	svc, err := serviceAt(k)
	if err != nil {
		return ServiceInfo{}, false, err
	}
	info := ServiceInfo{Key: svc, HasMeta: tx.btx.Bucket(bucketServiceMeta).Get(k) != nil}
	if info.Revision, err = readRevision(v); err != nil {
		return ServiceInfo{}, false, fmt.Errorf("storage: %s: %w", svc, err)
	}
	err = tx.forEachInstance(svc, k, func(in naming.Instance) error {
		info.Instances++
		if in.Healthy {
			info.Healthy++
		}
		return nil
	})
	if err != nil {
		return ServiceInfo{}, false, err
	}
	return info, info.HasMeta || info.Instances > 0, nil
}

// serviceAt parses a key of the revisions or metadata bucket.
func serviceAt(k []byte) (naming.ServiceKey, error) {
	svc, ok := naming.ParseServiceKey(string(k))
	if !ok {
		return naming.ServiceKey{}, fmt.Errorf("storage: unexpected service key %q: %w", k, ErrCorrupt)
	}
	if sk, err := serviceBucketKey(svc); err != nil || !bytes.Equal(sk, k) {
		return naming.ServiceKey{}, fmt.Errorf("storage: unexpected service key %q: %w", k, ErrCorrupt)
	}
	return svc, nil
}

// ForEachService calls fn for every service of every namespace, in
// key-string order, stopping at fn's first error, which it returns. This
// includes services that have neither metadata nor instances left but are
// kept for their revision.
func (tx *Tx) ForEachService(fn func(naming.ServiceKey) error) error {
	return tx.btx.Bucket(bucketRevisions).ForEach(func(k, _ []byte) error {
		svc, err := serviceAt(k)
		if err != nil {
			return err
		}
		return fn(svc)
	})
}

// ForEachServiceRevision calls fn with every service of every namespace
// and its revision, in key-string order, reading the revisions bucket
// alone (no instance is decoded); it stops at fn's first error, which it
// returns. Like ForEachService it includes services kept only for their
// revision.
func (tx *Tx) ForEachServiceRevision(fn func(naming.ServiceKey, uint64) error) error {
	return tx.btx.Bucket(bucketRevisions).ForEach(func(k, v []byte) error {
		svc, err := serviceAt(k)
		if err != nil {
			return err
		}
		rev, err := readRevision(v)
		if err != nil {
			return fmt.Errorf("storage: %s: %w", svc, err)
		}
		return fn(svc, rev)
	})
}

// AppliedIndex returns the last index stored by SetAppliedIndex, 0 if none.
func (tx *Tx) AppliedIndex() uint64 {
	v := tx.btx.Bucket(bucketMeta).Get(keyAppliedIndex)
	if v == nil {
		return 0
	}
	i, _ := decodeUint64(v)
	return i
}

// SetAppliedIndex stores the raft applied index in this transaction, so
// that it commits together with the changes of the entry.
func (tx *Tx) SetAppliedIndex(i uint64) error {
	if err := tx.btx.Bucket(bucketMeta).Put(keyAppliedIndex, encodeUint64(i)); err != nil {
		return fmt.Errorf("storage: set applied index: %w", err)
	}
	return nil
}

// checkRecords decodes every record of the database and returns the first
// error.
func (tx *Tx) checkRecords() error {
	if v := tx.btx.Bucket(bucketMeta).Get(keyAppliedIndex); v != nil {
		if _, err := decodeUint64(v); err != nil {
			return fmt.Errorf("storage: applied index: %w", err)
		}
	}
	revs := tx.btx.Bucket(bucketRevisions)
	err := revs.ForEach(func(k, v []byte) error {
		svc, err := serviceAt(k)
		if err != nil {
			return err
		}
		if _, err := readRevision(v); err != nil {
			return fmt.Errorf("storage: %s: %w", svc, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	err = tx.btx.Bucket(bucketServiceMeta).ForEach(func(k, v []byte) error {
		svc, err := serviceAt(k)
		if err != nil {
			return err
		}
		if revs.Get(k) == nil {
			return fmt.Errorf("storage: %s: metadata of a service without a revision: %w", svc, ErrCorrupt)
		}
		if _, err := decodeMeta(v); err != nil {
			return fmt.Errorf("storage: %s: %w", svc, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tx.btx.Bucket(bucketInstances).ForEach(func(k, v []byte) error {
		sk, id, ok := bytes.Cut(k, []byte{0})
		if !ok {
			return fmt.Errorf("storage: instance key %q without a service: %w", k, ErrCorrupt)
		}
		svc, err := serviceAt(sk)
		if err != nil {
			return err
		}
		if revs.Get(sk) == nil {
			return fmt.Errorf("storage: %s: instance of a service without a revision: %w", svc, ErrCorrupt)
		}
		_, err = decodeInstanceAt(svc, id, v)
		return err
	})
}
