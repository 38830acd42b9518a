package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Scenario is one run: a cluster, a schedule drawn from Seed, a load, and
// the checks.
type Scenario struct {
	Name  string
	Seed  uint64
	Nodes int
	Spec  ScheduleSpec
	Load  LoadConfig
	// Dir holds the binary, the data dirs and the node logs ("": a new
	// temporary folder; the caller removes it).
	Dir string
	// Bin is a prebuilt regent binary ("": built into Dir).
	Bin string
	// Slack is added to every bound (default 10 s: a loaded 2-core machine).
	Slack time.Duration
	// Tail is how long the persistent writers go on after the cluster
	// re-formed, before the final reads (default 3 s).
	Tail time.Duration
	// SeedJoinsItself: see ClusterConfig.
	SeedJoinsItself bool
	// ServerArgs are added to every server's command line (say
	// --raft-log-store=wal).
	ServerArgs []string
	// Mode is "loopback" (default: 127.0.0.x, no partitions), "netns"
	// (network namespaces; fails when they cannot be made) or "auto"
	// (namespaces when they can be made, else loopback; the report says
	// which, and that partitions were not run).
	Mode string
	// Logf receives progress lines (nil: discarded).
	Logf func(format string, args ...any)
}

// ShortScenario is the fixed-seed run `make test` exercises: 3 nodes,
// SIGKILL and restart of the leader, SIGSTOP/SIGCONT of a follower and of
// the leader, SIGTERM and restart of a node drawn from the seed, one more
// node fault drawn from the seed, two SDK clients closed, a `regent
// register` process killed with SIGKILL and a client whose traffic is cut
// silently, all under load.
func ShortScenario(seed uint64) Scenario {
	return Scenario{
		Name:  "short",
		Seed:  seed,
		Nodes: 3,
		Spec: ScheduleSpec{
			Required: []Template{{Kind: FaultKill, Target: TargetLeader}, {Kind: FaultPause, Target: TargetFollower},
				{Kind: FaultPause, Target: TargetLeader}, {Kind: FaultTerm}},
			Random:  1,
			HoldMin: 2 * time.Second, HoldMax: 4 * time.Second,
			GapMin: time.Second, GapMax: 2 * time.Second,
			ClientCloses: 2, ClientKills: 1, ClientCuts: 1,
			ClientFrom: time.Second, ClientTo: 10 * time.Second,
		},
	}
}

// PartitionScenario is the fixed-seed run with network faults: 3 nodes in
// network namespaces ("auto": loopback, reporting the partitions as not
// run, where namespaces cannot be made), the Raft leader isolated, a
// follower isolated, a minority partitioned off (for 3 nodes a node moved
// to the far bridge, where it hears nobody), a bridge node that still
// reaches both sides of a partition (the leader: Raft keeps its quorum
// while the two followers cannot reach each other), the harsher bridge
// whose bridge is a follower while the leader sits on one side (the third
// node, on the other, reaches the leader only through the bridge), SDK
// clients on the
// far side of a partition (attached to a follower cut off from the
// majority), a SIGKILL of the leader, a client closed and a client cut
// silently.
func PartitionScenario(seed uint64) Scenario {
	return Scenario{
		Name:  "partition",
		Seed:  seed,
		Nodes: 3,
		Mode:  "auto",
		Spec: ScheduleSpec{
			Required: []Template{{Kind: FaultIsolate, Target: TargetLeader}, {Kind: FaultIsolate, Target: TargetFollower},
				{Kind: FaultPartition}, {Kind: FaultBridge, Target: TargetLeader}, {Kind: FaultBridgeFollower}, {Kind: FaultFarClients, Target: TargetFollower},
				{Kind: FaultKill, Target: TargetLeader}},
			HoldMin: 2 * time.Second, HoldMax: 5 * time.Second,
			GapMin: time.Second, GapMax: 2 * time.Second,
			ClientCloses: 1, ClientCuts: 1,
			ClientFrom: time.Second, ClientTo: 8 * time.Second,
		},
	}
}

