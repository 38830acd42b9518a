package persistent

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/storage"
)

// slowDisk is a log store whose StoreLogs can be held, as a disk slow to
// sync: while held, each call blocks inside the store until step lets it
// through or release lets every call through. It records every StoreLogs
// call's indexes and can fail them.
type slowDisk struct {
	raft.LogStore
	gate chan struct{} // step's tokens, one per held call

	mu      sync.Mutex
	held    chan struct{} // non-nil while held: closed by release
	calls   [][]uint64
	entered chan struct{} // gets a token when a StoreLogs call starts
	fail    error
	drop    bool // a held call returns without storing (power cut)
}

func newSlowDisk() *slowDisk {
	return &slowDisk{LogStore: raft.NewInmemStore(), gate: make(chan struct{}), entered: make(chan struct{}, 64)}
}

// step lets one held StoreLogs call through, waiting for one to come.
func (d *slowDisk) step(t *testing.T) {
	t.Helper()
	select {
	case d.gate <- struct{}{}:
	case <-time.After(10 * time.Second):
		t.Fatal("no held StoreLogs call to let through")
	}
}

func (d *slowDisk) hold() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.held == nil {
		d.held = make(chan struct{})
	}
}

func (d *slowDisk) release() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.held != nil {
		close(d.held)
		d.held = nil
	}
}

// errPowerCut is what a cut disk's writes return.
var errPowerCut = errors.New("test disk: power cut")

// cut fails held calls without storing their entries, and every call
// after: the disk lost power.
func (d *slowDisk) cut() {
	d.mu.Lock()
	d.drop = true
	d.mu.Unlock()
	d.release()
}

func (d *slowDisk) StoreLogs(logs []*raft.Log) error {
	d.mu.Lock()
	held, fail := d.held, d.fail
	idx := make([]uint64, len(logs))
	for i, l := range logs {
		idx[i] = l.Index
	}
	d.calls = append(d.calls, idx)
	d.mu.Unlock()
	select {
	case d.entered <- struct{}{}:
	default:
	}
	if held != nil {
		select {
		case <-d.gate:
		case <-held:
		}
	}
	d.mu.Lock()
	drop := d.drop
	d.mu.Unlock()
	if fail != nil {
		return fail
	}
	if drop {
		return errPowerCut
	}
	return d.LogStore.StoreLogs(logs)
}

func (d *slowDisk) StoreLog(l *raft.Log) error { return d.StoreLogs([]*raft.Log{l}) }

func (d *slowDisk) storeCalls() [][]uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.calls)
}

func (d *slowDisk) awaitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-d.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no StoreLogs call reached the store")
	}
}

// heldLeaderLog returns a leader's log over a slow disk that holds every
// write until stepped or released.
func heldLeaderLog(t *testing.T) (*slowDisk, *atomic.Bool, *leaderLog) {
	t.Helper()
	d := newSlowDisk()
	leader := new(atomic.Bool)
	leader.Store(true)
	l := newTestLeaderLog(t, d, leader, nil)
	d.hold()
	return d, leader, l
}

// wantCalls checks the indexes of every StoreLogs call the disk got.
func (d *slowDisk) wantCalls(t *testing.T, want [][]uint64) {
	t.Helper()
	if got := d.storeCalls(); !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("store calls %v, want %v", got, want)
	}
}

func cmds(from, to uint64) []*raft.Log {
	var out []*raft.Log
	for i := from; i <= to; i++ {
		out = append(out, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: []byte{byte(i)}})
	}
	return out
}

func newTestLeaderLog(t *testing.T, d raft.LogStore, leader *atomic.Bool, onFail func(error)) *leaderLog {
	t.Helper()
	if onFail == nil {
		onFail = func(err error) { t.Errorf("unexpected log failure: %v", err) }
	}
	l, err := newLeaderLog(d, onFail)
	if err != nil {
		t.Fatal(err)
	}
	l.setLeader(leader.Load)
	t.Cleanup(func() {
		if sd, ok := d.(*slowDisk); ok {
			sd.release()
		}
		_ = l.Close()
	})
	return l
}

