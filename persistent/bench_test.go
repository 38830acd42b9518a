package persistent

// Raft benchmarks. Every figure is printed beside its baseline from the same
// run (b.ReportMetric and a b.Logf line); none has a pass/fail threshold.
// Run them (make bench-raft) with:
//
//	go test -run '^$' -bench '^BenchmarkRaft' -benchtime 1x -timeout 30m ./persistent/
//
// or one at a time:
//
//	go test -run '^$' -bench '^BenchmarkRaftRegisterVsBareRaft$' -benchtime 1x -timeout 30m ./persistent/
//	go test -run '^$' -bench '^BenchmarkRaftRestart1M$' -benchtime 1x -timeout 30m ./persistent/
//	go test -run '^$' -bench '^BenchmarkRaftFailover$' -benchtime 1x -timeout 30m ./persistent/
//	go test -run '^$' -bench '^BenchmarkRaftLogAppendFloor$' -benchtime 1x -timeout 30m ./persistent/
//
// Knobs (flags of the test binary, after the package):
//
//	-raftbench.duration=3s       measured time of each writers=W phase
//	-raftbench.rounds=2          rounds of Regent and bare raft (the order
//	                             alternates); restarts in BenchmarkRaftRestart1M
//	-raftbench.failover-runs=10  leader kills in BenchmarkRaftFailover
//	-raftbench.instances=1000000 state of BenchmarkRaftRestart1M
//	-raftbench.cpuprofile=DIR    CPU profile of each measured phase of
//	                             BenchmarkRaftRegisterVsBareRaft into DIR
//	-raftbench.fsm-baseline      BenchmarkRaftRegisterVsBareRaft also runs bare
//	                             raft with Regent's FSM (where the gap comes from)
//	-raftbench.serial-baseline   BenchmarkRaftRegisterVsBareRaft also runs Regent
//	                             with SerialLeaderWrite (hashicorp/raft's order)
//
// The harness is in cluster_bench_test.go; BenchmarkRaftRestart1M is in
// restart_bench_test.go, BenchmarkRaftFailover in failover_bench_test.go
// and BenchmarkRaftLogAppendFloor (one log append on this disk, raft-boltdb
// beside a one-fdatasync write-ahead log) in logfloor_bench_test.go.

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/regent-registry/regent/internal/naming"
)

var (
	benchRaftDuration    = flag.Duration("raftbench.duration", 3*time.Second, "measured time of each writers=W phase of BenchmarkRaftRegisterVsBareRaft")
	benchRaftRounds      = flag.Int("raftbench.rounds", 2, "rounds of Regent and bare raft in BenchmarkRaftRegisterVsBareRaft (the order alternates); restarts in BenchmarkRaftRestart1M")
	benchRaftFailovers   = flag.Int("raftbench.failover-runs", 10, "leader kills in BenchmarkRaftFailover")
	benchRaftInstances   = flag.Int("raftbench.instances", 1_000_000, "persistent instances of BenchmarkRaftRestart1M")
	benchRaftCPUProfile  = flag.String("raftbench.cpuprofile", "", "directory for a CPU profile of each measured phase of BenchmarkRaftRegisterVsBareRaft")
	benchRaftFSMBaseline = flag.Bool("raftbench.fsm-baseline", false, "BenchmarkRaftRegisterVsBareRaft also runs bare raft with Regent's FSM")
	benchRaftSerial      = flag.Bool("raftbench.serial-baseline", false, "BenchmarkRaftRegisterVsBareRaft also runs Regent with SerialLeaderWrite (the leader stores each entry before it replicates it)")
)

// benchLoad is what a run of writers did in its measured window.
type benchLoad struct {
	Ops, Errors int
	All         int // operations done, warm-up and errors included
	Elapsed     time.Duration
	Lat         []time.Duration // sorted by summarize
	FirstErr    error
}

func (l *benchLoad) add(o benchLoad) {
	l.Ops += o.Ops
	l.All += o.All
	l.Errors += o.Errors
	l.Elapsed += o.Elapsed
	l.Lat = append(l.Lat, o.Lat...)
	if l.FirstErr == nil {
		l.FirstErr = o.FirstErr
	}
}

func (l *benchLoad) summarize() { slices.Sort(l.Lat) }