// SoakScenario draws faults random node faults (kind and target from the
// seed, holds of 1-6 s) on nodes servers, with the same client faults as
// the short scenario spread over the run.
func SoakScenario(seed uint64, nodes, faults int) Scenario {
	return Scenario{
		Name:  fmt.Sprintf("soak-%dn", nodes),
		Seed:  seed,
		Nodes: nodes,
		Spec: ScheduleSpec{
			Random:  faults,
			HoldMin: time.Second, HoldMax: 6 * time.Second,
			GapMin: 500 * time.Millisecond, GapMax: 3 * time.Second,
			ClientCloses: 2, ClientKills: 1, ClientCuts: 1,
			ClientFrom: time.Second, ClientTo: time.Duration(max(faults, 2)) * 4 * time.Second,
		},
	}
}

// Bounds of the product's promises, from the issues that built them.
const (
	// LiveBound: a live client's instances are listed on every node
	// within 10 s after the heal (verify every 5 s repairs what a peer
	// missed).
	LiveBound = 10 * time.Second
	// CloseBound: a dead client's instances go at once on a session end
	// (target 1 s); under faults, at the latest when its replicated copies
	// expire (15 s without a verify from the owner).
	CloseBound = 15 * time.Second
	// SilentBound: a client that goes silent is probed after 20 s idle
	// (checked every 3 s) and closed when it does not answer within 1 s.
	SilentBound = 20*time.Second + 3*time.Second + time.Second
)

// FaultEvent is a fault as it ran.
type FaultEvent struct {
	Fault Fault
	// Node (or client) it hit, and the node's Raft role then.
	Node, Role string
	// At it was injected, Undone, and Recovered: the cluster formed again.
	At, Undone, Recovered time.Duration
	// Note says when the fault was diverted from its target.
	Note string
	Err  string
	// Far is what a far-clients fault's clients saw.
	Far *FarResult `json:",omitempty"`
}

// Report is a run's outcome.
type Report struct {
	Scenario   string
	Seed       uint64
	Nodes      int
	Mode       string
	Partitions string
	Schedule   Schedule
	Events     []FaultEvent

	Ops          map[OpKind][2]int // acknowledged, failed
	Pers         PersStats
	Linearizable string

	Formed     time.Duration // initial formation
	Heal       time.Duration // last fault undone (offset)
	Freeze     time.Duration // live clients' wishes final (offset)
	Reform     time.Duration // heal -> formed
	Live       LiveResult
	LiveBound  time.Duration
	Removals   []Removal
	Watchers   time.Duration // convergence -> every subscriber's last push equals its node's list
	WatchersOK bool
	Agreement  time.Duration
	Bootstraps int
	DataFiles  int

	Violations []string
	Dir        string
	Elapsed    time.Duration
}

// Failed reports whether the run found a violation.
func (r *Report) Failed() bool { return len(r.Violations) > 0 }

