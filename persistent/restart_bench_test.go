package persistent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/storage"
)

// BenchmarkRaftRestart1M: a single-node store holding -raftbench.instances
// (1,000,000) persistent instances - 1,000 services of 1,000, written in
// commands of MaxInstancesPerCommand by concurrent writers (NoSync for
// this build only), then a raft snapshot, then 5,000 more log entries
// (single-instance updates) as a log tail - is closed and restarted with
// production settings and fsync on. Timed from before storage.Open:
// serve-ms, until a Service read returns a known instance (one updated in
// the tail); write-ms, until the node is leader again and a Register is
// acknowledged. Baseline: storage.Open of the state file and the same read,
// without Raft. Target: serve <= 5 s.
func BenchmarkRaftRestart1M(b *testing.B) {
	const perService = MaxInstancesPerCommand
	const tail = 5000
	total := *benchRaftInstances
	services := max(1, (total+perService-1)/perService)
	dir := b.TempDir()
	dbPath, raftDir := filepath.Join(dir, "state.db"), filepath.Join(dir, "raft")
	known := benchKey(services / 2)
	knownIn := benchInstance(7)

	// Build.
	t0 := time.Now()
	snapAt := benchBuildState(b, dbPath, raftDir, services, perService, total, tail, known, knownIn)
	build := time.Since(t0)
	var stateSize, logSize int64
	if fi, err := os.Stat(dbPath); err == nil {
		stateSize = fi.Size()
	}
	if fi, err := os.Stat(filepath.Join(raftDir, "raft.db")); err == nil {
		logSize = fi.Size()
	}
	b.Logf("built %d instances in %d services (+%d tail entries after the snapshot at index %d) in %v; state %d MiB, raft log %d MiB",
		total, services, tail, snapAt, build.Round(time.Millisecond), stateSize>>20, logSize>>20)

	cfg := DefaultRaftConfig()
	cfg.NodeID, cfg.Dir, cfg.BindAddr, cfg.NoSync = "n1", raftDir, "127.0.0.1:0", false
	rounds := max(1, *benchRaftRounds)
	var open, serve, lead, write time.Duration
	var details []string
	for b.Loop() {
		open, serve, lead, write, details = 0, 0, 0, 0, nil
		for r := range rounds {
			// Alternate which goes first, so the page cache and machine
			// drift favor neither.
			if r%2 == 0 {
				open += benchOpenAlone(b, dbPath, known, knownIn)
			}
			s, l, w := benchRestart(b, cfg, dbPath, known, knownIn)
			serve += s
			lead += l
			write += w
			if r%2 == 1 {
				open += benchOpenAlone(b, dbPath, known, knownIn)
			}
			details = append(details, fmt.Sprintf("serve %v, leader %v, write %v", s.Round(time.Millisecond), l.Round(time.Millisecond), w.Round(time.Millisecond)))
		}
		n := time.Duration(rounds)
		open, serve, lead, write = open/n, serve/n, lead/n, write/n
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(total), "instances")
	b.ReportMetric(build.Seconds(), "build-s")
	b.ReportMetric(benchMS(open), "open-alone-ms")
	b.ReportMetric(benchMS(serve), "serve-ms")
	b.ReportMetric(benchMS(lead), "leader-ms")
	b.ReportMetric(benchMS(write), "write-ms")
	b.ReportMetric(float64(serve)/float64(open), "serve-ratio")
	b.ReportMetric(float64(write)/float64(open), "write-ratio")
	b.Logf("%d instances, mean of %d restarts: serving after %v, leader after %v, writing after %v (a single node elects itself after a heartbeat timeout of %v..%v); bbolt open + read alone %v; ratio serve %.2f write %.2f; build %v",
		total, rounds, serve.Round(time.Millisecond), lead.Round(time.Millisecond), write.Round(time.Millisecond), cfg.HeartbeatTimeout, 2*cfg.HeartbeatTimeout,
		open.Round(time.Microsecond), float64(serve)/float64(open), float64(write)/float64(open), build.Round(time.Millisecond))
	b.Logf("restarts: %s", strings.Join(details, "; "))
}

