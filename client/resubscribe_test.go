package client

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// A client watching many services has every one of them back on the node
// it reconnects to, and pushes reach each watcher.
func TestRedoResubscribesEveryWatch(t *testing.T) {
	addr := freeAddr(t)
	d1 := startDaemon(t, "n1", addr)
	c := newClient(t, addr)
	ctx := ctxT(t, 30*time.Second)
	const n = 30
	watchers := make([]*Watcher, n)
	for i := range watchers {
		w, err := c.Watch(ctx, Service{Name: fmt.Sprintf("watched-%d", i)}, Filter{})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		watchers[i] = w
	}
	waitFor(t, waitLimit, "every subscription on n1", func() bool { return d1.Registry().Subscriptions() == n })

	stopDaemon(d1)
	waitFor(t, waitLimit, "client to notice the shutdown", func() bool { return !c.Connected() })
	d2 := startDaemon(t, "n2", addr)
	waitFor(t, waitLimit, "every subscription redone on n2", func() bool { return d2.Registry().Subscriptions() == n })

	other := newClient(t, d2.GRPCAddr())
	for _, i := range []int{0, n / 2, n - 1} {
		if err := other.Register(ctx, Service{Name: fmt.Sprintf("watched-%d", i)}, inst("10.4.0.1", 80+i)); err != nil {
			t.Fatal(err)
		}
		waitWatch(t, watchers[i], fmt.Sprintf("push to watcher %d", i), hasAddrs(fmt.Sprintf("10.4.0.1:%d", 80+i)))
	}
}

// BenchmarkResubscribe: a client watching 100 services subscribes to all
// of them again on its session, as after a reconnect: one Subscribe and
// its ack at a time (the baseline, how the redo went before stop 18) and
// pipelined (resubscribe: every Subscribe sent, then every ack awaited),
// in alternating rounds, against an in-process node over loopback TCP.
// ns/op is one re-subscription of all 100.
func BenchmarkResubscribe(b *testing.B) {
	d := startDaemon(b, "n1", "")
	c := newClient(b, d.GRPCAddr())
	ctx := context.Background()
	const n = 100
	for i := range n {
		w, err := c.Watch(ctx, Service{Name: fmt.Sprintf("svc-%d", i)}, Filter{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(w.Stop)
	}
	s, err := c.session(ctx)
	if err != nil {
		b.Fatal(err)
	}
	c.mu.Lock()
	subs := make([]*subState, 0, len(c.subs))
	for _, st := range c.subs {
		subs = append(subs, st)
	}
	c.mu.Unlock()
	if len(subs) != n {
		b.Fatalf("%d subscriptions, want %d", len(subs), n)
	}
	for round := range 2 {
		b.Run(fmt.Sprintf("one-by-one/round=%d", round), func(b *testing.B) {
			for range b.N {
				for _, st := range subs {
					if err := c.sendSubscribe(ctx, s, st); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
		b.Run(fmt.Sprintf("pipelined/round=%d", round), func(b *testing.B) {
			for range b.N {
				if ok := c.resubscribe(ctx, s, subs); ok != n {
					b.Fatalf("%d of %d re-subscribed", ok, n)
				}
			}
		})
	}
}

// The redo leaves a service alone while a Watch is subscribing to it: on a
// new session both ran, and the watcher got its first list twice.
func TestRedoLeavesAWatchSubscribingAlone(t *testing.T) {
	d := startDaemon(t, "n1", "")
	c := newClient(t, d.GRPCAddr())
	ctx := ctxT(t, 10*time.Second)
	s, err := c.session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	key, err := Service{Name: "racing"}.key()
	if err != nil {
		t.Fatal(err)
	}
	st := &subState{key: key, watchers: map[*Watcher]struct{}{}, sending: 1}
	c.mu.Lock()
	c.subs[key] = st
	c.mu.Unlock()
	c.redoPass(ctx, s)
	if n := d.Registry().Subscriptions(); n != 0 {
		t.Fatalf("the redo subscribed while a Watch was: %d subscriptions", n)
	}
	c.mu.Lock()
	st.sending = 0
	c.mu.Unlock()
	c.redoPass(ctx, s)
	if n := d.Registry().Subscriptions(); n != 1 {
		t.Fatalf("the redo did not take the service up once the Watch let go: %d subscriptions", n)
	}
}
