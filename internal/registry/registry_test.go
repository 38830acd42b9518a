package registry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
)

// memPersistent is a map-backed Persistent for tests of the merge and push
// logic; the bbolt-backed one is tested in persistent/.
type memPersistent struct {
	mu   sync.Mutex
	ins  map[naming.ServiceKey][]naming.Instance
	meta map[naming.ServiceKey]naming.ServiceMeta
	rev  uint64
	fail error
}

func newMem() *memPersistent {
	return &memPersistent{ins: map[naming.ServiceKey][]naming.Instance{}, meta: map[naming.ServiceKey]naming.ServiceMeta{}}
}

func (m *memPersistent) Register(_ context.Context, k naming.ServiceKey, ins []naming.Instance) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ins[k] = append(m.ins[k], ins...)
	m.rev++
	return m.rev, nil
}
func (m *memPersistent) Deregister(context.Context, naming.ServiceKey, naming.InstanceID) (uint64, error) {
	return 0, errors.New("unused")
}
func (m *memPersistent) UpdateMeta(_ context.Context, k naming.ServiceKey, meta naming.ServiceMeta) (naming.ServiceMeta, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.meta[k] = meta
	m.rev++
	return meta, nil
}
func (m *memPersistent) Service(k naming.ServiceKey) (PersistentService, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return PersistentService{}, m.fail
	}
	meta, ok := m.meta[k]
	return PersistentService{Instances: append([]naming.Instance(nil), m.ins[k]...), Revision: m.rev, Meta: meta, HasMeta: ok}, nil
}
func (m *memPersistent) ServiceKeys(ns, group, after string, limit int) ([]naming.ServiceKey, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []naming.ServiceKey
	for k := range m.ins {
		if k.Namespace == ns && (group == "" || k.Group == group) && k.String() > after {
			out = append(out, k)
		}
	}
	return out, nil
}

type sink struct {
	mu    sync.Mutex
	snaps []Snapshot
}

func (s *sink) Deliver(sn Snapshot) {
	s.mu.Lock()
	s.snaps = append(s.snaps, sn)
	s.mu.Unlock()
}

func (s *sink) all() []Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Snapshot(nil), s.snaps...)
}

