package persistent

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// BenchmarkRaftLogAppendFloor measures what one Raft log append costs on
// this disk, the floor under a persistent write at one client: the
// follower (and the leader, beside it) stores the entry before the write
// can be acknowledged. It sets Regent's two log stores, opened as the
// daemon opens them (raft-boltdb/v2, the default: a bbolt commit, which
// fdatasyncs its data pages and then its meta page; raft-wal, opt-in: an
// append to a preallocated segment and one fdatasync), beside the baseline,
// the write-ahead log that etcd keeps (an append to a preallocated file and
// one fdatasync), with 1 appender and with 3 appending at once to their own
// files, as the three nodes of a cluster on one machine do. Each appender
// stores one 150-byte entry at a time; the order of the stores rotates
// through the rounds. No threshold: the figures and their ratios are
// printed.
func BenchmarkRaftLogAppendFloor(b *testing.B) {
	kinds := []string{"raft-boltdb", "raft-wal", "wal"}
	for _, appenders := range []int{1, 3} {
		b.Run(fmt.Sprintf("appenders=%d", appenders), func(b *testing.B) {
			rounds := max(*benchRaftRounds, 1)
			d := *benchRaftDuration
			all := map[string][]time.Duration{}
			p50s := map[string][]time.Duration{} // per round
			var lines []string
			for r := range rounds {
				// Each round rotates the order, so that no store always runs first.
				order := append(slices.Clone(kinds[r%len(kinds):]), kinds[:r%len(kinds)]...)
				for _, kind := range order {
					lat, err := appendLoad(b.TempDir(), kind, appenders, d)
					if err != nil {
						b.Fatal(err)
					}
					slices.Sort(lat)
					lines = append(lines, fmt.Sprintf("round %d %-11s %d appends, p50 %v p99 %v", r, kind, len(lat), pct(lat, 0.50), pct(lat, 0.99)))
					all[kind] = append(all[kind], lat...)
					p50s[kind] = append(p50s[kind], pct(lat, 0.50))
				}
			}
			// Each store's p50 over the baseline's, per round (median, range).
			roundRatios := func(kind string) []float64 {
				r := make([]float64, rounds)
				for i := range rounds {
					r[i] = float64(p50s[kind][i]) / float64(p50s["wal"][i])
				}
				slices.Sort(r)
				return r
			}
			for _, k := range kinds {
				slices.Sort(all[k])
			}
			bolt, rwal, wal := all["raft-boltdb"], all["raft-wal"], all["wal"]
			bp50, rp50, wp50 := pct(bolt, 0.50), pct(rwal, 0.50), pct(wal, 0.50)
			bRatios, rRatios := roundRatios("raft-boltdb"), roundRatios("raft-wal")
			b.ReportMetric(float64(bp50.Microseconds()), "raftboltdb-p50-µs")
			b.ReportMetric(float64(pct(bolt, 0.99).Microseconds()), "raftboltdb-p99-µs")
			b.ReportMetric(float64(rp50.Microseconds()), "raftwal-p50-µs")
			b.ReportMetric(float64(pct(rwal, 0.99).Microseconds()), "raftwal-p99-µs")
			b.ReportMetric(float64(wp50.Microseconds()), "wal-p50-µs")
			b.ReportMetric(float64(pct(wal, 0.99).Microseconds()), "wal-p99-µs")
			b.ReportMetric(float64(bp50)/float64(wp50), "p50-ratio")
			b.ReportMetric(bRatios[len(bRatios)/2], "round-ratio-median")
			b.ReportMetric(float64(rp50)/float64(wp50), "raftwal-p50-ratio")
			b.Logf("%d appender(s), %d rounds of %v: raft-boltdb p50 %v p99 %v (%d appends); raft-wal p50 %v p99 %v (%d appends); etcd-style WAL p50 %v p99 %v (%d appends); over the etcd-style WAL: raft-boltdb p50 ratio %.2f (per round %.2f-%.2f), raft-wal %.2f (per round %.2f-%.2f)",
				appenders, rounds, d, bp50, pct(bolt, 0.99), len(bolt), rp50, pct(rwal, 0.99), len(rwal), wp50, pct(wal, 0.99), len(wal),
				float64(bp50)/float64(wp50), bRatios[0], bRatios[len(bRatios)-1], float64(rp50)/float64(wp50), rRatios[0], rRatios[len(rRatios)-1])
			for _, l := range lines {
				b.Log(l) // after the summary: go test keeps only a benchmark's first lines
			}
		})
	}
}

