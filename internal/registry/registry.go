// Package registry is the read side and the push side of a node: it merges
// ephemeral instances (package ephemeral) and persistent ones (behind the
// Persistent interface: bbolt on one node, Raft in a cluster) into one
// service view, answers queries with filters and the protection threshold,
// and pushes merged snapshots to subscribers, coalescing changes that come
// close together.
package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
)

// ErrNotFound is returned for a service with neither instances nor metadata.
var ErrNotFound = errors.New("registry: service not found")

// ErrNotReady is returned for queries while the node is still loading the
// cluster's ephemeral state: it answers nothing rather than a partial list.
var ErrNotReady = errors.New("registry: node is still loading the cluster's state")

// Persistent is what the registry needs of the persistent side. On one node
// it is bbolt directly; with Raft, writes go through the log and reads come
// from the FSM's bbolt state. Implementations call the registry's Changed
// after a write is applied.
type Persistent interface {
	// Register writes instances of one service, all or none.
	Register(ctx context.Context, key naming.ServiceKey, ins []naming.Instance) (uint64, error)
	// Deregister removes one instance; a missing one is not an error.
	Deregister(ctx context.Context, key naming.ServiceKey, id naming.InstanceID) (uint64, error)
	// UpdateMeta replaces a service's metadata.
	UpdateMeta(ctx context.Context, key naming.ServiceKey, m naming.ServiceMeta) (naming.ServiceMeta, error)
	// Service reads, in one consistent view, a service's persistent
	// instances, its revision (0 if it never had persistent state) and its
	// metadata if set.
	Service(key naming.ServiceKey) (PersistentService, error)
	// ServiceKeys lists services of a namespace (group "" = all) whose
	// String() sorts after `after`, at most limit (<= 0: all).
	ServiceKeys(namespace, group, after string, limit int) ([]naming.ServiceKey, error)
}

// ChangeNotifier is a Persistent that tells which services changed, after
// a change is applied and before the write that made it returns. New makes
// the registry its observer and then caches what Service returns, per
// service, until the notifier reports the service changed.
type ChangeNotifier interface {
	SetObserver(func(changed []naming.ServiceKey))
}

// PersistentService is what the persistent side holds of one service.
type PersistentService struct {
	Instances []naming.Instance
	Revision  uint64
	Meta      naming.ServiceMeta
	HasMeta   bool
}

// Snapshot is a service's filtered instance list at one revision.
type Snapshot struct {
	Key       naming.ServiceKey
	Revision  uint64
	Instances []naming.Instance
	Protected bool
	// Threshold is the service's protection threshold.
	Threshold float64
}

// Subscriber receives pushes. Deliver must not block: a session queues the
// snapshot and keeps only the newest per service.
type Subscriber interface {
	Deliver(Snapshot)
}

// Config tunes the registry.
type Config struct {
	// MergeWindow and MergeBurst pace the pushes of one service: on
	// average at most one per MergeWindow, and up to MergeBurst back to
	// back after a quiet spell (a token bucket, as Distro paces its
	// batches). A change that the pace allows goes out at once; changes
	// that come while it does not go out together when it next allows
	// one. A subscriber thus hears of a lone change, or of the few quick
	// changes of a rolling restart (an instance gone, its successor up),
	// without delay, and of a storm in at most one push per window.
	// MergeBurst 0 counts as 1: pushes spaced MergeWindow apart.
	MergeWindow time.Duration
	MergeBurst  int
	// PersistentCache is how many services' persistent state the registry
	// keeps decoded (0: none), for a persistent side that reports its
	// changes (ChangeNotifier): a lookup or push then reads no bbolt
	// transaction while the service does not change.
	PersistentCache int
}

// DefaultConfig returns production settings.
func DefaultConfig() Config {
	// 20 ms merges a burst of registrations (a deploy) into a few pushes
	// while staying well inside the 50 ms promised to subscribers; a lone
	// change does not wait for it.
	// A burst of 4 lets a deploy's deregister and register of one
	// service, and a retry or two, go out unmerged.
	return Config{MergeWindow: 20 * time.Millisecond, MergeBurst: 4, PersistentCache: 4096}
}

// Validate checks the settings.
func (c Config) Validate() error {
	if c.MergeWindow <= 0 || c.MergeWindow > time.Second {
		return fmt.Errorf("registry: merge window %v outside (0, 1s]", c.MergeWindow)
	}
	if c.MergeBurst < 0 || c.MergeBurst > 1000 {
		return fmt.Errorf("registry: merge burst %d outside [0, 1000]", c.MergeBurst)
	}
	if c.PersistentCache < 0 || c.PersistentCache > 1<<20 {
		return fmt.Errorf("registry: persistent cache of %d services outside [0, 2^20]", c.PersistentCache)
	}
	return nil
}

