package persistent

import (
	"fmt"
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
// can be acknowledged. It sets Regent's log store (raft-boltdb/v2 opened as
// the daemon opens it: a bbolt commit, which fdatasyncs its data pages and
// then its meta page) beside the write-ahead log that etcd keeps (an append
// to a preallocated file and one fdatasync), with 1 appender and with 3
// appending at once to their own files, as the three nodes of a cluster on
// one machine do. Each appender stores one 150-byte entry at a time; the
// two stores alternate through the rounds. No threshold: the figures and
// their ratio are printed.
func BenchmarkRaftLogAppendFloor(b *testing.B) {
	for _, appenders := range []int{1, 3} {
		b.Run(fmt.Sprintf("appenders=%d", appenders), func(b *testing.B) {
			rounds := max(*benchRaftRounds, 1)
			d := *benchRaftDuration
			var bolt, wal []time.Duration
			var boltRounds, walRounds []time.Duration
			var lines []string
			for r := range rounds {
				order := []string{"raft-boltdb", "wal"}
				if r%2 == 1 {
					slices.Reverse(order)
				}
				for _, kind := range order {
					lat, err := appendLoad(b.TempDir(), kind, appenders, d)
					if err != nil {
						b.Fatal(err)
					}
					slices.Sort(lat)
					lines = append(lines, fmt.Sprintf("round %d %-11s %d appends, p50 %v p99 %v", r, kind, len(lat), pct(lat, 0.50), pct(lat, 0.99)))
					if kind == "wal" {
						wal, walRounds = append(wal, lat...), append(walRounds, pct(lat, 0.50))
					} else {
						bolt, boltRounds = append(bolt, lat...), append(boltRounds, pct(lat, 0.50))
					}
				}
			}
			slices.Sort(bolt)
			slices.Sort(wal)
			ratios := make([]float64, rounds)
			for i := range rounds {
				ratios[i] = float64(boltRounds[i]) / float64(walRounds[i])
			}
			slices.Sort(ratios)
			bp50, wp50 := pct(bolt, 0.50), pct(wal, 0.50)
			b.ReportMetric(float64(bp50.Microseconds()), "raftboltdb-p50-µs")
			b.ReportMetric(float64(pct(bolt, 0.99).Microseconds()), "raftboltdb-p99-µs")
			b.ReportMetric(float64(wp50.Microseconds()), "wal-p50-µs")
			b.ReportMetric(float64(pct(wal, 0.99).Microseconds()), "wal-p99-µs")
			b.ReportMetric(float64(bp50)/float64(wp50), "p50-ratio")
			b.ReportMetric(ratios[len(ratios)/2], "round-ratio-median")
			b.Logf("%d appender(s), %d rounds of %v: raft-boltdb p50 %v p99 %v (%d appends); one-fdatasync WAL p50 %v p99 %v (%d appends); p50 ratio %.2f, per round %.2f-%.2f",
				appenders, rounds, d, bp50, pct(bolt, 0.99), len(bolt), wp50, pct(wal, 0.99), len(wal), float64(bp50)/float64(wp50), ratios[0], ratios[len(ratios)-1])
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
		if kind == "wal" {
			apps[i], err = openWALAppender(path)
		} else {
			apps[i], err = openBoltAppender(path)
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

// boltAppender is Regent's log store, opened as OpenRaft opens it.
type boltAppender struct{ s raft.LogStore }

func openBoltAppender(dir string) (appender, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	s, err := openLogStore(dir, false)
	if err != nil {
		return nil, err
	}
	return boltAppender{s}, nil
}

func (a boltAppender) append(index uint64, data []byte) error {
	return a.s.StoreLogs([]*raft.Log{{Index: index, Term: 1, Type: raft.LogCommand, Data: data}})
}

func (a boltAppender) close() error { return a.s.(interface{ Close() error }).Close() }

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
