package persistent

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/regent-registry/regent/internal/naming"
)

var logStores = []string{LogStoreBoltDB, LogStoreWAL}

func openTestLogStore(t *testing.T, dir, kind string) logStore {
	t.Helper()
	s, err := openLogStore(dir, kind, false, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Each store keeps its log and stable state across a close and a reopen
// in the same process, within a deadline: raft-wal v0.4.0's Close left its
// bbolt file of metadata locked, and the reopen waited forever (v0.4.1
// closes it).
func TestLogStoreReopensWithItsLogAndStableState(t *testing.T) {
	for _, kind := range logStores {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			s := openTestLogStore(t, dir, kind)
			var logs []*raft.Log
			for i := uint64(1); i <= 10; i++ {
				logs = append(logs, &raft.Log{Index: i, Term: 2, Type: raft.LogCommand, Data: []byte(fmt.Sprint("entry ", i))})
			}
			if err := s.StoreLogs(logs); err != nil {
				t.Fatal(err)
			}
			if err := s.SetUint64([]byte("CurrentTerm"), 2); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			old := s
			reopened := make(chan logStore, 1)
			go func() {
				s, err := openLogStore(dir, kind, false, slog.New(slog.DiscardHandler))
				if err != nil {
					t.Error(err)
				}
				reopened <- s
			}()
			select {
			case s = <-reopened:
			case <-time.After(10 * time.Second):
				t.Fatal("the store did not reopen within 10 s")
			}
			runtime.KeepAlive(old) // open until the reopen: a finalizer must not free its lock
			if s == nil {
				return
			}
			defer s.Close()
			if last, err := s.LastIndex(); err != nil || last != 10 {
				t.Fatalf("last index %d (%v), want 10", last, err)
			}
			var l raft.Log
			if err := s.GetLog(7, &l); err != nil || string(l.Data) != "entry 7" || l.Term != 2 {
				t.Fatalf("entry 7: %+v (%v)", l, err)
			}
			if term, err := s.GetUint64([]byte("CurrentTerm")); err != nil || term != 2 {
				t.Fatalf("current term %d (%v), want 2", term, err)
			}
		})
	}
}

// A node keeps the store it started with: a raft dir that holds the other
// store's log is refused with an error that names both and the way out,
// and nothing is created beside it.
func TestLogStoreRefusesTheOtherStoresLog(t *testing.T) {
	for _, tc := range []struct{ had, want, file string }{
		{LogStoreBoltDB, LogStoreWAL, "raft.db"},
		{LogStoreWAL, LogStoreBoltDB, walDir},
	} {
		t.Run(tc.had+" then "+tc.want, func(t *testing.T) {
			dir := t.TempDir()
			if err := openTestLogStore(t, dir, tc.had).Close(); err != nil {
				t.Fatal(err)
			}
			before, _ := os.ReadDir(dir)
			s, err := openLogStore(dir, tc.want, false, slog.New(slog.DiscardHandler))
			if err == nil {
				s.Close()
				t.Fatalf("opening a %s log as %s succeeded", tc.had, tc.want)
			}
			for _, w := range []string{filepath.Join(dir, tc.file), fmt.Sprintf("%q raft log", tc.had), fmt.Sprintf("use %q", tc.want), "--raft-log-store=" + tc.had} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			after, _ := os.ReadDir(dir)
			if len(after) != len(before) {
				t.Fatalf("the refused open changed the dir: %d entries, then %d", len(before), len(after))
			}
		})
	}
	if _, err := openLogStore(t.TempDir(), "leveldb", false, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), `"leveldb"`) {
		t.Fatalf("unknown store: %v", err)
	}
}

func TestRaftConfigValidateLogStore(t *testing.T) {
	for kind, ok := range map[string]bool{"": true, LogStoreBoltDB: true, LogStoreWAL: true, "wal2": false, "BoltDB": false} {
		cfg := DefaultLocalRaftConfig()
		cfg.NodeID, cfg.Dir, cfg.BindAddr, cfg.LogStore = "n1", t.TempDir(), "127.0.0.1:0", kind
		if err := cfg.Validate(); (err == nil) != ok {
			t.Errorf("log store %q: Validate() = %v, want ok=%v", kind, err, ok)
		}
	}
}

