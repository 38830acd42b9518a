package scale

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/regent-registry/regent/ephemeral"
)

// tinyParams is a cluster small enough for a unit test, with churn high
// enough that every kind of change, and digest mismatches, happen.
func tinyParams(nodes, clients int) Params {
	p := DefaultParams(nodes, clients)
	p.RegPerSec, p.MovePerSec, p.DiscPerSec = 0.02, 0.01, 0.02
	p.Probes = 20
	return p
}

func TestScheduleIsSortedAndConsistent(t *testing.T) {
	s, err := NewSchedule(tinyParams(5, 500))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.IsSortedFunc(s.Events, func(a, b Event) int { return int(a.At - b.At) }) {
		t.Fatal("events are not sorted by time")
	}
	// Replay the schedule: every change names the node the client is on,
	// and nothing happens on the failed node after it died.
	where := map[int32]int16{}
	for i, e := range s.Events {
		if e.At >= s.FailAt && (e.Node == int16(s.FailNode) || (e.Kind != Reconnect && e.From == int16(s.FailNode))) {
			t.Fatalf("event %d (%v at %v) touches the failed node after its death", i, e.Kind, e.At)
		}
		switch e.Kind {
		case Register:
			if _, ok := where[e.Client]; ok {
				t.Fatalf("event %d registers client %d twice", i, e.Client)
			}
		case Move, Disconnect, Reconnect:
			if n, ok := where[e.Client]; !ok || n != e.From {
				t.Fatalf("event %d: %v of client %d from node %d, but it is on %d (known %v)", i, e.Kind, e.Client, e.From, n, ok)
			}
		}
		if e.Kind == Disconnect {
			delete(where, e.Client)
		} else {
			where[e.Client] = e.Node
		}
	}
	if len(s.Lost)+len(s.Moved) == 0 || len(s.Moved) == 0 {
		t.Fatalf("the failed node had %d lost and %d reconnecting clients, want some of each", len(s.Lost), len(s.Moved))
	}
	for k := Register; k <= Disconnect; k++ {
		if s.ChurnCounts[k] == 0 {
			t.Fatalf("no %v in the churn window", k)
		}
	}
}

