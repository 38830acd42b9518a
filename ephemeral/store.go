package ephemeral

import (
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/regent-registry/regent/internal/naming"
)

// Observer is told which services changed. It is called without the store's
// lock held, in the goroutine that made the change, and must not block.
type Observer func(changed []naming.ServiceKey)

// Store is the in-memory ephemeral instance store of one node.
type Store struct {
	// mu guards everything below.
	mu       sync.RWMutex
	clients  map[string]*client
	services map[naming.ServiceKey]*service
	// rev is the store-wide change counter; a service's revision is the
	// counter's value at its last change, so revisions only grow. It starts
	// at the wall clock in microseconds so that it also grows across
	// restarts of the node.
	rev uint64
	// base is rev's starting value: the revision of a service that has had
	// no ephemeral instance since the node started.
	base     uint64
	observer Observer
	// instances and liveServices are what Stats reports, kept as the
	// services' client counts change (setCount), so that a metrics
	// scrape does not walk every service under the lock.
	instances, liveServices int
}

type client struct {
	id       string
	owner    string
	revision uint64
	services smallMap[naming.ServiceKey, *instSet]
}

// instSet is a client's instances of one service.
type instSet = smallMap[naming.InstanceID, *naming.Instance]

type service struct {
	// clients holds, for each client with instances here, how many.
	clients  map[*client]int
	revision uint64
	// cache is the merged instance list, rebuilt lazily after a change.
	cache []naming.Instance
	valid bool
}

// NewStore returns an empty store whose changes go to observer (may be nil).
func NewStore(observer Observer) *Store {
	start := uint64(time.Now().UnixMicro())
	return &Store{
		clients:  make(map[string]*client),
		services: make(map[naming.ServiceKey]*service),
		rev:      start,
		base:     start,
		observer: observer,
	}
}

// SetObserver replaces the observer; call it before the store is shared.
func (s *Store) SetObserver(o Observer) {
	s.mu.Lock()
	s.observer = o
	s.mu.Unlock()
}

func (s *Store) notify(obs Observer, changed []naming.ServiceKey) {
	if obs != nil && len(changed) > 0 {
		obs(changed)
	}
}

func (s *Store) getClient(id, owner string) *client {
	c := s.clients[id]
	if c == nil {
		c = &client{id: id, owner: owner}
		s.clients[id] = c
	}
	return c
}

func (s *Store) touchService(key naming.ServiceKey) *service {
	svc := s.services[key]
	if svc == nil {
		svc = &service{clients: make(map[*client]int)}
		s.services[key] = svc
	}
	svc.revision = s.rev
	svc.valid = false
	svc.cache = nil
	return svc
}

// Register adds or replaces instances of one service for a client, creating
// the client (owned by owner) if it is new. The instances must already be
// normalized. It is idempotent: registering identical data again changes
// nothing and notifies nobody. It returns the client's revision and whether
// anything changed.
func (s *Store) Register(clientID, owner string, key naming.ServiceKey, instances []naming.Instance) (uint64, bool) {
	s.mu.Lock()
	c := s.getClient(clientID, owner)
	changed := s.putLocked(c, key, instances, func() { s.rev++ })
	return s.finishUnlock(c, key, changed)
}

// finishUnlock ends a change of c's instances of key made under s.mu:
// it records it if anything changed, releases the lock, tells the observer
// and returns the client's revision and whether anything changed.
func (s *Store) finishUnlock(c *client, key naming.ServiceKey, changed bool) (uint64, bool) {
	var obs Observer
	if changed {
		obs = s.changedLocked(c, key)
	}
	rev := c.revision
	s.mu.Unlock()
	if changed {
		s.notify(obs, []naming.ServiceKey{key})
	}
	return rev, changed
}

// changedLocked records that c's instances of key changed at the current
// revision and returns whom to tell once the lock is released.
func (s *Store) changedLocked(c *client, key naming.ServiceKey) Observer {
	c.revision = s.rev
	s.touchService(key)
	s.dropIfEmpty(key)
	return s.observer
}

