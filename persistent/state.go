package persistent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/regent-registry/regent/storage"
)

// DefaultStateCommitDelay is how long the FSM's applied entries may wait in
// one pending bbolt transaction before it commits (sooner when anything
// reads the state): many applies share a commit, as etcd's backend commits
// its batch transaction every 100 ms.
const DefaultStateCommitDelay = 10 * time.Millisecond

// OpenState opens the FSM's bbolt state at path for a Raft store, with
// DefaultStateCommitDelay.
func OpenState(path string, logger *slog.Logger) (*storage.DB, error) {
	return OpenStateWith(path, logger, DefaultStateCommitDelay)
}

// OpenStateWith opens the FSM's bbolt state at path for a Raft store.
//
// The state is opened without fsync per commit: every acknowledged write is
// durable in the Raft log (fsynced on a quorum), and the state is the log
// applied, so it need not be fsynced on the write path; the store syncs it
// every StateSyncInterval and on Close. The FSM's applies also wait up to
// commitDelay in one pending transaction (storage.DB.UpdateDeferred; 0
// commits each batch of entries at once): every read commits it first, so
// a read sees every applied entry. A process crash (kill -9) loses at most
// that pending transaction, which Raft replays from its log on start, as
// it replays what a power loss takes from the page cache. If the disk
// reordered writes in a power loss the state may be unreadable: then
// OpenStateWith moves the file aside and starts from an empty state, which
// the store rebuilds from its newest snapshot and the log.
func OpenStateWith(path string, logger *slog.Logger, commitDelay time.Duration) (*storage.DB, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts := storage.Options{NoSync: true, NoFreelistSync: true, CommitDelay: commitDelay}
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
