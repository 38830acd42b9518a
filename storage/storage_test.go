package storage

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/regent-registry/regent/internal/naming"
)

var svcA = naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "orders"}

func inst(ip string, port int) naming.Instance {
	return naming.Instance{IP: ip, Port: port, Cluster: "DEFAULT", Weight: 1, Healthy: true, Enabled: true}
}

func mustUpdate(t *testing.T, db *DB, fn func(tx *Tx) error) {
	t.Helper()
	if err := db.Update(fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

func mustView(t *testing.T, db *DB, fn func(tx *Tx) error) {
	t.Helper()
	if err := db.View(fn); err != nil {
		t.Fatalf("View: %v", err)
	}
}

func revision(t *testing.T, db *DB, svc naming.ServiceKey) (rev uint64) {
	t.Helper()
	mustView(t, db, func(tx *Tx) error { rev = tx.Revision(svc); return nil })
	return rev
}

func reopen(t *testing.T, db *DB) *DB {
	t.Helper()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db2, err := Open(db.Path(), Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db2.Close() })
	return db2
}

func TestInstanceCRUD(t *testing.T) {
	db := OpenTest(t)
	full := naming.Instance{
		IP: "10.0.0.1", Port: 8080, Cluster: "c1", Weight: 2.5,
		Healthy: true, Enabled: false, Ephemeral: true,
		Metadata: map[string]string{"zone": "a", "v": ""},
	}
	mustUpdate(t, db, func(tx *Tx) error {
		changed, err := tx.PutInstance(svcA, full)
		if err != nil || !changed {
			t.Fatalf("put: changed=%v err=%v", changed, err)
		}
		_, err = tx.PutInstance(svcA, naming.Instance{IP: "10.0.0.2", Port: 1, Cluster: "c1", Metadata: map[string]string{}})
		return err
	})
	mustView(t, db, func(tx *Tx) error {
		got, ok, err := tx.Instance(svcA, full.ID())
		if err != nil || !ok || !reflect.DeepEqual(got, full) {
			t.Fatalf("get: %+v %v %v, want %+v", got, ok, err, full)
		}
		got, ok, err = tx.Instance(svcA, naming.InstanceID{IP: "10.0.0.2", Port: 1, Cluster: "c1"})
		if err != nil || !ok || got.Metadata != nil || got.Weight != 0 || got.Healthy || got.Enabled {
			t.Fatalf("get zero instance: %+v %v %v", got, ok, err)
		}
		if _, ok, err := tx.Instance(svcA, naming.InstanceID{IP: "1.1.1.1", Port: 1, Cluster: "c1"}); ok || err != nil {
			t.Fatalf("missing instance: %v %v", ok, err)
		}
		if _, ok, err := tx.Instance(naming.ServiceKey{Namespace: "x", Group: "y", Service: "z"}, full.ID()); ok || err != nil {
			t.Fatalf("missing service: %v %v", ok, err)
		}
		list, err := tx.Instances(svcA)
		if err != nil || len(list) != 2 || list[0].IP != "10.0.0.1" || list[1].IP != "10.0.0.2" {
			t.Fatalf("list: %+v %v", list, err)
		}
		return nil
	})

	// Replace by ID.
	repl := full.Clone()
	repl.Weight = 7
	repl.Metadata["zone"] = "b"
	mustUpdate(t, db, func(tx *Tx) error {
		changed, err := tx.PutInstance(svcA, repl)
		if err != nil || !changed {
			t.Fatalf("replace: changed=%v err=%v", changed, err)
		}
		return nil
	})
	mustView(t, db, func(tx *Tx) error {
		got, _, _ := tx.Instance(svcA, full.ID())
		if !reflect.DeepEqual(got, repl) {
			t.Fatalf("after replace %+v, want %+v", got, repl)
		}
		if list, _ := tx.Instances(svcA); len(list) != 2 {
			t.Fatalf("replace added an instance: %d", len(list))
		}
		return nil
	})

	// Delete, then delete again.
	for i, want := range []bool{true, false} {
		mustUpdate(t, db, func(tx *Tx) error {
			existed, err := tx.DeleteInstance(svcA, full.ID())
			if err != nil || existed != want {
				t.Fatalf("delete #%d: existed=%v err=%v", i, existed, err)
			}
			return nil
		})
	}
	mustUpdate(t, db, func(tx *Tx) error {
		existed, err := tx.DeleteInstance(naming.ServiceKey{Namespace: "x", Group: "y", Service: "z"}, full.ID())
		if err != nil || existed {
			t.Fatalf("delete in unknown service: %v %v", existed, err)
		}
		return nil
	})
	mustView(t, db, func(tx *Tx) error {
		if _, ok, _ := tx.Instance(svcA, full.ID()); ok {
			t.Fatal("deleted instance still there")
		}
		return nil
	})
}

func TestInvalidServiceKey(t *testing.T) {
	db := OpenTest(t)
	err := db.Update(func(tx *Tx) error {
		_, err := tx.PutInstance(naming.ServiceKey{Namespace: "a", Group: "b/c", Service: "d"}, inst("10.0.0.1", 1))
		return err
	})
	if !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("got %v, want ErrInvalidKey", err)
	}
}

