package storage

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/regent-registry/regent/internal/naming"
)

// writeV1 writes, straight through bbolt, what fill(n) stores, in the
// version 1 layout (a nested bucket per service), plus a service whose
// last instance was deleted (only its revision left), and returns what
// dump must show for it once migrated.
func writeV1(t *testing.T, path string, n int) string {
	t.Helper()
	// The expected content: the same records written by this version.
	want := OpenTest(t)
	fill(t, want, n)
	mustUpdate(t, want, func(tx *Tx) error {
		k := naming.ServiceKey{Namespace: "ns", Group: "g", Service: "emptied"}
		in := inst("10.9.9.9", 9)
		if _, err := tx.PutInstance(k, in); err != nil {
			return err
		}
		_, err := tx.DeleteInstance(k, in.ID())
		return err
	})
	b, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	err = b.Update(func(btx *bolt.Tx) error {
		mb, err := btx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		mb.Put(keySchemaVersion, encodeUint64(1))
		services, err := btx.CreateBucket(v1BucketServices)
		if err != nil {
			return err
		}
		return want.View(func(tx *Tx) error {
			mb.Put(keyAppliedIndex, encodeUint64(tx.AppliedIndex()))
			return tx.ForEachService(func(k naming.ServiceKey) error {
				sb, err := services.CreateBucket([]byte(k.String()))
				if err != nil {
					return err
				}
				sb.Put(v1KeyRevision, encodeUint64(tx.Revision(k)))
				if m, ok, _ := tx.Meta(k); ok {
					v, _ := encodeMeta(m)
					sb.Put(v1KeyServiceMeta, v)
				}
				ib, err := sb.CreateBucket(v1BucketInstances)
				if err != nil {
					return err
				}
				list, err := tx.Instances(k)
				for _, in := range list {
					v, _ := encodeInstance(in)
					ib.Put([]byte(in.ID().String()), v)
				}
				return err
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return dump(t, want)
}

func TestOpenMigratesSchema1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v1.db")
	want := writeV1(t, path, 60)
	db, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatalf("open a version 1 file: %v", err)
	}
	defer db.Close()
	if got := dump(t, db); got != want {
		t.Fatalf("after migration:\n%s\nwant:\n%s", got, want)
	}
	mustView(t, db, func(tx *Tx) error {
		if tx.btx.Bucket(v1BucketServices) != nil {
			t.Error("the version 1 bucket is still there")
		}
		if v, _ := decodeUint64(tx.btx.Bucket(bucketMeta).Get(keySchemaVersion)); v != schemaVersion {
			t.Errorf("schema version %d after migration", v)
		}
		if r := tx.Revision(naming.ServiceKey{Namespace: "ns", Group: "g", Service: "emptied"}); r != 2 {
			t.Errorf("revision of the emptied service %d, want 2", r)
		}
		return nil
	})
	if err := CheckConsistency(db); err != nil {
		t.Fatal(err)
	}
	// Writes go on from the migrated revisions.
	k := naming.ServiceKey{Namespace: "ns", Group: "g", Service: "s1"}
	var before uint64
	mustView(t, db, func(tx *Tx) error { before = tx.Revision(k); return nil })
	mustUpdate(t, db, func(tx *Tx) error { _, err := tx.PutInstance(k, inst("10.8.8.8", 8)); return err })
	mustView(t, db, func(tx *Tx) error {
		if r := tx.Revision(k); r != before+1 {
			t.Errorf("revision %d after a write, want %d", r, before+1)
		}
		return nil
	})
}

func TestRestoreSchema1Snapshot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v1.db")
	want := writeV1(t, path, 40)
	snap, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	db := OpenTest(t)
	fill(t, db, 3)
	if err := db.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatalf("restore a version 1 snapshot: %v", err)
	}
	if got := dump(t, db); got != want {
		t.Fatalf("after restore:\n%s\nwant:\n%s", got, want)
	}
}

func TestSchema1WithBadServiceKeyRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v1.db")
	writeV1(t, path, 5)
	b, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.Update(func(btx *bolt.Tx) error {
		_, err := btx.Bucket(v1BucketServices).CreateBucket([]byte("no-slashes"))
		return err
	})
	b.Close()
	before, _ := os.ReadFile(path)
	if db, err := Open(path, Options{NoSync: true}); !errors.Is(err, ErrCorrupt) {
		if db != nil {
			db.Close()
		}
		t.Fatalf("Open: %v, want ErrCorrupt", err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Fatal("a refused migration changed the file")
	}
}

func TestKeyWithZeroByteRefused(t *testing.T) {
	db := OpenTest(t)
	for _, k := range []naming.ServiceKey{
		{Namespace: "ns", Group: "g", Service: "a\x00b"},
		{Namespace: "n\x00s", Group: "g", Service: "a"},
	} {
		err := db.Update(func(tx *Tx) error { _, err := tx.PutInstance(k, inst("10.0.0.1", 1)); return err })
		if !errors.Is(err, ErrInvalidKey) {
			t.Errorf("PutInstance(%q): %v, want ErrInvalidKey", k.String(), err)
		}
	}
	if got := dump(t, db); got != fmt.Sprintf("applied=%d\n", 0) {
		t.Fatalf("refused writes left:\n%s", got)
	}
}
