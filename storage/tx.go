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

// serviceBucket returns the service's bucket, or nil if it does not exist.
func (tx *Tx) serviceBucket(svc naming.ServiceKey) (*bolt.Bucket, error) {
	key, err := serviceBucketKey(svc)
	if err != nil {
		return nil, err
	}
	return tx.btx.Bucket(bucketServices).Bucket(key), nil
}

// createServiceBucket returns the service's bucket and its instances
// bucket, creating them if needed.
func (tx *Tx) createServiceBucket(svc naming.ServiceKey) (sb, ib *bolt.Bucket, err error) {
	key, err := serviceBucketKey(svc)
	if err != nil {
		return nil, nil, err
	}
	sb, err = tx.btx.Bucket(bucketServices).CreateBucketIfNotExists(key)
	if err != nil {
		return nil, nil, fmt.Errorf("storage: service %s: %w", svc, err)
	}
	ib, err = sb.CreateBucketIfNotExists(bucketInstances)
	if err != nil {
		return nil, nil, fmt.Errorf("storage: service %s: %w", svc, err)
	}
	return sb, ib, nil
}

// bumpRevision increments the service's revision.
func bumpRevision(svc naming.ServiceKey, sb *bolt.Bucket) error {
	rev, err := readRevision(sb)
	if err != nil {
		return fmt.Errorf("storage: service %s: %w", svc, err)
	}
	if err := sb.Put(keyRevision, encodeUint64(rev+1)); err != nil {
		return fmt.Errorf("storage: service %s: bump revision: %w", svc, err)
	}
	return nil
}

func readRevision(sb *bolt.Bucket) (uint64, error) {
	v := sb.Get(keyRevision)
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
	id := in.ID()
	val, err := encodeInstance(in)
	if err != nil {
		return false, err
	}
	sb, ib, err := tx.createServiceBucket(svc)
	if err != nil {
		return false, err
	}
	key := []byte(id.String())
	if old := ib.Get(key); old != nil && bytes.Equal(old, val) {
		return false, nil
	}
	if err := ib.Put(key, val); err != nil {
		return false, fmt.Errorf("storage: put instance %s/%s: %w", svc, id, err)
	}
	if err := bumpRevision(svc, sb); err != nil {
		return false, err
	}
	return true, nil
}

// DeleteInstance removes an instance; existed reports whether it was there.
// The revision is bumped only if it existed. The service bucket (and its
// revision) is kept even when no instance is left.
func (tx *Tx) DeleteInstance(svc naming.ServiceKey, id naming.InstanceID) (existed bool, err error) {
	sb, err := tx.serviceBucket(svc)
	if err != nil || sb == nil {
		return false, err
	}
	ib := sb.Bucket(bucketInstances)
	key := []byte(id.String())
	if ib == nil || ib.Get(key) == nil {
		return false, nil
	}
	if err := ib.Delete(key); err != nil {
		return false, fmt.Errorf("storage: delete instance %s/%s: %w", svc, id, err)
	}
	if err := bumpRevision(svc, sb); err != nil {
		return false, err
	}
	return true, nil
}

// Instance returns one instance, and whether it exists.
func (tx *Tx) Instance(svc naming.ServiceKey, id naming.InstanceID) (naming.Instance, bool, error) {
	sb, err := tx.serviceBucket(svc)
	if err != nil || sb == nil {
		return naming.Instance{}, false, err
	}
	ib := sb.Bucket(bucketInstances)
	if ib == nil {
		return naming.Instance{}, false, nil
	}
	key := []byte(id.String())
	v := ib.Get(key)
	if v == nil {
		return naming.Instance{}, false, nil
	}
	in, err := decodeInstanceAt(svc, key, v)
	if err != nil {
		return naming.Instance{}, false, err
	}
	return in, true, nil
}