func TestRevision(t *testing.T) {
	db := OpenTest(t)
	if r := revision(t, db, svcA); r != 0 {
		t.Fatalf("unknown service revision %d", r)
	}
	in := inst("10.0.0.1", 80)
	mustUpdate(t, db, func(tx *Tx) error { _, err := tx.PutInstance(svcA, in); return err })
	r1 := revision(t, db, svcA)
	if r1 == 0 {
		t.Fatal("revision not bumped by put")
	}

	// Unchanged put (also nil vs empty metadata) does not bump.
	same := in.Clone()
	same.Metadata = map[string]string{}
	mustUpdate(t, db, func(tx *Tx) error {
		changed, err := tx.PutInstance(svcA, same)
		if changed || err != nil {
			t.Fatalf("unchanged put: changed=%v err=%v", changed, err)
		}
		return nil
	})
	if r := revision(t, db, svcA); r != r1 {
		t.Fatalf("unchanged put bumped revision %d -> %d", r1, r)
	}

	// Delete of the last instance bumps, and the revision survives.
	mustUpdate(t, db, func(tx *Tx) error { _, err := tx.DeleteInstance(svcA, in.ID()); return err })
	r2 := revision(t, db, svcA)
	if r2 <= r1 {
		t.Fatalf("delete did not bump: %d -> %d", r1, r2)
	}
	// Idempotent delete does not bump.
	mustUpdate(t, db, func(tx *Tx) error { _, err := tx.DeleteInstance(svcA, in.ID()); return err })
	if r := revision(t, db, svcA); r != r2 {
		t.Fatalf("no-op delete bumped %d -> %d", r2, r)
	}
	mustUpdate(t, db, func(tx *Tx) error { return tx.PutMeta(svcA, naming.ServiceMeta{ProtectThreshold: 0.1}) })
	r3 := revision(t, db, svcA)
	if r3 <= r2 {
		t.Fatalf("PutMeta did not bump: %d -> %d", r2, r3)
	}
	mustUpdate(t, db, func(tx *Tx) error { _, err := tx.PutInstance(svcA, in); return err })
	r4 := revision(t, db, svcA)
	if r4 <= r3 {
		t.Fatalf("re-put did not bump: %d -> %d", r3, r4)
	}

	db = reopen(t, db)
	if r := revision(t, db, svcA); r != r4 {
		t.Fatalf("revision after reopen %d, want %d", r, r4)
	}
	mustUpdate(t, db, func(tx *Tx) error { _, err := tx.DeleteInstance(svcA, in.ID()); return err })
	if r := revision(t, db, svcA); r <= r4 {
		t.Fatalf("revision did not grow after reopen: %d -> %d", r4, r)
	}
}

