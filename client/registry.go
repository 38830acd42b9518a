package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/regent-registry/regent/internal/naming"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"
)

// checkInstance validates locally what the server would refuse, so that an
// invalid registration fails at once instead of being redone forever.
func checkInstance(in Instance) error {
	n := naming.Instance{IP: in.IP, Port: in.Port, Cluster: in.Cluster, Weight: in.Weight, Metadata: in.Metadata}
	if in.Weight == 0 {
		n.Weight = naming.DefaultWeight
	}
	if _, err := naming.NormalizeInstance(n); err != nil {
		return invalid(err)
	}
	return nil
}

func regID(k naming.ServiceKey, in Instance) string { return k.String() + "|" + in.id() }

// Register registers an ephemeral instance over the session: it lives as
// long as this client's session, and the client registers it again on every
// new session until Deregister or Close. Register returns once a server has
// acknowledged it, or with ctx's error while no server answers (the client
// keeps trying in the background). Registering again is idempotent and
// updates weight, health and metadata in place.
func (c *Client) Register(ctx context.Context, svc Service, in Instance) error {
	key, err := svc.key()
	if err != nil {
		return invalid(err)
	}
	if err := checkInstance(in); err != nil {
		return err
	}
	return c.setWish(ctx, key, in, true)
}

// Deregister removes an ephemeral instance. It wins over a redo in flight:
// when issued while disconnected, the next session deregisters instead of
// registering again.
func (c *Client) Deregister(ctx context.Context, svc Service, in Instance) error {
	key, err := svc.key()
	if err != nil {
		return invalid(err)
	}
	return c.setWish(ctx, key, in, false)
}

// setWish records that an instance should (want) or should not be
// registered, then tells the server over the current session. The wish is
// kept for the redo whatever happens to this attempt.
func (c *Client) setWish(ctx context.Context, key naming.ServiceKey, in Instance, want bool) error {
	id := regID(key, in)
	c.mu.Lock()
	e := c.regs[id]
	if e == nil {
		e = &regEntry{key: key}
		c.regs[id] = e
	}
	e.inst, e.want, e.done = in, want, false
	e.ver++
	ver := e.ver
	c.mu.Unlock()
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	s, err := c.session(ctx)
	if err != nil {
		return err
	}
	return c.applyReg(ctx, s, id, e, ver)
}

// applyReg sends an entry's wish (version ver) over session s and records
// the outcome unless the entry changed meanwhile.
func (c *Client) applyReg(ctx context.Context, s *liveSession, id string, e *regEntry, ver uint64) error {
	// The wish is read under the send lock: when a redo and a Deregister
	// race, whichever sends last read the entry last and so sends the
	// newest wish (otherwise a redo's stale Register could follow the
	// Deregister on the wire and win).
	var want bool
	err := c.callBuilt(ctx, s, func() *regentv1.ClientMessage {
		c.mu.Lock()
		var in Instance
		var key naming.ServiceKey
		want, in, key = e.want, e.inst, e.key
		c.mu.Unlock()
		svc := serviceOf(key).proto()
		if want {
			return &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Register{Register: &regentv1.RegisterEphemeral{Service: svc, Instances: []*regentv1.Instance{in.proto()}}}}
		}
		return &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Deregister{Deregister: &regentv1.DeregisterEphemeral{Service: svc, Instances: []*regentv1.Instance{in.proto()}}}}
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.ver != ver || c.regs[id] != e {
		return err // a newer wish took over; it reports for itself
	}
	switch {
	case err == nil && want:
		if c.sess == s {
			e.done = true
		}
	case err == nil:
		delete(c.regs, id)
	case errors.Is(err, ErrInvalid):
		// The server will never take it; stop redoing it.
		delete(c.regs, id)
	}
	return err
}

