package membership

import "sync"

// inputQueue is the dispatcher's unbounded FIFO queue. push never blocks,
// so memberlist's callbacks never wait for listeners, and nothing is
// dropped until the queue is closed at Shutdown.
type inputQueue struct {
	mu     sync.Mutex // guards items and closed
	items  []input
	closed bool
	// ready has room for one token: a push leaves one there if none is.
	ready chan struct{}
}

func newInputQueue() *inputQueue {
	return &inputQueue{ready: make(chan struct{}, 1)}
}

func (q *inputQueue) push(in input) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.items = append(q.items, in)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take removes and returns everything queued.
func (q *inputQueue) take() []input {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items = nil
	return items
}

// close drops what is queued and makes later pushes no-ops.
func (q *inputQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.items = nil
}
