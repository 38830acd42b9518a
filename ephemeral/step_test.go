package ephemeral

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regent-registry/regent/internal/naming"
)

// manualClock is a virtual clock that moves only when the test says so.
type manualClock struct{ ns atomic.Int64 }

func (c *manualClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *manualClock) advance(d time.Duration) { c.ns.Add(int64(d)) }
func newManualClock(start time.Time) *manualClock {
	c := &manualClock{}
	c.ns.Store(start.UnixNano())
	return c
}

// stepCluster builds n engines that are driven by Step, never started.
// stepCluster builds n engines on the default config (changed by mut, if
// not nil) over one in-memory network, each told the others are up.
func stepCluster(t testing.TB, n int, clock Clock, mut func(*Config)) (*InmemNetwork, []*Distro) {
	t.Helper()
	net := NewInmemNetwork(1)
	var ds []*Distro
	for i := 1; i <= n; i++ {
		cfg := DefaultConfig()
		if mut != nil {
			mut(&cfg)
		}
		cfg.Node = nodeName(i)
		cfg.Clock = clock
		d, err := New(cfg, NewStore(nil), net.Transport(cfg.Node))
		if err != nil {
			t.Fatal(err)
		}
		net.Register(cfg.Node, d)
		ds = append(ds, d)
	}
	for _, a := range ds {
		for _, b := range ds {
			a.PeerUp(b.Node())
		}
	}
	return net, ds
}

func TestStepSendsWhatIsDueByTheEngineClock(t *testing.T) {
	clock := newManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	net, ds := stepCluster(t, 3, clock, noBurst)
	ctx := context.Background()
	// A peer that comes up is verified at once: one digest per peer.
	for _, d := range ds {
		d.Step(ctx)
	}
	if c := net.Counts(); c.Verify != 6 || c.VerifyList != 0 {
		t.Fatalf("first verify round: %d digest and %d list messages, want 6 and 0", c.Verify, c.VerifyList)
	}
	svc := naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "s"}
	ds[0].Register("c1", svc, []naming.Instance{{IP: "10.0.0.1", Port: 80, Weight: 1, Healthy: true, Enabled: true, Ephemeral: true}})

	// After a quiet window a change goes at once, one message per peer.
	ds[0].Step(ctx)
	if got := net.Counts().Sync; got != 2 {
		t.Fatalf("got %d sync messages for a lone change, want one per peer (2)", got)
	}
	// The next change, inside the window, waits for the rest of it, and
	// Step says when that is.
	ds[0].Register("c1", svc, []naming.Instance{{IP: "10.0.0.1", Port: 81, Weight: 1, Healthy: true, Enabled: true, Ephemeral: true}})
	wait := ds[0].Step(ctx)
	if got := net.Counts().Sync; got != 2 {
		t.Fatalf("sync sent before the merge window ended: %d messages", got)
	}
	if wait != DefaultConfig().SyncDelay {
		t.Fatalf("Step says the next action is due in %v, want the sync delay %v", wait, DefaultConfig().SyncDelay)
	}
	clock.advance(wait)
	ds[0].Step(ctx)
	if got := net.Counts().Sync; got != 4 {
		t.Fatalf("got %d sync messages, want two per peer (4)", got)
	}
	for _, d := range ds[1:] {
		if owner, _, ok := d.ClientVersion("c1"); !ok || owner != "n1" {
			t.Fatalf("%s: client c1 owner %q present %v, want n1", d.Node(), owner, ok)
		}
	}

	// The round after the one at peer-up is spread as a first round is
	// (over the second half of the interval, by node and peer), so nodes
	// that came up together do not verify in step; its digests match: the
	// syncs arrived.
	cfg := DefaultConfig()
	want := time.Hour
	spread := map[time.Duration]bool{}
	for _, a := range ds {
		for _, b := range ds {
			if a != b {
				at := a.firstVerifyDelay(a.peers[b.Node()]) - cfg.SyncDelay
				want = min(want, at)
				spread[at] = true
			}
		}
	}
	if len(spread) < 2 {
		t.Fatalf("the six pairs' next rounds are all due at one instant %v", spread)
	}
	next := time.Hour
	for _, d := range ds {
		next = min(next, d.Step(ctx))
	}
	if next != want || next < cfg.VerifyInterval/2-cfg.SyncDelay || next >= cfg.VerifyInterval-cfg.SyncDelay {
		t.Fatalf("next action due in %v, want %v, in the second half of the interval", next, want)
	}
	for elapsed := time.Duration(0); net.Counts().Verify < 12 && elapsed < cfg.VerifyInterval; {
		clock.advance(next)
		elapsed += next
		next = time.Hour
		for _, d := range ds {
			next = min(next, d.Step(ctx))
		}
	}
	if c := net.Counts(); c.Verify != 12 || c.VerifyList != 0 || c.Sync != 4 {
		t.Fatalf("after the second verify round: %d digest, %d list, %d sync messages, want 12, 0, 4", c.Verify, c.VerifyList, c.Sync)
	}
}