// redoLoop makes the server match what the caller asked for: after a new
// session, and again every RedoInterval while anything is still not done.
func (c *Client) redoLoop(ctx context.Context, s *liveSession) {
	t := time.NewTicker(c.cfg.RedoInterval)
	defer t.Stop()
	cctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	if err := c.redoAll(cctx, s); err != nil {
		c.logger.Debug("full redo failed; redoing one by one", "err", err)
	}
	cancel()
	for {
		c.redoPass(ctx, s)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// redoAll sends the whole wish set in one RegisterAll, the first thing on a
// new session: the server then holds exactly what this client wants, even
// if the session moved to a node holding an older copy of the client.
// The message is built under the send lock, like every wish, so a
// Register or Deregister racing with it reaches the server after it.
func (c *Client) redoAll(ctx context.Context, s *liveSession) error {
	type sent struct {
		e    *regEntry
		id   string
		ver  uint64
		want bool
	}
	var batch []sent
	err := c.callBuilt(ctx, s, func() *regentv1.ClientMessage {
		c.mu.Lock()
		defer c.mu.Unlock()
		byKey := map[naming.ServiceKey]*regentv1.RegisterEphemeral{}
		all := &regentv1.RegisterAll{}
		for id, e := range c.regs {
			batch = append(batch, sent{e, id, e.ver, e.want})
			if !e.want {
				continue
			}
			r := byKey[e.key]
			if r == nil {
				r = &regentv1.RegisterEphemeral{Service: serviceOf(e.key).proto()}
				byKey[e.key] = r
				all.Services = append(all.Services, r)
			}
			r.Instances = append(r.Instances, e.inst.proto())
		}
		return &regentv1.ClientMessage{Body: &regentv1.ClientMessage_RegisterAll{RegisterAll: all}}
	})
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, b := range batch {
		if b.e.ver != b.ver || c.regs[b.id] != b.e {
			continue // changed meanwhile; that change reports for itself
		}
		if !b.want {
			delete(c.regs, b.id)
		} else if c.sess == s {
			b.e.done = true
		}
	}
	return nil
}

func (c *Client) redoPass(ctx context.Context, s *liveSession) {
	type work struct {
		id  string
		e   *regEntry
		ver uint64
	}
	c.mu.Lock()
	var regs []work
	for id, e := range c.regs {
		if !e.done {
			regs = append(regs, work{id, e, e.ver})
		}
	}
	var subs []*subState
	for _, st := range c.subs {
		// A Watch subscribing now would only be doubled (and its first
		// list pushed twice); if it fails, the next pass takes it.
		if !st.done && st.sending == 0 {
			subs = append(subs, st)
		}
	}
	c.mu.Unlock()
	for _, w := range regs {
		if ctx.Err() != nil {
			return
		}
		cctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
		if err := c.applyReg(cctx, s, w.id, w.e, w.ver); err != nil {
			c.logger.Debug("redo failed; will retry", "id", w.id, "err", err)
		}
		cancel()
	}
	if ctx.Err() != nil {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	c.resubscribe(cctx, s, subs)
}

// resubscribe subscribes again to subs on session s, pipelined: every
// Subscribe goes out, then every ack is awaited, so a client watching
// many services has them back in about one round trip rather than one
// each (BenchmarkResubscribe). A failure leaves its service for the next
// pass. It returns how many succeeded.
func (c *Client) resubscribe(ctx context.Context, s *liveSession, subs []*subState) (ok int) {
	reqs := make([]request, 0, len(subs))
	for _, st := range subs {
		r, err := c.send(s, func() *regentv1.ClientMessage { return subscribeMsg(st) })
		if err != nil {
			c.logger.Debug("re-subscribe failed; will retry", "service", st.key, "err", err)
			break // the session is gone: await what went out
		}
		reqs = append(reqs, r)
	}
	for i, r := range reqs {
		a, err := r.await(ctx)
		if err == nil {
			err = fromAck(a)
		}
		if err != nil {
			c.logger.Debug("re-subscribe failed; will retry", "service", subs[i].key, "err", err)
			continue
		}
		c.subscribed(s, subs[i])
		ok++
	}
	return ok
}

func subscribeMsg(st *subState) *regentv1.ClientMessage {
	return &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Subscribe{Subscribe: &regentv1.Subscribe{Service: serviceOf(st.key).proto()}}}
}

// subscribed marks st as subscribed on s, unless the client has moved to
// another session since.
func (c *Client) subscribed(s *liveSession, st *subState) {
	c.mu.Lock()
	if c.sess == s {
		st.done = true
	}
	c.mu.Unlock()
}

// subState is one subscribed service: the server subscription (unfiltered,
// so one subscription serves every local filter), the cached list and the
// local watchers.
type subState struct {
	key      naming.ServiceKey
	done     bool
	sending  int // Watch calls subscribing now, which the redo leaves alone
	cache    *ServiceInfo
	all      []naming.Instance
	thresh   float64
	watchers map[*Watcher]struct{}
}

// Watcher receives a service's instance list on every change.
type Watcher struct {
	c      *Client
	key    naming.ServiceKey
	filter Filter
	ch     chan ServiceInfo
	mu     sync.Mutex // serialises deliveries so the newest wins
}

// C returns the channel of updates. It holds at most one pending update:
// an unread update is replaced by a newer one, so a slow reader skips
// intermediate lists but always ends with the newest.
func (w *Watcher) C() <-chan ServiceInfo { return w.ch }

// Stop ends the watch; the server subscription ends with the last watcher.
func (w *Watcher) Stop() {
	c := w.c
	c.mu.Lock()
	st := c.subs[w.key]
	last := false
	if st != nil {
		delete(st.watchers, w)
		if len(st.watchers) == 0 {
			delete(c.subs, w.key)
			last = true
		}
	}
	s := c.sess
	c.mu.Unlock()
	if last && s != nil {
		ctx, cancel := context.WithTimeout(c.ctx, c.cfg.RequestTimeout)
		defer cancel()
		_ = c.call(ctx, s, &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Unsubscribe{Unsubscribe: &regentv1.Unsubscribe{Service: serviceOf(w.key).proto()}}})
	}
}

func (w *Watcher) deliver(info ServiceInfo) {
	w.mu.Lock()
	defer w.mu.Unlock()
	select {
	case <-w.ch:
	default:
	}
	w.ch <- info
}

func filtered(st *subState, f Filter) ServiceInfo {
	list, prot := naming.Select(st.all, naming.Filter{HealthyOnly: f.HealthyOnly, Clusters: f.Clusters}, st.thresh)
	info := ServiceInfo{Service: st.cache.Service, Revision: st.cache.Revision, ProtectionTriggered: prot, Instances: make([]Instance, len(list))}
	for i := range list {
		in := &list[i]
		info.Instances[i] = Instance{IP: in.IP, Port: in.Port, Cluster: in.Cluster, Weight: in.Weight, Healthy: in.Healthy, Enabled: in.Enabled, Ephemeral: in.Ephemeral, Metadata: in.Metadata}
	}
	return info
}

// Watch subscribes to a service: the current list comes at once on C(),
// then a new one on every change. Several watches of one service share one
// server subscription. Watch returns once the server has acknowledged it.
func (c *Client) Watch(ctx context.Context, svc Service, f Filter) (*Watcher, error) {
	key, err := svc.key()
	if err != nil {
		return nil, invalid(err)
	}
	for _, cl := range f.Clusters {
		if err := naming.ValidateCluster(cl); err != nil {
			return nil, invalid(err)
		}
	}
	w := &Watcher{c: c, key: key, filter: f, ch: make(chan ServiceInfo, 1)}
	c.mu.Lock()
	st := c.subs[key]
	if st == nil {
		st = &subState{key: key, watchers: map[*Watcher]struct{}{}}
		c.subs[key] = st
	}
	st.watchers[w] = struct{}{}
	if st.cache != nil {
		w.deliver(filtered(st, f))
	}
	done := st.done
	if !done {
		st.sending++
	}
	c.mu.Unlock()
	if done {
		return w, nil
	}
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	s, err := c.session(ctx)
	if err == nil {
		err = c.sendSubscribe(ctx, s, st)
	}
	c.mu.Lock()
	st.sending--
	c.mu.Unlock()
	if err != nil {
		w.Stop()
		return nil, err
	}
	return w, nil
}

func (c *Client) sendSubscribe(ctx context.Context, s *liveSession, st *subState) error {
	err := c.call(ctx, s, subscribeMsg(st))
	if err == nil {
		c.subscribed(s, st)
	}
	return err
}

func (c *Client) onPush(p *regentv1.ServiceSnapshot) {
	key, err := naming.NormalizeKey(naming.ServiceKey{Namespace: p.GetService().GetNamespace(), Group: p.GetService().GetGroup(), Service: p.GetService().GetService()})
	if err != nil {
		return
	}
	info := serviceInfoFromProto(p)
	all := make([]naming.Instance, len(info.Instances))
	for i, in := range info.Instances {
		all[i] = naming.Instance{IP: in.IP, Port: in.Port, Cluster: in.Cluster, Weight: in.Weight, Healthy: in.Healthy, Enabled: in.Enabled, Ephemeral: in.Ephemeral, Metadata: in.Metadata}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.subs[key]
	if st == nil {
		return
	}
	st.cache, st.all, st.thresh = &info, all, p.GetProtectThreshold()
	for w := range st.watchers {
		w.deliver(filtered(st, w.filter))
	}
}

// unary runs fn against the servers, the session's server first, moving on
// while a server is unavailable.
func (c *Client) unary(ctx context.Context, fn func(ctx context.Context, rc regentv1.RegistryClient) error) error {
	return c.tryServers(ctx, int(c.current.Load()), func(ctx context.Context, idx int) error {
		return fn(ctx, regentv1.NewRegistryClient(c.conns[idx]))
	})
}

// tryServers runs fn against the servers from index start on, moving on
// while a server is unavailable.
func (c *Client) tryServers(ctx context.Context, start int, fn func(ctx context.Context, idx int) error) error {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	var last error
	for i := range c.conns {
		err := fn(ctx, (start+i)%len(c.conns))
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return fromStatus(err)
		}
		last = err
	}
	return fromStatus(last)
}

// write runs a persistent write as unary does, but starts at the Raft
// leader when a node has named it (regentv1.LeaderHeader) and it is one of
// the configured servers: the write then skips the hop over which a
// follower would forward it. The leader is learnt from every write's response and
// forgotten when it is unavailable, so a leader change costs at most one
// forwarded write.
func (c *Client) write(ctx context.Context, fn func(ctx context.Context, rc regentv1.RegistryClient, opts ...grpc.CallOption) error) error {
	start := int(c.leader.Load())
	if start < 0 {
		start = int(c.current.Load())
	}
	return c.tryServers(ctx, start, func(ctx context.Context, idx int) error {
		var md metadata.MD
		err := fn(ctx, regentv1.NewRegistryClient(c.conns[idx]), grpc.Header(&md))
		c.learnLeader(idx, md, err)
		return err
	})
}

// learnLeader notes what a write to server idx told of the leader: a named
// leader among the servers becomes the next writes' first stop, a leader
// that is not among them clears it; a write answered without a name (a
// node that knows no leader, or an older one) leaves the choice as it is.
func (c *Client) learnLeader(idx int, md metadata.MD, err error) {
	if err != nil {
		if status.Code(err) == codes.Unavailable {
			c.leader.CompareAndSwap(int64(idx), -1)
		}
		return
	}
	named := md.Get(regentv1.LeaderHeader)
	if len(named) == 0 {
		return
	}
	c.leader.Store(int64(c.serverIndex(named[0])))
}

// Leader returns the configured server that the latest persistent write
// learnt leads Raft, the one the next persistent write goes to first, or
// "" when no write has named one.
func (c *Client) Leader() string {
	if i := c.leader.Load(); i >= 0 {
		return c.cfg.Servers[i]
	}
	return ""
}

// serverIndex is the index of addr among the configured servers, or -1.
// host:port pairs are compared as such, so "127.0.0.1:9101" and a
// configured "127.0.0.1:09101" match; names are not resolved.
func (c *Client) serverIndex(addr string) int {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return -1
	}
	for i, s := range c.cfg.Servers {
		if s == addr {
			return i
		}
		h, p, err := net.SplitHostPort(s)
		if err == nil && strings.EqualFold(h, host) && samePort(p, port) {
			return i
		}
	}
	return -1
}