// done runs f in a goroutine and returns a channel that gets its error.
func done(f func() error) chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

func await[T any](t *testing.T, ch chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not done after 10 s", what)
	}
	var zero T
	return zero
}

func notYet[T any](t *testing.T, ch chan T, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("%s happened early", what)
	default:
	}
}

// On the leader, StoreLogs returns while the disk still writes: raft can
// replicate at once. The entries are readable meanwhile, and durable only
// once the store has them.
func TestLeaderLogReturnsBeforeTheLeadersDiskHasTheEntries(t *testing.T) {
	d, _, l := heldLeaderLog(t)
	if err := l.StoreLogs(cmds(1, 3)); err != nil {
		t.Fatal(err)
	}
	d.awaitEntered(t) // the writer is inside the held store
	var got raft.Log
	if err := l.GetLog(2, &got); err != nil || got.Index != 2 || got.Data[0] != 2 {
		t.Fatalf("GetLog(2) of a queued entry: %+v, %v", got, err)
	}
	if last, err := l.LastIndex(); err != nil || last != 3 {
		t.Fatalf("LastIndex = %d, %v; want 3", last, err)
	}
	if got := l.Durable(); got != 0 {
		t.Fatalf("Durable = %d while the disk holds the write, want 0", got)
	}
	wait := done(func() error { return l.WaitDurable(3) })
	notYet(t, wait, "WaitDurable(3) before the disk wrote")
	d.release()
	if err := await(t, wait, "WaitDurable(3)"); err != nil {
		t.Fatal(err)
	}
	if got := l.Durable(); got != 3 {
		t.Fatalf("Durable = %d, want 3", got)
	}
	var stored raft.Log
	if err := d.LogStore.GetLog(3, &stored); err != nil {
		t.Fatalf("the store lacks entry 3: %v", err)
	}
}

// What the leader appends while the disk is busy goes to it as one write.
func TestLeaderLogWritesTheQueueAsOneCommit(t *testing.T) {
	d, _, l := heldLeaderLog(t)
	for _, r := range [][2]uint64{{1, 1}, {2, 3}, {4, 4}, {5, 7}} {
		if err := l.StoreLogs(cmds(r[0], r[1])); err != nil {
			t.Fatal(err)
		}
		if r[0] == 1 {
			d.awaitEntered(t)
		}
	}
	d.release()
	if err := l.WaitDurable(7); err != nil {
		t.Fatal(err)
	}
	d.wantCalls(t, [][]uint64{{1}, {2, 3, 4, 5, 6, 7}})
	if c, e := l.QueueWrites(); c != 2 || e != 7 {
		t.Fatalf("QueueWrites = %d commits, %d entries; want 2, 7", c, e)
	}
}

// A follower's answer counts for the quorum: its StoreLogs returns only
// once the disk has the entries, and after whatever it queued as leader.
func TestLeaderLogFollowerAppendsAreOnDiskWhenStoreLogsReturns(t *testing.T) {
	d, leader, l := heldLeaderLog(t)
	if err := l.StoreLogs(cmds(1, 2)); err != nil {
		t.Fatal(err)
	}
	d.awaitEntered(t)
	leader.Store(false) // stepped down with entries 1-2 queued
	store := done(func() error { return l.StoreLogs(cmds(3, 4)) })
	notYet(t, store, "a follower's StoreLogs while the disk holds the queue")
	d.release()
	if err := await(t, store, "follower StoreLogs"); err != nil {
		t.Fatal(err)
	}
	if got := l.Durable(); got != 4 {
		t.Fatalf("Durable = %d after the follower's StoreLogs, want 4", got)
	}
	d.wantCalls(t, [][]uint64{{1, 2}, {3, 4}})
}