// The leader's log passes on whether its store refuses gaps: raft
// empties a monotonic store before the first append after a snapshot
// install, and raft-wal refuses the gap otherwise.
func TestLeaderLogPassesOnWhetherTheStoreIsMonotonic(t *testing.T) {
	for kind, want := range map[string]bool{LogStoreBoltDB: false, LogStoreWAL: true} {
		s := openTestLogStore(t, t.TempDir(), kind)
		l, err := newLeaderLog(s, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.IsMonotonic(); got != want {
			t.Errorf("%s: IsMonotonic() = %v, want %v", kind, got, want)
		}
		l.Close()
		s.Close()
	}
}

// A follower down while the others wrote and compacted their logs comes
// back with its old log: it installs the leader's snapshot, and takes the
// entries after it, though its own log ends far before the snapshot. It
// restarts keeping more trailing logs than the leader (an operator's
// change), so raft's compaction after the install keeps its old entries:
// a gap before the next append. On raft-wal, which refuses a gap, raft
// must empty the log instead; a follower that did not would fail every
// append after the snapshot.
//
// The leader, n1, keeps its log on raft-boltdb, a cluster midway through
// moving its nodes to raft-wal one by one: raft-wal's head truncation
// keeps the entries of its open segment readable, so a raft-wal leader
// would still send the follower its old entries instead of the snapshot.
func TestRaftLaggingFollowerInstallsASnapshotOverItsOldLog(t *testing.T) {
	for _, kind := range logStores {
		t.Run(kind, func(t *testing.T) {
			var longTrail sync.Map // node IDs restarted with many trailing logs
			c := newTestCluster(t, 3, func(cfg *RaftConfig) {
				cfg.LogStore = kind
				if cfg.NodeID == "n1" {
					cfg.LogStore = LogStoreBoltDB
				}
				cfg.SnapshotThreshold, cfg.TrailingLogs, cfg.SnapshotInterval = 20, 5, time.Hour
				// Timeouts long enough that the restart's reconnection does
				// not move the leadership to n3, whose log still holds
				// every entry: it would send them instead of a snapshot.
				cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = time.Second, time.Second, 500*time.Millisecond
				cfg.ApplyTimeout = 5 * time.Second
				if _, ok := longTrail.Load(cfg.NodeID); ok {
					cfg.TrailingLogs = 10_000
				}
			})
			ctx := ctxT(t)
			if li := c.waitLeader(); li != 0 {
				if err := c.node(li).store.Raft().LeadershipTransferToServer("n1", "n1").Error(); err != nil {
					t.Fatal(err)
				}
				if li = c.waitLeader(); li != 0 {
					t.Fatalf("%s leads after a transfer to n1", c.node(li).id)
				}
			}
			leader := c.node(0).store
			for i := range 10 {
				if _, err := leader.Register(ctx, tkey, []naming.Instance{tinst(i)}); err != nil {
					t.Fatal(err)
				}
			}
			c.waitApplied(leader.FSM().AppliedIndex())
			f := c.node(1)
			c.crash(1)
			for i := 10; i < 100; i++ {
				if _, err := leader.Register(ctx, tkey, []naming.Instance{tinst(i)}); err != nil {
					t.Fatal(err)
				}
			}
			if err := leader.Raft().Snapshot().Error(); err != nil {
				t.Fatal(err)
			}
			oldLast, err := openLastIndex(f.dir, kind)
			if err != nil {
				t.Fatal(err)
			}
			var l raft.Log
			if err := leader.logs.GetLog(oldLast+1, &l); err == nil {
				t.Fatalf("the leader still holds entry %d, the follower's next: no snapshot would be sent", oldLast+1)
			}
			longTrail.Store(f.id, true)
			c.start(1)
			c.waitApplied(leader.FSM().AppliedIndex())
			if got := listed(t, f.store, tkey); len(got) != 100 {
				t.Fatalf("the follower lists %d instances after the snapshot, want 100", len(got))
			}
			// Raft records the installed snapshot just after the FSM restored it.
			deadline := time.Now().Add(10 * time.Second)
			for f.store.Raft().Stats()["last_snapshot_index"] == "0" {
				if time.Now().After(deadline) {
					t.Fatal("the follower caught up without a snapshot: the test did not test the install")
				}
				time.Sleep(time.Millisecond)
			}
			// Appends after the snapshot reach it too.
			if _, err := leader.Register(ctx, tkey, []naming.Instance{tinst(100)}); err != nil {
				t.Fatal(err)
			}
			c.waitApplied(leader.FSM().AppliedIndex())
			if got := listed(t, f.store, tkey); len(got) != 101 {
				t.Fatalf("the follower lists %d instances after a write past the snapshot, want 101", len(got))
			}
			if err := f.store.logs.GetLog(leader.Raft().LastIndex(), &l); err != nil {
				t.Fatalf("the follower's log lacks the newest entry: %v", err)
			}
		})
	}
}

// openLastIndex reads the last index of a stopped node's log store.
func openLastIndex(nodeDir, kind string) (uint64, error) {
	s, err := openLogStore(filepath.Join(nodeDir, "raft"), kind, true, slog.New(slog.DiscardHandler))
	if err != nil {
		return 0, err
	}
	defer s.Close()
	return s.LastIndex()
}