func samePort(a, b string) bool {
	x, err1 := strconv.Atoi(a)
	y, err2 := strconv.Atoi(b)
	return err1 == nil && err2 == nil && x == y
}

func protoList(ins []Instance) []*regentv1.Instance {
	out := make([]*regentv1.Instance, len(ins))
	for i := range ins {
		out[i] = ins[i].proto()
	}
	return out
}

// RegisterPersistent writes a persistent instance; it returns once the write
// is durable. Persistent instances outlive sessions and are health-checked
// by the cluster.
func (c *Client) RegisterPersistent(ctx context.Context, svc Service, in Instance) (revision uint64, err error) {
	req := &regentv1.RegisterInstanceRequest{Service: svc.proto(), Instance: in.proto()}
	return c.persistentWrite(ctx, &regentv1.WriteRequest{Body: &regentv1.WriteRequest_Register{Register: req}},
		func(ctx context.Context, rc regentv1.RegistryClient, opts ...grpc.CallOption) (uint64, error) {
			r, err := rc.RegisterInstance(ctx, req, opts...)
			return r.GetRevision(), err
		})
}

// persistentWrite sends a register or deregister on the Write stream, and
// as its unary call when no stream answers it (see streamWrite).
func (c *Client) persistentWrite(ctx context.Context, w *regentv1.WriteRequest, unary func(ctx context.Context, rc regentv1.RegistryClient, opts ...grpc.CallOption) (uint64, error)) (revision uint64, err error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	r, err := c.streamWrite(ctx, w)
	if !errors.Is(err, errNoStream) {
		if err != nil {
			return 0, err
		}
		return r.GetRevision(), writeReplyErr(r)
	}
	err = c.write(ctx, func(ctx context.Context, rc regentv1.RegistryClient, opts ...grpc.CallOption) error {
		var err error
		revision, err = unary(ctx, rc, opts...)
		return err
	})
	return revision, err
}