// Entries other than commands (a configuration change, say) are on disk
// before StoreLogs returns, even on the leader, after the queue.
func TestLeaderLogStoresNonCommandEntriesSynchronously(t *testing.T) {
	d, _, l := heldLeaderLog(t)
	if err := l.StoreLogs(cmds(1, 1)); err != nil {
		t.Fatal(err)
	}
	d.awaitEntered(t)
	conf := []*raft.Log{{Index: 2, Term: 1, Type: raft.LogConfiguration}}
	store := done(func() error { return l.StoreLogs(conf) })
	notYet(t, store, "StoreLogs of a configuration entry while the disk is held")
	d.release()
	if err := await(t, store, "StoreLogs of a configuration entry"); err != nil {
		t.Fatal(err)
	}
	if got := l.Durable(); got != 2 {
		t.Fatalf("Durable = %d, want 2", got)
	}
	d.wantCalls(t, [][]uint64{{1}, {2}})
}

// DeleteRange and FirstIndex work on the store once the queue is in it;
// a removed tail is no longer durable, and entries stored after it are.
func TestLeaderLogDeleteRangeAfterTheQueue(t *testing.T) {
	d, leader, l := heldLeaderLog(t)
	if err := l.StoreLogs(cmds(1, 5)); err != nil {
		t.Fatal(err)
	}
	d.awaitEntered(t)
	leader.Store(false)
	del := done(func() error { return l.DeleteRange(4, 5) }) // a follower's conflicting tail
	notYet(t, del, "DeleteRange while the queue is held")
	d.release()
	if err := await(t, del, "DeleteRange"); err != nil {
		t.Fatal(err)
	}
	if got := l.Durable(); got != 3 {
		t.Fatalf("Durable = %d after the tail 4-5 went, want 3", got)
	}
	if last, _ := l.LastIndex(); last != 3 {
		t.Fatalf("LastIndex = %d, want 3", last)
	}
	if err := l.StoreLogs(cmds(4, 4)); err != nil {
		t.Fatal(err)
	}
	if got := l.Durable(); got != 4 {
		t.Fatalf("Durable = %d, want 4", got)
	}
	if err := l.DeleteRange(1, 2); err != nil { // compaction of the head
		t.Fatal(err)
	}
	if got := l.Durable(); got != 4 {
		t.Fatalf("Durable = %d after compacting 1-2, want 4", got)
	}
	if first, err := l.FirstIndex(); err != nil || first != 3 {
		t.Fatalf("FirstIndex = %d, %v; want 3", first, err)
	}
}

// A compaction waits for what was queued when it began, not for a leader
// that keeps appending.
func TestLeaderLogFlushWaitsOnlyForWhatWasQueued(t *testing.T) {
	d := newSlowDisk()
	var leader atomic.Bool
	leader.Store(true)
	l := newTestLeaderLog(t, d, &leader, nil)
	targets := make(chan uint64, 1)
	l.flushFrom = func(target uint64) { targets <- target }
	d.hold()
	if err := l.StoreLogs(cmds(1, 2)); err != nil {
		t.Fatal(err)
	}
	d.awaitEntered(t) // 1-2 being written
	if err := l.StoreLogs(cmds(3, 3)); err != nil {
		t.Fatal(err)
	}
	first := done(func() error { _, err := l.FirstIndex(); return err })
	if got := await(t, targets, "the flush's start"); got != 3 {
		t.Fatalf("flush target %d, want 3", got)
	}
	d.step(t)         // 1-2 written
	d.awaitEntered(t) // 3 being written, held
	if err := l.StoreLogs(cmds(4, 4)); err != nil {
		t.Fatal(err)
	}
	notYet(t, first, "FirstIndex before entry 3 was written")
	d.step(t) // 3 written; 4 is held next, and FirstIndex must not wait for it
	if err := await(t, first, "FirstIndex"); err != nil {
		t.Fatal(err)
	}
	if got := l.Durable(); got != 3 {
		t.Fatalf("Durable = %d, want 3 (4 still held)", got)
	}
}

