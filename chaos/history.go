package chaos

import (
	"bytes"
	"slices"
	"sync"
	"time"
)

// OpKind is the kind of a recorded operation.
type OpKind uint8

// The operations recorded.
const (
	OpPRegister   OpKind = iota // RegisterPersistent of one instance
	OpPDeregister               // DeregisterPersistent of one instance
	OpPRead                     // GetService linearizable of the persistent service
	OpERegister                 // Register of an ephemeral instance
	OpEDeregister               // Deregister of an ephemeral instance
)

func (k OpKind) String() string {
	return [...]string{"p-register", "p-deregister", "p-read", "e-register", "e-deregister"}[k]
}

// Op is one operation as a client saw it.
type Op struct {
	Kind OpKind
	// Actor numbers the client (porcupine's client id); ActorName names it.
	Actor     int
	ActorName string
	// Node is the node asked (reads) or the first server of the client.
	Node string
	// Key is the persistent instance written (writes), -1 otherwise.
	Key int
	// Listed holds the persistent instances a successful read listed.
	Listed []int
	// EIP is the ephemeral instance's IP.
	EIP string
	// Start and End are offsets on the run's clock.
	Start, End time.Duration
	// Err is "" for an acknowledged operation.
	Err string
}

// OK reports whether the operation was acknowledged.
func (o Op) OK() bool { return o.Err == "" }

// History records operations, bounded.
type History struct {
	mu  sync.Mutex
	ops []Op
	max int
}

// NewHistory records at most max operations.
func NewHistory(max int) *History { return &History{max: max} }

// Add records op; it returns false once the history is full, so that load
// loops stop.
func (h *History) Add(op Op) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.ops) >= h.max {
		return false
	}
	h.ops = append(h.ops, op)
	return true
}

// Ops returns a copy of the operations.
func (h *History) Ops() []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.ops)
}

// NodeList is one node's answer in a Round.
type NodeList struct {
	OK  bool
	Err string
	IPs map[string]bool
}

// Round is one query of the ephemeral service on every node at once.
type Round struct {
	Start, End time.Duration
	Nodes      []NodeList
}

// AllOK reports whether every node answered.
func (r Round) AllOK() bool {
	for _, n := range r.Nodes {
		if !n.OK {
			return false
		}
	}
	return true
}

// syncBuffer is a bytes.Buffer safe for a process writing and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
