package persistent

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// streamLayer is Raft's TCP stream layer, as raft.NewTCPTransport builds
// it, that also keeps the connections it dialed, so that shutdown can end
// at once an RPC waiting on a peer that stopped reading (a paused process,
// a partition that drops packets). raft.Shutdown waits for its
// replication and heartbeat goroutines, and one blocked in such an RPC
// would hold it until the transport's timeout.
type streamLayer struct {
	net.Listener
	mu     sync.Mutex
	conns  map[*dialedConn]struct{}
	closed bool
}

var errStreamClosed = errors.New("persistent: raft stream layer closed")

func newStreamLayer(bind string) (*streamLayer, error) {
	l, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	// As raft.NewTCPTransport: peers must be able to reach the address
	// this node gives them.
	if a, ok := l.Addr().(*net.TCPAddr); !ok || a.IP == nil || a.IP.IsUnspecified() {
		l.Close()
		return nil, fmt.Errorf("local bind address %s is not advertisable", l.Addr())
	}
	return &streamLayer{Listener: l, conns: map[*dialedConn]struct{}{}}, nil
}

// Dial implements raft.StreamLayer.
func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return nil, errStreamClosed
	}
	dc := &dialedConn{Conn: c, s: s}
	s.conns[dc] = struct{}{}
	return dc, nil
}

// abort closes every dialed connection, so that an RPC blocked on one
// fails now, and refuses new dials.
func (s *streamLayer) abort() {
	s.mu.Lock()
	conns := s.conns
	s.conns, s.closed = map[*dialedConn]struct{}{}, true
	s.mu.Unlock()
	for c := range conns {
		c.Conn.Close()
	}
}

// dialedConn leaves the layer's set when closed.
type dialedConn struct {
	net.Conn
	s    *streamLayer
	once sync.Once
}

func (c *dialedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}