// decodeInstanceAt decodes an instance stored under key and checks that
// its ID matches the key.
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
	sb, err := tx.serviceBucket(svc)
	if err != nil || sb == nil {
		return nil, err
	}
	ib := sb.Bucket(bucketInstances)
	if ib == nil {
		return nil, nil
	}
	var out []naming.Instance
	err = ib.ForEach(func(k, v []byte) error {
		in, err := decodeInstanceAt(svc, k, v)
		if err != nil {
			return err
		}
		out = append(out, in)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// PutMeta stores the service's metadata and bumps its revision.
func (tx *Tx) PutMeta(svc naming.ServiceKey, m naming.ServiceMeta) error {
	val, err := encodeMeta(m)
	if err != nil {
		return err
	}
	sb, _, err := tx.createServiceBucket(svc)
	if err != nil {
		return err
	}
	if err := sb.Put(keyServiceMeta, val); err != nil {
		return fmt.Errorf("storage: put meta %s: %w", svc, err)
	}
	return bumpRevision(svc, sb)
}

// Meta returns the service's metadata, and whether it has been set.
func (tx *Tx) Meta(svc naming.ServiceKey) (naming.ServiceMeta, bool, error) {
	sb, err := tx.serviceBucket(svc)
	if err != nil || sb == nil {
		return naming.ServiceMeta{}, false, err
	}
	v := sb.Get(keyServiceMeta)
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
	sb, err := tx.serviceBucket(svc)
	if err != nil || sb == nil {
		return 0
	}
	rev, _ := readRevision(sb)
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
	c := tx.btx.Bucket(bucketServices).Cursor()
	for k, v := c.Seek([]byte(start)); k != nil && strings.HasPrefix(string(k), prefix); k, v = c.Next() {
		if string(k) <= after {
			continue
		}
		if limit > 0 && len(out) >= limit {
			break
		}
		info, ok, err := tx.serviceInfo(c.Bucket(), k, v)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, info)
		}
	}
	return out, nil
}

// serviceInfo summarizes the service bucket at key k; ok is false for a
// service with neither metadata nor instances.
func (tx *Tx) serviceInfo(services *bolt.Bucket, k, v []byte) (ServiceInfo, bool, error) {
	svc, sb, err := serviceAt(services, k, v)
	if err != nil {
		return ServiceInfo{}, false, err
	}
	info := ServiceInfo{Key: svc, HasMeta: sb.Get(keyServiceMeta) != nil}
	if info.Revision, err = readRevision(sb); err != nil {
		return ServiceInfo{}, false, fmt.Errorf("storage: %s: %w", svc, err)
	}
	if ib := sb.Bucket(bucketInstances); ib != nil {
		err := ib.ForEach(func(ik, iv []byte) error {
			in, err := decodeInstanceAt(svc, ik, iv)
			if err != nil {
				return err
			}
			info.Instances++
			if in.Healthy {
				info.Healthy++
			}
			return nil
		})
		if err != nil {
			return ServiceInfo{}, false, err
		}
	}
	return info, info.HasMeta || info.Instances > 0, nil
}

// serviceAt parses a key/value pair of the services bucket.
func serviceAt(services *bolt.Bucket, k, v []byte) (naming.ServiceKey, *bolt.Bucket, error) {
	svc, ok := naming.ParseServiceKey(string(k))
	if !ok || v != nil {
		return naming.ServiceKey{}, nil, fmt.Errorf("storage: unexpected entry %q in services bucket: %w", k, ErrCorrupt)
	}
	return svc, services.Bucket(k), nil
}

// ForEachService calls fn for every service bucket of every namespace, in
// key-string order, stopping at fn's first error, which it returns. This
// includes services that have neither metadata nor instances left but are
// kept for their revision.
func (tx *Tx) ForEachService(fn func(naming.ServiceKey) error) error {
	services := tx.btx.Bucket(bucketServices)
	return services.ForEach(func(k, v []byte) error {
		svc, _, err := serviceAt(services, k, v)
		if err != nil {
			return err
		}
		return fn(svc)
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
	services := tx.btx.Bucket(bucketServices)
	return tx.ForEachService(func(svc naming.ServiceKey) error {
		sb := services.Bucket([]byte(svc.String()))
		if _, err := readRevision(sb); err != nil {
			return fmt.Errorf("storage: %s: %w", svc, err)
		}
		if _, _, err := tx.Meta(svc); err != nil {
			return err
		}
		_, err := tx.Instances(svc)
		return err
	})
}