func (l *benchLoad) rate() float64 {
	if l.Elapsed <= 0 {
		return 0
	}
	return float64(l.Ops) / l.Elapsed.Seconds()
}

func (l *benchLoad) pct(p float64) time.Duration { return benchPct(l.Lat, p) }

// benchPct returns the p-quantile (0..1) of sorted durations.
func benchPct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(p*float64(len(sorted)-1)+0.5)]
}

func benchMS(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// runBenchLoad runs op in w goroutines, first for warm (not counted), then
// for d: ops started in that window are counted and timed, and Elapsed runs
// from its start until the last of them has finished. op gets its worker
// number and a sequence number unique within the worker.
func runBenchLoad(w int, warm, d time.Duration, op func(worker, seq int) error) benchLoad {
	start := time.Now().Add(warm)
	end := start.Add(d)
	loads := make([]benchLoad, w)
	var wg sync.WaitGroup
	for i := range w {
		wg.Go(func() {
			l := &loads[i]
			l.Lat = make([]time.Duration, 0, 4096)
			for seq := 0; ; seq++ {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				err := op(i, seq)
				l.All++
				if t0.Before(start) {
					continue
				}
				if err != nil {
					l.Errors++
					if l.FirstErr == nil {
						l.FirstErr = err
					}
					continue
				}
				l.Ops++
				l.Lat = append(l.Lat, time.Since(t0))
			}
		})
	}
	wg.Wait()
	var out benchLoad
	for _, l := range loads {
		out.add(l)
	}
	out.Elapsed = time.Since(start)
	return out
}

// benchProfile starts a CPU profile into the -raftbench.cpuprofile
// directory, if set; the returned func stops it.
func benchProfile(tb testing.TB, name string) func() {
	if *benchRaftCPUProfile == "" {
		return func() {}
	}
	if err := os.MkdirAll(*benchRaftCPUProfile, 0o755); err != nil {
		tb.Fatal(err)
	}
	f, err := os.Create(filepath.Join(*benchRaftCPUProfile, name+".pprof"))
	if err != nil {
		tb.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		tb.Fatal(err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

// BenchmarkRaftRegisterVsBareRaft: a 3-node Regent cluster over TCP on
// 127.0.0.1, the Raft log fsync'd, the bbolt state opened as the daemon
// opens it (OpenState: synced every second), production timings; W
// goroutines each Register one new instance of their own service on the
// leader, for -raftbench.duration. The baseline is bare hashicorp/raft on
// the same machinery (3 nodes, raft-boltdb/v2 with fsync, file snapshot
// store, TCP transport, the same raft.Config) with a no-op FSM, W
// goroutines doing raft.Apply(cmd, 0).Error() with a payload as large as
// Regent's encoded command. Both run on fresh clusters, alternating in
// -raftbench.rounds rounds; besides the ratio of all operations, the
// ratio of each round's back-to-back pair is reported (median and min),
// since the disk's fsync time drifts between rounds on a shared machine.
// Target: ratio >= 0.80 at 64 writers.
//
// With -raftbench.fsm-baseline a third system runs in each round: bare raft
// with Regent's FSM (NewFSM over OpenState) and writers that
// encode commands as Store.Exec does, which separates the FSM's share of
// the gap from the Store's. Bytes and write calls per operation (of the
// whole process, files and sockets, from /proc/self/io) are logged when
// readable.
func BenchmarkRaftRegisterVsBareRaft(b *testing.B) {
	cfg := DefaultRaftConfig()
	cfg.NoSync = false
	sample, err := Command{Op: OpRegister, Key: benchKey(0), Instances: []naming.Instance{benchInstance(300)}}.Encode()
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, len(sample))
	for i := range payload {
		payload[i] = 'x'
	}
	d, rounds := *benchRaftDuration, max(1, *benchRaftRounds)
	warm := min(d/10, 300*time.Millisecond)
	systems := []string{"regent", "bare"}
	if *benchRaftFSMBaseline {
		systems = append(systems, "bare+fsm")
	}
	if *benchRaftSerial {
		systems = append(systems, "regent-serial")
	}
	for _, w := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("writers=%d", w), func(b *testing.B) {
			loads := map[string]*benchLoad{}
			ioBy := map[string]*benchIO{}
			var details []string // logged last: benchmark logs are cut after 10 lines
			var pairs []float64  // regent/bare of each round: machine drift hits both alike
			for b.Loop() {
				details, pairs = nil, nil
				for _, sys := range systems {
					loads[sys], ioBy[sys] = &benchLoad{}, &benchIO{}
				}
				for r := range rounds {
					order := slices.Clone(systems)
					if r%2 == 1 {
						slices.Reverse(order)
					}
					rates := map[string]float64{}
					for _, sys := range order {
						var l benchLoad
						var io0, io1 benchIO
						dir := b.TempDir()
						profile := fmt.Sprintf("%s-w%d-r%d", strings.ReplaceAll(sys, "+", "-"), w, r)
						switch sys {
						case "regent", "regent-serial":
							cfg := cfg
							cfg.SerialLeaderWrite = sys == "regent-serial"
							c := startBenchCluster(b, dir, 3, cfg, nil)
							st := c.nodes[c.waitLeader(30*time.Second)].store
							stop := benchProfile(b, profile)
							io0 = readBenchIO()
							l = runBenchLoad(w, warm, d, func(worker, seq int) error {
								_, err := st.Register(context.Background(), benchKey(worker), []naming.Instance{benchInstance(seq)})
								return err
							})
							io1 = readBenchIO()
							stop()
							c.stop()
						case "bare":
							c := startBareCluster(b, dir, 3, cfg, nil)
							rf := c.waitLeader(30 * time.Second)
							stop := benchProfile(b, profile)
							io0 = readBenchIO()
							l = runBenchLoad(w, warm, d, func(int, int) error { return rf.Apply(payload, 0).Error() })
							io1 = readBenchIO()
							stop()
							c.stop()
						case "bare+fsm":
							c := startBareCluster(b, dir, 3, cfg, func(dir string) (raft.FSM, io.Closer) {
								db, err := OpenState(filepath.Join(dir, "state.db"), nil)
								if err != nil {
									b.Fatal(err)
								}
								return NewFSM(db, nil), db
							})
							rf := c.waitLeader(30 * time.Second)
							stop := benchProfile(b, profile)
							io0 = readBenchIO()
							l = runBenchLoad(w, warm, d, func(worker, seq int) error {
								data, err := Command{Op: OpRegister, Key: benchKey(worker), Instances: []naming.Instance{benchInstance(seq)}}.Encode()
								if err != nil {
									return err
								}
								f := rf.Apply(data, 0)
								if err := f.Error(); err != nil {
									return err
								}
								return f.Response().(applyResult).Err
							})
							io1 = readBenchIO()
							stop()
							c.stop()
						}
						l.summarize()
						per := io1.sub(io0).per(l.All)
						details = append(details, fmt.Sprintf("round %d %-8s %6.0f ops/s p50 %-12v p99 %-12v errors %d; per op %s", r, sys, l.rate(), l.pct(0.50), l.pct(0.99), l.Errors, per))
						loads[sys].add(l)
						ioBy[sys].add(io1.sub(io0))
						rates[sys] = l.rate()
					}
					pairs = append(pairs, rates["regent"]/rates["bare"])
				}
			}
			reg, bare := loads["regent"], loads["bare"]
			reg.summarize()
			bare.summarize()
			ratio := reg.rate() / bare.rate()
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(reg.rate(), "regent-ops/s")
			b.ReportMetric(bare.rate(), "bare-ops/s")
			b.ReportMetric(ratio, "ratio")
			slices.Sort(pairs)
			median := pairs[len(pairs)/2]
			if len(pairs)%2 == 0 {
				median = (pairs[len(pairs)/2-1] + pairs[len(pairs)/2]) / 2
			}
			b.ReportMetric(median, "round-ratio-median")
			b.ReportMetric(pairs[0], "round-ratio-min")
			b.ReportMetric(benchMS(reg.pct(0.50)), "regent-p50-ms")
			b.ReportMetric(benchMS(reg.pct(0.99)), "regent-p99-ms")
			b.ReportMetric(benchMS(bare.pct(0.50)), "bare-p50-ms")
			b.ReportMetric(benchMS(bare.pct(0.99)), "bare-p99-ms")
			b.ReportMetric(float64(len(payload)), "payload-bytes")
			b.ReportMetric(float64(reg.Errors), "regent-errors")
			b.ReportMetric(float64(bare.Errors), "bare-errors")
			b.Logf("%d writers, %d rounds of %v each: regent %.0f ops/s (p50 %v p99 %v, %d errors; per op %s); bare raft %.0f ops/s (p50 %v p99 %v, %d errors; per op %s); ratio %.2f; payload %d bytes",
				w, rounds, d, reg.rate(), reg.pct(0.50), reg.pct(0.99), reg.Errors, ioBy["regent"].per(reg.All),
				bare.rate(), bare.pct(0.50), bare.pct(0.99), bare.Errors, ioBy["bare"].per(bare.All), ratio, len(payload))
			if fb, ok := loads["bare+fsm"]; ok {
				fb.summarize()
				b.ReportMetric(fb.rate(), "bare+fsm-ops/s")
				b.ReportMetric(fb.rate()/bare.rate(), "bare+fsm-ratio")
				b.Logf("bare raft with Regent's FSM: %.0f ops/s (p50 %v p99 %v, %d errors; per op %s); ratio to bare raft %.2f",
					fb.rate(), fb.pct(0.50), fb.pct(0.99), fb.Errors, ioBy["bare+fsm"].per(fb.All), fb.rate()/bare.rate())
			}
			if rs, ok := loads["regent-serial"]; ok {
				rs.summarize()
				b.ReportMetric(rs.rate(), "regent-serial-ops/s")
				b.ReportMetric(benchMS(rs.pct(0.50)), "regent-serial-p50-ms")
				b.ReportMetric(reg.rate()/rs.rate(), "parallel/serial")
				b.Logf("regent with SerialLeaderWrite: %.0f ops/s (p50 %v p99 %v, %d errors; per op %s); regent (leader writes in parallel) / serial %.2f",
					rs.rate(), rs.pct(0.50), rs.pct(0.99), rs.Errors, ioBy["regent-serial"].per(rs.All), reg.rate()/rs.rate())
			}
			b.Logf("ratio of each round (regent and bare raft back to back): median %.2f, min %.2f, max %.2f over %d rounds", median, pairs[0], pairs[len(pairs)-1], len(pairs))
			if reg.Errors+bare.Errors > 0 {
				b.Logf("write errors: regent %d (first: %v), bare raft %d (first: %v)", reg.Errors, reg.FirstErr, bare.Errors, bare.FirstErr)
			}
			for _, l := range details {
				b.Log(l)
			}
		})
	}
}

// benchIO is the process's write I/O (/proc/self/io): bytes handed to
// write calls on files and sockets, their number, and bytes sent to the
// block device.
type benchIO struct {
	ok                 bool
	wchar, syscw, disk int64
}

func readBenchIO() benchIO {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return benchIO{}
	}
	v := benchIO{ok: true}
	for line := range strings.Lines(string(data)) {
		k, n, _ := strings.Cut(strings.TrimSpace(line), ": ")
		i, _ := strconv.ParseInt(n, 10, 64)
		switch k {
		case "wchar":
			v.wchar = i
		case "syscw":
			v.syscw = i
		case "write_bytes":
			v.disk = i
		}
	}
	return v
}

func (a benchIO) sub(b benchIO) benchIO {
	return benchIO{ok: a.ok && b.ok, wchar: a.wchar - b.wchar, syscw: a.syscw - b.syscw, disk: a.disk - b.disk}
}

func (a *benchIO) add(b benchIO) {
	ok := b.ok && (a.ok || a.wchar+a.syscw+a.disk == 0)
	*a = benchIO{ok: ok, wchar: a.wchar + b.wchar, syscw: a.syscw + b.syscw, disk: a.disk + b.disk}
}

// per renders the I/O per operation.
func (a benchIO) per(ops int) string {
	if !a.ok || ops == 0 {
		return "(no /proc/self/io)"
	}
	n := float64(ops)
	return fmt.Sprintf("%.0f B in %.1f write calls (files and sockets), %.0f B to disk", float64(a.wchar)/n, float64(a.syscw)/n, float64(a.disk)/n)
}
