package chaos

import (
	"net"
	"sync"
	"sync/atomic"
)

// Blackhole is a TCP proxy on 127.0.0.1 in front of one server. Until Cut
// it forwards both ways; after Cut it silently drops every byte in both
// directions and never closes a connection, neither towards the client nor
// towards the server: the server sees a peer that went quiet, as when a
// cable is pulled, and must find the dead session by keepalive and probe,
// not by a clean close.
type Blackhole struct {
	lis    net.Listener
	target string
	cut    atomic.Bool

	mu     sync.Mutex
	conns  []net.Conn
	closed bool
	wg     sync.WaitGroup
}

// NewBlackhole listens on 127.0.0.1 (a free port) and forwards to target.
func NewBlackhole(target string) (*Blackhole, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &Blackhole{lis: lis, target: target}
	b.wg.Add(1)
	go b.accept()
	return b, nil
}

// Addr is the address clients dial.
func (b *Blackhole) Addr() string { return b.lis.Addr().String() }

// Cut starts dropping all traffic silently.
func (b *Blackhole) Cut() { b.cut.Store(true) }

func (b *Blackhole) track(c net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		c.Close()
		return false
	}
	b.conns = append(b.conns, c)
	return true
}

func (b *Blackhole) accept() {
	defer b.wg.Done()
	for {
		down, err := b.lis.Accept()
		if err != nil {
			return
		}
		if !b.track(down) {
			return
		}
		if b.cut.Load() {
			// A new connection after the cut goes nowhere.
			b.wg.Add(1)
			go func() { defer b.wg.Done(); b.pipe(down, nil) }()
			continue
		}
		up, err := net.Dial("tcp", b.target)
		if err != nil {
			down.Close()
			continue
		}
		if !b.track(up) {
			return
		}
		b.wg.Add(2)
		go func() { defer b.wg.Done(); b.pipe(down, up) }()
		go func() { defer b.wg.Done(); b.pipe(up, down) }()
	}
}

// pipe copies from src to dst until src fails; after the cut it reads and
// discards, and it never closes dst once cut (the far side must not learn
// anything).
func (b *Blackhole) pipe(src, dst net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && dst != nil && !b.cut.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil && !b.cut.Load() {
				src.Close()
				return
			}
		}
		if err != nil {
			if !b.cut.Load() && dst != nil {
				dst.Close()
			}
			return
		}
	}
}

// Close stops the proxy and closes every connection.
func (b *Blackhole) Close() {
	b.mu.Lock()
	b.closed = true
	conns := b.conns
	b.conns = nil
	b.mu.Unlock()
	b.lis.Close()
	for _, c := range conns {
		c.Close()
	}
	b.wg.Wait()
}
