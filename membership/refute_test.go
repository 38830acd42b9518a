package membership

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// pausableTransport wraps a NetTransport; while paused, the node is cut off:
// it sends nothing, drops what arrives and refuses connections.
type pausableTransport struct {
	*memberlist.NetTransport
	paused   atomic.Bool
	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

var _ memberlist.NodeAwareTransport = (*pausableTransport)(nil)

func newPausableTransport(t *testing.T) *pausableTransport {
	t.Helper()
	inner, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{"127.0.0.1"},
		Logger:    newMemberlistLogger(newLogRecorder(t).logger()),
	})
	if err != nil {
		t.Fatal(err)
	}
	p := &pausableTransport{
		NetTransport: inner,
		packetCh:     make(chan *memberlist.Packet),
		streamCh:     make(chan net.Conn),
		stop:         make(chan struct{}),
	}
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		for {
			select {
			case pk := <-inner.PacketCh():
				if p.paused.Load() {
					continue
				}
				select {
				case p.packetCh <- pk:
				case <-p.stop:
					return
				}
			case <-p.stop:
				return
			}
		}
	}()
	go func() {
		defer p.wg.Done()
		for {
			select {
			case conn := <-inner.StreamCh():
				if p.paused.Load() {
					_ = conn.Close()
					continue
				}
				select {
				case p.streamCh <- conn:
				case <-p.stop:
					_ = conn.Close()
					return
				}
			case <-p.stop:
				return
			}
		}
	}()
	t.Cleanup(func() { _ = p.Shutdown() })
	return p
}

func (p *pausableTransport) PacketCh() <-chan *memberlist.Packet { return p.packetCh }
func (p *pausableTransport) StreamCh() <-chan net.Conn           { return p.streamCh }

func (p *pausableTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return p.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (p *pausableTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if p.paused.Load() {
		return time.Now(), nil // lost on the way
	}
	return p.NetTransport.WriteToAddress(b, a)
}

func (p *pausableTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return p.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (p *pausableTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if p.paused.Load() {
		return nil, errors.New("paused")
	}
	return p.NetTransport.DialAddressTimeout(a, timeout)
}

func (p *pausableTransport) Shutdown() error {
	p.stopOnce.Do(func() { close(p.stop) })
	err := p.NetTransport.Shutdown()
	p.wg.Wait()
	return err
}

// TestSuspectRefuted cuts a node off until the other suspects it, then
// reconnects it before the suspicion times out: the node refutes and is
// reported alive again with EventJoin.
func TestSuspectRefuted(t *testing.T) {
	t.Parallel()
	slowSuspicion := func(c *Config) {
		fastFailureDetection(c)
		fast := c.tune
		c.tune = func(mc *memberlist.Config) {
			fast(mc)
			mc.SuspicionMult = 15 // suspect for 3 s (two nodes: no confirmations expected)
		}
	}
	a := startNode(t, "a", slowSuspicion)
	pt := newPausableTransport(t)
	c := startNode(t, "c", slowSuspicion, func(cfg *Config) { cfg.Transport = pt })
	join(t, c, a)
	waitStatus(t, 5*time.Second, "c", StatusAlive, a)

	pt.paused.Store(true)
	ev := a.events.waitEvent(t, 5*time.Second, EventSuspect, "c")
	pt.paused.Store(false)
	if ev.Member.Status != StatusSuspect || ev.Member.Meta != testMeta("c") {
		t.Fatalf("suspect event %+v", ev.Member)
	}
	waitEvents(t, 5*time.Second, a, "c", EventJoin, EventSuspect, EventJoin)
	waitStatus(t, time.Second, "c", StatusAlive, a)
}

// TestDeadMemberReconnected: two nodes cut off from each other long enough
// to hold each other dead find each other again after the cut heals,
// although memberlist neither probes dead nodes nor push-pulls with them
// (push-pull and gossip to the dead are off here, so only the reconnect
// can do it). Found by the chaos suite's far-clients fault: after a cut
// of a node, the others kept it dead ~19 s after the heal (until a
// push-pull), past Distro's 10 s bound for listing its clients again.
func TestDeadMemberReconnected(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		reconnect time.Duration
	}{{"reconnect", 200 * time.Millisecond}, {"no reconnect", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			noRescue := func(c *Config) {
				fastFailureDetection(c)
				fast := c.tune
				c.tune = func(mc *memberlist.Config) {
					fast(mc)
					mc.PushPullInterval = 0
					mc.GossipToTheDeadTime = 0
				}
				c.ReconnectInterval = tc.reconnect
			}
			a := startNode(t, "a", noRescue)
			pt := newPausableTransport(t)
			c := startNode(t, "c", noRescue, func(cfg *Config) { cfg.Transport = pt })
			join(t, c, a)
			waitStatus(t, 5*time.Second, "c", StatusAlive, a)
			waitStatus(t, 5*time.Second, "a", StatusAlive, c)

			pt.paused.Store(true)
			waitStatus(t, 10*time.Second, "c", StatusDead, a)
			waitStatus(t, 10*time.Second, "a", StatusDead, c)
			pt.paused.Store(false)
			if tc.reconnect == 0 {
				// The control: without the reconnect they stay apart.
				time.Sleep(3 * time.Second)
				if st := statusOf(a, "c"); st != StatusDead.String() {
					t.Fatalf("without reconnect, a sees c %v: the test no longer shows what the reconnect fixes", st)
				}
				return
			}
			waitStatus(t, 5*time.Second, "c", StatusAlive, a)
			waitStatus(t, 5*time.Second, "a", StatusAlive, c)
		})
	}
}
