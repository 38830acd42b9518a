package scale

import (
	"math/rand/v2"
	"time"
)

// Nacos 2.x's Distro as nacos.md §1 describes it, as a counting model. It
// does not move data; it counts the requests Nacos would send for the
// schedule's changes, and when.
const (
	NacosSyncDelay      = time.Second            // DistroDelayTask delay, merged per (client, peer)
	NacosTick           = 100 * time.Millisecond // delay-engine scan
	NacosVerifyInterval = 5 * time.Second        // DistroVerifyTimedTask, one request per client per peer
	NacosExpiry         = 180 * time.Second      // a synced client not verified for this long is removed
	NacosCleanerPeriod  = 5 * time.Second        // ExpiredClientCleaner
)

const (
	taskNone = iota
	taskChange
	taskDelete
)

// nacosConn is one Nacos client: a connection id. A session that moves or
// reconnects is a new connection, hence a new client, in Nacos.
type nacosConn struct {
	owner       int16
	alive       bool
	task        uint8
	first       time.Duration // the pending task's first change (merges keep it)
	synced      time.Duration // when its CHANGE reached the peers (-1: never)
	deleted     bool          // its DELETE reached the peers
	ended       time.Duration // when its session ended (-1: alive)
	probe       int           // index into nacosModel.probes, or -1
	reconnected bool          // a reconnect of the failed node's client
}

// queued is a delay task in a node's queue, in order of creation; an entry
// whose connection's task has since been sent (and perhaps a new one made)
// is stale and skipped.
type queued struct {
	conn  int32
	first time.Duration
}

type nacosProbe struct {
	kind    Kind
	at      time.Duration
	waiting int // dispatches still to come (a move needs the DELETE and the CHANGE)
	done    time.Duration
}

type nacosModel struct {
	s       *Schedule
	sizes   NacosSizes
	conns   []nacosConn
	current []int32 // the schedule's client -> its current connection
	queue   [][]queued
	head    []int
	pending []int // pending tasks per node
	native  []int
	alive   []bool
	tick    []time.Duration
	verify  []time.Duration
	mark    []time.Duration // the last verify round: CHANGEs created before it go at the next tick
	marked  []bool
	rounds  [][]time.Duration // verify round times per node
	cleaner []time.Duration   // phase of each node's expired-client cleaner
	probes  []nacosProbe
	counts  [numPhases][]traffic
	peak    int // most queued delay tasks (pending x peers) on one node in the churn window
	phase   int
}

func newNacosModel(s *Schedule) *nacosModel {
	n := s.P.Nodes
	rng := rand.New(rand.NewPCG(s.P.Seed^0x9ac05, s.P.Seed))
	m := &nacosModel{
		s: s, sizes: NewNacosSizes(), current: make([]int32, len(s.IDs)),
		queue: make([][]queued, n), head: make([]int, n), pending: make([]int, n), native: make([]int, n),
		alive: make([]bool, n), tick: make([]time.Duration, n), verify: make([]time.Duration, n),
		mark: make([]time.Duration, n), marked: make([]bool, n), rounds: make([][]time.Duration, n),
		cleaner: make([]time.Duration, n),
	}
	for i := range m.current {
		m.current[i] = -1
	}
	for i := range n {
		m.alive[i] = true
		m.tick[i] = time.Duration(rng.Int64N(int64(NacosTick)))
		m.verify[i] = NacosVerifyInterval // initial delay equal to the interval
		m.cleaner[i] = time.Duration(rng.Int64N(int64(NacosCleanerPeriod)))
	}
	for p := range m.counts {
		m.counts[p] = make([]traffic, n)
	}
	return m
}

func (m *nacosModel) peers() int {
	n := 0
	for _, a := range m.alive {
		if a {
			n++
		}
	}
	return n - 1
}

