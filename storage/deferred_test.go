package storage

import (
	"bytes"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// openDeferred opens a NoSync database whose deferred transactions wait
// delay before they commit on their own.
func openDeferred(t *testing.T, path string, delay time.Duration) *DB {
	t.Helper()
	db, err := Open(path, Options{NoSync: true, CommitDelay: delay})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func setApplied(i uint64) func(tx *Tx) error {
	return func(tx *Tx) error { return tx.SetAppliedIndex(i) }
}

func appliedOf(t *testing.T, db *DB) uint64 {
	t.Helper()
	var i uint64
	if err := db.View(func(tx *Tx) error { i = tx.AppliedIndex(); return nil }); err != nil {
		t.Fatal(err)
	}
	return i
}

// A deferred write is seen by the next read, and many writes share one
// transaction until something commits it.
func TestUpdateDeferredSharesOneTransactionAndEveryReadSeesIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	db := openDeferred(t, path, time.Hour)
	for i := uint64(1); i <= 100; i++ {
		if err := db.UpdateDeferred(setApplied(i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := db.pend.gen; got != 1 {
		t.Fatalf("100 deferred writes opened %d transactions, want 1", got)
	}
	if !db.pend.open.Load() {
		t.Fatal("nothing pending after deferred writes with an hour's delay")
	}
	if got := appliedOf(t, db); got != 100 {
		t.Fatalf("read after the deferred writes: applied %d, want 100", got)
	}
	if db.pend.open.Load() {
		t.Fatal("the read did not commit the pending transaction")
	}
	if w, c := db.DeferredStats(); w != 100 || c != 1 {
		t.Fatalf("DeferredStats = %d writes, %d commits; want 100, 1", w, c)
	}
	// The read committed it to the file.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db2 := openDeferred(t, path, time.Hour)
	if got := appliedOf(t, db2); got != 100 {
		t.Fatalf("after reopening: applied %d, want 100", got)
	}
}

// Without any read, the pending transaction commits once its delay ends.
func TestUpdateDeferredCommitsAfterItsDelay(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	db := openDeferred(t, path, 20*time.Millisecond)
	if err := db.UpdateDeferred(setApplied(7)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for db.pend.open.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the pending transaction was not committed 10 s after a 20 ms delay")
		}
		time.Sleep(time.Millisecond)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if got := appliedOf(t, openDeferred(t, path, time.Hour)); got != 7 {
		t.Fatalf("after reopening: applied %d, want 7", got)
	}
}

// Close, Sync, Update, Snapshot and Restore each commit the pending
// transaction before they do their own work.
func TestEveryOtherUseCommitsThePendingWrites(t *testing.T) {
	dir := t.TempDir()
	t.Run("Close", func(t *testing.T) {
		path := filepath.Join(dir, "close.db")
		db := openDeferred(t, path, time.Hour)
		if err := db.UpdateDeferred(setApplied(3)); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		if got := appliedOf(t, openDeferred(t, path, time.Hour)); got != 3 {
			t.Fatalf("applied %d after Close and reopen, want 3", got)
		}
	})
	t.Run("Sync", func(t *testing.T) {
		db := openDeferred(t, filepath.Join(dir, "sync.db"), time.Hour)
		if err := db.UpdateDeferred(setApplied(4)); err != nil {
			t.Fatal(err)
		}
		if err := db.Sync(); err != nil {
			t.Fatal(err)
		}
		if db.pend.open.Load() {
			t.Fatal("Sync left the writes pending")
		}
	})
	t.Run("Update", func(t *testing.T) {
		db := openDeferred(t, filepath.Join(dir, "update.db"), time.Hour)
		if err := db.UpdateDeferred(setApplied(5)); err != nil {
			t.Fatal(err)
		}
		var seen uint64
		if err := db.Update(func(tx *Tx) error { seen = tx.AppliedIndex(); return tx.SetAppliedIndex(6) }); err != nil {
			t.Fatal(err)
		}
		if seen != 5 {
			t.Fatalf("Update saw applied %d, want the deferred 5", seen)
		}
		if got := appliedOf(t, db); got != 6 {
			t.Fatalf("applied %d, want 6", got)
		}
	})
	t.Run("Snapshot and Restore", func(t *testing.T) {
		src := openDeferred(t, filepath.Join(dir, "snap.db"), time.Hour)
		if err := src.UpdateDeferred(setApplied(8)); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if _, err := src.Snapshot(&buf); err != nil {
			t.Fatal(err)
		}
		dst := openDeferred(t, filepath.Join(dir, "dst.db"), time.Hour)
		if err := dst.UpdateDeferred(setApplied(1)); err != nil {
			t.Fatal(err)
		}
		if err := dst.Restore(&buf); err != nil {
			t.Fatal(err)
		}
		if got := appliedOf(t, dst); got != 8 {
			t.Fatalf("restored applied %d, want the snapshot's 8", got)
		}
	})
}

var errRefused = errors.New("refused")

// A failed first write loses nothing else; a failed later one loses the
// writes before it, and the DB then says so to every caller.
func TestUpdateDeferredFailure(t *testing.T) {
	db := openDeferred(t, filepath.Join(t.TempDir(), "s.db"), time.Hour)
	if err := db.Update(setApplied(2)); err != nil {
		t.Fatal(err)
	}
	err := db.UpdateDeferred(func(tx *Tx) error {
		if err := tx.SetAppliedIndex(3); err != nil {
			return err
		}
		return errRefused
	})
	if !errors.Is(err, errRefused) || errors.Is(err, ErrDeferredLost) {
		t.Fatalf("failed first write: err %v, want %v without %v", err, errRefused, ErrDeferredLost)
	}
	if got := appliedOf(t, db); got != 2 {
		t.Fatalf("after a failed first write: applied %d, want 2", got)
	}

	if err := db.UpdateDeferred(setApplied(4)); err != nil {
		t.Fatal(err)
	}
	err = db.UpdateDeferred(func(*Tx) error { return errRefused })
	if !errors.Is(err, errRefused) || !errors.Is(err, ErrDeferredLost) {
		t.Fatalf("failed second write: err %v, want %v and %v", err, errRefused, ErrDeferredLost)
	}
	for name, call := range map[string]func() error{
		"View":           func() error { return db.View(func(*Tx) error { return nil }) },
		"Update":         func() error { return db.Update(setApplied(9)) },
		"UpdateDeferred": func() error { return db.UpdateDeferred(setApplied(9)) },
		"Sync":           db.Sync,
		"Snapshot":       func() error { _, err := db.Snapshot(&bytes.Buffer{}); return err },
	} {
		if err := call(); !errors.Is(err, ErrDeferredLost) {
			t.Errorf("%s after lost writes: err %v, want %v", name, err, ErrDeferredLost)
		}
	}
	if err := db.Close(); !errors.Is(err, ErrDeferredLost) {
		t.Fatalf("Close after lost writes: err %v, want %v (and the file closed)", err, ErrDeferredLost)
	}
}

// With no delay, UpdateDeferred is Update.
func TestUpdateDeferredWithoutDelayCommitsAtOnce(t *testing.T) {
	db := openDeferred(t, filepath.Join(t.TempDir(), "s.db"), 0)
	if err := db.UpdateDeferred(setApplied(5)); err != nil {
		t.Fatal(err)
	}
	if db.pend.open.Load() || db.pend.gen != 0 {
		t.Fatal("a deferred write is pending with CommitDelay 0")
	}
	if got := appliedOf(t, db); got != 5 {
		t.Fatalf("applied %d, want 5", got)
	}
}

// One writer deferring, readers and Syncs at once, with a short
// delay: every read sees the writer's progress in order and nothing
// deadlocks (the race detector watches the pending transaction).
func TestUpdateDeferredUnderConcurrentUse(t *testing.T) {
	db := openDeferred(t, filepath.Join(t.TempDir(), "s.db"), time.Millisecond)
	const writes = 2000
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		defer close(done)
		for i := uint64(1); i <= writes; i++ {
			if err := db.UpdateDeferred(setApplied(i)); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for range 3 {
		wg.Go(func() {
			var last uint64
			for {
				select {
				case <-done:
					return
				default:
				}
				var got uint64
				if err := db.View(func(tx *Tx) error { got = tx.AppliedIndex(); return nil }); err != nil {
					t.Error(err)
					return
				}
				if got < last {
					t.Errorf("a read went back from %d to %d", last, got)
					return
				}
				last = got
			}
		})
	}
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := db.Sync(); err != nil {
				t.Error(err)
				return
			}
		}
	})
	wg.Wait()
	if got := appliedOf(t, db); got != writes {
		t.Fatalf("applied %d after %d deferred writes, want %d", got, writes, writes)
	}
}