// Run runs the scenario. An error means the harness could not run it (no
// binary, the cluster never formed); broken promises are Violations.
func Run(ctx context.Context, sc Scenario) (rep *Report, err error) {
	if sc.Nodes == 0 {
		sc.Nodes = 3
	}
	if sc.Slack == 0 {
		sc.Slack = 10 * time.Second
	}
	if sc.Tail == 0 {
		sc.Tail = 3 * time.Second
	}
	if sc.Load == (LoadConfig{}) {
		sc.Load = DefaultLoadConfig()
	}
	logf := sc.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if sc.Dir == "" {
		if sc.Dir, err = os.MkdirTemp("", "regent-chaos-"); err != nil {
			return nil, err
		}
	}
	clock := NewClock()
	tlog := func(format string, args ...any) {
		logf("+%-6v "+format, append([]any{clock.Now().Round(100 * time.Millisecond)}, args...)...)
	}
	sched := NewSchedule(sc.Seed, sc.Spec)
	rep = &Report{Scenario: sc.Name, Seed: sc.Seed, Nodes: sc.Nodes, Mode: "loopback (127.0.0.x)",
		Partitions: "not run: loopback mode has no links to take down", Schedule: sched, Dir: sc.Dir,
		LiveBound: LiveBound + sc.Slack, Ops: map[OpKind][2]int{}}
	defer func() { rep.Elapsed = clock.Now() }()
	tlog("scenario %s, %d nodes, %v", sc.Name, sc.Nodes, sched)

	if sc.Bin == "" {
		if sc.Bin, err = Build(ctx, sc.Dir); err != nil {
			return rep, err
		}
	}
	var nw *Netns
	switch sc.Mode {
	case "", "loopback":
	case "netns", "auto":
		if nw, err = NewNetns(sc.Nodes); err != nil {
			if sc.Mode == "netns" {
				return rep, err
			}
			rep.Partitions = fmt.Sprintf("not run: no network namespaces (%v); loopback mode", err)
			tlog("%s", rep.Partitions)
		} else {
			defer nw.Close()
			rep.Mode = nw.Describe()
			rep.Partitions = "run (links taken down / moved to a far bridge / cut per pair by blackhole routes)"
		}
	default:
		return rep, fmt.Errorf("mode %q: want loopback, netns or auto", sc.Mode)
	}
	cl, err := NewCluster(ClusterConfig{Nodes: sc.Nodes, Bin: sc.Bin, Dir: sc.Dir, Logf: tlog, Clock: clock, SeedJoinsItself: sc.SeedJoinsItself, Net: nw, ExtraArgs: sc.ServerArgs})
	if err != nil {
		return rep, err
	}
	stopped := false
	defer func() {
		if !stopped {
			cl.Stop()
		}
	}()
	if err := cl.Start(); err != nil {
		return rep, err
	}
	leader, err := cl.WaitFormed(ctx, 90*time.Second)
	if err != nil {
		return rep, fmt.Errorf("initial formation: %w (logs in %s)", err, sc.Dir)
	}
	rep.Formed = clock.Now()
	tlog("cluster formed, leader %s", leader)

	load, err := NewLoad(ctx, cl, sc.Load, sc.Seed, tlog)
	if err != nil {
		return rep, fmt.Errorf("load: %w (logs in %s)", err, sc.Dir)
	}
	loadClosed := false
	defer func() {
		if !loadClosed {
			load.Close()
		}
	}()
	load.Run()
	tlog("load running")

	// Client faults at their offsets, node faults one after another.
	faultStart := clock.Now()
	var evMu sync.Mutex
	var clientWG sync.WaitGroup
	client := slices.Clone(sched.Client)
	sort.Slice(client, func(i, j int) bool { return client[i].At < client[j].At })
	clientWG.Go(func() {
		for _, f := range client {
			if d := faultStart + f.At - clock.Now(); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
			}
			ev := FaultEvent{Fault: f, At: clock.Now()}
			name, err := load.KillClient(f)
			ev.Node, ev.Undone, ev.Recovered = name, clock.Now(), clock.Now()
			if f.Kind == FaultClientCut {
				ev.At = ev.Undone // it may have waited for its node
			}
			if err != nil {
				ev.Err = err.Error()
			}
			tlog("fault %s: %s died", f.Kind, name)
			evMu.Lock()
			rep.Events = append(rep.Events, ev)
			evMu.Unlock()
		}
	})
	var intervals []Interval
	froze := false
	for i, f := range sched.Node {
		if ctx.Err() != nil {
			break
		}
		last := i == len(sched.Node)-1
		ev := runNodeFault(ctx, cl, f, clock, tlog, load, func() {
			if last {
				clientWG.Wait()
				rep.Heal = clock.Now()
				load.FreezeChurn()
				froze = true
				rep.Freeze = clock.Now()
			}
		})
		evMu.Lock()
		rep.Events = append(rep.Events, ev)
		evMu.Unlock()
		if ev.Far != nil {
			rep.Violations = append(rep.Violations, ev.Far.Violations...)
		}
		to := ev.Recovered
		if to == 0 {
			to = clock.Now()
		}
		intervals = append(intervals, Interval{From: ev.At, To: to})
		if ev.Err != "" {
			rep.Violations = append(rep.Violations, fmt.Sprintf("fault %s on %s: %s", f.Kind, ev.Node, ev.Err))
			if ev.Recovered == 0 {
				break // the cluster did not come back; check what is there
			}
		}
	}
	clientWG.Wait()
	if !froze {
		rep.Heal = clock.Now()
		load.FreezeChurn()
		rep.Freeze = clock.Now()
	}
	tlog("faults over (heal at +%v); live clients' wishes frozen at +%v", rep.Heal.Round(time.Millisecond), rep.Freeze.Round(time.Millisecond))
	if _, err := cl.WaitFormed(ctx, 60*time.Second); err != nil {
		rep.Violations = append(rep.Violations, fmt.Sprintf("heal: %v", err))
	}
	rep.Reform = clock.Now() - rep.Heal
	formedAt := clock.Now()

	// (b), (c): rounds every 200 ms until the live instances are listed
	// exactly everywhere (and stay so 2 s) and every dead client is gone
	// or past its deadline.
	load.StopMonitor()
	want := []string{}
	for _, ips := range load.LiveExpected() {
		want = append(want, ips...)
	}
	sort.Strings(want)
	liveIPs := load.LiveIPs()
	deads := load.Deads(CloseBound+sc.Slack, SilentBound+sc.Slack)
	end := rep.Freeze + rep.LiveBound
	for _, d := range deads {
		end = max(end, d.Deadline(intervals))
	}
	end += 2 * time.Second
	convergedAt := time.Duration(-1)
	for clock.Now() < end && ctx.Err() == nil {
		r := load.Round(ctx)
		if ok, _ := LiveConverged(r, want, liveIPs); ok && convergedAt < 0 {
			convergedAt = r.End
		}
		allGone := true
		for _, d := range deads {
			for _, n := range r.Nodes {
				for _, ip := range d.IPs {
					allGone = allGone && n.OK && !n.IPs[ip]
				}
			}
		}
		if convergedAt >= 0 && clock.Now()-convergedAt > 2*time.Second && allGone {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	rounds := load.Rounds()
	var viol []string
	rep.Live, viol = CheckLive(rounds, rep.Freeze, want, liveIPs, rep.LiveBound)
	rep.Violations = append(rep.Violations, viol...)
	rep.Removals, viol = CheckDead(rounds, deads, intervals)
	rep.Violations = append(rep.Violations, viol...)
	if rep.Live.Converged {
		tlog("ephemeral: live instances listed exactly on every node %v after the heal; %d dead clients checked", rep.Live.Time.Round(time.Millisecond), len(deads))
	} else {
		tlog("ephemeral: live instances never converged: %s", rep.Live.Why)
	}

	// Subscribers: each node's watcher ends with the node's list.
	wstart := clock.Now()
	why := ""
	werr := waitUntil(ctx, LiveBound+sc.Slack, func() bool {
		r := load.Round(ctx)
		ws := load.Watchers()
		for i, n := range r.Nodes {
			name := cl.Nodes[i].Name
			if !n.OK {
				why = name + ": " + n.Err
				return false
			}
			got, exp := sortedKeys(ws[name]), sortedKeys(n.IPs)
			if !slices.Equal(got, exp) {
				why = fmt.Sprintf("%s's subscriber last saw %v, the node lists %v", name, got, exp)
				return false
			}
		}
		return true
	})
	rep.Watchers, rep.WatchersOK = clock.Now()-wstart, werr == nil
	if werr != nil {
		rep.Violations = append(rep.Violations, fmt.Sprintf("push: subscribers' last push disagrees with their node's list: %s", why))
	}

	// (a): the writers go on for Tail after the cluster re-formed, then the
	// final linearizable reads on every node.
	if d := formedAt + sc.Tail - clock.Now(); d > 0 {
		time.Sleep(d)
	}
	load.StopPersistent()
	finals, ferr := load.FinalReads(ctx, 30*time.Second)
	if ferr != nil {
		rep.Violations = append(rep.Violations, ferr.Error())
	}
	ops := load.History()
	dump(filepath.Join(sc.Dir, "history.json"), ops)
	dump(filepath.Join(sc.Dir, "rounds.json"), load.Rounds())
	dump(filepath.Join(sc.Dir, "faults.json"), rep.Events)
	for _, op := range ops {
		c := rep.Ops[op.Kind]
		if op.OK() {
			c[0]++
		} else {
			c[1]++
		}
		rep.Ops[op.Kind] = c
	}
	rep.Pers, viol = CheckDurability(ops, finals, load.PersKeys())
	rep.Violations = append(rep.Violations, viol...)
	tlog("persistent: %d writes acknowledged, %d failed, %d reads; checking linearizability", rep.Pers.WritesOK, rep.Pers.WritesFailed, rep.Pers.Reads)
	rep.Linearizable, viol = CheckLinearizable(ops, load.PersKeys(), 90*time.Second, filepath.Join(sc.Dir, "porcupine.html"))
	rep.Violations = append(rep.Violations, viol...)
	if rep.Linearizable == "unknown" {
		tlog("porcupine timed out: linearizability not decided")
	}

	// (d): membership and Raft configuration agree; one bootstrap.
	rep.Agreement, viol = CheckAgreement(ctx, cl, 30*time.Second)
	rep.Violations = append(rep.Violations, viol...)
	rep.Bootstraps, viol = CheckBootstraps(cl)
	rep.Violations = append(rep.Violations, viol...)
	for _, c := range cl.Crashes() {
		rep.Violations = append(rep.Violations, "crash: "+c)
	}

	// Every node killed at once; its bbolt files must be whole.
	load.Close()
	loadClosed = true
	cl.Stop()
	stopped = true
	rep.DataFiles, viol = CheckDataDirs(cl)
	rep.Violations = append(rep.Violations, viol...)
	tlog("done: %d violations", len(rep.Violations))
	return rep, nil
}

// nodeNames joins the names of the nodes with these indexes.
func nodeNames(cl *Cluster, idx []int, sep string) string {
	var names []string
	for _, i := range idx {
		names = append(names, cl.Nodes[i].Name)
	}
	return strings.Join(names, sep)
}

// dump writes v as JSON into path, for post-mortems (best effort).
func dump(path string, v any) {
	if b, err := json.MarshalIndent(v, "", " "); err == nil {
		_ = os.WriteFile(path, b, 0o600)
	}
}

// sortedKeys returns the keys of m whose value is true, sorted.
func sortedKeys(m map[string]bool) []string { return restrict(m, m) }

// runNodeFault resolves f's target, injects it, holds it, undoes it (then
// calls undone) and waits for the cluster to form again.
func runNodeFault(ctx context.Context, cl *Cluster, f Fault, clock *Clock, tlog func(string, ...any), load *Load, undone func()) FaultEvent {
	protected := load.Protected
	ev := FaultEvent{Fault: f}
	if f.Gap > 0 {
		time.Sleep(f.Gap)
	}
	leader := ""
	findLeader := func() {
		_ = waitUntil(ctx, 10*time.Second, func() bool {
			l, err := cl.Leader(ctx)
			leader = l
			return err == nil
		})
	}
	findLeader()
	spare := protected()
	if f.Target == TargetLeader && slices.Contains(spare, leader) {
		// A leader fault is never diverted: it waits until the silent
		// client's node is spared no more (or leadership moved).
		start := clock.Now()
		for slices.Contains(spare, leader) && clock.Now()-start < 60*time.Second && ctx.Err() == nil {
			time.Sleep(500 * time.Millisecond)
			findLeader()
			spare = protected()
		}
		ev.Note = fmt.Sprintf("waited %s: the leader had a silent client's session", ms(clock.Now()-start))
	}
	var cands, allowed []*Node
	for _, n := range cl.Nodes {
		if slices.Contains(spare, n.Name) {
			continue
		}
		allowed = append(allowed, n)
		switch {
		case f.Target == TargetLeader && n.Name == leader,
			(f.Target == TargetFollower || f.Kind == FaultBridgeFollower) && leader != "" && n.Name != leader,
			f.Target == TargetAny:
			cands = append(cands, n)
		}
	}
	if len(cands) == 0 {
		cands = allowed
		switch {
		case len(cands) == 0:
			cands = cl.Nodes
		case leader == "":
			ev.Note = "no leader known: any node"
		default:
			ev.Note = fmt.Sprintf("%s spared (a silent client's session is there): diverted", strings.Join(spare, ","))
		}
	}
	n := cands[f.Pick%len(cands)]
	ev.Node, ev.Role = n.Name, "follower"
	if n.Name == leader {
		ev.Role = "leader"
	}
	network := f.Kind == FaultIsolate || f.Kind == FaultPartition || f.Kind == FaultBridge || f.Kind == FaultBridgeFollower || f.Kind == FaultFarClients
	if network && cl.cfg.Net == nil {
		ev.At, ev.Undone, ev.Recovered = clock.Now(), clock.Now(), clock.Now()
		ev.Note = "not run: loopback mode"
		tlog("fault %s on %s not run: loopback mode", f.Kind, n.Name)
		undone()
		return ev
	}
	var minority, majority, sideA, sideB []int
	switch f.Kind {
	case FaultPartition, FaultFarClients:
		// The node, and for 5 nodes one more drawn with the seed's pick:
		// a minority that still sees itself.
		minority = []int{n.Index}
		if len(cl.Nodes) >= 5 {
			var others []int
			for _, m := range allowed {
				if m != n {
					others = append(others, m.Index)
				}
			}
			if len(others) > 0 {
				minority = append(minority, others[(f.Pick/7)%len(others)])
			}
		}
		for _, m := range cl.Nodes {
			if !slices.Contains(minority, m.Index) {
				majority = append(majority, m.Index)
			}
		}
		ev.Node = nodeNames(cl, minority, "+")
	case FaultBridge:
		// The others, in a seeded rotation, split in two halves that
		// cannot reach each other; the node still reaches both.
		var others []int
		for _, m := range cl.Nodes {
			if m != n {
				others = append(others, m.Index)
			}
		}
		if len(others) > 0 {
			k := (f.Pick / 7) % len(others)
			others = append(others[k:], others[:k]...)
		}
		sideA, sideB = others[:len(others)/2], others[len(others)/2:]
		ev.Node = fmt.Sprintf("%s bridging %s|%s", n.Name, nodeNames(cl, sideA, "+"), nodeNames(cl, sideB, "+"))
	case FaultBridgeFollower:
		// The leader first, then the others in a seeded rotation: side A
		// is the leader and (5 nodes) one more, side B the rest; neither
		// holds a majority without the bridge.
		sideA, sideB = bridgeFollowerSides(cl, n, leader, f.Pick)
		ev.Node = fmt.Sprintf("%s bridging %s|%s", n.Name, nodeNames(cl, sideA, "+"), nodeNames(cl, sideB, "+"))
		if ev.Role == "leader" || leader == "" {
			ev.Note = strings.TrimSpace(ev.Note + " no follower to bridge: the leader is the bridge")
		}
	}
	ev.At = clock.Now()
	tlog("fault %s on %s (%s), hold %v %s", f.Kind, ev.Node, ev.Role, f.Hold, ev.Note)
	var errs []string
	note := func(err error) {
		if err != nil {
			errs = append(errs, err.Error())
		}
	}
	switch f.Kind {
	case FaultKill:
		note(n.Kill())
		time.Sleep(f.Hold)
		note(n.Start())
	case FaultPause:
		note(n.Pause())
		time.Sleep(f.Hold)
		note(n.Resume())
	case FaultTerm:
		note(n.Term(30 * time.Second))
		time.Sleep(f.Hold)
		note(n.Start())
	case FaultIsolate:
		note(cl.cfg.Net.Isolate(n.Index))
		time.Sleep(f.Hold)
		note(cl.cfg.Net.Heal())
	case FaultPartition:
		note(cl.cfg.Net.Split(minority))
		time.Sleep(f.Hold)
		note(cl.cfg.Net.Heal())
	case FaultBridge:
		note(cl.cfg.Net.Cut(sideA, sideB))
		time.Sleep(f.Hold)
		note(cl.cfg.Net.Heal())
	case FaultBridgeFollower:
		note(cl.cfg.Net.Cut(sideA, sideB))
		seen := watchLeaders(ctx, cl, f.Hold)
		note(cl.cfg.Net.Heal())
		ev.Note = strings.TrimSpace(ev.Note + " " + leadersNote(leader, seen))
	case FaultFarClients:
		note(cl.cfg.Net.Cut(minority, majority))
		far := load.StartFar(ctx, n, minority)
		ev.Fault.Hold = max(f.Hold, FarHoldMin)
		if d := ev.At + ev.Fault.Hold - clock.Now(); d > 0 {
			time.Sleep(d)
		}
		healAt := clock.Now()
		note(cl.cfg.Net.Heal())
		res := far.Stop(healAt)
		ev.Far = &res
		ev.Note = strings.TrimSpace(ev.Note + " " + res.Summary())
	default:
		note(fmt.Errorf("not a node fault: %s", f.Kind))
	}
	ev.Undone = clock.Now()
	undone()
	if _, err := cl.WaitFormed(ctx, 60*time.Second); err != nil {
		note(err)
	} else {
		ev.Recovered = clock.Now()
		tlog("re-formed %v after undoing %s on %s", (ev.Recovered - ev.Undone).Round(time.Millisecond), f.Kind, n.Name)
	}
	if len(errs) > 0 {
		ev.Err = fmt.Sprint(errs)
	}
	return ev
}

// bridgeFollowerSides splits the nodes other than the bridge n in two
// halves, the leader in the first: the leader first, then the others in a
// rotation drawn from pick. With 3 nodes: {leader} | {the third}; with 5:
// {leader, one more} | {two more}, so that neither side holds a majority
// without the bridge. With no leader known (or the bridge is the leader),
// it is a plain seeded split.
func bridgeFollowerSides(cl *Cluster, n *Node, leader string, pick int) (sideA, sideB []int) {
	var lead, others []int
	for _, m := range cl.Nodes {
		switch {
		case m == n:
		case m.Name == leader:
			lead = append(lead, m.Index)
		default:
			others = append(others, m.Index)
		}
	}
	if len(others) > 0 {
		k := (pick / 7) % len(others)
		others = append(others[k:], others[:k]...)
	}
	all := append(lead, others...)
	return all[:len(all)/2], all[len(all)/2:]
}

// watchLeaders asks every node for its members every 300 ms for hold and
// returns, in order of first sight, each node that some node named the
// Raft leader (the harness reaches both sides of a cut).
func watchLeaders(ctx context.Context, cl *Cluster, hold time.Duration) []string {
	var seen []string
	end := time.Now().Add(hold)
	for time.Now().Before(end) && ctx.Err() == nil {
		vctx, cancel := context.WithDeadline(ctx, end.Add(time.Second))
		for _, v := range cl.Views(vctx) {
			for _, m := range v.Members {
				if m.Raft == "leader" && !slices.Contains(seen, m.Name) {
					seen = append(seen, m.Name)
				}
			}
		}
		cancel()
		if d := min(300*time.Millisecond, time.Until(end)); d > 0 {
			time.Sleep(d)
		}
	}
	return seen
}

// leadersNote says whether the leader held while a bridge-follower fault
// lasted (Raft may keep it or elect another; both are allowed).
func leadersNote(before string, seen []string) string {
	switch {
	case len(seen) == 0:
		return "no leader named while cut"
	case len(seen) == 1 && seen[0] == before:
		return "leader " + before + " kept"
	default:
		return fmt.Sprintf("leaders named while cut: %s (before: %s)", strings.Join(seen, ","), orDash(before))
	}
}
