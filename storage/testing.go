package storage

import (
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
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
func CheckConsistency(db *DB) error {
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.bolt == nil {
		return nil
	}
	if err := db.flushPending(); err != nil {
		return err
	}
	var errs []error
	err := db.bolt.View(func(btx *bolt.Tx) error {
		for err := range btx.Check() {
			errs = append(errs, err)
		}
		return nil
	})
	if err != nil {
		return err
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
