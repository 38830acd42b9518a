package registry

import (
	"sync"
	"sync/atomic"

	"github.com/regent-registry/regent/internal/naming"
)

// persistentCache keeps services' persistent states as read, until the
// persistent side reports them changed. A read that overlaps a change is
// not kept: put takes the generation from before the read, and any
// invalidation since makes it a no-op, so the cache never holds a state
// older than one a reported change replaced.
type persistentCache struct {
	max int
	// hits and misses count lookups answered from the cache and lookups
	// that read the persistent side.
	hits, misses atomic.Uint64
	// mu guards everything below.
	mu      sync.Mutex
	gen     uint64
	entries map[naming.ServiceKey]PersistentService
}

func newPersistentCache(max int) *persistentCache {
	return &persistentCache{max: max, entries: make(map[naming.ServiceKey]PersistentService)}
}

// get returns a kept state. Callers must not change it.
func (c *persistentCache) get(k naming.ServiceKey) (PersistentService, bool) {
	c.mu.Lock()
	ps, ok := c.entries[k]
	c.mu.Unlock()
	if ok {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
	return ps, ok
}

// generation is taken before a read whose result goes to put.
func (c *persistentCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// put keeps ps unless a change was reported since gen. When full, it makes
// room by dropping an arbitrary entry.
func (c *persistentCache) put(k naming.ServiceKey, ps PersistentService, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if _, ok := c.entries[k]; !ok && len(c.entries) >= c.max {
		for old := range c.entries {
			delete(c.entries, old)
			break
		}
	}
	c.entries[k] = ps
}

func (c *persistentCache) invalidate(keys []naming.ServiceKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for _, k := range keys {
		delete(c.entries, k)
	}
}

func (c *persistentCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