// BatchRegisterPersistent writes several persistent instances, all or none.
func (c *Client) BatchRegisterPersistent(ctx context.Context, svc Service, ins []Instance) (revision uint64, err error) {
	err = c.write(ctx, func(ctx context.Context, rc regentv1.RegistryClient, opts ...grpc.CallOption) error {
		r, err := rc.BatchRegisterInstances(ctx, &regentv1.BatchRegisterInstancesRequest{Service: svc.proto(), Instances: protoList(ins)}, opts...)
		revision = r.GetRevision()
		return err
	})
	return revision, err
}

// DeregisterPersistent removes a persistent instance (idempotent).
func (c *Client) DeregisterPersistent(ctx context.Context, svc Service, in Instance) (revision uint64, err error) {
	req := &regentv1.DeregisterInstanceRequest{Service: svc.proto(), Instance: in.proto()}
	return c.persistentWrite(ctx, &regentv1.WriteRequest{Body: &regentv1.WriteRequest_Deregister{Deregister: req}},
		func(ctx context.Context, rc regentv1.RegistryClient, opts ...grpc.CallOption) (uint64, error) {
			r, err := rc.DeregisterInstance(ctx, req, opts...)
			return r.GetRevision(), err
		})
}

// GetService returns a service's instances. A subscribed service is answered
// from the local cache, which pushes keep current; when no server can be
// reached, a cached list is returned with FromCache set.
func (c *Client) GetService(ctx context.Context, svc Service, f Filter) (ServiceInfo, error) {
	key, err := svc.key()
	if err != nil {
		return ServiceInfo{}, invalid(err)
	}
	cached := func(fromCache bool) (ServiceInfo, bool) {
		c.mu.Lock()
		defer c.mu.Unlock()
		st := c.subs[key]
		if st == nil || st.cache == nil || (!fromCache && (!st.done || c.sess == nil)) {
			return ServiceInfo{}, false
		}
		info := filtered(st, f)
		info.FromCache = fromCache
		return info, true
	}
	if info, ok := cached(false); ok && !f.Linearizable {
		return info, nil
	}
	req := &regentv1.GetServiceRequest{Service: svc.proto(), HealthyOnly: f.HealthyOnly, Clusters: f.Clusters, Linearizable: f.Linearizable}
	var out ServiceInfo
	err = ErrUnavailable
	if !f.Linearizable {
		// Over the session when there is one: a message on a stream that
		// is open anyway costs both sides about half a unary call.
		out, err = c.lookupOnSession(ctx, req)
	}
	if errors.Is(err, ErrUnavailable) {
		err = c.unary(ctx, func(ctx context.Context, rc regentv1.RegistryClient) error {
			r, err := rc.GetService(ctx, req)
			if err == nil {
				out = serviceInfoFromProto(r.GetSnapshot())
			}
			return err
		})
	}
	if (errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded)) && !f.Linearizable {
		if info, ok := cached(true); ok {
			return info, nil
		}
	}
	return out, err
}

