package compare

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/regent-registry/regent/internal/bench/load"
	"github.com/regent-registry/regent/internal/testcluster"
)

// TestMain lets this test binary be the client process of the removal
// workload, as cmd/regent-compare is.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == ChildArg {
		if err := ChildMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func sample(ops int64, secs float64, lat ...time.Duration) load.Sample {
	return load.Sample{Ops: ops, Elapsed: time.Duration(secs * float64(time.Second)), Latencies: lat}
}

func TestRatioAndTarget(t *testing.T) {
	for _, tc := range []struct {
		row   Row
		ratio float64
		met   bool
	}{
		{Row{Workload: Ephemeral, Regent: sample(5000, 1, 1), Etcd: sample(1000, 1, 1)}, 5, true},
		{Row{Workload: Ephemeral, Regent: sample(4900, 1, 1), Etcd: sample(1000, 1, 1)}, 4.9, false},
		{Row{Workload: Persistent, Regent: sample(1300, 1, 1), Etcd: sample(1000, 1, 1)}, 1.3, true},
		// Latency workloads compare p99, lower is better.
		{Row{Workload: Notify, Regent: sample(2, 1, 2*time.Millisecond, 4*time.Millisecond), Etcd: sample(2, 1, 5*time.Millisecond, 10*time.Millisecond)}, 0.4, true},
		{Row{Workload: Removal, Regent: sample(1, 1, 500*time.Millisecond), Etcd: sample(1, 1, 2*time.Second)}, 0.25, false},
		// A workload without a target never meets one.
		{Row{Workload: Shared, Regent: sample(9000, 1, 1), Etcd: sample(1000, 1, 1)}, 9, false},
		// No successful operation on one side is never a met target.
		{Row{Workload: Removal, Regent: sample(0, 1), Etcd: sample(1, 1, 2*time.Second)}, 0, false},
	} {
		if got := tc.row.Ratio(); fmt.Sprintf("%.3f", got) != fmt.Sprintf("%.3f", tc.ratio) || tc.row.Met() != tc.met {
			t.Errorf("%s: ratio %.3f met %v, want %.3f %v", tc.row.Workload, got, tc.row.Met(), tc.ratio, tc.met)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := DefaultOptions()
	ok.RegentBin, ok.EtcdBin, ok.Self, ok.Dir = "r", "e", "s", "d"
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Options){
		"too many clients": func(o *Options) { o.Clients = []int{1, 1000} },
		"no rounds":        func(o *Options) { o.Rounds = 0 },
		"unknown workload": func(o *Options) { o.Workloads = []string{"put"} },
		"no etcd":          func(o *Options) { o.EtcdBin = "" },
	} {
		o := ok
		mut(&o)
		if err := o.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestTable(t *testing.T) {
	r := &Result{Rows: []Row{
		{Workload: Noop, Clients: 16, Regent: sample(8000, 1, time.Millisecond), Etcd: sample(4000, 1, time.Millisecond)},
		{Workload: Lookup, Clients: 16, Regent: sample(6000, 1, time.Millisecond), Etcd: sample(1000, 1, 2*time.Millisecond),
			RegentCPU: CPU{Server: 600 * time.Millisecond, Generator: 300 * time.Millisecond, Ops: 6000},
			EtcdCPU:   CPU{Server: 200 * time.Millisecond, Generator: 50 * time.Millisecond, Ops: 1000}},
		// A concurrency without its no-op row gets no ceiling line.
		{Workload: Lookup, Clients: 64, Regent: sample(6000, 1, time.Millisecond), Etcd: sample(1000, 1, 2*time.Millisecond)}},
		EtcdTermsBefore: []uint64{2, 2, 2}, EtcdTermsAfter: []uint64{2, 3, 3},
		RegentMemory: Memory{Peak: 150 << 20, RSS: 120 << 20}, EtcdMemory: Memory{Err: "gone"}}
	var b strings.Builder
	r.Table(&b, "regent-compare")
	out := b.String()
	for _, want := range []string{"| lookup | 16 | 6000 | 1.00 ms | 1.00 ms | 1000 | 2.00 ms | 2.00 ms | 6.00 (throughput) | ≥ 5.0× | yes |", "etcd changed leader",
		"Regent 150 MiB peak, 120 MiB at the end; etcd unread (gone).",
		// 100 µs and 50 µs per op for Regent, 200 and 50 for etcd.
		"| lookup | 16 | 100 µs | 200 µs | 2.00 | 50 µs | 50 µs | 1.67 |",
		// Regent's lookup at 0.75 of its no-op, etcd's at 0.25; a free
		// Regent lookup would reach 8000/1000.
		"| 16 | 8000 | 0.75 | 4000 | 0.25 | 8.00 | 6.00 |"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\n| 64 |") {
		t.Errorf("a ceiling line for 64 clients, which have no no-op row:\n%s", out)
	}
}

// The Regent side of the workloads against an in-process 3-node cluster:
// every operation of each workload succeeds and is timed, including the
// removal of killed client processes (this test binary, re-run).
func TestRegentWorkloads(t *testing.T) {
	tc := testcluster.Start(t, 3, nil)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sys := &regentSystem{servers: tc.Addrs(), self: self}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, w := range Workloads {
		s, err := sys.measure(ctx, w, 2, 0, 200*time.Millisecond)
		if err != nil {
			t.Fatalf("%s: %v", w, err)
		}
		if s.Errors != 0 || s.Ops == 0 || len(s.Latencies) != int(s.Ops) {
			t.Fatalf("%s: %d ops, %d errors (%s), %d latencies", w, s.Ops, s.Errors, s.FirstErr, len(s.Latencies))
		}
		if w == Removal && s.Ops != 2 {
			t.Fatalf("removal timed %d of 2 killed clients", s.Ops)
		}
		t.Logf("%s: %d ops, p50 %v p99 %v", w, s.Ops, s.Pct(0.5), s.Pct(0.99))
	}
}

// procCPU reads this very process' times from /proc as getrusage does,
// and the meter counts CPU burnt inside its window only.
func TestCPUMeter(t *testing.T) {
	burn := func(d time.Duration) {
		for start := selfCPU(); selfCPU()-start < d; {
		}
	}
	burn(50 * time.Millisecond)
	proc, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if self := selfCPU(); proc > self+20*time.Millisecond || proc < self-50*time.Millisecond {
		t.Fatalf("/proc says %v, getrusage %v", proc, self)
	}
	m := &cpuMeter{pids: []int{os.Getpid()}}
	ctx := load.WithWindow(context.Background(), m.window)
	burn(100 * time.Millisecond) // before the window: not counted
	s := load.Run(ctx, 1, 150*time.Millisecond, func(context.Context, int, int) error {
		burn(10 * time.Millisecond)
		return nil
	})
	var c CPU
	m.add(&c, s.Ops)
	if c.Err != "" || c.Server < 100*time.Millisecond || c.Server > 250*time.Millisecond || c.Generator < 100*time.Millisecond || c.Ops != s.Ops {
		t.Fatalf("window of ~150 ms of burning: server %v generator %v ops %d (err %q)", c.Server, c.Generator, c.Ops, c.Err)
	}
}

// procMemory reads this process' resident memory, which holds at least a
// buffer it has written to, and fails for a process that is gone.
func TestProcMemory(t *testing.T) {
	buf := make([]byte, 64<<20)
	for i := range buf {
		buf[i] = 1
	}
	m := procMemory([]int{os.Getpid(), os.Getpid()})
	runtime.KeepAlive(buf)
	if m.Err != "" || m.RSS < 2*64<<20 || m.Peak < m.RSS {
		t.Fatalf("two reads of this process holding 64 MiB: %+v", m)
	}
	if m := procMemory([]int{os.Getpid(), 1 << 30}); m.Err == "" {
		t.Fatalf("no error for a process that does not exist: %+v", m)
	}
}

// With ZooKeeper measured, the tables gain its columns after etcd's, and
// a row ZooKeeper has no figure for shows it; without, they have none.
func TestTableWithZooKeeper(t *testing.T) {
	r := &Result{Rows: []Row{
		{Workload: Persistent, Clients: 16, Regent: sample(3000, 1, time.Millisecond), Etcd: sample(2000, 1, time.Millisecond), ZooKeeper: sample(1500, 1, 2*time.Millisecond),
			RegentCPU:    CPU{Server: 300 * time.Millisecond, Generator: 100 * time.Millisecond, Ops: 3000},
			EtcdCPU:      CPU{Server: 400 * time.Millisecond, Generator: 100 * time.Millisecond, Ops: 2000},
			ZooKeeperCPU: CPU{Server: 450 * time.Millisecond, Generator: 150 * time.Millisecond, Ops: 1500}},
		{Workload: Removal, Clients: 1, Regent: sample(1, 1, 20*time.Millisecond), Etcd: sample(1, 1, 2*time.Second), ZooKeeper: sample(1, 1, 4*time.Second)},
	}, ZooKeeperEpochsBefore: []uint64{1, 1, 1}, ZooKeeperEpochsAfter: []uint64{1, 1, 1}}
	var b strings.Builder
	r.Table(&b, "regent-compare")
	out := b.String()
	for _, want := range []string{
		"| Regent/etcd | target | met | ZooKeeper ops/s | ZooKeeper p50 | ZooKeeper p99 | Regent/ZooKeeper |",
		"| persistent | 16 | 3000 | 1.00 ms | 1.00 ms | 2000 | 1.00 ms | 1.00 ms | 1.50 (throughput) | ≥ 1.2× | yes | 1500 | 2.00 ms | 2.00 ms | 2.00 (throughput) |",
		"| removal | 1 | 1 | 20.00 ms | 20.00 ms | 1 | 2000.00 ms | 2000.00 ms | 0.01 (p99) | ≤ 0.2× (p99) | yes | 1 | 4000.00 ms | 4000.00 ms | 0.01 (p99) |",
		// 133 µs per op for Regent in all; 400 for ZooKeeper.
		"| persistent | 16 | 100 µs | 200 µs | 2.00 | 33 µs | 50 µs | 1.88 | 300 µs | 100 µs | 3.00 |",
		"ZooKeeper: a persistent znode", "ZooKeeper epoch of each server before the first measurement [1 1 1], after the last [1 1 1] (no leader change",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	r.Rows = r.Rows[:1]
	r.Rows[0].ZooKeeper, r.Rows[0].ZooKeeperCPU = load.Sample{}, CPU{}
	b.Reset()
	r.Table(&b, "regent-compare")
	if strings.Contains(b.String(), "ZooKeeper") {
		t.Errorf("a run without ZooKeeper mentions it:\n%s", b.String())
	}
}

// Two systems alternate which goes first; three rotate, so that over three
// rounds each runs first, second and third once.
// A notify round at few clients runs long enough for NotifySamples
// changes; other rounds, and notify at many clients, run the set time.
func TestRoundDuration(t *testing.T) {
	for _, tc := range []struct {
		w       string
		clients int
		want    time.Duration
	}{
		{Notify, 1, 5 * time.Second},
		{Notify, 2, 2500 * time.Millisecond},
		{Notify, 16, 2 * time.Second},
		{Lookup, 1, 2 * time.Second},
		{Removal, 1, 2 * time.Second},
	} {
		if got := roundDuration(tc.w, tc.clients, 2*time.Second); got != tc.want {
			t.Errorf("%s at %d clients: %v, want %v", tc.w, tc.clients, got, tc.want)
		}
	}
}

func TestRoundOrder(t *testing.T) {
	a, b, c := &regentSystem{}, &etcdSystem{}, &zkSystem{}
	name := func(o []system) string {
		var s []string
		for _, x := range o {
			s = append(s, x.name())
		}
		return strings.Join(s, ",")
	}
	for r, want := range []string{"regent,etcd", "etcd,regent", "regent,etcd"} {
		if got := name(roundOrder([]system{a, b}, r)); got != want {
			t.Errorf("two systems, round %d: %s, want %s", r, got, want)
		}
	}
	for r, want := range []string{"regent,etcd,zookeeper", "etcd,zookeeper,regent", "zookeeper,regent,etcd", "regent,etcd,zookeeper"} {
		if got := name(roundOrder([]system{a, b, c}, r)); got != want {
			t.Errorf("three systems, round %d: %s, want %s", r, got, want)
		}
	}
}
