package persistent

// Linearizability of the Raft store under faults, checked with porcupine:
// concurrent clients register, deregister and linearizably read instances
// of one service on random nodes while the leader is crashed, restarted and
// cut off. Each instance is an independent register (present or absent), so
// the model is partitioned by instance.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/regent-registry/regent/internal/linearize"

	"github.com/regent-registry/regent/internal/naming"
)

// The shared model of persistent instances (internal/linearize), under the
// names this test uses.
type (
	linKind  = linearize.Kind
	linInput = linearize.Input
)

const (
	linRegister   = linearize.Register
	linDeregister = linearize.Deregister
	linRead       = linearize.Read
)

var instanceModel = linearize.SetModel

// linOp builds an operation; a write that failed is ambiguous: it may take
// effect at any time after its call, so it never returns.
func linOp(client int, in linInput, call, ret int64, out any, failed bool) porcupine.Operation {
	if failed {
		ret, out = math.MaxInt64, nil
	}
	return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
}

func checkLinearizable(t *testing.T, history []porcupine.Operation, seed uint64) {
	t.Helper()
	res, info := porcupine.CheckOperationsVerbose(instanceModel, history, 60*time.Second)
	if res == porcupine.Ok {
		return
	}
	// Kept after the test (t.TempDir would be removed with it).
	dir, err := os.MkdirTemp("", "regent-linearizability-")
	path := filepath.Join(dir, "history.html")
	if err == nil {
		err = porcupine.VisualizePath(instanceModel, info, path)
	}
	if err != nil {
		path = "(not written: " + err.Error() + ")"
	}
	t.Fatalf("history of %d operations (seed %d) is %s, not Ok; visualization: %s\n%s", len(history), seed, res, path, formatHistory(history))
}

func formatHistory(history []porcupine.Operation) string {
	h := slices.Clone(history)
	slices.SortFunc(h, func(a, b porcupine.Operation) int { return int(min(max(a.Call-b.Call, -1), 1)) })
	var b strings.Builder
	for _, op := range h {
		ret := "inf"
		if op.Return != math.MaxInt64 {
			ret = strconv.FormatInt(op.Return/1000, 10)
		}
		fmt.Fprintf(&b, "  client %d [%d µs, %s µs] %s\n", op.ClientId, op.Call/1000, ret, instanceModel.DescribeOperation(op.Input, op.Output))
	}
	return b.String()
}

