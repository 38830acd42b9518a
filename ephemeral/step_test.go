package ephemeral

import (
	"context"
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
func stepCluster(t *testing.T, n int, clock Clock) (*InmemNetwork, []*Distro) {
	t.Helper()
	net := NewInmemNetwork(1)
	var ds []*Distro
	for i := 1; i <= n; i++ {
		cfg := DefaultConfig()
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
	net, ds := stepCluster(t, 3, clock)
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
	net, ds := stepCluster(t, 2, clock)
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
	_, ds := stepCluster(t, 2, clock)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ds[0].Start(ctx)
	defer ds[0].Stop()
	if got := ds[0].Step(ctx); got != time.Hour {
		t.Fatalf("Step on a started engine returned %v, want an hour", got)
	}
}

func cfgSyncDelay() time.Duration { return DefaultConfig().SyncDelay }