// pct returns the q-quantile of sorted latencies (0 for none).
func pct(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(int(float64(len(sorted))*q), len(sorted)-1)]
}

// appender stores one log entry durably.
type appender interface {
	append(index uint64, data []byte) error
	close() error
}

// appendLoad runs n appenders of kind, each on its own file in dir, for d,
// and returns the latency of every append.
func appendLoad(dir, kind string, n int, d time.Duration) ([]time.Duration, error) {
	apps := make([]appender, n)
	for i := range apps {
		path := filepath.Join(dir, fmt.Sprintf("%s-%d", kind, i))
		var err error
		switch kind {
		case "wal":
			apps[i], err = openWALAppender(path)
		case "raft-wal":
			apps[i], err = openStoreAppender(path, LogStoreWAL)
		default:
			apps[i], err = openStoreAppender(path, LogStoreBoltDB)
		}
		if err != nil {
			return nil, err
		}
	}
	defer func() {
		for _, a := range apps {
			a.close()
		}
	}()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		all  []time.Duration
		fail error
	)
	data := make([]byte, 150)
	end := time.Now().Add(d)
	for _, a := range apps {
		wg.Go(func() {
			var lat []time.Duration
			var err error
			for i := uint64(1); time.Now().Before(end); i++ {
				start := time.Now()
				if err = a.append(i, data); err != nil {
					break
				}
				lat = append(lat, time.Since(start))
			}
			mu.Lock()
			defer mu.Unlock()
			all = append(all, lat...)
			if fail == nil {
				fail = err
			}
		})
	}
	wg.Wait()
	return all, fail
}

// storeAppender is one of Regent's log stores, opened as OpenRaft opens it.
type storeAppender struct{ s logStore }

func openStoreAppender(dir, kind string) (appender, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	s, err := openLogStore(dir, kind, false, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	return storeAppender{s}, nil
}

func (a storeAppender) append(index uint64, data []byte) error {
	return a.s.StoreLogs([]*raft.Log{{Index: index, Term: 1, Type: raft.LogCommand, Data: data}})
}

func (a storeAppender) close() error { return a.s.Close() }

// walAppender is the baseline: etcd's write-ahead log pattern, a record
// appended to a file preallocated as etcd preallocates its 64 MB segments,
// then one fdatasync.
type walAppender struct {
	f   *os.File
	off int64
	rec []byte
}

const walSegment = 64 << 20

func openWALAppender(path string) (appender, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, walSegment); err != nil {
		f.Close()
		return nil, fmt.Errorf("preallocate %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	return &walAppender{f: f}, nil
}

func (a *walAppender) append(index uint64, data []byte) error {
	// A record as etcd frames one: a length, the entry's term and index
	// and its data, padded to 8 bytes.
	n := 8 + 16 + len(data)
	n += (8 - n%8) % 8
	a.rec = slices.Grow(a.rec[:0], n)[:n]
	clear(a.rec)
	le := func(b []byte, v uint64) {
		for i := range 8 {
			b[i] = byte(v >> (8 * i))
		}
	}
	le(a.rec, uint64(n-8))
	le(a.rec[8:], 1)
	le(a.rec[16:], index)
	copy(a.rec[24:], data)
	if a.off+int64(n) > walSegment {
		a.off = 0 // wrap within the segment: only the cost is measured
	}
	if _, err := a.f.WriteAt(a.rec, a.off); err != nil {
		return err
	}
	a.off += int64(n)
	return syscall.Fdatasync(int(a.f.Fd()))
}

func (a *walAppender) close() error { return a.f.Close() }
