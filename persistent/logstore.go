package persistent

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	raftwal "github.com/hashicorp/raft-wal"
	walfs "github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"
	bolt "go.etcd.io/bbolt"
)

// The stores that can hold a node's Raft log and stable state
// (RaftConfig.LogStore), as Consul offers them (raft_logstore.backend).
const (
	// LogStoreBoltDB is raft-boltdb/v2: one bbolt file, raft.db. An append
	// is one bbolt commit: two fdatasyncs (the pages, then the meta page).
	// The default.
	LogStoreBoltDB = "boltdb"
	// LogStoreWAL is hashicorp/raft-wal: append-only segment files under
	// wal/, preallocated, with one fdatasync per append, and the stable
	// state in a small bbolt file beside them. Experimental, as in Consul
	// and in raft-wal's own README.
	LogStoreWAL = "wal"
)

// logStore is what raft needs of a node's log store: the log, the stable
// store (term and vote), and closing.
type logStore interface {
	raft.LogStore
	raft.StableStore
	Close() error
}

// walDir is where LogStoreWAL keeps its files, under the raft dir.
const walDir = "wal"

// openLogStore opens the log store of kind in dir, fsynced on every
// append unless noSync. It refuses a dir that holds the other kind's log:
// switching a node's store means starting it with an empty data dir (it
// rejoins and receives a snapshot), as with Consul.
func openLogStore(dir, kind string, noSync bool, logger *slog.Logger) (logStore, error) {
	if kind == "" {
		kind = LogStoreBoltDB
	}
	boltPath, walPath := filepath.Join(dir, "raft.db"), filepath.Join(dir, walDir)
	hasBolt, err := exists(boltPath)
	if err != nil {
		return nil, err
	}
	hasWAL, err := exists(walPath)
	if err != nil {
		return nil, err
	}
	mismatch := func(found, foundAt string) error {
		return fmt.Errorf("persistent: %s holds a %q raft log but this node is set to use %q (--raft-log-store): start it with --raft-log-store=%s, or remove the node from the cluster, empty its data dir and start it again so that it rejoins with the new store",
			foundAt, found, kind, found)
	}
	switch kind {
	case LogStoreBoltDB:
		if hasWAL {
			return nil, mismatch(LogStoreWAL, walPath)
		}
		return openBoltLog(boltPath, noSync)
	case LogStoreWAL:
		if hasBolt {
			return nil, mismatch(LogStoreBoltDB, boltPath)
		}
		return openWALLog(walPath, noSync, logger)
	default:
		return nil, fmt.Errorf("persistent: unknown raft log store %q (want %q or %q)", kind, LogStoreBoltDB, LogStoreWAL)
	}
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("persistent: raft log store: %w", err)
	}
	return true, nil
}

// openBoltLog opens raft-boltdb at path. Its freelist is not written on
// each commit (rebuilt by a scan on open; the file stays small, as the log
// is compacted behind snapshots), so an append writes fewer pages.
func openBoltLog(path string, noSync bool) (*raftboltdb.BoltStore, error) {
	logs, err := raftboltdb.New(raftboltdb.Options{
		Path:   path,
		NoSync: noSync,
		BoltOptions: &bolt.Options{Timeout: time.Second, NoSync: noSync,
			NoFreelistSync: true, FreelistType: bolt.FreelistMapType},
	})
	if err != nil {
		return nil, fmt.Errorf("persistent: open raft log %s: %w", path, err)
	}
	return logs, nil
}

// openWALLog opens raft-wal in dir (made if missing). raft-wal has no
// option to skip fsync; noSync gives it segment files whose Sync does
// nothing (its stable state, rarely written, still syncs).
func openWALLog(dir string, noSync bool, logger *slog.Logger) (*raftwal.WAL, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("persistent: raft log dir: %w", err)
	}
	var vfs types.VFS = walfs.New()
	if noSync {
		vfs = noSyncVFS{vfs}
	}
	w, err := raftwal.Open(dir,
		raftwal.WithSegmentFiler(segment.NewFiler(dir, vfs)),
		raftwal.WithLogger(newHCLogger(logger.With("component", "raft-wal"))))
	if err != nil {
		return nil, fmt.Errorf("persistent: open raft log %s: %w", dir, err)
	}
	return w, nil
}

// noSyncVFS is raft-wal's file system with Sync a no-op (NoSync).
type noSyncVFS struct{ types.VFS }

func (v noSyncVFS) Create(dir, name string, size uint64) (types.WritableFile, error) {
	f, err := v.VFS.Create(dir, name, size)
	if err != nil {
		return nil, err
	}
	return noSyncFile{f}, nil
}

func (v noSyncVFS) OpenWriter(dir, name string) (types.WritableFile, error) {
	f, err := v.VFS.OpenWriter(dir, name)
	if err != nil {
		return nil, err
	}
	return noSyncFile{f}, nil
}

type noSyncFile struct{ types.WritableFile }

func (noSyncFile) Sync() error { return nil }