// The model and checker are not vacuous: hand-made histories that break
// linearizability are found Illegal, and legal ones (ambiguous writes
// included) Ok.
func TestLinearizabilityModelDetectsViolations(t *testing.T) {
	reg := func(c, k int, call, ret int64) porcupine.Operation {
		return linOp(c, linInput{Kind: linRegister, Key: k}, call, ret, struct{}{}, false)
	}
	dereg := func(c, k int, call, ret int64) porcupine.Operation {
		return linOp(c, linInput{Kind: linDeregister, Key: k}, call, ret, struct{}{}, false)
	}
	failedReg := func(c, k int, call int64) porcupine.Operation {
		return linOp(c, linInput{Kind: linRegister, Key: k}, call, 0, nil, true)
	}
	read := func(c, k int, call, ret int64, present bool) porcupine.Operation {
		return linOp(c, linInput{Kind: linRead, Key: k}, call, ret, present, false)
	}
	cases := []struct {
		name    string
		history []porcupine.Operation
		want    porcupine.CheckResult
	}{
		{"read after an acknowledged register sees it", []porcupine.Operation{
			reg(0, 0, 0, 10), read(1, 0, 20, 30, true)}, porcupine.Ok},
		{"read after an acknowledged register misses it", []porcupine.Operation{
			reg(0, 0, 0, 10), read(1, 0, 20, 30, false)}, porcupine.Illegal},
		{"stale read after an acknowledged deregister", []porcupine.Operation{
			reg(0, 0, 0, 10), dereg(1, 0, 20, 30), read(2, 0, 40, 50, true)}, porcupine.Illegal},
		{"concurrent register: either answer", []porcupine.Operation{
			reg(0, 0, 0, 100), read(1, 0, 10, 20, false), read(2, 0, 30, 40, true)}, porcupine.Ok},
		{"a read goes back in time", []porcupine.Operation{
			reg(0, 0, 0, 100), read(1, 0, 10, 20, true), read(2, 0, 30, 40, false)}, porcupine.Illegal},
		{"a failed register may apply late", []porcupine.Operation{
			failedReg(0, 0, 0), read(1, 0, 20, 30, false), read(1, 0, 40, 50, true)}, porcupine.Ok},
		{"a failed register applies once, not twice", []porcupine.Operation{
			failedReg(0, 0, 0), read(1, 0, 20, 30, true), dereg(2, 0, 40, 50), read(1, 0, 60, 70, true)}, porcupine.Illegal},
		{"instances are independent", []porcupine.Operation{
			reg(0, 0, 0, 10), read(1, 1, 20, 30, false), read(1, 0, 20, 30, true)}, porcupine.Ok},
		{"a violation on one instance among others", []porcupine.Operation{
			reg(0, 1, 0, 10), reg(0, 0, 20, 30), read(1, 1, 40, 50, true), read(1, 0, 40, 50, false)}, porcupine.Illegal},
	}
	for _, tc := range cases {
		if got := porcupine.CheckOperationsTimeout(instanceModel, tc.history, 10*time.Second); got != tc.want {
			t.Errorf("%s: %s, want %s\n%s", tc.name, got, tc.want, formatHistory(tc.history))
		}
	}
}

// liveStores returns the stores of the nodes that are up.
func (c *tcluster) liveStores() []*Store {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Store
	for i, nd := range c.nodes {
		if c.up[i] {
			out = append(out, nd.store)
		}
	}
	return out
}

func linSeed(t *testing.T) uint64 {
	seed := uint64(20260611)
	if s := os.Getenv("REGENT_LIN_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("REGENT_LIN_SEED: %v", err)
		}
		seed = v
	}
	return seed
}

// Concurrent clients on random nodes, the leader crashed and restarted and
// cut off and healed meanwhile: the history of acknowledged writes, failed
// (ambiguous) writes and successful linearizable reads is linearizable.
func TestRaftLinearizableUnderLeaderFaults(t *testing.T) {
	seed := linSeed(t)
	t.Logf("seed %d (set REGENT_LIN_SEED to change it)", seed)
	for _, n := range []int{3, 5} {
		t.Run(fmt.Sprintf("%d nodes", n), func(t *testing.T) { runLinearizability(t, n, seed+uint64(n)) })
	}
}

