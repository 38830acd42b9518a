package storage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// DefaultTimeout is how long Open waits for the file lock when
// Options.Timeout is zero.
const DefaultTimeout = time.Second

// fileMode is the mode of the database file and of restore files.
const fileMode os.FileMode = 0o600

// Options configure Open.
type Options struct {
	// NoSync skips fsync on commit: faster, but a crash may lose the last
	// transactions (raft replays them from its log). For tests and
	// benchmarks.
	NoSync bool
	// NoFreelistSync skips writing bbolt's freelist on every commit (it is
	// rebuilt by scanning on open): fewer pages per commit, for a write-heavy
	// state.
	NoFreelistSync bool
	// Timeout is how long Open waits for the file lock held by another
	// process; 0 means DefaultTimeout, a negative value waits forever.
	Timeout time.Duration
	// CommitDelay, when positive, lets UpdateDeferred leave its writes in
	// one pending transaction for up to this long (see UpdateDeferred).
	CommitDelay time.Duration
}

func (o Options) boltOptions() *bolt.Options {
	timeout := o.Timeout
	switch {
	case timeout == 0:
		timeout = DefaultTimeout
	case timeout < 0:
		timeout = 0 // bbolt: wait forever
	}
	bo := &bolt.Options{Timeout: timeout, NoSync: o.NoSync, NoFreelistSync: o.NoFreelistSync}
	if o.NoFreelistSync {
		bo.FreelistType = bolt.FreelistMapType
	}
	return bo
}

// DB is the store. It is safe for concurrent use.
type DB struct {
	path string
	opts Options

	// mu guards bolt: Update, View and Snapshot hold it for reading,
	// Restore and Close for writing.
	mu   sync.RWMutex
	bolt *bolt.DB // nil once closed

	// restoreMu serializes Restore calls, which share the restore file.
	restoreMu sync.Mutex

	// pend is UpdateDeferred's pending transaction; every other use of
	// the database commits it first.
	pend pending
}

// Open opens or creates the database at path (mode 0600) and its root
// buckets. It fails with an error wrapping ErrLocked when another process
// holds the file longer than opts.Timeout.
func Open(path string, opts Options) (*DB, error) {
	b, err := openBolt(path, opts)
	if err != nil {
		return nil, err
	}
	return &DB{path: path, opts: opts, bolt: b}, nil
}

func openBolt(path string, opts Options) (*bolt.DB, error) {
	bo := opts.boltOptions()
	b, err := bolt.Open(path, fileMode, bo)
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("%w: open %s: file lock not acquired within %v: %w", ErrLocked, path, bo.Timeout, err)
		}
		return nil, fmt.Errorf("storage: open %s: %w", path, err)
	}
	if err := b.Update(initSchema); err != nil {
		b.Close()
		return nil, fmt.Errorf("storage: open %s: %w", path, err)
	}
	return b, nil
}

// initSchema creates the root buckets of a new file, migrates an older
// layout, and checks the schema version.
func initSchema(btx *bolt.Tx) error {
	if mb := btx.Bucket(bucketMeta); mb != nil {
		if v := mb.Get(keySchemaVersion); v != nil {
			if ver, err := decodeUint64(v); err == nil && ver == 1 {
				return migrateV1(btx)
			}
		}
	}
	for _, name := range rootBuckets {
		if _, err := btx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %q: %w", name, err)
		}
	}
	mb := btx.Bucket(bucketMeta)
	v := mb.Get(keySchemaVersion)
	if v == nil {
		return mb.Put(keySchemaVersion, encodeUint64(schemaVersion))
	}
	return checkSchemaVersion(v)
}

func checkSchemaVersion(v []byte) error {
	ver, err := decodeUint64(v)
	if err != nil {
		return fmt.Errorf("schema version: %w", err)
	}
	if ver != schemaVersion {
		return fmt.Errorf("%w: %d (want %d)", ErrSchema, ver, schemaVersion)
	}
	return nil
}

// Path returns the file path given to Open.
func (db *DB) Path() string { return db.path }

// Close closes the database. Closing twice is not an error.
func (db *DB) Close() error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.bolt == nil {
		return nil
	}
	perr := db.flushPending()
	err := db.bolt.Close()
	db.bolt = nil
	if err != nil {
		return fmt.Errorf("storage: close: %w", err)
	}
	return perr
}

// Sync flushes the file to disk (fdatasync): for a DB opened with NoSync,
// whose commits then reach the disk in batches.
func (db *DB) Sync() error {
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.bolt == nil {
		return ErrClosed
	}
	if err := db.flushPending(); err != nil {
		return err
	}
	if err := db.bolt.Sync(); err != nil {
		return fmt.Errorf("storage: sync: %w", err)
	}
	return nil
}

// Update runs fn in one write transaction, committed if fn returns nil and
// rolled back otherwise (also if fn panics). fn's error is returned as is.
func (db *DB) Update(fn func(tx *Tx) error) error {
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.bolt == nil {
		return ErrClosed
	}
	// pend.mu stays held: no deferred transaction may open (and take
	// bbolt's writer lock) between the commit and this transaction.
	db.pend.mu.Lock()
	defer db.pend.mu.Unlock()
	if err := db.pend.commitLocked(); err != nil {
		return err
	}
	return db.bolt.Update(func(btx *bolt.Tx) error { return fn(&Tx{btx: btx}) })
}

// View runs fn in a read-only transaction; it sees one consistent state.
func (db *DB) View(fn func(tx *Tx) error) error {
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.bolt == nil {
		return ErrClosed
	}
	if err := db.flushPending(); err != nil {
		return err
	}
	return db.bolt.View(func(btx *bolt.Tx) error { return fn(&Tx{btx: btx}) })
}