// putLocked adds or replaces instances of key for c, calling bump before
// its first change, and reports whether anything changed.
func (s *Store) putLocked(c *client, key naming.ServiceKey, instances []naming.Instance, bump func()) bool {
	set, _ := c.services.Get(key)
	changed := false
	for i := range instances {
		in := instances[i].Clone()
		in.Ephemeral = true
		id := in.ID()
		old, had := set.Get(id)
		if had && old.Equal(&in) {
			continue
		}
		if set == nil {
			set = newSmallMap[naming.InstanceID, *naming.Instance](len(instances))
			c.services.Put(key, set)
		}
		if !changed {
			changed = true
			bump()
		}
		if !had {
			svc := s.services[key]
			if svc == nil {
				svc = s.touchService(key)
			}
			s.setCount(svc, c, svc.clients[c]+1)
		}
		set.Put(id, &in)
	}
	return changed
}

// Deregister removes instances of one service from a client. Removing what
// the client does not hold is not an error. It returns the client's revision
// (0 when the client is unknown) and whether anything changed.
func (s *Store) Deregister(clientID string, key naming.ServiceKey, ids []naming.InstanceID) (uint64, bool) {
	s.mu.Lock()
	c := s.clients[clientID]
	if c == nil {
		s.mu.Unlock()
		return 0, false
	}
	changed := s.dropLocked(c, key, ids, func() { s.rev++ })
	return s.finishUnlock(c, key, changed)
}

// dropLocked removes instances of key from c, calling bump before its
// first change, and reports whether anything changed.
func (s *Store) dropLocked(c *client, key naming.ServiceKey, ids []naming.InstanceID, bump func()) bool {
	set, _ := c.services.Get(key)
	changed := false
	for _, id := range ids {
		if _, ok := set.Get(id); !ok {
			continue
		}
		if !changed {
			changed = true
			bump()
		}
		set.Delete(id)
		svc := s.services[key]
		s.setCount(svc, c, svc.clients[c]-1)
	}
	if set.Len() == 0 {
		c.services.Delete(key)
	}
	return changed
}

// ApplyDelta puts and removes a client's instances as the delta says,
// creating the client (owned by owner) if it is new, in one step with one
// notification. The instances must already be normalized. It reports
// whether anything changed.
func (s *Store) ApplyDelta(clientID, owner string, services []ServiceDelta) bool {
	s.mu.Lock()
	c := s.getClient(clientID, owner)
	c.owner = owner
	bumped := false
	bump := func() {
		if !bumped {
			bumped = true
			s.rev++
		}
	}
	var changed []naming.ServiceKey
	for i := range services {
		sd := &services[i]
		put := s.putLocked(c, sd.Key, sd.Put, bump)
		if s.dropLocked(c, sd.Key, sd.Removed, bump) || put {
			changed = append(changed, sd.Key)
		}
	}
	var obs Observer
	if bumped {
		c.revision = s.rev
		for _, key := range changed {
			s.touchService(key)
			s.dropIfEmpty(key)
		}
		obs = s.observer
	}
	s.mu.Unlock()
	s.notify(obs, changed)
	return bumped
}

// ClientDelta reads what a delta of the instances named in touched
// carries now: for each, the instance if the client still holds it (put),
// or its id (removed). total counts every instance the client holds; ok is
// false for a client the store does not know.
func (s *Store) ClientDelta(id string, touched map[naming.ServiceKey]map[naming.InstanceID]struct{}) (services []ServiceDelta, total int, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c := s.clients[id]
	if c == nil {
		return nil, 0, false
	}
	for _, set := range c.services.All() {
		total += set.Len()
	}
	services = make([]ServiceDelta, 0, len(touched))
	for key, ids := range touched {
		sd := ServiceDelta{Key: key}
		set, _ := c.services.Get(key)
		for iid := range ids {
			if in, ok := set.Get(iid); ok {
				sd.Put = append(sd.Put, in.Clone())
			} else {
				sd.Removed = append(sd.Removed, iid)
			}
		}
		naming.SortInstances(sd.Put)
		slices.SortFunc(sd.Removed, func(a, b naming.InstanceID) int { return strings.Compare(a.String(), b.String()) })
		services = append(services, sd)
	}
	slices.SortFunc(services, func(a, b ServiceDelta) int { return strings.Compare(a.Key.String(), b.Key.String()) })
	return services, total, true
}

// dropIfEmpty releases the instance cache of a service with no instances
// left. The service entry itself stays, with its revision, so that the
// revision readers see never goes back (a few dozen bytes per service ever
// seen since start-up).
func (s *Store) dropIfEmpty(key naming.ServiceKey) {
	if svc := s.services[key]; svc != nil && len(svc.clients) == 0 {
		svc.cache, svc.valid = nil, true
	}
}