// lookupOnSession asks the session's node for a service; it fails with
// ErrUnavailable when there is no session or it ends meanwhile, or when
// the node cannot serve (the caller then tries the servers one by one).
func (c *Client) lookupOnSession(ctx context.Context, req *regentv1.GetServiceRequest) (ServiceInfo, error) {
	c.mu.Lock()
	s := c.sess
	c.mu.Unlock()
	if s == nil || !s.lookups {
		return ServiceInfo{}, fmt.Errorf("%w: no session that takes lookups", ErrUnavailable)
	}
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	a, err := c.roundTrip(ctx, s, func() *regentv1.ClientMessage {
		return &regentv1.ClientMessage{Body: &regentv1.ClientMessage_GetService{GetService: req}}
	})
	if err != nil {
		return ServiceInfo{}, err
	}
	if err := fromAck(a); err != nil {
		return ServiceInfo{}, err
	}
	return serviceInfoFromProto(a.GetService().GetSnapshot()), nil
}

// PickOne returns one healthy instance, chosen at random in proportion to
// weight (instances of weight 0 are never picked).
func (c *Client) PickOne(ctx context.Context, svc Service) (Instance, error) {
	info, err := c.GetService(ctx, svc, Filter{HealthyOnly: true})
	if err != nil {
		return Instance{}, err
	}
	return pickWeighted(info.Instances, rand.Float64)
}