// A verify that is due while changes still wait for the merge window goes
// after them: the digest then matches and no client list is sent.
func TestStepSyncsPendingChangesBeforeVerify(t *testing.T) {
	clock := newManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	net, ds := stepCluster(t, 2, clock, noBurst)
	ctx := context.Background()
	for _, d := range ds {
		d.Step(ctx)
	}
	svc := naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "s"}
	in := naming.Instance{IP: "10.0.0.1", Port: 80, Weight: 1, Healthy: true, Enabled: true, Ephemeral: true}
	ds[0].Register("c1", svc, []naming.Instance{in})
	ds[0].Step(ctx) // sent at once: the window was quiet
	// Just before the next verify, change the client twice: the first
	// change goes at once, the second waits for the merge window, and the
	// verify comes due with it pending.
	p := ds[0].peers[ds[1].Node()]
	untilVerify := p.nextVerify.Sub(clock.Now())
	clock.advance(untilVerify - time.Millisecond)
	in.Port = 81
	ds[0].Register("c1", svc, []naming.Instance{in}) // goes at once
	ds[0].Step(ctx)
	in.Port = 82
	ds[0].Register("c1", svc, []naming.Instance{in}) // within the window: pending
	clock.advance(time.Millisecond)                  // the verify is due, the window not over
	before := net.Counts()
	// The verify waits for the window to end rather than send a second
	// batch inside it, or a digest that cannot match.
	wait := ds[0].Step(ctx)
	if c := net.Counts(); c != before || wait != cfgSyncDelay()-time.Millisecond {
		t.Fatalf("inside the window: sent %+v (before %+v), next in %v; want nothing sent, next in %v", c, before, wait, cfgSyncDelay()-time.Millisecond)
	}
	clock.advance(wait)
	ds[0].Step(ctx)
	c := net.Counts()
	if c.Sync != before.Sync+1 || c.Verify != before.Verify+1 || c.VerifyList != 0 {
		t.Fatalf("sync %d->%d, verify %d->%d, list %d: want the pending change synced, then a matching digest", before.Sync, c.Sync, before.Verify, c.Verify, c.VerifyList)
	}
}

func TestStepDoesNothingOnAStartedEngine(t *testing.T) {
	clock := newManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	_, ds := stepCluster(t, 2, clock, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ds[0].Start(ctx)
	defer ds[0].Stop()
	if got := ds[0].Step(ctx); got != time.Hour {
		t.Fatalf("Step on a started engine returned %v, want an hour", got)
	}
}

func cfgSyncDelay() time.Duration { return DefaultConfig().SyncDelay }

// noBurst spaces every batch SyncDelay after the last, for the tests of
// the merge window itself.
func noBurst(c *Config) { c.SyncBurst = 1 }

// With the default burst, a moderate stream of changes (one every
// SyncDelay/2) goes a batch per change while the burst lasts; then the
// batches are paced one per SyncDelay, each carrying what came meanwhile;
// after a quiet spell the burst is back.
func TestStepSyncBurstThenPace(t *testing.T) {
	clock := newManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	net, ds := stepCluster(t, 2, clock, nil)
	ctx := context.Background()
	for _, d := range ds {
		d.Step(ctx)
	}
	cfg := DefaultConfig()
	if cfg.SyncBurst < 2 {
		t.Fatalf("default SyncBurst %d: this test wants a burst", cfg.SyncBurst)
	}
	svc := naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "s"}
	change := func(port int) {
		ds[0].Register("c1", svc, []naming.Instance{{IP: "10.0.0.1", Port: port, Weight: 1, Healthy: true, Enabled: true, Ephemeral: true}})
		ds[0].Step(ctx)
		clock.advance(cfg.SyncDelay / 2)
	}
	// At one change per SyncDelay/2 the credit falls by half a batch per
	// change: the first 2*SyncBurst-1 go at once.
	immediate := 2*cfg.SyncBurst - 1
	for i := range immediate {
		change(1000 + i)
		if got := net.Counts().Sync; got != uint64(i+1) {
			t.Fatalf("change %d of a moderate stream: %d sync messages, want %d (one per change while the burst lasts)", i, got, i+1)
		}
	}
	before := net.Counts().Sync
	for i := range 20 {
		change(2000 + i)
	}
	// 20 more changes over 10 SyncDelays: paced to about one batch per
	// SyncDelay.
	if got := net.Counts().Sync - before; got < 9 || got > 11 {
		t.Fatalf("20 changes over 10 sync delays took %d batches, want about 10 (one per SyncDelay)", got)
	}
	for ds[0].Step(ctx) < time.Second {
		clock.advance(cfg.SyncDelay)
	}
	if got := ds[1].Store().ClientInstances("c1")[svc]; len(got) != immediate+20 || !slices.ContainsFunc(got, func(in naming.Instance) bool { return in.Port == 2019 }) {
		t.Fatalf("peer holds %d instances of c1, want all %d, the last change's included", len(got), immediate+20)
	}
	clock.advance(time.Duration(cfg.SyncBurst) * cfg.SyncDelay) // quiet: the burst is back
	before = net.Counts().Sync
	for i := range cfg.SyncBurst {
		ds[0].Register("c1", svc, []naming.Instance{{IP: "10.0.0.1", Port: 3000 + i, Weight: 1, Healthy: true, Enabled: true, Ephemeral: true}})
		ds[0].Step(ctx)
	}
	if got := net.Counts().Sync - before; got != uint64(cfg.SyncBurst) {
		t.Fatalf("%d changes at one instant after a quiet spell: %d batches, want %d (the burst)", cfg.SyncBurst, got, cfg.SyncBurst)
	}
}