// RemoveClient drops a client and all its instances (the session ended). It
// reports whether the client existed.
func (s *Store) RemoveClient(clientID string) bool {
	s.mu.Lock()
	c := s.clients[clientID]
	if c == nil {
		s.mu.Unlock()
		return false
	}
	delete(s.clients, clientID)
	changed := make([]naming.ServiceKey, 0, c.services.Len())
	if c.services.Len() > 0 {
		s.rev++
	}
	for key := range c.services.All() {
		svc := s.services[key]
		s.setCount(svc, c, 0)
		s.touchService(key)
		s.dropIfEmpty(key)
		changed = append(changed, key)
	}
	obs := s.observer
	s.mu.Unlock()
	s.notify(obs, changed)
	return true
}

// Instances returns a service's ephemeral instances and its revision. The
// slice is shared with other readers and must not be modified.
func (s *Store) Instances(key naming.ServiceKey) ([]naming.Instance, uint64) {
	s.mu.RLock()
	svc := s.services[key]
	if svc == nil {
		s.mu.RUnlock()
		return nil, s.base
	}
	if svc.valid {
		list, rev := svc.cache, svc.revision
		s.mu.RUnlock()
		return list, rev
	}
	s.mu.RUnlock()

	s.mu.Lock()
	defer s.mu.Unlock()
	svc = s.services[key]
	if svc == nil {
		return nil, s.base
	}
	if !svc.valid {
		n := 0
		for _, k := range svc.clients {
			n += k
		}
		list := make([]naming.Instance, 0, n)
		for c := range svc.clients {
			set, _ := c.services.Get(key)
			for _, in := range set.All() {
				list = append(list, *in)
			}
		}
		naming.SortInstances(list)
		svc.cache, svc.valid = list, true
	}
	return svc.cache, svc.revision
}

// Revision returns the revision of a service. A service that has had no
// ephemeral instance since start-up has the store's starting revision (the
// wall clock in microseconds at start), so revisions also grow across
// restarts.
func (s *Store) Revision(key naming.ServiceKey) uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if svc := s.services[key]; svc != nil {
		return svc.revision
	}
	return s.base
}

// Known reports whether the service has had an ephemeral instance since the
// node started.
func (s *Store) Known(key naming.ServiceKey) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.services[key] != nil
}

// Services returns the keys of all services with ephemeral instances,
// sorted by their string form.
func (s *Store) Services() []naming.ServiceKey {
	s.mu.RLock()
	keys := make([]naming.ServiceKey, 0, len(s.services))
	for k, svc := range s.services {
		if len(svc.clients) > 0 {
			keys = append(keys, k)
		}
	}
	s.mu.RUnlock()
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	return keys
}

// ClientInfo describes one client.
type ClientInfo struct {
	ID        string
	Owner     string
	Revision  uint64
	Instances int
}

// Client returns what the store knows of one client.
func (s *Store) Client(id string) (ClientInfo, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c := s.clients[id]
	if c == nil {
		return ClientInfo{}, false
	}
	n := 0
	for _, set := range c.services.All() {
		n += set.Len()
	}
	return ClientInfo{ID: c.id, Owner: c.owner, Revision: c.revision, Instances: n}, true
}

// ClientInstances returns a copy of a client's instances by service.
func (s *Store) ClientInstances(id string) map[naming.ServiceKey][]naming.Instance {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c := s.clients[id]
	if c == nil {
		return nil
	}
	out := make(map[naming.ServiceKey][]naming.Instance, c.services.Len())
	for key, set := range c.services.All() {
		list := make([]naming.Instance, 0, set.Len())
		for _, in := range set.All() {
			list = append(list, in.Clone())
		}
		naming.SortInstances(list)
		out[key] = list
	}
	return out
}

// clientServices returns a client's instances as a list sorted by
// service, each service's instances sorted, for a replicated state. The
// instances are copies but share their metadata maps with the store, which
// never writes into a stored map (it replaces instances whole): the caller
// must not write into them either.
func (s *Store) clientServices(id string) []ServiceInstances {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c := s.clients[id]
	if c == nil {
		return nil
	}
	out := make([]ServiceInstances, 0, c.services.Len())
	for key, set := range c.services.All() {
		list := make([]naming.Instance, 0, set.Len())
		for _, in := range set.All() {
			list = append(list, *in)
		}
		naming.SortInstances(list)
		out = append(out, ServiceInstances{Key: key, Instances: list})
	}
	slices.SortFunc(out, func(a, b ServiceInstances) int { return a.Key.Compare(b.Key) })
	return out
}