func runLinearizability(t *testing.T, n int, seed uint64) {
	const (
		clients      = 5
		keys         = 3
		gate         = 60          // operations granted, and completed, between fault steps
		inFault      = 2 * clients // operations granted just before each fault, to be in flight through it
		opTimeout    = 3 * time.Second
		applyTimeout = time.Second
	)
	c := newTestCluster(t, n, func(cfg *RaftConfig) { cfg.ApplyTimeout = applyTimeout })

	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) } // monotonic
	var (
		mu        sync.Mutex
		history   []porcupine.Operation
		completed atomic.Int64
		stats     struct{ okWrites, failedWrites, okReads, failedReads, sawPresent, sawAbsent int }
	)
	// Clients start operations only against a budget that the fault steps
	// grant, which bounds the history. A fixed number of operations per
	// client ran out while a step still waited for progress, when clients
	// were fast and a failover slow.
	var started, allowed atomic.Int64
	allowed.Store(gate)
	take := func() bool {
		if started.Add(1) <= allowed.Load() {
			return true
		}
		started.Add(-1)
		return false
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for cl := range clients {
		r := rand.New(rand.NewPCG(seed, uint64(cl)+1))
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if !take() {
					time.Sleep(time.Millisecond)
					continue
				}
				live := c.liveStores() // a quorum is always up
				st := live[r.IntN(len(live))]
				in := linInput{Key: r.IntN(keys)}
				switch p := r.IntN(10); {
				case p < 3:
					in.Kind = linRegister
				case p < 6:
					in.Kind = linDeregister
				default:
					in.Kind = linRead
				}
				ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
				var (
					err   error
					reads []bool
				)
				call := now()
				switch in.Kind {
				case linRegister:
					_, err = st.Register(ctx, tkey, []naming.Instance{tinst(in.Key)})
				case linDeregister:
					_, err = st.Deregister(ctx, tkey, tid(in.Key))
				case linRead:
					if err = st.Barrier(ctx); err == nil {
						var got map[string]bool
						if got, err = listedErr(st, tkey); err == nil {
							for k := range keys {
								reads = append(reads, got[tinst(k).IP])
							}
						}
					}
				}
				ret := now()
				cancel()
				mu.Lock()
				switch {
				case in.Kind != linRead:
					history = append(history, linOp(cl, in, call, ret, struct{}{}, err != nil))
					if err != nil {
						stats.failedWrites++
					} else {
						stats.okWrites++
					}
				case err != nil:
					stats.failedReads++ // a failed read says nothing: dropped
				default:
					stats.okReads++
					// One read lists every instance at once: a read of
					// each, all in the same interval.
					for k, present := range reads {
						history = append(history, linOp(cl, linInput{Kind: linRead, Key: k}, call, ret, present, false))
						if present {
							stats.sawPresent++
						} else {
							stats.sawAbsent++
						}
					}
				}
				mu.Unlock()
				completed.Add(1)
			}
		})
	}

	// Faults, each after the clients made progress: crash the leader and
	// restart it, cut the leader off and heal; on 5 nodes also two crashed
	// at once (a quorum of 3 remains).
	// progress grants gate more operations and waits until that many more
	// have completed (reachable: at most the ones granted before were
	// started, and every started one completes within opTimeout).
	progress := func() {
		t.Helper()
		target := completed.Load() + gate
		allowed.Add(gate)
		deadline := time.Now().Add(30 * time.Second)
		for completed.Load() < target {
			if time.Now().After(deadline) {
				t.Fatalf("clients stalled: %d operations completed, waiting for %d", completed.Load(), target)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	crashLeader := func() int {
		t.Helper()
		l := c.waitLeader()
		t.Logf("crash leader %s", c.node(l).id)
		allowed.Add(inFault)
		c.crash(l)
		if next := c.waitLeader(); next == l {
			t.Fatalf("the crashed node %s still leads", c.node(l).id)
		}
		return l
	}
	steps := []func(){
		func() { l := crashLeader(); progress(); c.start(l) },
		func() {
			l := c.waitLeader()
			t.Logf("cut off leader %s", c.node(l).id)
			allowed.Add(inFault)
			c.isolate(l)
			c.waitLeader()
			progress()
			c.heal()
		},
		func() { l := crashLeader(); progress(); c.start(l) },
	}
	if n >= 5 {
		steps = append(steps, func() {
			a := crashLeader()
			progress()
			b := crashLeader()
			progress()
			c.start(a)
			c.start(b)
		})
	}
	for _, step := range steps {
		progress()
		step()
	}
	progress()
	close(stop)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d nodes: %d operations in the history; writes %d ok, %d failed; reads %d ok (present %d, absent %d), %d failed (dropped)",
		n, len(history), stats.okWrites, stats.failedWrites, stats.okReads, stats.sawPresent, stats.sawAbsent, stats.failedReads)
	// A history without writes or reads, or whose reads only ever saw one
	// value, would check little.
	if stats.okWrites == 0 || stats.okReads == 0 || stats.sawPresent == 0 || stats.sawAbsent == 0 {
		t.Fatalf("the history checks too little: %+v", stats)
	}
	checkLinearizable(t, history, seed)
}

// listedErr is listed without failing the test (the store may be closing).
func listedErr(s *Store, key naming.ServiceKey) (map[string]bool, error) {
	ps, err := s.Service(key)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, in := range ps.Instances {
		out[in.IP] = true
	}
	return out, nil
}

// A follower may apply a committed write before the leader's own FSM does
// (the leader applies asynchronously, like every node). A linearizable read
// on that follower then sees the write, so every later linearizable read
// must see it too, on the leader included. The leader's FSM is held back
// here (its observer blocks) so the window stays open.
func TestRaftReadAfterReadSeesWhatTheFirstSaw(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	ctx := ctxT(t)
	li := c.waitLeader()
	leader, follower := c.node(li).store, c.node((li+1)%3).store
	if _, err := leader.Register(ctx, tkey, []naming.Instance{tinst(0)}); err != nil {
		t.Fatal(err)
	}
	// A read in this term first: the leader's once-per-term barrier is
	// committed now, not while its FSM is held back.
	if err := follower.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the cluster stops (cleanups run last first)
	held := make(chan struct{}, 1)
	leader.SetObserver(func([]naming.ServiceKey) {
		select {
		case held <- struct{}{}:
		default:
		}
		<-release
	})
	writes := make(chan error, 2)
	go func() { _, err := leader.Register(ctx, tkey, []naming.Instance{tinst(1)}); writes <- err }()
	select {
	case <-held: // the leader applied i1; its FSM is now stuck
	case <-time.After(10 * time.Second):
		t.Fatal("the leader's FSM never applied the first write")
	}
	go func() { _, err := leader.Register(ctx, tkey, []naming.Instance{tinst(2)}); writes <- err }()
	eventually(t, 10*time.Second, "the follower applies the second write", func() bool {
		got, err := listedErr(follower, tkey)
		return err == nil && got[tinst(2).IP]
	})
	if listed(t, leader, tkey)[tinst(2).IP] {
		t.Fatal("the leader applied the second write although its FSM is held")
	}
	// First read, on the follower: it sees i2.
	if err := follower.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	if !listed(t, follower, tkey)[tinst(2).IP] {
		t.Fatal("a linearizable read on the follower misses a write the follower applied")
	}
	// Second read, on the leader, strictly after the first returned: it
	// must see i2 as well, so it has to wait for the leader's FSM.
	type readResult struct {
		seen bool
		err  error
	}
	second := make(chan readResult, 1)
	go func() {
		if err := leader.Barrier(ctx); err != nil {
			second <- readResult{err: err}
			return
		}
		got, err := listedErr(leader, tkey)
		second <- readResult{seen: got[tinst(2).IP], err: err}
	}()
	waiting := func() bool {
		leader.fsm.waitMu.Lock()
		defer leader.fsm.waitMu.Unlock()
		return len(leader.fsm.waiters) > 0
	}
	deadline := time.After(10 * time.Second)
	for !waiting() {
		select {
		case r := <-second:
			t.Fatalf("the read on the leader returned (seen %v, err %v) while its FSM lacks a write an earlier read saw: a stale read", r.seen, r.err)
		case <-deadline:
			t.Fatal("the read on the leader neither returned nor waited for its FSM")
		case <-time.After(time.Millisecond):
		}
	}
	unblock()
	r := <-second
	if r.err != nil || !r.seen {
		t.Fatalf("the read on the leader after its FSM caught up: seen %v, err %v", r.seen, r.err)
	}
	for range 2 {
		if err := <-writes; err != nil {
			t.Fatal(err)
		}
	}
}

// eventually waits for cond, failing the test after timeout.
func eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting until %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Writes and linearizable reads waiting on a store that closes while its
// FSM is stuck return ErrUnavailable (raft may never answer the futures it
// holds when it shuts down): reads at once, writes by their deadline (raft
// may yet answer them; see the next test).
func TestRaftCloseReleasesWaitingOperations(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *RaftConfig) { cfg.ApplyTimeout = 500 * time.Millisecond })
	ctx := ctxT(t)
	li := c.waitLeader()
	leader := c.node(li).store
	if _, err := leader.Register(ctx, tkey, []naming.Instance{tinst(0)}); err != nil {
		t.Fatal(err)
	}
	if err := leader.Barrier(ctx); err != nil { // this term's barrier, now
		t.Fatal(err)
	}
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	held := make(chan struct{}, 1)
	leader.SetObserver(func([]naming.ServiceKey) {
		select {
		case held <- struct{}{}:
		default:
		}
		<-release
	})
	results := make(chan error, 3)
	go func() { _, err := leader.Register(ctx, tkey, []naming.Instance{tinst(1)}); results <- err }()
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the leader's FSM never applied the first write")
	}
	// Committed by the quorum, never applied by the held FSM.
	go func() { _, err := leader.Register(ctx, tkey, []naming.Instance{tinst(2)}); results <- err }()
	follower := c.node((li + 1) % 3).store
	eventually(t, 10*time.Second, "the follower applies the second write", func() bool {
		got, err := listedErr(follower, tkey)
		return err == nil && got[tinst(2).IP]
	})
	go func() { results <- leader.Barrier(ctx) }() // must wait for the held FSM
	eventually(t, 10*time.Second, "the read waits for the leader's FSM", func() bool {
		leader.fsm.waitMu.Lock()
		defer leader.fsm.waitMu.Unlock()
		return len(leader.fsm.waiters) > 0
	})
	closed := make(chan struct{})
	go func() { defer close(closed); _ = leader.Close() }() // its raft waits for the FSM
	for range 3 {
		select {
		case err := <-results:
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("an operation waiting on the closing store: %v, want ErrUnavailable", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("an operation still waits on the closed store")
		}
	}
	unblock()
	<-closed
	c.crash(li) // the harness's bookkeeping; Close is idempotent
}

