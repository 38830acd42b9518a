package storage

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Layout version 1, kept only to migrate it: one nested bucket per service
// under "services", holding "rev", "meta" and a nested "instances" bucket.
// A commit then rewrote a page of every service bucket and of every
// instances bucket it touched; version 2 keeps each kind of record in one
// flat bucket, so the entries of one Raft batch share pages.
var (
	v1BucketServices  = []byte("services")
	v1KeyRevision     = []byte("rev")
	v1KeyServiceMeta  = []byte("meta")
	v1BucketInstances = []byte("instances")
)

// migrateV1 rewrites a version 1 layout as version 2 inside btx: every
// record is copied as it is (values did not change) and the old bucket is
// deleted. It runs in the write transaction that opens the file, so a
// crash leaves either layout whole.
func migrateV1(btx *bolt.Tx) error {
	old := btx.Bucket(v1BucketServices)
	if old == nil {
		return fmt.Errorf("schema 1 without its services bucket: %w", ErrCorrupt)
	}
	for _, name := range rootBuckets[1:] {
		if _, err := btx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %q: %w", name, err)
		}
	}
	revs, metas, insts := btx.Bucket(bucketRevisions), btx.Bucket(bucketServiceMeta), btx.Bucket(bucketInstances)
	err := old.ForEach(func(k, v []byte) error {
		sb := old.Bucket(k)
		if v != nil || sb == nil {
			return fmt.Errorf("unexpected entry %q in the services bucket: %w", k, ErrCorrupt)
		}
		if _, err := serviceAt(k); err != nil {
			return err
		}
		rev := sb.Get(v1KeyRevision)
		if rev == nil {
			rev = encodeUint64(0)
		}
		if err := revs.Put(k, rev); err != nil {
			return err
		}
		if m := sb.Get(v1KeyServiceMeta); m != nil {
			if err := metas.Put(k, m); err != nil {
				return err
			}
		}
		ib := sb.Bucket(v1BucketInstances)
		if ib == nil {
			return nil
		}
		return ib.ForEach(func(id, iv []byte) error {
			return insts.Put(instanceKey(k, string(id)), iv)
		})
	})
	if err != nil {
		return fmt.Errorf("migrate schema 1: %w", err)
	}
	if err := btx.DeleteBucket(v1BucketServices); err != nil {
		return fmt.Errorf("migrate schema 1: %w", err)
	}
	return btx.Bucket(bucketMeta).Put(keySchemaVersion, encodeUint64(schemaVersion))
}