func pickWeighted(list []Instance, random func() float64) (Instance, error) {
	total := 0.0
	for _, in := range list {
		if in.Healthy && in.Weight > 0 {
			total += in.Weight
		}
	}
	if total == 0 {
		return Instance{}, fmt.Errorf("%w: no healthy instance with weight > 0", ErrNotFound)
	}
	r := random() * total
	var last Instance
	for _, in := range list {
		if !in.Healthy || in.Weight <= 0 {
			continue
		}
		last = in
		if r < in.Weight {
			return in, nil
		}
		r -= in.Weight
	}
	return last, nil // rounding at the very end of the range
}

// ServiceSummary is a service in a listing.
type ServiceSummary struct {
	Service   Service `json:"service"`
	Instances int     `json:"instances"`
	Healthy   int     `json:"healthy"`
}

// ListServices returns every service of a namespace (group "" = all groups),
// following pages.
func (c *Client) ListServices(ctx context.Context, namespace, group string) ([]ServiceSummary, error) {
	var out []ServiceSummary
	token := ""
	for {
		var page *regentv1.ListServicesResponse
		err := c.unary(ctx, func(ctx context.Context, rc regentv1.RegistryClient) error {
			var err error
			page, err = rc.ListServices(ctx, &regentv1.ListServicesRequest{Namespace: namespace, Group: group, PageSize: 1000, PageToken: token})
			return err
		})
		if err != nil {
			return nil, err
		}
		for _, s := range page.GetServices() {
			r := s.GetService()
			out = append(out, ServiceSummary{Service: Service{Namespace: r.GetNamespace(), Group: r.GetGroup(), Name: r.GetService()}, Instances: int(s.GetInstanceCount()), Healthy: int(s.GetHealthyCount())})
		}
		if token = page.GetNextPageToken(); token == "" {
			return out, nil
		}
	}
}

