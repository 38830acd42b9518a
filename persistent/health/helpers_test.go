package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regent-registry/regent/internal/naming"
)

// TestMain fails the run when a goroutine of this package outlives the tests:
// Run and Tick must stop everything they start.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := checkLeaks(5 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// checkLeaks waits up to timeout for every goroutine running code of this
// package (other than TestMain's) to end.
func checkLeaks(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		buf := make([]byte, 1<<20)
		for {
			n := runtime.Stack(buf, true)
			if n < len(buf) {
				buf = buf[:n]
				break
			}
			buf = make([]byte, 2*len(buf))
		}
		var leaked []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "regent/persistent/health.") && !strings.Contains(g, "health.TestMain") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("leaked goroutines:\n%s", strings.Join(leaked, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitFor polls cond until it returns nil, failing the test with its last
// error after timeout.
func waitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testLogger returns a logger writing through t.Log until the test ends.
func testLogger(t testing.TB, level slog.Level) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type tWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

// fakeClock is a Clock that moves only when Advance is called.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []clockWaiter
}

type clockWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, clockWaiter{at: c.now.Add(d), ch: ch})
	return ch
}

// Advance moves the clock by d and fires the waiters that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.waiters = slices.DeleteFunc(c.waiters, func(w clockWaiter) bool {
		if w.at.After(c.now) {
			return false
		}
		w.ch <- c.now
		return true
	})
}

// Waiters returns how many After channels have not fired yet.
func (c *fakeClock) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

var errRefused = errors.New("fake: connection refused")

// fakeProber answers from a table: an address without an entry is healthy.
// hook, when set, replaces the table.
type fakeProber struct {
	mu      sync.Mutex
	results map[string]error
	calls   map[string]int
	checks  []naming.HealthCheck
	hook    func(ctx context.Context, addr string, call int) error
}

func newFakeProber() *fakeProber {
	return &fakeProber{results: make(map[string]error), calls: make(map[string]int)}
}

func (p *fakeProber) Probe(ctx context.Context, check naming.HealthCheck, ip string, port int) error {
	addr := net.JoinHostPort(ip, fmt.Sprint(port))
	p.mu.Lock()
	p.calls[addr]++
	call := p.calls[addr]
	p.checks = append(p.checks, check)
	hook, err := p.hook, p.results[addr]
	p.mu.Unlock()
	if hook != nil {
		return hook(ctx, addr, call)
	}
	return err
}

func (p *fakeProber) set(addr string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.results[addr] = err
}

func (p *fakeProber) setHook(h func(ctx context.Context, addr string, call int) error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hook = h
}

func (p *fakeProber) count(addr string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[addr]
}

func (p *fakeProber) total() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.calls {
		n += c
	}
	return n
}

// memStore is an in-memory Source and Writer: a write updates the stored
// Healthy that the next Service call returns.
type memStore struct {
	mu          sync.Mutex
	services    map[naming.ServiceKey]*memService
	writes      []writeRec // successful writes, in order
	attempts    int        // SetHealthy calls
	failWrites  int        // fail this many more SetHealthy calls
	servicesErr error
	rev         uint64 // the last revision handed out
	noRevisions bool   // Services reports 0 for all (a Source without revisions)
	reads       int    // Service calls
}

type memService struct {
	check     naming.HealthCheck
	instances []naming.Instance
	rev       uint64 // bumped by every change, as storage does
}

type writeRec struct {
	by      string
	key     naming.ServiceKey
	id      naming.InstanceID
	healthy bool
}

func newMemStore() *memStore {
	return &memStore{services: make(map[naming.ServiceKey]*memService)}
}

// put sets a service's check and instances.
func (s *memStore) put(key naming.ServiceKey, check naming.HealthCheck, ins ...naming.Instance) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rev++
	s.services[key.WithDefaults()] = &memService{check: check, instances: slices.Clone(ins), rev: s.rev}
}

func (s *memStore) setCheck(key naming.ServiceKey, check naming.HealthCheck) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rev++
	s.services[key.WithDefaults()].check = check
	s.services[key.WithDefaults()].rev = s.rev
}

func (s *memStore) Services() (map[naming.ServiceKey]uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.servicesErr != nil {
		return nil, s.servicesErr
	}
	revs := make(map[naming.ServiceKey]uint64, len(s.services))
	for k, svc := range s.services {
		revs[k] = svc.rev
		if s.noRevisions {
			revs[k] = 0
		}
	}
	return revs, nil
}

func (s *memStore) Service(key naming.ServiceKey) ([]naming.Instance, naming.HealthCheck, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	svc := s.services[key.WithDefaults()]
	if svc == nil {
		return nil, naming.HealthCheck{}, nil
	}
	ins := make([]naming.Instance, len(svc.instances))
	for i := range svc.instances {
		ins[i] = svc.instances[i].Clone()
	}
	return ins, svc.check, nil
}

func (s *memStore) SetHealthy(ctx context.Context, key naming.ServiceKey, id naming.InstanceID, healthy bool) error {
	return s.writer("").SetHealthy(ctx, key, id, healthy)
}

// writer returns a Writer into s that records by as the writer's name.
func (s *memStore) writer(by string) Writer { return storeWriter{s: s, by: by} }

type storeWriter struct {
	s  *memStore
	by string
}

func (w storeWriter) SetHealthy(ctx context.Context, key naming.ServiceKey, id naming.InstanceID, healthy bool) error {
	s := w.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attempts++
	if s.failWrites > 0 {
		s.failWrites--
		return errors.New("fake: no raft leader")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	svc := s.services[key.WithDefaults()]
	if svc == nil {
		return fmt.Errorf("fake: no service %s", key)
	}
	for i := range svc.instances {
		if svc.instances[i].ID() == id {
			svc.instances[i].Healthy = healthy
			s.rev++
			svc.rev = s.rev
			s.writes = append(s.writes, writeRec{by: w.by, key: key, id: id, healthy: healthy})
			return nil
		}
	}
	return fmt.Errorf("fake: no instance %s in %s", id, key)
}

// stored returns an instance's stored Healthy.
func (s *memStore) stored(key naming.ServiceKey, id naming.InstanceID) (healthy, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	svc := s.services[key.WithDefaults()]
	if svc == nil {
		return false, false
	}
	for _, in := range svc.instances {
		if in.ID() == id {
			return in.Healthy, true
		}
	}
	return false, false
}

func (s *memStore) writeLog() []writeRec {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.writes)
}

func (s *memStore) attemptCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts
}

// memberList is a mutable member list shared by several checkers.
type memberList struct {
	mu    sync.Mutex
	names []string
}

func (m *memberList) get() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.names)
}

func (m *memberList) set(names ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.names = slices.Clone(names)
}

// instance returns an enabled persistent instance.
func instance(ip string, port int, healthy bool) naming.Instance {
	return naming.Instance{IP: ip, Port: port, Cluster: naming.DefaultCluster, Weight: 1, Healthy: healthy, Enabled: true}
}

func addrOf(in naming.Instance) string { return net.JoinHostPort(in.IP, fmt.Sprint(in.Port)) }