// benchBuildState writes the state of BenchmarkRaftRestart1M and closes the
// store; it returns the snapshot's index.
func benchBuildState(b *testing.B, dbPath, raftDir string, services, perService, total, tail int, known naming.ServiceKey, knownIn naming.Instance) uint64 {
	b.Helper()
	db, err := storage.Open(dbPath, storage.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	cfg := DefaultLocalRaftConfig()
	cfg.NodeID, cfg.Dir, cfg.BindAddr, cfg.NoSync = "n1", raftDir, "127.0.0.1:0", true
	cfg.ApplyTimeout = time.Minute
	st, err := OpenRaft(cfg, db)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if err := st.Bootstrap(map[string]string{"n1": st.Addr()}); err != nil {
		b.Fatal(err)
	}
	benchWaitState(b, st, raft.Leader, 30*time.Second)

	ctx := context.Background()
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	// Concurrent writers, so raft batches several 1,000-instance commands
	// into one bbolt transaction.
	for range 8 {
		wg.Go(func() {
			ins := make([]naming.Instance, 0, perService)
			for {
				s := int(next.Add(1)) - 1
				if s >= services {
					return
				}
				ins = ins[:0]
				for i := range min(perService, total-s*perService) {
					ins = append(ins, benchInstance(i))
				}
				if _, err := st.Register(ctx, benchKey(s), ins); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	if err := st.Raft().Snapshot().Error(); err != nil {
		b.Fatal(err)
	}
	snapAt := st.Raft().LastIndex()
	// The tail: updates of existing instances (the count stays), the
	// known one among them, last.
	next.Store(0)
	for range 32 {
		wg.Go(func() {
			for {
				n := int(next.Add(1)) - 1
				if n >= tail-1 {
					return
				}
				in := benchInstance(n % perService)
				in.Weight = 2
				if _, err := st.Register(ctx, benchKey((n/perService)%services), []naming.Instance{in}); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	in := knownIn
	in.Weight = 3
	if _, err := st.Register(ctx, known, []naming.Instance{in}); err != nil {
		b.Fatal(err)
	}
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	return snapAt
}

func benchWaitState(tb testing.TB, st *Store, want raft.RaftState, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for st.Raft().State() != want {
		if time.Now().After(deadline) {
			tb.Fatalf("not %v within %v", want, timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// benchHasKnown reports whether r serves the known instance as the tail
// left it (weight 3).
func benchHasKnown(r reader, key naming.ServiceKey, known naming.Instance) (bool, error) {
	ps, err := r.Service(key)
	if err != nil {
		return false, err
	}
	for _, in := range ps.Instances {
		if in.ID() == known.ID() {
			return in.Weight == 3, nil
		}
	}
	return false, nil
}

// benchOpenAlone opens the state file and reads the known instance, as a
// node without Raft would.
func benchOpenAlone(b *testing.B, dbPath string, key naming.ServiceKey, known naming.Instance) time.Duration {
	b.Helper()
	t0 := time.Now()
	db, err := storage.Open(dbPath, storage.Options{})
	if err != nil {
		b.Fatal(err)
	}
	ok, err := benchHasKnown(reader{db}, key, known)
	d := time.Since(t0)
	db.Close()
	if err != nil || !ok {
		b.Fatalf("state without raft: known instance served %v, err %v", ok, err)
	}
	return d
}

// benchRestart opens the store and returns the times until it serves the
// known instance, until it is leader, and until it acknowledges a write.
func benchRestart(b *testing.B, cfg RaftConfig, dbPath string, key naming.ServiceKey, known naming.Instance) (serve, lead, write time.Duration) {
	b.Helper()
	t0 := time.Now()
	db, err := OpenState(dbPath, nil) // as the daemon opens it
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	st, err := OpenRaft(cfg, db)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	leaderAt := make(chan time.Duration, 1)
	go func() {
		for st.Raft().State() != raft.Leader && time.Since(t0) < time.Minute {
			time.Sleep(time.Millisecond)
		}
		leaderAt <- time.Since(t0)
	}()
	for {
		ok, err := benchHasKnown(st.reader, key, known)
		if err != nil {
			b.Fatal(err)
		}
		if ok {
			serve = time.Since(t0)
			break
		}
		if time.Since(t0) > time.Minute {
			b.Fatal("the known instance is not served within a minute")
		}
		time.Sleep(time.Millisecond)
	}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := st.Register(ctx, benchKey(0), []naming.Instance{benchInstance(1 << 20)})
		cancel()
		if err == nil {
			write = time.Since(t0)
			break
		}
		if !errors.Is(err, ErrUnavailable) || time.Since(t0) > time.Minute {
			b.Fatal(fmt.Errorf("first write after restart: %w", err))
		}
	}
	lead = <-leaderAt
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	return serve, lead, write
}