func TestServicesPaging(t *testing.T) {
	db := OpenTest(t)
	key := func(ns, g, s string) naming.ServiceKey {
		return naming.ServiceKey{Namespace: ns, Group: g, Service: s}
	}
	mustUpdate(t, db, func(tx *Tx) error {
		for _, k := range []naming.ServiceKey{
			key("ns1", "g1", "a"), key("ns1", "g1", "b"), key("ns1", "g2", "a"),
			key("ns1", "g2", "c"), key("ns10", "g1", "a"), key("ns2", "g1", "a"),
		} {
			if _, err := tx.PutInstance(k, inst("10.0.0.1", 1)); err != nil {
				return err
			}
		}
		unhealthy := inst("10.0.0.2", 1)
		unhealthy.Healthy = false
		if _, err := tx.PutInstance(key("ns1", "g1", "a"), unhealthy); err != nil {
			return err
		}
		// Meta only: listed.
		if err := tx.PutMeta(key("ns1", "g1", "m"), naming.ServiceMeta{}); err != nil {
			return err
		}
		// Emptied: kept for its revision, not listed.
		if _, err := tx.PutInstance(key("ns1", "g1", "gone"), inst("10.0.0.1", 1)); err != nil {
			return err
		}
		gone := inst("10.0.0.1", 1)
		_, err := tx.DeleteInstance(key("ns1", "g1", "gone"), gone.ID())
		return err
	})
	names := func(list []ServiceInfo) string {
		var s []string
		for _, i := range list {
			s = append(s, i.Key.String())
		}
		return strings.Join(s, ",")
	}
	mustView(t, db, func(tx *Tx) error {
		all, err := tx.Services("ns1", "", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := names(all), "ns1/g1/a,ns1/g1/b,ns1/g1/m,ns1/g2/a,ns1/g2/c"; got != want {
			t.Fatalf("all of ns1: %s, want %s", got, want)
		}
		a := all[0]
		if a.Instances != 2 || a.Healthy != 1 || a.HasMeta || a.Revision != 2 {
			t.Fatalf("info of ns1/g1/a: %+v", a)
		}
		if m := all[2]; !m.HasMeta || m.Instances != 0 || m.Revision != 1 {
			t.Fatalf("info of ns1/g1/m: %+v", m)
		}

		// Paging.
		var paged []ServiceInfo
		after := ""
		for {
			page, err := tx.Services("ns1", "", after, 2)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			if len(page) > 2 {
				t.Fatalf("page of %d", len(page))
			}
			paged = append(paged, page...)
			after = page[len(page)-1].Key.String()
		}
		if names(paged) != names(all) {
			t.Fatalf("paged %s, want %s", names(paged), names(all))
		}

		g2, _ := tx.Services("ns1", "g2", "", 0)
		if got := names(g2); got != "ns1/g2/a,ns1/g2/c" {
			t.Fatalf("group g2: %s", got)
		}
		g2, _ = tx.Services("ns1", "g2", "ns1/g2/a", 0)
		if got := names(g2); got != "ns1/g2/c" {
			t.Fatalf("group g2 after a: %s", got)
		}
		g1, _ := tx.Services("ns1", "g1", "ns1/g2/a", 0)
		if len(g1) != 0 {
			t.Fatalf("after beyond group: %s", names(g1))
		}
		ns10, _ := tx.Services("ns10", "", "", 0)
		if got := names(ns10); got != "ns10/g1/a" {
			t.Fatalf("ns10: %s", got)
		}
		none, _ := tx.Services("nope", "", "", 0)
		if len(none) != 0 {
			t.Fatalf("unknown namespace: %s", names(none))
		}

		var each []string
		if err := tx.ForEachService(func(k naming.ServiceKey) error {
			each = append(each, k.String())
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(each, ","); got != "ns1/g1/a,ns1/g1/b,ns1/g1/gone,ns1/g1/m,ns1/g2/a,ns1/g2/c,ns10/g1/a,ns2/g1/a" {
			t.Fatalf("ForEachService: %s", got)
		}
		stop := errors.New("stop")
		n := 0
		if err := tx.ForEachService(func(naming.ServiceKey) error { n++; return stop }); err != stop || n != 1 {
			t.Fatalf("ForEachService stop: %v after %d", err, n)
		}
		// The same services with the revisions Revision reads, each
		// positive (every service here was written at least once).
		var withRev []string
		if err := tx.ForEachServiceRevision(func(k naming.ServiceKey, rev uint64) error {
			if rev == 0 || rev != tx.Revision(k) {
				t.Fatalf("ForEachServiceRevision: %s at %d, Revision says %d", k, rev, tx.Revision(k))
			}
			withRev = append(withRev, k.String())
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(withRev, ","); got != strings.Join(each, ",") {
			t.Fatalf("ForEachServiceRevision: %s, want %s", got, strings.Join(each, ","))
		}
		return nil
	})
}

// Every kind of change moves a service's revision, which is what lets the
// health checker skip the services whose revision has not moved.
func TestRevisionMovesOnEveryChange(t *testing.T) {
	db := OpenTest(t)
	svc := naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "rev"}
	in := naming.Instance{IP: "10.0.0.1", Port: 80, Cluster: "DEFAULT", Weight: 1, Healthy: true, Enabled: true}
	rev := func() (r uint64) {
		db.View(func(tx *Tx) error {
			return tx.ForEachServiceRevision(func(k naming.ServiceKey, v uint64) error {
				if k == svc {
					r = v
				}
				return nil
			})
		})
		return r
	}
	last := rev()
	for _, step := range []struct {
		name   string
		change func(tx *Tx) error
	}{
		{"put", func(tx *Tx) error { _, err := tx.PutInstance(svc, in); return err }},
		{"health", func(tx *Tx) error { in.Healthy = false; _, err := tx.PutInstance(svc, in); return err }},
		{"meta", func(tx *Tx) error { return tx.PutMeta(svc, naming.ServiceMeta{ProtectThreshold: 0.5}) }},
		{"delete", func(tx *Tx) error { _, err := tx.DeleteInstance(svc, in.ID()); return err }},
	} {
		name, change := step.name, step.change
		if err := db.Update(change); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r := rev(); r <= last {
			t.Fatalf("%s: revision %d, was %d: want it to grow", name, r, last)
		} else {
			last = r
		}
	}
}

func TestMetaRoundTrip(t *testing.T) {
	db := OpenTest(t)
	m := naming.ServiceMeta{
		ProtectThreshold: 0.75,
		Metadata:         map[string]string{"owner": "team-a"},
		HealthCheck: naming.HealthCheck{
			Type: naming.CheckHTTP, HTTPPath: "/health", ExpectedStatus: 204,
			IntervalMS: 3000, UnhealthyThreshold: 4, HealthyThreshold: 2,
		},
	}
	mustView(t, db, func(tx *Tx) error {
		if _, ok, err := tx.Meta(svcA); ok || err != nil {
			t.Fatalf("meta before put: %v %v", ok, err)
		}
		return nil
	})
	mustUpdate(t, db, func(tx *Tx) error { return tx.PutMeta(svcA, m) })
	db = reopen(t, db)
	mustView(t, db, func(tx *Tx) error {
		got, ok, err := tx.Meta(svcA)
		if err != nil || !ok || !reflect.DeepEqual(got, m) {
			t.Fatalf("meta %+v %v %v, want %+v", got, ok, err, m)
		}
		return nil
	})
}

func TestAppliedIndex(t *testing.T) {
	db := OpenTest(t)
	mustView(t, db, func(tx *Tx) error {
		if i := tx.AppliedIndex(); i != 0 {
			t.Fatalf("fresh applied index %d", i)
		}
		return nil
	})
	mustUpdate(t, db, func(tx *Tx) error {
		if _, err := tx.PutInstance(svcA, inst("10.0.0.1", 1)); err != nil {
			return err
		}
		return tx.SetAppliedIndex(1 << 40)
	})
	db = reopen(t, db)
	mustView(t, db, func(tx *Tx) error {
		if i := tx.AppliedIndex(); i != 1<<40 {
			t.Fatalf("applied index %d after reopen", i)
		}
		return nil
	})
}

func TestFailedUpdateWritesNothing(t *testing.T) {
	db := OpenTest(t)
	boom := errors.New("boom")
	err := db.Update(func(tx *Tx) error {
		if _, err := tx.PutInstance(svcA, inst("10.0.0.1", 1)); err != nil {
			return err
		}
		if err := tx.PutMeta(svcA, naming.ServiceMeta{}); err != nil {
			return err
		}
		if err := tx.SetAppliedIndex(9); err != nil {
			return err
		}
		return boom
	})
	if err != boom {
		t.Fatalf("Update returned %v, want fn's error", err)
	}
	mustView(t, db, func(tx *Tx) error {
		list, _ := tx.Instances(svcA)
		_, hasMeta, _ := tx.Meta(svcA)
		n := 0
		tx.ForEachService(func(naming.ServiceKey) error { n++; return nil })
		if len(list) != 0 || hasMeta || tx.Revision(svcA) != 0 || tx.AppliedIndex() != 0 || n != 0 {
			t.Fatalf("rolled-back update left data: %d instances, meta=%v rev=%d applied=%d services=%d",
				len(list), hasMeta, tx.Revision(svcA), tx.AppliedIndex(), n)
		}
		return nil
	})
	// Writes in View fail.
	if err := db.View(func(tx *Tx) error { return tx.SetAppliedIndex(1) }); err == nil {
		t.Fatal("write in View succeeded")
	}
}

// dump renders the whole logical content of a db.
func dump(t *testing.T, db *DB) string {
	t.Helper()
	var b strings.Builder
	mustView(t, db, func(tx *Tx) error {
		fmt.Fprintf(&b, "applied=%d\n", tx.AppliedIndex())
		return tx.ForEachService(func(k naming.ServiceKey) error {
			list, err := tx.Instances(k)
			if err != nil {
				return err
			}
			m, ok, err := tx.Meta(k)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, "%s rev=%d meta=%v %+v instances=%+v\n", k, tx.Revision(k), ok, m, list)
			return nil
		})
	})
	return b.String()
}

func fill(t *testing.T, db *DB, n int) {
	t.Helper()
	mustUpdate(t, db, func(tx *Tx) error {
		for i := 0; i < n; i++ {
			k := naming.ServiceKey{Namespace: "ns", Group: "g", Service: fmt.Sprintf("s%d", i%7)}
			in := inst(fmt.Sprintf("10.0.%d.%d", i/250, i%250), 80+i)
			in.Metadata = map[string]string{"i": fmt.Sprint(i)}
			if _, err := tx.PutInstance(k, in); err != nil {
				return err
			}
			if i%3 == 0 {
				if err := tx.PutMeta(k, naming.ServiceMeta{ProtectThreshold: float64(i%10) / 10}); err != nil {
					return err
				}
			}
		}
		return tx.SetAppliedIndex(uint64(n))
	})
}

func TestSnapshotRestore(t *testing.T) {
	src := OpenTest(t)
	fill(t, src, 500)
	var snap bytes.Buffer
	n, err := src.Snapshot(&snap)
	if err != nil || n != int64(snap.Len()) || n == 0 {
		t.Fatalf("Snapshot: n=%d len=%d err=%v", n, snap.Len(), err)
	}

	dst := OpenTest(t)
	fill(t, dst, 3) // replaced, not merged
	mustUpdate(t, dst, func(tx *Tx) error {
		_, err := tx.PutInstance(naming.ServiceKey{Namespace: "other", Group: "g", Service: "x"}, inst("1.2.3.4", 1))
		return err
	})
	if err := dst.Restore(bytes.NewReader(snap.Bytes())); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if a, b := dump(t, src), dump(t, dst); a != b {
		t.Fatalf("restored content differs:\n%s\nvs\n%s", a, b)
	}
	if _, err := os.Stat(dst.Path() + ".restore"); !os.IsNotExist(err) {
		t.Fatalf("restore file left behind: %v", err)
	}
	// Still usable, and survives reopen.
	mustUpdate(t, dst, func(tx *Tx) error { return tx.SetAppliedIndex(501) })
	want := dump(t, dst)
	dst = reopen(t, dst)
	if got := dump(t, dst); got != want {
		t.Fatalf("after reopen:\n%s\nwant\n%s", got, want)
	}
}

func TestRestoreConcurrent(t *testing.T) {
	src := OpenTest(t)
	fill(t, src, 100)
	var snap bytes.Buffer
	if _, err := src.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	db := OpenTest(t)
	done := make(chan struct{})
	errc := make(chan error, 2)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-done:
				errc <- nil
				return
			default:
			}
			if err := db.Update(func(tx *Tx) error {
				_, err := tx.PutInstance(svcA, inst("10.9.0.1", 1+i%100))
				return err
			}); err != nil {
				errc <- err
				return
			}
		}
	}()
	go func() {
		for {
			select {
			case <-done:
				errc <- nil
				return
			default:
			}
			if err := db.View(func(tx *Tx) error { _, err := tx.Services("ns", "", "", 0); return err }); err != nil {
				errc <- err
				return
			}
		}
	}()
	for i := 0; i < 5; i++ {
		if err := db.Restore(bytes.NewReader(snap.Bytes())); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	for i := 0; i < 2; i++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

func TestRestoreGarbage(t *testing.T) {
	db := OpenTest(t)
	fill(t, db, 50)
	before := dump(t, db)

	other := filepath.Join(t.TempDir(), "other.db")
	plain, err := bolt.Open(other, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	plain.Update(func(btx *bolt.Tx) error { _, err := btx.CreateBucket([]byte("x")); return err })
	plain.Close()
	foreign, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	var snap bytes.Buffer
	if _, err := db.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	truncated := snap.Bytes()[:snap.Len()/2]

	// A structurally sound snapshot holding an undecodable record.
	bad := OpenTest(t)
	fill(t, bad, 5)
	bad.mu.RLock()
	err = bad.bolt.Update(func(btx *bolt.Tx) error {
		return btx.Bucket(bucketInstances).Put(instanceKey([]byte("ns/g/s1"), "10.0.0.1:81@DEFAULT"), []byte{9, '{', '}'})
	})
	bad.mu.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	var badSnap bytes.Buffer
	if _, err := bad.Snapshot(&badSnap); err != nil {
		t.Fatal(err)
	}

	for name, data := range map[string][]byte{
		"empty":        nil,
		"garbage":      bytes.Repeat([]byte("not a database "), 2000),
		"foreign bolt": foreign,
		"truncated":    truncated,
		"bad record":   badSnap.Bytes(),
	} {
		if err := db.Restore(bytes.NewReader(data)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Restore: %v, want ErrCorrupt", name, err)
		} else {
			t.Logf("%s: %v", name, err)
		}
		if got := dump(t, db); got != before {
			t.Fatalf("%s: content changed after failed restore:\n%s", name, got)
		}
		if _, err := os.Stat(db.Path() + ".restore"); !os.IsNotExist(err) {
			t.Fatalf("%s: restore file left behind: %v", name, err)
		}
	}
	mustUpdate(t, db, func(tx *Tx) error { return tx.SetAppliedIndex(77) })
}

func TestSecondOpenFailsFast(t *testing.T) {
	db := OpenTest(t)
	start := time.Now()
	db2, err := Open(db.Path(), Options{Timeout: 100 * time.Millisecond})
	if err == nil {
		db2.Close()
		t.Fatal("second Open succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("error %v, want ErrLocked", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("second Open took %v", d)
	}
	t.Logf("second open: %v after %v", err, time.Since(start).Round(time.Millisecond))
}

func TestCorruptValue(t *testing.T) {
	path := filepath.Join(t.TempDir(), "regent.db")
	db, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	in := inst("10.0.0.1", 80)
	mustUpdate(t, db, func(tx *Tx) error { _, err := tx.PutInstance(svcA, in); return err })
	db.Close()

	for _, bad := range [][]byte{
		[]byte("garbage"),            // unknown version byte 'g'
		{instanceFormatV1, '{', 'x'}, // bad JSON
		{},                           // empty
		append([]byte{instanceFormatV1}, `{"ip":"9.9.9.9","p":80,"c":"DEFAULT"}`...), // id mismatch
	} {
		b, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = b.Update(func(btx *bolt.Tx) error {
			return btx.Bucket(bucketInstances).Put(instanceKey([]byte(svcA.String()), in.ID().String()), bad)
		})
		b.Close()
		if err != nil {
			t.Fatal(err)
		}
		db, err := Open(path, Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		err = db.View(func(tx *Tx) error {
			if _, _, err := tx.Instance(svcA, in.ID()); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Instance(%q): %v, want ErrCorrupt", bad, err)
			}
			if _, err := tx.Instances(svcA); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Instances(%q): %v, want ErrCorrupt", bad, err)
			}
			if _, err := tx.Services(svcA.Namespace, "", "", 0); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Services(%q): %v, want ErrCorrupt", bad, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		db.Close()
	}
}

func TestClosed(t *testing.T) {
	db := OpenTest(t)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := db.View(func(*Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("View after Close: %v", err)
	}
	if _, err := db.Snapshot(&bytes.Buffer{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Snapshot after Close: %v", err)
	}
}

func TestFileMode(t *testing.T) {
	db := OpenTest(t)
	fi, err := os.Stat(db.Path())
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		t.Fatalf("file mode %v", perm)
	}
}

func BenchmarkPutInstance(b *testing.B) {
	for _, noSync := range []bool{true, false} {
		b.Run(fmt.Sprintf("NoSync=%v", noSync), func(b *testing.B) {
			db, err := Open(filepath.Join(b.TempDir(), "bench.db"), Options{NoSync: noSync})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			in := inst("10.0.0.1", 80)
			in.Metadata = map[string]string{"version": "1.2.3", "zone": "eu-1a"}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				in.Port = 1 + i%1000
				in.Weight = float64(i)
				i++
				if err := db.Update(func(tx *Tx) error {
					if _, err := tx.PutInstance(svcA, in); err != nil {
						return err
					}
					return tx.SetAppliedIndex(uint64(i))
				}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