// send counts k requests of one kind from node i to each live peer, and
// their replies.
func (m *nacosModel) send(i, kind, k, reqSize int) {
	c := m.counts[m.phase]
	for j, a := range m.alive {
		if !a || j == i {
			continue
		}
		c[i].Msgs[kind] += uint64(k)
		c[i].Bytes[kind] += uint64(k * reqSize)
		c[j].Bytes[kind] += uint64(k * m.sizes.Response)
	}
}

func (m *nacosModel) addTask(node int, c int32, action uint8, now time.Duration) {
	cn := &m.conns[c]
	if cn.task != taskNone {
		cn.task = action // merged: the newer action, the first change's deadline
		return
	}
	cn.task, cn.first = action, now
	m.queue[node] = append(m.queue[node], queued{conn: c, first: now})
	m.pending[node]++
}

func (m *nacosModel) newConn(client int32, node int, now time.Duration, probe int) int32 {
	c := int32(len(m.conns))
	m.conns = append(m.conns, nacosConn{owner: int16(node), alive: true, synced: -1, ended: -1, probe: probe})
	m.current[client] = c
	m.native[node]++
	m.addTask(node, c, taskChange, now)
	return c
}

func (m *nacosModel) endConn(c int32, now time.Duration, probe int) {
	cn := &m.conns[c]
	cn.alive, cn.ended = false, now
	m.native[cn.owner]--
	if probe >= 0 {
		cn.probe = probe
	}
	m.addTask(int(cn.owner), c, taskDelete, now)
}

func (m *nacosModel) apply(e *Event, now time.Duration) {
	probe := -1
	if e.Probe {
		waiting := 1
		if e.Kind == Move {
			waiting = 2
		}
		m.probes = append(m.probes, nacosProbe{kind: e.Kind, at: now, waiting: waiting, done: -1})
		probe = len(m.probes) - 1
	}
	switch e.Kind {
	case Register:
		m.newConn(e.Client, int(e.Node), now, probe)
	case Move:
		m.endConn(m.current[e.Client], now, probe)
		m.newConn(e.Client, int(e.Node), now, probe)
	case Disconnect:
		m.endConn(m.current[e.Client], now, probe)
	case Reconnect:
		c := m.newConn(e.Client, int(e.Node), now, -1)
		m.conns[c].reconnected = true
	}
}

// dispatch sends a due task: a CHANGE reads the client at send time (gone:
// skipped), a DELETE sends the key.
func (m *nacosModel) dispatch(node int, c int32, now time.Duration) {
	cn := &m.conns[c]
	task := cn.task
	cn.task = taskNone
	m.pending[node]--
	switch {
	case task == taskChange && cn.alive:
		m.send(node, msgSync, 1, m.sizes.Change)
		cn.synced = now
	case task == taskDelete:
		m.send(node, msgSync, 1, m.sizes.Delete)
		cn.deleted = true
	default:
		return // "with null data to sync, skip"
	}
	if cn.probe >= 0 {
		p := &m.probes[cn.probe]
		p.waiting--
		if p.waiting == 0 {
			p.done = now
		}
		cn.probe = -1
	}
}

// runTick is one scan of node i's delay engine.
func (m *nacosModel) runTick(i int, now time.Duration) {
	if m.marked[i] {
		// A verify round failed for every client whose CHANGE is still
		// queued (the peer lacks it or holds an older revision); the
		// re-sync it asks for merges with that task, due at once.
		m.marked[i] = false
		for _, q := range m.queue[i][m.head[i]:] {
			if cn := &m.conns[q.conn]; cn.task == taskChange && cn.first == q.first && cn.first <= m.mark[i] {
				m.dispatch(i, q.conn, now)
			}
		}
	}
	q := m.queue[i]
	h := m.head[i]
	for h < len(q) {
		cn := &m.conns[q[h].conn]
		if cn.task == taskNone || cn.first != q[h].first {
			h++
			continue
		}
		if now-cn.first < NacosSyncDelay {
			break
		}
		m.dispatch(i, q[h].conn, now)
		h++
	}
	if h == len(q) {
		m.queue[i], h = q[:0], 0
	} else if h > 4096 && h > len(q)/2 {
		m.queue[i], h = append(q[:0], q[h:]...), 0
	}
	m.head[i] = h
}

