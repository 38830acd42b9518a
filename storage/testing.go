package storage

import (
	"path/filepath"
	"testing"
)

// OpenTest opens a fresh database (NoSync) in tb.TempDir(). Cleanup runs a
// bbolt consistency check, reporting every problem with tb.Errorf, and
// closes the database.
func OpenTest(tb testing.TB) *DB {
	tb.Helper()
	db, err := Open(filepath.Join(tb.TempDir(), "regent.db"), Options{NoSync: true})
	if err != nil {
		tb.Fatalf("storage.OpenTest: %v", err)
	}
	tb.Cleanup(func() {
		if err := CheckConsistency(db); err != nil {
			tb.Errorf("storage.OpenTest: %v", err)
		}
		if err := db.Close(); err != nil {
			tb.Errorf("storage.OpenTest: close: %v", err)
		}
	})
	return db
}

// CheckConsistency runs bbolt's structural check on the database and
// returns its errors joined, or nil. A closed database is not an error.
// The check runs in a write transaction, rolled back: bbolt checks pages
// against the database's one freelist, which a writer still running (a
// handler a test left behind) would change under a read transaction and
// make the check report reachable pages as freed.
func CheckConsistency(db *DB) error {
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.bolt == nil {
		return nil
	}
	db.pend.mu.Lock()
	defer db.pend.mu.Unlock()
	if err := db.pend.commitLocked(); err != nil {
		return err
	}
	btx, err := db.bolt.Begin(true)
	if err != nil {
		return err
	}
	defer btx.Rollback()
	var errs []error
	for err := range btx.Check() {
		errs = append(errs, err)
	}
	return joinCheck(errs)
}

// CrashForTest closes db as a killed process leaves its file: the pending
// transaction of UpdateDeferred is rolled back, not committed; what was
// committed stays. For crash tests of the layers above.
func CrashForTest(db *DB) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.bolt == nil {
		return nil
	}
	db.pend.mu.Lock()
	if db.pend.tx != nil {
		db.pend.close(db.pend.tx.Rollback)
	}
	db.pend.mu.Unlock()
	err := db.bolt.Close()
	db.bolt = nil
	return err
}