func (s *sink) waitFor(t *testing.T, cond func(last Snapshot, n int) bool) []Snapshot {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := s.all()
		if len(got) > 0 && cond(got[len(got)-1], len(got)) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met; pushes: %+v", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var key = naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "orders"}

func inst(ip string, port int, healthy bool) naming.Instance {
	return naming.Instance{IP: ip, Port: port, Cluster: "DEFAULT", Weight: 1, Healthy: healthy, Enabled: true}
}

func start(t *testing.T, cfg Config) (*Registry, *memPersistent) {
	t.Helper()
	per := newMem()
	r, err := New(cfg, ephemeral.NewStore(nil), per)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r, per
}

func TestSubscribeGetsSnapshotAtOnceThenMergedPushes(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MergeWindow = 30 * time.Millisecond
	r, _ := start(t, cfg)
	r.Ephemeral().Register("c1", "n1", key, []naming.Instance{inst("10.0.0.1", 80, true)})
	s := &sink{}
	if err := r.Subscribe(key, naming.Filter{}, s); err != nil {
		t.Fatal(err)
	}
	first := s.all()
	if len(first) != 1 || len(first[0].Instances) != 1 {
		t.Fatalf("no immediate snapshot: %+v", first)
	}
	// A burst of 50 registrations inside one merge window.
	for i := 0; i < 50; i++ {
		r.Ephemeral().Register("c1", "n1", key, []naming.Instance{inst("10.0.1.1", 1000+i, true)})
	}
	got := s.waitFor(t, func(last Snapshot, _ int) bool { return len(last.Instances) == 51 })
	if len(got) > 10 {
		t.Errorf("50 quick changes gave %d pushes; the merge window should collapse them", len(got))
	}
	for i := 1; i < len(got); i++ {
		if got[i].Revision <= got[i-1].Revision {
			t.Fatalf("revision did not grow: %d then %d", got[i-1].Revision, got[i].Revision)
		}
	}
	// Session end: everything of the client goes, and is pushed.
	r.Ephemeral().RemoveClient("c1")
	s.waitFor(t, func(last Snapshot, _ int) bool { return len(last.Instances) == 0 })
}

func TestPushAppliesSubscriberFilter(t *testing.T) {
	r, _ := start(t, DefaultConfig())
	healthy, all := &sink{}, &sink{}
	if err := r.Subscribe(key, naming.Filter{HealthyOnly: true}, healthy); err != nil {
		t.Fatal(err)
	}
	if err := r.Subscribe(key, naming.Filter{}, all); err != nil {
		t.Fatal(err)
	}
	r.Ephemeral().Register("c1", "n1", key, []naming.Instance{inst("10.0.0.1", 80, true), inst("10.0.0.2", 80, false)})
	all.waitFor(t, func(last Snapshot, _ int) bool { return len(last.Instances) == 2 })
	healthy.waitFor(t, func(last Snapshot, n int) bool { return n >= 2 && len(last.Instances) == 1 })
	r.Unsubscribe(key, all)
	n := len(all.all())
	r.Ephemeral().Register("c1", "n1", key, []naming.Instance{inst("10.0.0.3", 80, true)})
	healthy.waitFor(t, func(last Snapshot, _ int) bool { return len(last.Instances) == 2 })
	if len(all.all()) != n {
		t.Fatal("unsubscribed sink still pushed")
	}
}

func TestGetMergesPersistentAndProtects(t *testing.T) {
	r, per := start(t, DefaultConfig())
	if _, _, err := r.Get(key, naming.Filter{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown service: %v", err)
	}
	r.Ephemeral().Register("c1", "n1", key, []naming.Instance{inst("10.0.0.1", 80, true)})
	per.Register(context.Background(), key, []naming.Instance{inst("10.0.0.2", 80, false), inst("10.0.0.3", 80, false)})
	snap, _, err := r.Get(key, naming.Filter{HealthyOnly: true})
	if err != nil || len(snap.Instances) != 1 || snap.Protected {
		t.Fatalf("healthy only without threshold: %+v %v", snap, err)
	}
	per.UpdateMeta(context.Background(), key, naming.ServiceMeta{ProtectThreshold: 0.5})
	snap, meta, err := r.Get(key, naming.Filter{HealthyOnly: true})
	if err != nil || len(snap.Instances) != 3 || !snap.Protected || meta.ProtectThreshold != 0.5 {
		t.Fatalf("threshold 0.5 with 1/3 healthy: %+v meta %+v %v", snap, meta, err)
	}
}

func TestPersistentReadErrorIsRetriedNotPushedEmpty(t *testing.T) {
	r, per := start(t, DefaultConfig())
	per.Register(context.Background(), key, []naming.Instance{inst("10.0.0.2", 80, true)})
	s := &sink{}
	if err := r.Subscribe(key, naming.Filter{}, s); err != nil {
		t.Fatal(err)
	}
	per.mu.Lock()
	per.fail = errors.New("disk on fire")
	per.mu.Unlock()
	r.Ephemeral().Register("c1", "n1", key, []naming.Instance{inst("10.0.0.1", 80, true)})
	time.Sleep(100 * time.Millisecond) // several merge windows pass while reads fail
	for _, sn := range s.all() {
		if len(sn.Instances) == 0 {
			t.Fatal("pushed an empty list while the persistent side failed")
		}
	}
	per.mu.Lock()
	per.fail = nil
	per.mu.Unlock()
	s.waitFor(t, func(last Snapshot, _ int) bool { return len(last.Instances) == 2 })
}

func TestListServicesPagesOverBothSides(t *testing.T) {
	r, per := start(t, DefaultConfig())
	for i := 0; i < 5; i++ {
		k := key
		k.Service = fmt.Sprintf("svc-%d", i)
		if i%2 == 0 {
			per.Register(context.Background(), k, []naming.Instance{inst("10.0.0.1", 80, true)})
		} else {
			r.Ephemeral().Register("c", "n1", k, []naming.Instance{inst("10.0.0.1", 80, true)})
		}
	}
	var names []string
	after := ""
	for pages := 0; ; pages++ {
		page, next, err := r.ListServices("public", "", after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range page {
			names = append(names, s.Key.Service)
			if s.Instances != 1 || s.Healthy != 1 {
				t.Fatalf("counts %+v", s)
			}
		}
		if next == "" {
			break
		}
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		after = next
	}
	want := []string{"svc-0", "svc-1", "svc-2", "svc-3", "svc-4"}
	if fmt.Sprint(names) != fmt.Sprint(want) {
		t.Fatalf("pages gave %v, want %v", names, want)
	}
	if page, _, _ := r.ListServices("other", "", "", 10); len(page) != 0 {
		t.Fatalf("namespace leak: %+v", page)
	}
}

func TestGetEmptiedServiceIsEmptyNotNotFound(t *testing.T) {
	r, _ := start(t, DefaultConfig())
	r.Ephemeral().Register("c1", "n1", key, []naming.Instance{inst("10.0.0.1", 80, true)})
	before, _, err := r.Get(key, naming.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	r.Ephemeral().RemoveClient("c1")
	snap, _, err := r.Get(key, naming.Filter{})
	if err != nil {
		t.Fatalf("emptied service: %v, want an empty list", err)
	}
	if len(snap.Instances) != 0 || snap.Revision <= before.Revision {
		t.Fatalf("emptied service: %+v (revision before %d)", snap, before.Revision)
	}
}

func TestNotReadyAnswersNothingAndPushesNothingUntilLoaded(t *testing.T) {
	r, err := New(DefaultConfig(), ephemeral.NewStore(nil), newMem())
	if err != nil {
		t.Fatal(err)
	}
	loaded := make(chan struct{})
	r.SetGate(loaded)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	r.Ephemeral().Register("c1", "n1", key, []naming.Instance{inst("10.0.0.1", 80, true)})
	if _, _, err := r.Get(key, naming.Filter{}); !errors.Is(err, ErrNotReady) {
		t.Fatalf("Get before the load: %v, want ErrNotReady", err)
	}
	if _, _, err := r.ListServices("", "", "", 10); !errors.Is(err, ErrNotReady) {
		t.Fatalf("ListServices before the load: %v, want ErrNotReady", err)
	}
	s := &sink{}
	if err := r.Subscribe(key, naming.Filter{}, s); err != nil {
		t.Fatal(err)
	}
	r.Ephemeral().Register("c2", "n1", key, []naming.Instance{inst("10.0.0.2", 80, true)})
	time.Sleep(5 * DefaultConfig().MergeWindow)
	if got := s.all(); len(got) != 0 {
		t.Fatalf("pushed %d lists before the load finished", len(got))
	}
	close(loaded)
	s.waitFor(t, func(last Snapshot, _ int) bool { return len(last.Instances) == 2 })
	if got := s.all(); len(got[0].Instances) != 2 {
		t.Fatalf("first push after the load held %d instances, want the full 2", len(got[0].Instances))
	}
	if snap, _, err := r.Get(key, naming.Filter{}); err != nil || len(snap.Instances) != 2 {
		t.Fatalf("Get after the load: %v %v", snap, err)
	}
}

// fakeTimer is the pusher's clock in TestLoneChangeIsPushedAtOnce: now is
// set by the test, and every wait the pusher asks for is handed to it.
type fakeTimer struct {
	mu    sync.Mutex
	t     time.Time
	waits chan fakeWait
}

type fakeWait struct {
	d    time.Duration
	fire chan time.Time
}

func (f *fakeTimer) now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeTimer) advance(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

// awaitWait returns the wait the pusher asks for next.
func (f *fakeTimer) awaitWait(t *testing.T) fakeWait {
	t.Helper()
	select {
	case w := <-f.waits:
		return w
	case <-time.After(5 * time.Second):
		t.Fatal("the pusher neither pushed nor waited")
	}
	return fakeWait{}
}

func (f *fakeTimer) after(d time.Duration) <-chan time.Time {
	w := fakeWait{d: d, fire: make(chan time.Time, 1)}
	f.waits <- w
	return w.fire
}

// A change to a service not pushed within the window is pushed without
// waiting; one inside the window since the service's last push waits for
// the rest of it, together with any others that come meanwhile, and holds
// back no other service.
func TestLoneChangeIsPushedAtOnce(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MergeWindow, cfg.MergeBurst = 30*time.Millisecond, 1
	r, ft, noWait := startFakeTimed(t, cfg)

	other := naming.ServiceKey{Namespace: key.Namespace, Group: key.Group, Service: "other"}
	s, so := &sink{}, &sink{}
	if err := r.Subscribe(key, naming.Filter{}, s); err != nil {
		t.Fatal(err)
	}
	if err := r.Subscribe(other, naming.Filter{}, so); err != nil {
		t.Fatal(err)
	}
	r.Ephemeral().Register("c1", "n1", key, []naming.Instance{inst("10.0.0.1", 80, true)})
	s.waitFor(t, func(last Snapshot, _ int) bool { return len(last.Instances) == 1 })
	noWait("the first change")

	// 5 ms later (virtual): inside the service's window, so it waits the
	// 25 ms left, and a third change joins it.
	ft.advance(5 * time.Millisecond)
	pushes := len(s.all())
	r.Ephemeral().Register("c1", "n1", key, []naming.Instance{inst("10.0.0.2", 80, true)})
	w := ft.awaitWait(t)
	if w.d != 25*time.Millisecond {
		t.Fatalf("waited %v, want the 25 ms left of the window", w.d)
	}
	r.Ephemeral().Register("c1", "n1", key, []naming.Instance{inst("10.0.0.3", 80, true)})
	// Another service is not held back by this one's window.
	r.Ephemeral().Register("c2", "n1", other, []naming.Instance{inst("10.0.9.1", 80, true)})
	so.waitFor(t, func(last Snapshot, _ int) bool { return len(last.Instances) == 1 })
	noWait("a change to another service")
	if got := len(s.all()); got != pushes {
		t.Fatalf("%d pushes before the window ended, want %d", got, pushes)
	}
	ft.advance(25 * time.Millisecond)
	w.fire <- ft.now()
	got := s.waitFor(t, func(last Snapshot, _ int) bool { return len(last.Instances) == 3 })
	if len(got) != pushes+1 {
		t.Fatalf("%d pushes for two changes in one window, want one", len(got)-pushes)
	}

	// Long after: at once again.
	ft.advance(time.Second)
	r.Ephemeral().Register("c1", "n1", key, []naming.Instance{inst("10.0.0.4", 80, true)})
	s.waitFor(t, func(last Snapshot, _ int) bool { return len(last.Instances) == 4 })
	noWait("a change after a quiet second")
}

// startFakeTimed runs a registry on a virtual clock; noWait fails the test
// if the pusher has asked the clock to wait.
func startFakeTimed(t *testing.T, cfg Config) (*Registry, *fakeTimer, func(string)) {
	t.Helper()
	r, err := New(cfg, ephemeral.NewStore(nil), newMem())
	if err != nil {
		t.Fatal(err)
	}
	ft := &fakeTimer{t: time.Unix(1000, 0), waits: make(chan fakeWait, 4)}
	r.now, r.after = ft.now, ft.after
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	noWait := func(what string) {
		t.Helper()
		select {
		case w := <-ft.waits:
			t.Fatalf("%s waited %v", what, w.d)
		default:
		}
	}
	return r, ft, noWait
}

// Up to MergeBurst quick changes of one service go out at once, each in
// its own push (a rolling restart: the old instance gone, the new one
// up); the next waits until the pace allows it, and the long-run rate
// stays one push per window.
func TestQuickChangesWithinTheBurstArePushedAtOnce(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MergeWindow, cfg.MergeBurst = 30*time.Millisecond, 2
	r, ft, noWait := startFakeTimed(t, cfg)
	s := &sink{}
	if err := r.Subscribe(key, naming.Filter{}, s); err != nil {
		t.Fatal(err)
	}
	r.Ephemeral().Register("c1", "n1", key, []naming.Instance{inst("10.0.0.1", 80, true)})
	s.waitFor(t, func(last Snapshot, _ int) bool { return len(last.Instances) == 1 })
	noWait("the first change")
	ft.advance(5 * time.Millisecond)
	gone := inst("10.0.0.1", 80, true)
	r.Ephemeral().Deregister("c1", key, []naming.InstanceID{gone.ID()})
	s.waitFor(t, func(last Snapshot, _ int) bool { return len(last.Instances) == 0 })
	noWait("the second change, 5 ms later, inside the burst")

	// The third, 5 ms after that: two pushes in 5 ms used the burst of
	// two; the pace allows the next 30 ms after the first, 20 ms on.
	ft.advance(5 * time.Millisecond)
	pushes := len(s.all())
	r.Ephemeral().Register("c1", "n1", key, []naming.Instance{inst("10.0.0.2", 80, true)})
	w := ft.awaitWait(t)
	if w.d != 20*time.Millisecond {
		t.Fatalf("waited %v, want 20 ms", w.d)
	}
	if got := len(s.all()); got != pushes {
		t.Fatalf("%d pushes beyond the burst before the pace allowed one", got-pushes)
	}
	ft.advance(20 * time.Millisecond)
	w.fire <- ft.now()
	s.waitFor(t, func(last Snapshot, _ int) bool { return len(last.Instances) == 1 && last.Instances[0].IP == "10.0.0.2" })
}