// Sweep forgets each tombstone TombstoneTTL after it was made, oldest
// first, and a tombstone made again for the same client (it came back and
// left again) lives its own TTL, not the one of the tombstone it replaced.
func TestSweepForgetsTombstonesInOrder(t *testing.T) {
	clock := newManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	_, ds := stepCluster(t, 2, clock, nil)
	d := ds[0]
	ttl := DefaultConfig().TombstoneTTL
	svc := naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "s"}
	in := naming.Instance{IP: "10.0.0.1", Port: 80, Weight: 1, Healthy: true, Enabled: true, Ephemeral: true}
	leave := func(id string) {
		d.Register(id, svc, []naming.Instance{in})
		d.Disconnect(id)
	}
	leave("c1") // at 0
	clock.advance(time.Second)
	leave("c2") // at 1 s
	clock.advance(time.Second)
	leave("c3") // at 2 s
	clock.advance(time.Second)
	leave("c1") // at 3 s: c1's tombstone is made again
	if n := d.Stats().Tombstones; n != 3 {
		t.Fatalf("%d tombstones, want 3", n)
	}
	clock.advance(ttl - 3*time.Second + 1500*time.Millisecond) // TTL + 1.5 s after the start
	d.Sweep()
	// c1's first tombstone (0) and c2's (1 s) are past the TTL, c3's (2 s)
	// and c1's second (3 s) are not.
	if n := d.Stats().Tombstones; n != 2 {
		t.Fatalf("at TTL+1.5s: %d tombstones, want 2 (c3 and c1's second)", n)
	}
	if _, ok := d.tombs["c1"]; !ok {
		t.Fatal("c1's second tombstone went with the first's TTL")
	}
	clock.advance(time.Second) // TTL + 2.5 s: c3's is past too
	d.Sweep()
	if _, ok := d.tombs["c3"]; ok || d.Stats().Tombstones != 1 {
		t.Fatalf("at TTL+2.5s: %d tombstones (c3 kept: %v), want c1's alone", d.Stats().Tombstones, ok)
	}
	clock.advance(time.Second)
	d.Sweep()
	if n := d.Stats().Tombstones; n != 0 || d.tombHead != len(d.tombQ) {
		t.Fatalf("at TTL+3.5s: %d tombstones, queue head %d of %d; want none left", n, d.tombHead, len(d.tombQ))
	}
}