func (m *nacosModel) runVerify(i int, now time.Duration) {
	m.send(i, msgVerify, m.native[i], m.sizes.Verify)
	m.rounds[i] = append(m.rounds[i], now)
	m.mark[i], m.marked[i] = now, m.pending[i] > 0
}

// NacosFigures are the model's own results beside the counts.
type nacosResult struct {
	counts    [numPhases][]traffic
	conv      [numKinds][]time.Duration
	unfinish  int
	reownedAt time.Duration
	goneAt    time.Duration
	peakTasks int
}

func (m *nacosModel) run() nacosResult {
	s := m.s
	bounds := []time.Duration{s.QuietStart, s.ChurnStart, s.FailAt}
	ei := 0
	failed := false
	peers := m.peers()
	now := time.Duration(0)
	for iter := 0; iter < maxLoopIterations; iter++ {
		for m.phase < phaseRepair && now >= bounds[m.phase] {
			m.phase++
		}
		if !failed && now >= s.FailAt {
			failed = true
			m.alive[s.FailNode] = false
			peers = m.peers()
		}
		for ei < len(s.Events) && s.Events[ei].At <= now {
			m.apply(&s.Events[ei], now)
			ei++
		}
		for i := range m.alive {
			if !m.alive[i] {
				continue
			}
			if m.verify[i] <= now {
				m.runVerify(i, now)
				m.verify[i] += NacosVerifyInterval
			}
			if m.tick[i] <= now {
				m.runTick(i, now)
				m.tick[i] += NacosTick
			}
			if m.phase == phaseChurn {
				m.peak = max(m.peak, m.pending[i]*peers)
			}
		}
		next := s.End
		if ei < len(s.Events) {
			next = min(next, s.Events[ei].At)
		}
		for i := range m.alive {
			if m.alive[i] {
				next = min(next, m.verify[i], m.tick[i])
			}
		}
		if now >= s.End {
			break
		}
		now = max(now, next)
	}
	res := nacosResult{counts: m.counts, peakTasks: m.peak, reownedAt: -1, goneAt: -1}
	for _, p := range m.probes {
		if p.done < 0 || p.at >= s.FailAt {
			res.unfinish++
			continue
		}
		res.conv[p.kind] = append(res.conv[p.kind], p.done-p.at)
	}
	// Re-owned: every reconnected client's new connection synced.
	reowned := time.Duration(0)
	for i := range m.conns {
		cn := &m.conns[i]
		if cn.reconnected {
			if cn.synced < 0 {
				reowned = -1
				break
			}
			reowned = max(reowned, cn.synced-s.FailAt)
		}
	}
	res.reownedAt = reowned
	// Gone: the failed node's connections that the survivors hold (their
	// CHANGE arrived, no DELETE did) are removed by each survivor's
	// cleaner once 180 s have passed since their last renewal: the last
	// verify round of the failed node while they lived, or their arrival.
	last := time.Duration(-1)
	for i := range m.conns {
		cn := &m.conns[i]
		if int(cn.owner) != s.FailNode || cn.synced < 0 || cn.deleted || cn.reconnected {
			continue
		}
		end := s.FailAt
		if cn.ended >= 0 {
			end = min(end, cn.ended)
		}
		renew := cn.synced
		for _, t := range m.rounds[s.FailNode] {
			if t <= end && t > renew {
				renew = t
			}
		}
		last = max(last, renew)
	}
	if last >= 0 {
		gone := time.Duration(0)
		for i := range m.alive {
			if i == s.FailNode {
				continue
			}
			// The first cleaner run strictly more than NacosExpiry after
			// the renewal.
			t := m.cleaner[i]
			if d := last + NacosExpiry - t; d >= 0 {
				t += (d/NacosCleanerPeriod + 1) * NacosCleanerPeriod
			}
			gone = max(gone, t-s.FailAt)
		}
		res.goneAt = gone
	} else {
		res.goneAt = 0
	}
	return res
}