// Member is a cluster node as the asked node sees it.
type Member struct {
	Name   string `json:"name"`
	Addr   string `json:"addr"`
	Status string `json:"status"`
	Raft   string `json:"raft"`
}

// Members lists the cluster's nodes.
func (c *Client) Members(ctx context.Context) ([]Member, error) {
	var out []Member
	err := c.unary(ctx, func(ctx context.Context, rc regentv1.RegistryClient) error {
		r, err := rc.ListMembers(ctx, &regentv1.ListMembersRequest{})
		for _, m := range r.GetMembers() {
			out = append(out, Member{Name: m.GetName(), Addr: m.GetAddr(), Status: m.GetStatus(), Raft: m.GetRaft()})
		}
		return err
	})
	return out, err
}

// ServiceMeta is a service's settings.
type ServiceMeta struct {
	ProtectThreshold float64           `json:"protect_threshold"`
	Metadata         map[string]string `json:"metadata"`
	// HealthCheck sets how the cluster checks the service's persistent
	// instances; nil keeps the defaults (TCP every 5 s, 3 failures).
	HealthCheck *HealthCheck `json:"health_check,omitempty"`
}

// HealthCheck is a service's check of persistent instances. Zero fields
// take their defaults.
type HealthCheck struct {
	// Type is "tcp" (default), "http" or "none".
	Type               string `json:"type"`
	HTTPPath           string `json:"http_path,omitempty"`
	ExpectedStatus     int    `json:"expected_status,omitempty"`
	IntervalMS         int    `json:"interval_ms,omitempty"`
	UnhealthyThreshold int    `json:"unhealthy_threshold,omitempty"`
	HealthyThreshold   int    `json:"healthy_threshold,omitempty"`
}

func (h *HealthCheck) proto() (*regentv1.HealthCheck, error) {
	if h == nil {
		return nil, nil
	}
	types := map[string]regentv1.HealthCheck_Type{"": regentv1.HealthCheck_TYPE_UNSPECIFIED, "tcp": regentv1.HealthCheck_TYPE_TCP,
		"http": regentv1.HealthCheck_TYPE_HTTP, "none": regentv1.HealthCheck_TYPE_NONE}
	t, ok := types[h.Type]
	if !ok {
		return nil, fmt.Errorf("%w: health check type %q (want tcp, http or none)", ErrInvalid, h.Type)
	}
	u := func(v int) uint32 { return uint32(max(0, v)) }
	return &regentv1.HealthCheck{Type: t, HttpPath: h.HTTPPath, ExpectedStatus: u(h.ExpectedStatus), IntervalMs: u(h.IntervalMS),
		UnhealthyThreshold: u(h.UnhealthyThreshold), HealthyThreshold: u(h.HealthyThreshold)}, nil
}

// UpdateServiceMetadata replaces a service's protection threshold,
// metadata and health-check settings.
func (c *Client) UpdateServiceMetadata(ctx context.Context, svc Service, m ServiceMeta) error {
	hc, err := m.HealthCheck.proto()
	if err != nil {
		return err
	}
	return c.write(ctx, func(ctx context.Context, rc regentv1.RegistryClient, opts ...grpc.CallOption) error {
		_, err := rc.UpdateServiceMetadata(ctx, &regentv1.UpdateServiceMetadataRequest{Service: svc.proto(), Meta: &regentv1.ServiceMeta{ProtectThreshold: m.ProtectThreshold, Metadata: m.Metadata, HealthCheck: hc}}, opts...)
		return err
	})
}