// Registry merges and pushes. Create it with New and run Run.
type Registry struct {
	cfg Config
	eph *ephemeral.Store
	per Persistent
	// pcache holds persistent states read, when per reports its changes
	// and the config asks for it (nil otherwise).
	pcache *persistentCache

	// subMu guards subs and dirty.
	subMu sync.Mutex
	subs  map[naming.ServiceKey]map[Subscriber]naming.Filter
	dirty map[naming.ServiceKey]struct{}
	wake  chan struct{}

	// gate, when set, is closed once the node may answer; until then
	// queries fail with ErrNotReady and nothing is pushed.
	gate atomic.Pointer[<-chan struct{}]

	pushes atomic.Uint64

	// now and after are the pusher's clock (time.Now and time.After;
	// tests replace them).
	now   func() time.Time
	after func(time.Duration) <-chan time.Time
}

// SetGate makes queries and pushes wait until loaded is closed: the node
// never answers with, or pushes, a list that lacks data it has not loaded
// yet. Call it before serving.
func (r *Registry) SetGate(loaded <-chan struct{}) { r.gate.Store(&loaded) }

// Ready reports whether the gate is open (or there is none).
func (r *Registry) Ready() bool {
	g := r.gate.Load()
	if g == nil {
		return true
	}
	select {
	case <-*g:
		return true
	default:
		return false
	}
}

func (r *Registry) gateCh() <-chan struct{} {
	if g := r.gate.Load(); g != nil && !r.Ready() {
		return *g
	}
	return nil
}

// New builds a registry over the two stores. It makes itself the ephemeral
// store's observer.
func New(cfg Config, eph *ephemeral.Store, per Persistent) (*Registry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Registry{
		cfg:   cfg,
		eph:   eph,
		per:   per,
		subs:  make(map[naming.ServiceKey]map[Subscriber]naming.Filter),
		dirty: make(map[naming.ServiceKey]struct{}),
		wake:  make(chan struct{}, 1),
		now:   time.Now,
		after: time.After,
	}
	eph.SetObserver(r.Changed)
	if cn, ok := per.(ChangeNotifier); ok {
		if cfg.PersistentCache > 0 {
			r.pcache = newPersistentCache(cfg.PersistentCache)
		}
		cn.SetObserver(r.Changed)
	}
	return r, nil
}

// Ephemeral returns the ephemeral store.
func (r *Registry) Ephemeral() *ephemeral.Store { return r.eph }

// Persistent returns the persistent side.
func (r *Registry) Persistent() Persistent { return r.per }

// CacheStats are the counts of the registry's cache of persistent states.
type CacheStats struct {
	// Hits are lookups of a service's persistent state answered from the
	// cache; Misses are those that read the persistent side.
	Hits, Misses uint64
	// Entries is the number of services whose state is kept now.
	Entries int
}

// PersistentCache returns the counts of the cache of persistent states (all
// zero when there is none).
func (r *Registry) PersistentCache() CacheStats {
	if r.pcache == nil {
		return CacheStats{}
	}
	return CacheStats{Hits: r.pcache.hits.Load(), Misses: r.pcache.misses.Load(), Entries: r.pcache.len()}
}

// Pushes counts snapshots delivered to subscribers.
func (r *Registry) Pushes() uint64 { return r.pushes.Load() }

// Changed marks services as changed; subscribers get pushed after the merge
// window. It never blocks.
func (r *Registry) Changed(keys []naming.ServiceKey) {
	if r.pcache != nil {
		r.pcache.invalidate(keys)
	}
	r.subMu.Lock()
	marked := false
	for _, k := range keys {
		if _, ok := r.subs[k]; ok {
			r.dirty[k] = struct{}{}
			marked = true
		}
	}
	r.subMu.Unlock()
	if marked {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// Run pushes changes until ctx ends. Each service is paced on its own (see
// Config.MergeWindow): a change the pace allows goes out at once; one it
// does not waits until it does, and takes every change that came meanwhile
// with it.
func (r *Registry) Run(ctx context.Context) {
	gate := r.gateCh()
	pushed := map[naming.ServiceKey]paced{}
	var timer <-chan time.Time
	var timerAt time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-timer:
			timer = nil
		case <-gate:
			// Loaded: every subscriber gets its first list now.
			gate = nil
			r.subMu.Lock()
			for k := range r.subs {
				r.dirty[k] = struct{}{}
			}
			r.subMu.Unlock()
		}
		if !r.Ready() {
			continue // dirty services wait for the gate
		}
		now := r.now()
		for k, p := range pushed {
			if !p.tat.After(now) {
				delete(pushed, k)
			}
		}
		due, next := r.take(pushed, now)
		r.flush(due, pushed, now)
		if !next.IsZero() && (timer == nil || next.Before(timerAt)) {
			timer, timerAt = r.after(next.Sub(now)), next
		}
	}
}