// A failed write of the queue is reported once, and every later call that
// needs the disk fails with it.
func TestLeaderLogFailedWriteIsSticky(t *testing.T) {
	d := newSlowDisk()
	d.fail = errors.New("disk on fire")
	var leader atomic.Bool
	leader.Store(true)
	failed := make(chan error, 2)
	l := newTestLeaderLog(t, d, &leader, func(err error) { failed <- err })
	if err := l.StoreLogs(cmds(1, 1)); err != nil {
		t.Fatal(err)
	}
	if err := await(t, failed, "onFail"); !errors.Is(err, d.fail) {
		t.Fatalf("onFail got %v", err)
	}
	if err := l.WaitDurable(1); !errors.Is(err, d.fail) {
		t.Fatalf("WaitDurable: %v, want the disk's error", err)
	}
	if err := l.StoreLogs(cmds(2, 2)); !errors.Is(err, d.fail) {
		t.Fatalf("StoreLogs after the failure: %v", err)
	}
	leader.Store(false)
	if err := l.StoreLogs(cmds(2, 2)); !errors.Is(err, d.fail) {
		t.Fatalf("follower StoreLogs after the failure: %v", err)
	}
	if len(failed) != 0 {
		t.Fatal("onFail called twice")
	}
}

// Close writes the queue before it returns.
func TestLeaderLogCloseWritesTheQueue(t *testing.T) {
	d, _, l := heldLeaderLog(t)
	if err := l.StoreLogs(cmds(1, 2)); err != nil {
		t.Fatal(err)
	}
	d.awaitEntered(t)
	if err := l.StoreLogs(cmds(3, 3)); err != nil {
		t.Fatal(err)
	}
	closed := done(l.Close)
	notYet(t, closed, "Close while the queue is held")
	d.release()
	if err := await(t, closed, "Close"); err != nil {
		t.Fatal(err)
	}
	if last, _ := d.LogStore.LastIndex(); last != 3 {
		t.Fatalf("the store's last index after Close = %d, want 3", last)
	}
	if err := l.StoreLogs(cmds(4, 4)); !errors.Is(err, errLogClosed) {
		t.Fatalf("StoreLogs after Close: %v", err)
	}
}

// recordingTransport records the AppendEntries requests it is given.
type recordingTransport struct {
	transport
	mu   sync.Mutex
	sent []raft.AppendEntriesRequest
}

func (r *recordingTransport) AppendEntries(_ raft.ServerID, _ raft.ServerAddress, args *raft.AppendEntriesRequest, _ *raft.AppendEntriesResponse) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent = append(r.sent, *args)
	return nil
}

// Followers are told a commit index no higher than the leader's durable
// index, and raft's own request is left as it was.
func TestRaftTransportCutsTheCommitIndexToTheDurableIndex(t *testing.T) {
	rec := &recordingTransport{}
	var durable atomic.Uint64
	durable.Store(7)
	tr := raftTransport{transport: rec, commitBound: durable.Load}
	args := &raft.AppendEntriesRequest{LeaderCommitIndex: 9, Entries: []*raft.Log{{Index: 10}}}
	if err := tr.AppendEntries("n2", "n2", args, &raft.AppendEntriesResponse{}); err != nil {
		t.Fatal(err)
	}
	durable.Store(12)
	if err := tr.AppendEntries("n2", "n2", args, &raft.AppendEntriesResponse{}); err != nil {
		t.Fatal(err)
	}
	if args.LeaderCommitIndex != 9 {
		t.Fatalf("raft's request was changed: commit %d", args.LeaderCommitIndex)
	}
	if got := []uint64{rec.sent[0].LeaderCommitIndex, rec.sent[1].LeaderCommitIndex}; !slices.Equal(got, []uint64{7, 9}) {
		t.Fatalf("sent commit indexes %v, want [7 9]", got)
	}
	if len(rec.sent[0].Entries) != 1 {
		t.Fatal("the entries were not sent")
	}
}