// Stats counts clients, services and instances.
type Stats struct {
	Clients, Services, Instances int
}

// Stats returns current counts.
func (s *Store) Stats() Stats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return Stats{Clients: len(s.clients), Services: s.liveServices, Instances: s.instances}
}

// setCount sets how many instances client c holds in svc (0: none), and
// keeps the store's totals; callers hold mu.
func (s *Store) setCount(svc *service, c *client, n int) {
	old, was := svc.clients[c], len(svc.clients) > 0
	if n > 0 {
		svc.clients[c] = n
	} else {
		delete(svc.clients, c)
	}
	s.instances += n - old
	switch is := len(svc.clients) > 0; {
	case is && !was:
		s.liveServices++
	case was && !is:
		s.liveServices--
	}
}

// ReplaceClient sets a client's whole state (owner and instances by
// service), creating the client if it is new. Services whose instance set
// does not change are not touched, so a replicated copy that only changes
// owner (a client moving between nodes) notifies nobody. The instances must
// be normalized; the store keeps copies. It reports whether any instance
// changed.
func (s *Store) ReplaceClient(clientID, owner string, services map[naming.ServiceKey][]naming.Instance) bool {
	list := make([]ServiceInstances, 0, len(services))
	for key, ins := range services {
		list = append(list, ServiceInstances{Key: key, Instances: ins})
	}
	return s.replaceClient(clientID, owner, list)
}

// replaceClient is ReplaceClient with the services as a list, which must
// name each service at most once (dedupe makes it so). A replicated state
// arrives as a list: taking it as is spares a map per apply.
func (s *Store) replaceClient(clientID, owner string, services []ServiceInstances) bool {
	s.mu.Lock()
	c := s.getClient(clientID, owner)
	c.owner = owner
	var changed []naming.ServiceKey
	bumped := false
	bump := func() {
		if !bumped {
			bumped = true
			s.rev++
		}
	}
	// Services the client no longer has.
	if c.services.Len() > 0 {
		keep := keySet(services)
		for key := range c.services.All() {
			if !keep(key) {
				changed = append(changed, key)
			}
		}
		for _, key := range changed {
			bump()
			s.setCount(s.services[key], c, 0)
			c.services.Delete(key)
		}
	}
	// Services added or changed.
	for _, si := range services {
		key, list := si.Key, si.Instances
		old, _ := c.services.Get(key)
		if sameSet(old, list) {
			continue
		}
		bump()
		set := newSmallMap[naming.InstanceID, *naming.Instance](len(list))
		for i := range list {
			in := list[i].Clone()
			in.Ephemeral = true
			set.Put(in.ID(), &in)
		}
		if set.Len() == 0 {
			c.services.Delete(key)
		} else {
			c.services.Put(key, set)
		}
		svc := s.services[key]
		if svc == nil {
			svc = &service{clients: make(map[*client]int)}
			s.services[key] = svc
		}
		s.setCount(svc, c, set.Len())
		changed = append(changed, key)
	}
	var obs Observer
	if bumped {
		c.revision = s.rev
		for _, key := range changed {
			s.touchService(key)
			s.dropIfEmpty(key)
		}
		obs = s.observer
	}
	s.mu.Unlock()
	s.notify(obs, changed)
	return bumped
}

// keySet returns a membership test for the services' keys: a scan for a
// few (a client holds one or two services as a rule), a set beyond.
func keySet(services []ServiceInstances) func(naming.ServiceKey) bool {
	if len(services) <= smallMax {
		return func(k naming.ServiceKey) bool {
			return slices.ContainsFunc(services, func(si ServiceInstances) bool { return si.Key == k })
		}
	}
	set := make(map[naming.ServiceKey]struct{}, len(services))
	for _, si := range services {
		set[si.Key] = struct{}{}
	}
	return func(k naming.ServiceKey) bool { _, ok := set[k]; return ok }
}

func sameSet(old *instSet, list []naming.Instance) bool {
	if old.Len() != len(list) {
		return false
	}
	for i := range list {
		in := &list[i]
		o, ok := old.Get(in.ID())
		if !ok {
			return false
		}
		cp := *in
		cp.Ephemeral = true
		if !o.Equal(&cp) {
			return false
		}
	}
	return true
}

// SetOwner records a new owner for a client without touching its instances.
func (s *Store) SetOwner(clientID, owner string) {
	s.mu.Lock()
	if c := s.clients[clientID]; c != nil {
		c.owner = owner
	}
	s.mu.Unlock()
}
