package persistent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/regent-registry/regent/storage"
)

// OpenState opens the FSM's bbolt state at path for a Raft store.
//
// The state is opened without fsync per commit: every acknowledged write is
// durable in the Raft log (fsynced on a quorum), and the state is the log
// applied, so it need not be fsynced on the write path; the store syncs it
// every StateSyncInterval and on Close. A process crash (kill -9) loses
// nothing either way: the page cache survives it. Only a power loss can
// leave the state behind the log (Raft replays the rest on start) or, if the
// disk reordered writes, unreadable: then OpenState moves the file aside
// and starts from an empty state, which the store rebuilds from its newest
// snapshot and the log.
func OpenState(path string, logger *slog.Logger) (*storage.DB, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts := storage.Options{NoSync: true, NoFreelistSync: true}
	db, err := storage.Open(path, opts)
	if err == nil || errors.Is(err, storage.ErrLocked) {
		return db, err
	}
	if _, serr := os.Stat(path); serr != nil {
		return nil, err // nothing to move aside: a permission or path problem
	}
	aside := fmt.Sprintf("%s.broken-%d", path, time.Now().Unix())
	logger.Error("state file unreadable; moving it aside and rebuilding it from the Raft snapshot and log", "path", path, "moved-to", aside, "err", err)
	if rerr := os.Rename(path, aside); rerr != nil {
		return nil, errors.Join(err, fmt.Errorf("persistent: move the broken state aside: %w", rerr))
	}
	return storage.Open(path, opts)
}