// slowDiskCluster starts a 3-node cluster whose nodes' logs sit on slow
// disks; diskOf returns a node's current one (a restart gets a new one).
func slowDiskCluster(t *testing.T, mut func(*RaftConfig)) (*tcluster, func(id string) *slowDisk) {
	t.Helper()
	var mu sync.Mutex
	disks := map[string]*slowDisk{}
	c := newTestCluster(t, 3, func(cfg *RaftConfig) {
		id := cfg.NodeID
		cfg.disk = func(ls raft.LogStore) raft.LogStore {
			d := &slowDisk{LogStore: ls, gate: make(chan struct{}), entered: make(chan struct{}, 64)}
			mu.Lock()
			disks[id] = d
			mu.Unlock()
			return d
		}
		if mut != nil {
			mut(cfg)
		}
	})
	return c, func(id string) *slowDisk {
		mu.Lock()
		defer mu.Unlock()
		return disks[id]
	}
}

// The FSM applies a batch only once the log says its last entry is on
// disk; until then the state does not change.
func TestFSMAppliesABatchOnlyOnceItIsOnDisk(t *testing.T) {
	fsm := NewFSM(storage.OpenTest(t), nil)
	asked := make(chan uint64, 1)
	onDisk := make(chan struct{})
	fsm.setDurableGate(func(index uint64) error {
		asked <- index
		<-onDisk
		return nil
	}, func(err error) { t.Errorf("fatal: %v", err) })
	var batch []*raft.Log
	for i := range 3 {
		data, err := Command{Op: OpRegister, Key: tkey, Instances: []naming.Instance{tinst(i)}}.Encode()
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, &raft.Log{Index: uint64(5 + i), Type: raft.LogCommand, Data: data})
	}
	applied := done(func() error {
		for _, r := range fsm.ApplyBatch(batch) {
			if err := r.(applyResult).Err; err != nil {
				return err
			}
		}
		return nil
	})
	if got := await(t, asked, "the durable gate"); got != 7 {
		t.Fatalf("the gate was asked for %d, want 7 (the batch's last)", got)
	}
	if got := fsm.AppliedIndex(); got != 0 {
		t.Fatalf("applied index %d before the batch was on disk", got)
	}
	var n int
	_ = fsm.db.View(func(tx *storage.Tx) error { ins, err := tx.Instances(tkey); n = len(ins); return err })
	if n != 0 {
		t.Fatalf("%d instances in the state before the batch was on disk", n)
	}
	close(onDisk)
	if err := await(t, applied, "ApplyBatch"); err != nil {
		t.Fatal(err)
	}
	if got := fsm.AppliedIndex(); got != 7 {
		t.Fatalf("applied index %d, want 7", got)
	}
}

// In a cluster, raft takes a write as committed once a follower has it,
// while the leader's disk still writes it; the write is answered, and
// followers apply it, only once the leader's disk has it. Without the FSM's
// gate the answer comes early; without the transport's cut, the followers
// apply early.
func TestWriteIsAnsweredOnlyOnceTheLeadersDiskHasIt(t *testing.T) {
	c, diskOf := slowDiskCluster(t, nil)
	li := c.waitLeader()
	leader := c.node(li).store
	disk := diskOf(c.node(li).id)
	defer disk.release()
	idx := leader.Raft().LastIndex() + 1
	disk.hold()
	answered := done(func() error {
		_, err := leader.Register(context.Background(), tkey, []naming.Instance{tinst(1)})
		return err
	})
	deadline := time.Now().Add(10 * time.Second)
	for leader.Raft().CommitIndex() < idx {
		if time.Now().After(deadline) {
			t.Fatalf("raft did not count entry %d committed (commit index %d)", idx, leader.Raft().CommitIndex())
		}
		time.Sleep(time.Millisecond)
	}
	// Twenty commit timeouts: raft tells followers its commit index on
	// each AppendEntries round, one at least every CommitTimeout.
	time.Sleep(20 * c.config(c.node(li)).CommitTimeout)
	notYet(t, answered, "the write's answer while the leader's disk held it")
	for i := range 3 {
		if i == li {
			continue
		}
		f := c.node(i).store
		if got := f.Raft().LastIndex(); got < idx {
			t.Fatalf("%s holds up to %d, want %d: raft committed without it?", c.node(i).id, got, idx)
		}
		if got := f.FSM().AppliedIndex(); got >= idx {
			t.Fatalf("%s applied entry %d while the leader's disk held it", c.node(i).id, got)
		}
	}
	if got := leader.FSM().AppliedIndex(); got >= idx {
		t.Fatalf("the leader applied entry %d before its disk had it", got)
	}
	disk.release()
	if err := await(t, answered, "the write's answer"); err != nil {
		t.Fatal(err)
	}
	c.waitApplied(idx)
}