// BenchmarkSweepTombstones: a Sweep with 100,000 young tombstones (as
// after 100k sessions ended in the last TombstoneTTL), which holds the
// engine's lock; beside it, the scan of every tombstone that Sweep did
// before it kept them in order (its baseline, in the same run).
func BenchmarkSweepTombstones(b *testing.B) {
	clock := newManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	net := NewInmemNetwork(1)
	cfg := DefaultConfig()
	cfg.Node, cfg.Clock = "n1", clock
	d, err := New(cfg, NewStore(nil), net.Transport(cfg.Node))
	if err != nil {
		b.Fatal(err)
	}
	svc := naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "s"}
	for i := range 100000 {
		id := fmt.Sprintf("c%d", i)
		d.Register(id, svc, []naming.Instance{{IP: "10.0.0.1", Port: 80 + i%1000, Weight: 1, Healthy: true, Enabled: true, Ephemeral: true}})
		d.Disconnect(id)
	}
	b.Run("queue", func(b *testing.B) {
		for range b.N {
			d.Sweep()
		}
	})
	b.Run("scan-all", func(b *testing.B) {
		now := clock.Now()
		for range b.N {
			d.mu.Lock()
			for id, t := range d.tombs {
				if now.Sub(t.at) > cfg.TombstoneTTL {
					delete(d.tombs, id)
				}
			}
			d.mu.Unlock()
		}
	})
	if n := d.Stats().Tombstones; n != 100000 {
		b.Fatalf("%d tombstones left, want all 100000 (none expired)", n)
	}
}

// sizing wraps a node's handler to count the estimated bytes of the syncs
// it gets and, with old set, to answer as a peer of a build without deltas.
type sizing struct {
	Handler
	old   bool
	bytes atomic.Int64
}

func (s *sizing) HandleSync(ctx context.Context, req *SyncRequest) (*SyncReply, error) {
	n := 0
	for i := range req.Changes {
		n += stateSize(&req.Changes[i])
	}
	for i := range req.Deltas {
		n += deltaSize(&req.Deltas[i])
	}
	s.bytes.Add(int64(n))
	rep, err := s.Handler.HandleSync(ctx, req)
	if rep != nil && s.old {
		rep.Deltas = false
	}
	return rep, err
}

// BenchmarkSyncBigClient: one change to a client holding 1,000 instances
// (an instance's metadata), synced to one peer and applied there, with a
// peer that takes deltas beside one that does not (the whole state per
// change, as before deltas and as Nacos ships it). ns/op is both engines'
// work per change in one process (Step mode, in-memory network);
// B/change estimates the bytes on the wire.
func BenchmarkSyncBigClient(b *testing.B) {
	for _, mode := range []string{"whole", "delta"} {
		b.Run(mode, func(b *testing.B) {
			clock := newManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
			net, ds := stepCluster(b, 2, clock, nil)
			n1, n2 := ds[0], ds[1]
			sz := &sizing{Handler: n2, old: mode == "whole"}
			net.Register(n2.Node(), sz)
			ctx := context.Background()
			var all []naming.Instance
			for i := range 1000 {
				all = append(all, inst("10.9.0.1", 1000+i))
			}
			n1.Register("big", svcA, all)
			step := func() {
				clock.advance(DefaultConfig().SyncDelay)
				n1.Step(ctx)
			}
			change := func(i int) {
				in := inst("10.9.0.1", 1000+i%1000)
				in.Metadata = map[string]string{"rev": fmt.Sprint(i)}
				n1.Register("big", svcA, []naming.Instance{in})
			}
			for i := range 3 {
				change(i)
				step()
			}
			sz.bytes.Store(0)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				change(i)
				step()
			}
			b.StopTimer()
			b.ReportMetric(float64(sz.bytes.Load())/float64(b.N), "B/change")
			if got, want := n2.Store().ClientInstances("big"), n1.Store().ClientInstances("big"); len(got[svcA]) != 1000 || !slices.EqualFunc(got[svcA], want[svcA], func(a, b naming.Instance) bool { return a.Equal(&b) }) {
				b.Fatal("the peer's copy differs from the owner's")
			}
		})
	}
}

// BenchmarkSyncNewClients: a new client registers one instance (as a
// session per instance does) on n1, which syncs it to two peers that apply
// it. ns/op and allocs/op are the three engines' work per new client in one
// process (Step mode, in-memory network); the bench-compare ephemeral
// workload is this path plus gRPC.
func BenchmarkSyncNewClients(b *testing.B) {
	clock := newManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	_, ds := stepCluster(b, 3, clock, nil)
	n1 := ds[0]
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		in := inst(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), 8080)
		in.Metadata = map[string]string{"version": "1.0.0"}
		n1.Register(fmt.Sprintf("c%d", i), svcA, []naming.Instance{in})
		clock.advance(DefaultConfig().SyncDelay)
		n1.Step(ctx)
	}
	b.StopTimer()
	for _, d := range ds[1:] {
		if got := d.Store().Stats().Clients; got != b.N {
			b.Fatalf("%s holds %d clients, want %d", d.Node(), got, b.N)
		}
	}
}