// A write forwarded to a leader that closes after committing it, but before
// applying it, is not answered early with an ambiguous failure that the
// forwarding follower would retry on the next leader: the write would be
// applied twice, the second time after a deregister that followed the first
// (a register seen, then gone, then back, with one register acknowledged).
func TestRaftForwardedWriteNotAppliedTwiceWhenTheLeaderCloses(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *RaftConfig) { cfg.ApplyTimeout = 500 * time.Millisecond })
	ctx := ctxT(t)
	li := c.waitLeader()
	leader := c.node(li).store
	f1, f2 := c.node((li+1)%3).store, c.node((li+2)%3).store
	if err := f2.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	held := make(chan struct{}, 1)
	leader.SetObserver(func([]naming.ServiceKey) {
		select {
		case held <- struct{}{}:
		default:
		}
		<-release
	})
	go func() { _, _ = leader.Register(ctx, tkey, []naming.Instance{tinst(0)}) }()
	select {
	case <-held: // the leader's FSM is stuck from here on
	case <-time.After(10 * time.Second):
		t.Fatal("the leader's FSM never applied the first write")
	}
	w := make(chan error, 1)
	go func() { _, err := f1.Register(ctx, tkey, []naming.Instance{tinst(1)}); w <- err }() // forwarded
	eventually(t, 10*time.Second, "f2 applies the forwarded register", func() bool {
		got, err := listedErr(f2, tkey)
		return err == nil && got[tinst(1).IP]
	})
	go func() { _, _ = leader.Deregister(ctx, tkey, tid(1)) }()
	eventually(t, 10*time.Second, "f2 applies the deregister after it", func() bool {
		got, err := listedErr(f2, tkey)
		return err == nil && !got[tinst(1).IP]
	})
	go unblock()
	c.crash(li)
	err := <-w
	t.Logf("the forwarded register returned %v", err)
	if err := f2.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	if listed(t, f2, tkey)[tinst(1).IP] {
		t.Fatal("the forwarded register was applied again after the deregister that followed it")
	}
}