// Snapshot writes a consistent copy of the whole database (a bbolt file) to
// w and returns the number of bytes written. Writers are not blocked.
func (db *DB) Snapshot(w io.Writer) (int64, error) {
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.bolt == nil {
		return 0, ErrClosed
	}
	if err := db.flushPending(); err != nil {
		return 0, err
	}
	var n int64
	err := db.bolt.View(func(btx *bolt.Tx) error {
		var err error
		n, err = btx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("storage: snapshot: %w", err)
	}
	return n, nil
}

// Restore replaces the whole content with a snapshot read from r (as
// written by Snapshot). The snapshot is written to Path()+".restore",
// synced and checked; only then is the current database closed, the file
// renamed over it and reopened. If anything before the rename fails, the
// old content stays in place and usable. Restore waits for running
// transactions to finish and blocks new ones until it is done.
func (db *DB) Restore(r io.Reader) (err error) {
	db.restoreMu.Lock()
	defer db.restoreMu.Unlock()
	tmp := db.path + ".restore"
	defer func() {
		if err != nil {
			os.Remove(tmp)
			err = fmt.Errorf("storage: restore: %w", err)
		}
	}()
	if err := writeFileSync(tmp, r); err != nil {
		return err
	}
	if err := migrateFile(tmp, db.opts); err != nil {
		return fmt.Errorf("invalid snapshot: %w", err)
	}
	if err := validateFile(tmp, db.opts); err != nil {
		return fmt.Errorf("invalid snapshot: %w", err)
	}

	db.mu.Lock()
	defer db.mu.Unlock()
	if db.bolt == nil {
		return ErrClosed
	}
	if err := db.flushPending(); err != nil {
		return err
	}
	if err := db.bolt.Close(); err != nil {
		// bbolt releases the file even when close reports an error;
		// reopen the old content.
		db.bolt, _ = openBolt(db.path, db.opts)
		return fmt.Errorf("close current: %w", err)
	}
	db.bolt = nil
	if err := os.Rename(tmp, db.path); err != nil {
		b, oerr := openBolt(db.path, db.opts)
		if oerr != nil {
			return errors.Join(fmt.Errorf("rename: %w", err), fmt.Errorf("reopen old: %w", oerr))
		}
		db.bolt = b
		return fmt.Errorf("rename: %w", err)
	}
	syncDir(filepath.Dir(db.path))
	b, err := openBolt(db.path, db.opts)
	if err != nil {
		return fmt.Errorf("reopen: %w", err)
	}
	db.bolt = b
	return nil
}

// writeFileSync copies r into a new file at path and fsyncs it.
func writeFileSync(path string, r io.Reader) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, fileMode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}

// validateFile checks that path is a complete bbolt database with this
// package's layout, every record decodable, and no structural errors.
func validateFile(path string, opts Options) (err error) {
	// A damaged file can make bbolt read past the end of its memory map;
	// turn that fault into a panic and the panic into an error.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%v: %w", p, ErrCorrupt)
		}
	}()
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Size() == 0 {
		// bbolt would try to initialize an empty file.
		return fmt.Errorf("empty file: %w", ErrCorrupt)
	}
	bo := opts.boltOptions()
	bo.ReadOnly = true
	b, err := bolt.Open(path, fileMode, bo)
	if err != nil {
		return fmt.Errorf("%w: %w", err, ErrCorrupt)
	}
	defer b.Close()
	return b.View(func(btx *bolt.Tx) error {
		if btx.Size() > fi.Size() {
			return fmt.Errorf("truncated: %d bytes, needs %d: %w", fi.Size(), btx.Size(), ErrCorrupt)
		}
		for _, name := range rootBuckets {
			if btx.Bucket(name) == nil {
				return fmt.Errorf("no bucket %q: %w", name, ErrCorrupt)
			}
		}
		if err := checkSchemaVersion(btx.Bucket(bucketMeta).Get(keySchemaVersion)); err != nil {
			return err
		}
		// Read every record: this touches every reachable page in this
		// goroutine (where faults are caught) before Check runs.
		tx := &Tx{btx: btx}
		if err := tx.checkRecords(); err != nil {
			return err
		}
		var first error
		for cerr := range btx.Check() {
			// Drain the channel so the checker goroutine ends.
			if first == nil {
				first = fmt.Errorf("%w: %w", cerr, ErrCorrupt)
			}
		}
		return first
	})
}

// migrateFile brings a file of an older layout (a snapshot taken by an
// older version) to this one, in place; a file of this layout, or one that
// is not a database, is left as it is for validateFile to judge.
func migrateFile(path string, opts Options) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%v: %w", p, ErrCorrupt)
		}
	}()
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		return nil
	}
	bo := opts.boltOptions()
	bo.ReadOnly = true
	b, err := bolt.Open(path, fileMode, bo)
	if err != nil {
		return nil
	}
	var old bool
	_ = b.View(func(btx *bolt.Tx) error {
		if mb := btx.Bucket(bucketMeta); mb != nil {
			ver, err := decodeUint64(mb.Get(keySchemaVersion))
			old = err == nil && ver == 1
		}
		return nil
	})
	b.Close()
	if !old {
		return nil
	}
	b, err = bolt.Open(path, fileMode, opts.boltOptions())
	if err != nil {
		return fmt.Errorf("%w: %w", err, ErrCorrupt)
	}
	if err := b.Update(migrateV1); err != nil {
		b.Close()
		return err
	}
	return b.Close()
}

// syncDir fsyncs a directory so that a rename in it is durable. Errors are
// ignored: not every platform can sync directories.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