// paced is the pace of a recently pushed service, and what it pushed. tat
// is its theoretical arrival time (GCRA): the pace allows a push at now
// once now >= tat - (burst-1)*window, and a push moves tat to max(tat,
// now) + window; a service whose tat has passed has its whole burst again
// and is forgotten. rev and threshold are those of its last push: a
// service marked changed again by a change its last push already carried
// (the mark came after the read) is not pushed twice.
type paced struct {
	tat       time.Time
	rev       uint64
	threshold float64
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

type target struct {
	sub    Subscriber
	filter naming.Filter
}

// take removes from the dirty set the services due for a push (those the
// pace allows at now, given pushed) and returns them with their
// subscribers, and the time the earliest service it holds back becomes
// due (zero if none).
func (r *Registry) take(pushed map[naming.ServiceKey]paced, now time.Time) (map[naming.ServiceKey][]target, time.Time) {
	r.subMu.Lock()
	defer r.subMu.Unlock()
	work := make(map[naming.ServiceKey][]target, len(r.dirty))
	var next time.Time
	slack := time.Duration(max(r.cfg.MergeBurst, 1)-1) * r.cfg.MergeWindow
	for k := range r.dirty {
		if p, ok := pushed[k]; ok && now.Before(p.tat.Add(-slack)) {
			if at := p.tat.Add(-slack); next.IsZero() || at.Before(next) {
				next = at
			}
			continue
		}
		delete(r.dirty, k)
		for sub, f := range r.subs[k] {
			work[k] = append(work[k], target{sub, f})
		}
	}
	return work, next
}

// flush pushes each service of work to its subscribers, unless its last
// push (in pushed) carried the same state, and paces the ones it pushes.
func (r *Registry) flush(work map[naming.ServiceKey][]target, pushed map[naming.ServiceKey]paced, now time.Time) {
	for k, targets := range work {
		all, rev, threshold, err := r.merged(k)
		if err != nil {
			// The persistent side failed to read; keep the service dirty
			// so the next flush tries again rather than pushing a list
			// with instances missing.
			r.Changed([]naming.ServiceKey{k})
			continue
		}
		p, seen := pushed[k]
		if seen && p.rev == rev && p.threshold == threshold {
			continue // both revisions only grow: nothing changed since
		}
		pushed[k] = paced{tat: later(p.tat, now).Add(r.cfg.MergeWindow), rev: rev, threshold: threshold}
		byFilter := make(map[string]Snapshot, 1)
		for _, t := range targets {
			fk := filterKey(t.filter)
			snap, ok := byFilter[fk]
			if !ok {
				snap = snapshot(k, all, rev, threshold, t.filter)
				byFilter[fk] = snap
			}
			t.sub.Deliver(snap)
			r.pushes.Add(1)
		}
	}
}

func filterKey(f naming.Filter) string {
	return fmt.Sprint(f.HealthyOnly, strings.Join(f.Clusters, ","))
}

func snapshot(k naming.ServiceKey, all []naming.Instance, rev uint64, threshold float64, f naming.Filter) Snapshot {
	list, prot := naming.Select(all, f, threshold)
	return Snapshot{Key: k, Revision: rev, Instances: list, Protected: prot, Threshold: threshold}
}

// merged returns every instance of a service, ephemeral and persistent, the
// combined revision and the protection threshold. Both revisions only grow,
// so their sum does too.
func (r *Registry) merged(k naming.ServiceKey) ([]naming.Instance, uint64, float64, error) {
	all, rev, ps, err := r.mergedFull(k)
	return all, rev, ps.Meta.ProtectThreshold, err
}

func (r *Registry) mergedFull(k naming.ServiceKey) ([]naming.Instance, uint64, PersistentService, error) {
	eph, erev := r.eph.Instances(k)
	ps, err := r.persistent(k)
	if err != nil {
		return nil, 0, ps, err
	}
	if len(ps.Instances) == 0 {
		return eph, erev + ps.Revision, ps, nil // shared, read-only
	}
	all := make([]naming.Instance, 0, len(eph)+len(ps.Instances))
	all = append(all, eph...)
	all = append(all, ps.Instances...)
	return all, erev + ps.Revision, ps, nil
}

// persistent reads a service's persistent state, from the cache when it
// holds it.
func (r *Registry) persistent(k naming.ServiceKey) (PersistentService, error) {
	if r.pcache == nil {
		return r.per.Service(k)
	}
	if ps, ok := r.pcache.get(k); ok {
		return ps, nil
	}
	gen := r.pcache.generation()
	ps, err := r.per.Service(k)
	if err == nil {
		r.pcache.put(k, ps, gen)
	}
	return ps, err
}

// Get answers a query. A service that had instances once and has none now
// answers an empty list; ErrNotFound means the node has never heard of it
// (no instances since start-up, no persistent history, no metadata).
func (r *Registry) Get(k naming.ServiceKey, f naming.Filter) (Snapshot, naming.ServiceMeta, error) {
	if !r.Ready() {
		return Snapshot{}, naming.ServiceMeta{}, ErrNotReady
	}
	all, rev, ps, err := r.mergedFull(k)
	if err != nil {
		return Snapshot{}, naming.ServiceMeta{}, err
	}
	meta, hasMeta := ps.Meta, ps.HasMeta
	if len(all) == 0 && !hasMeta && ps.Revision == 0 && !r.eph.Known(k) {
		return Snapshot{}, naming.ServiceMeta{}, fmt.Errorf("%w: %s", ErrNotFound, k)
	}
	if !hasMeta {
		meta.HealthCheck = naming.DefaultHealthCheck()
	}
	return snapshot(k, all, rev, meta.ProtectThreshold, f), meta, nil
}

// Subscribe registers sub for pushes of k with filter f (replacing an earlier
// filter of the same subscriber) and delivers the current snapshot at once.
func (r *Registry) Subscribe(k naming.ServiceKey, f naming.Filter, sub Subscriber) error {
	r.subMu.Lock()
	m := r.subs[k]
	if m == nil {
		m = make(map[Subscriber]naming.Filter)
		r.subs[k] = m
	}
	m[sub] = f
	r.subMu.Unlock()
	if !r.Ready() {
		return nil // the first list goes out when the node is loaded
	}
	all, rev, threshold, err := r.merged(k)
	if err != nil {
		r.Unsubscribe(k, sub)
		return err
	}
	sub.Deliver(snapshot(k, all, rev, threshold, f))
	r.pushes.Add(1)
	return nil
}

// Unsubscribe stops pushes of k to sub.
func (r *Registry) Unsubscribe(k naming.ServiceKey, sub Subscriber) {
	r.subMu.Lock()
	if m := r.subs[k]; m != nil {
		delete(m, sub)
		if len(m) == 0 {
			delete(r.subs, k)
			delete(r.dirty, k)
		}
	}
	r.subMu.Unlock()
}

// Subscriptions counts (service, subscriber) pairs.
func (r *Registry) Subscriptions() int {
	r.subMu.Lock()
	defer r.subMu.Unlock()
	n := 0
	for _, m := range r.subs {
		n += len(m)
	}
	return n
}

// ServiceInfo summarises a service for listings.
type ServiceInfo struct {
	Key       naming.ServiceKey
	Instances int
	Healthy   int
}

// ListServices pages through a namespace's services, ephemeral and
// persistent together, in key order. It returns the page and the key to pass
// as `after` for the next page ("" on the last page).
func (r *Registry) ListServices(namespace, group, after string, limit int) ([]ServiceInfo, string, error) {
	if !r.Ready() {
		return nil, "", ErrNotReady
	}
	per, err := r.per.ServiceKeys(namespace, group, after, limit+1)
	if err != nil {
		return nil, "", err
	}
	seen := make(map[naming.ServiceKey]struct{}, len(per))
	keys := make([]naming.ServiceKey, 0, len(per))
	for _, k := range per {
		seen[k] = struct{}{}
		keys = append(keys, k)
	}
	for _, k := range r.eph.Services() {
		if k.Namespace != namespace || (group != "" && k.Group != group) || k.String() <= after {
			continue
		}
		if _, ok := seen[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b naming.ServiceKey) int { return strings.Compare(a.String(), b.String()) })
	next := ""
	if len(keys) > limit {
		keys = keys[:limit]
		next = keys[limit-1].String()
	}
	out := make([]ServiceInfo, 0, len(keys))
	for _, k := range keys {
		all, _, _, err := r.merged(k)
		if err != nil {
			return nil, "", err
		}
		info := ServiceInfo{Key: k}
		for i := range all {
			info.Instances++
			if all[i].Healthy && all[i].Enabled {
				info.Healthy++
			}
		}
		out = append(out, info)
	}
	return out, next, nil
}