// The driver's own counts of what the engines sent must be the in-memory
// network's counts of what it delivered, kind by kind.
func TestCountedMessagesEqualTheNetworkCounts(t *testing.T) {
	s, err := NewSchedule(tinyParams(3, 300))
	if err != nil {
		t.Fatal(err)
	}
	r, err := newRegentRun(s, ephemeral.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.run(context.Background()); err != nil {
		t.Fatal(err)
	}
	var sum traffic
	for p := range numPhases {
		for _, c := range r.meter.phaseCounts(p) {
			for k := range numMsgKinds {
				sum.Msgs[k] += c.Msgs[k]
			}
		}
	}
	net := r.net.Counts()
	got := [...]uint64{sum.Msgs[msgSync], sum.Msgs[msgVerify], sum.Msgs[msgVerifyList], sum.Msgs[msgQuery], sum.Msgs[msgSnapshot]}
	want := [...]uint64{net.Sync, net.Verify, net.VerifyList, net.Query, net.Snapshot}
	if got != want {
		t.Fatalf("counted sync, verify, verify-list, query, snapshot = %v; the network delivered %v", got, want)
	}
	if net.Sync == 0 || net.Verify == 0 {
		t.Fatalf("nothing was sent: %+v", net)
	}
}

func TestTinyClusterConvergesAndRepairs(t *testing.T) {
	p := tinyParams(3, 300)
	cfg := ephemeral.DefaultConfig()
	res, err := RunConfig(context.Background(), p, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Regent.ConvN == 0 || res.Unconverged != 0 {
		t.Fatalf("%d registrations converged, %d probes did not", res.Regent.ConvN, res.Unconverged)
	}
	// On an instant network a change is everywhere at once after a quiet
	// window, and at the latest when its owner's merge window closes.
	if res.Regent.ConvMax < 0 || res.Regent.ConvAllMax > cfg.SyncDelay {
		t.Fatalf("Regent converged in at most %v (registrations %v), want within the sync delay %v", res.Regent.ConvAllMax, res.Regent.ConvMax, cfg.SyncDelay)
	}
	// Nacos sends at the first scan at least 1 s after the change.
	// (or sooner, when a verify round finds the peer lacks it): never
	// later, whatever else is queued.
	if res.Nacos.ConvP50 < NacosSyncDelay || res.Nacos.ConvAllMax > NacosSyncDelay+NacosTick {
		t.Fatalf("Nacos converged in %v (p50 of registrations) to %v (max of all changes), want within [%v, %v]", res.Nacos.ConvP50, res.Nacos.ConvAllMax, NacosSyncDelay, NacosSyncDelay+NacosTick)
	}
	// The failed node's other clients go once gossip has spoken and the
	// owner grace has passed, at the next sweep.
	lo := p.Detect + cfg.OwnerGrace
	if res.Regent.Gone < lo || res.Regent.Gone > lo+cfg.SweepInterval+repairCheckEvery {
		t.Fatalf("Regent removed the dead node's clients after %v, want within [%v, %v]", res.Regent.Gone, lo, lo+cfg.SweepInterval+repairCheckEvery)
	}
	if res.Regent.Reowned < 0 || res.Regent.Reowned > p.ReconnectWindow+cfg.SyncDelay+repairCheckEvery {
		t.Fatalf("Regent re-owned the reconnected clients after %v, want within %v", res.Regent.Reowned, p.ReconnectWindow+cfg.SyncDelay+repairCheckEvery)
	}
	if res.Nacos.Gone < NacosExpiry-NacosVerifyInterval {
		t.Fatalf("Nacos removed the dead node's clients after %v, before its 3-minute lease could run out", res.Nacos.Gone)
	}
}

// Without churn a verify round costs Regent one digest per peer, and Nacos
// one request per client per peer.
func TestQuietWindowCostsOneDigestPerPeer(t *testing.T) {
	const nodes, clients = 4, 400
	p := tinyParams(nodes, clients)
	res, err := Run(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	interval := ephemeral.DefaultConfig().VerifyInterval.Seconds()
	if want := float64(nodes-1) / interval; res.Regent.QuietMsgsPerSec != want || res.QuietListMsgs != 0 {
		t.Fatalf("Regent quiet window: %v requests/s per node and %d list messages, want %v and 0", res.Regent.QuietMsgsPerSec, res.QuietListMsgs, want)
	}
	if want := float64(clients/nodes*(nodes-1)) / NacosVerifyInterval.Seconds(); res.Nacos.QuietMsgsPerSec != want {
		t.Fatalf("Nacos quiet window: %v requests/s per node, want %v", res.Nacos.QuietMsgsPerSec, want)
	}
}

// A run is a function of its seed.
func TestRunsAreDeterministic(t *testing.T) {
	p := tinyParams(3, 300)
	a, err := Run(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Run(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	a.Wall, b.Wall = 0, 0
	a.Regent.HeapPerNode, b.Regent.HeapPerNode = 0, 0
	if a != b {
		t.Fatalf("two runs of one seed differ:\n%+v\n%+v", a, b)
	}
	p.Seed++
	c, err := Run(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Regent.BytesPerSec == a.Regent.BytesPerSec && c.Nacos.ConvP50 == a.Nacos.ConvP50 {
		t.Fatal("another seed gave the same run")
	}
}

func TestSlopeRecoversAPowerLaw(t *testing.T) {
	xs := []float64{3, 5, 9, 17, 33, 65}
	ys := make([]float64, len(xs))
	for i, x := range xs {
		ys[i] = 7 * x * x
	}
	if k := slope(xs, ys); k < 1.999 || k > 2.001 {
		t.Fatalf("slope of 7x² is %v", k)
	}
}

func TestMarkdownAndPlots(t *testing.T) {
	var rs []Result
	for _, n := range []int{3, 5} {
		r, err := Run(context.Background(), tinyParams(n, 200))
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	var b strings.Builder
	if err := WriteMarkdown(&b, Meta{Command: "regent-scale -test", Date: time.Unix(0, 0), Machine: "test"}, rs); err != nil {
		t.Fatal(err)
	}
	if md := b.String(); !strings.Contains(md, "| 3 | 200 |") || !strings.Contains(md, "| 5 | 200 |") || !strings.Contains(md, "regent-scale -test") {
		t.Fatalf("tables lack a row or the command:\n%s", md)
	}
	files, err := WritePlots(t.TempDir(), "svg", rs)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(Charts) {
		t.Fatalf("wrote %d plots, want %d: %v", len(files), len(Charts), files)
	}
}

// A task sent early by a verify round leaves a stale entry in the queue; a
// later task of the same client must not hold up the tasks queued behind
// that entry.
func TestNacosQueueIsNotHeldUpByAResentClient(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	s := &Schedule{
		P:   Params{Nodes: 2, Seed: 1},
		IDs: []string{"a", "b", "c"},
		Events: []Event{
			{At: ms(1000), Client: 2, Node: 0, From: -1, Kind: Register},
			// c's DELETE heads the queue until 5.4 s.
			{At: ms(4400), Client: 2, Node: -1, From: 0, Kind: Disconnect},
			// The verify round at 5 s finds a's CHANGE still queued and
			// sends it at the next scan, behind c's DELETE.
			{At: ms(4500), Client: 0, Node: 0, From: -1, Kind: Register},
			{At: ms(5050), Client: 1, Node: 0, From: -1, Kind: Register, Probe: true},
			// a's new task must not hold b up once c's DELETE has gone.
			{At: ms(5300), Client: 0, Node: -1, From: 0, Kind: Disconnect},
		},
		QuietStart: ms(1000), ChurnStart: ms(2000), FailNode: 1, FailAt: ms(10000), DetectAt: ms(11000), End: ms(12000),
	}
	res := newNacosModel(s).run()
	if len(res.conv[Register]) != 1 {
		t.Fatalf("%d registrations converged, want 1", len(res.conv[Register]))
	}
	if got := res.conv[Register][0]; got < NacosSyncDelay || got > NacosSyncDelay+NacosTick {
		t.Fatalf("b converged after %v, want within [%v, %v]", got, NacosSyncDelay, NacosSyncDelay+NacosTick)
	}
}