// The case the transport's cut is for: raft counts a write committed on
// the leader and one follower, A, while the leader's own copy is still in
// memory; the leader loses power before its disk has it. The other
// follower, B, never got the write, so B and the restarted leader, a
// majority without it, elect a leader and go on without it. The write was
// never answered, and A never applied it, so when A rejoins and its copy
// is overwritten, every node still holds the same state. Without the cut,
// A applies the write (it is told the commit index) and its state keeps an
// entry the cluster's log no longer has.
func TestLeaderPowerCutLosesOnlyAnUnansweredWrite(t *testing.T) {
	var fatals atomic.Int64
	c, diskOf := slowDiskCluster(t, func(cfg *RaftConfig) { cfg.fatal = func(error) { fatals.Add(1) } })
	li := c.waitLeader()
	leader := c.node(li).store
	if _, err := leader.Register(context.Background(), tkey, []naming.Instance{tinst(0)}); err != nil {
		t.Fatal(err)
	}
	c.waitApplied(leader.FSM().AppliedIndex())
	ai, bi := (li+1)%3, (li+2)%3
	a, b := c.node(ai), c.node(bi)
	cutOff := func(ids ...string) {
		c.mu.Lock()
		clear(c.cut)
		for _, id := range ids {
			c.cut[id] = true
		}
		c.mu.Unlock()
		c.rewire()
	}
	cutOff(b.id) // B never gets the write

	disk := diskOf(c.node(li).id)
	idx := leader.Raft().LastIndex() + 1
	disk.hold()
	defer disk.release() // a failure below must not leave raft's shutdown waiting on it
	answered := done(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := leader.Register(ctx, tkey, []naming.Instance{tinst(1)})
		return err
	})
	deadline := time.Now().Add(10 * time.Second)
	for leader.Raft().CommitIndex() < idx || a.store.Raft().LastIndex() < idx {
		if time.Now().After(deadline) {
			t.Fatalf("raft did not count entry %d committed on the leader and A", idx)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * c.config(c.node(li)).CommitTimeout) // rounds that would tell A the commit index
	if got := a.store.FSM().AppliedIndex(); got >= idx {
		t.Fatalf("A applied entry %d while only its disk had it", got)
	}

	disk.cut() // the leader's power goes: its held write never lands
	if err := await(t, answered, "the write's answer"); err == nil {
		t.Fatal("the write was answered though only one disk of three holds it")
	}
	c.crash(li)
	if fatals.Load() == 0 {
		t.Fatal("the failed log write was not reported")
	}
	cutOff(a.id) // the old leader comes back beside B, without the write
	c.start(li)
	nl := c.node(c.waitLeader()).store
	if _, err := nl.Register(context.Background(), tkey, []naming.Instance{tinst(2)}); err != nil {
		t.Fatal(err)
	}
	if got := a.store.FSM().AppliedIndex(); got >= idx {
		t.Fatalf("A applied entry %d while cut off", got)
	}
	cutOff()
	c.waitApplied(nl.Raft().LastIndex())
	for i := range 3 {
		nd := c.node(i)
		var ips []string
		err := nd.store.FSM().db.View(func(tx *storage.Tx) error {
			ins, err := tx.Instances(tkey)
			for _, in := range ins {
				ips = append(ips, in.IP)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(ips)
		if want := []string{tinst(0).IP, tinst(2).IP}; !slices.Equal(ips, want) {
			t.Errorf("%s holds %v, want %v (the lost write's %s nowhere)", nd.id, ips, want, tinst(1).IP)
		}
	}
}
