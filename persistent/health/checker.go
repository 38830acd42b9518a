package health

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/regent-registry/regent/internal/naming"
)

// Source reads the persistent state the checker works on. The Checker calls
// it from the goroutine running a round, one call at a time.
type Source interface {
	// Services returns every service with persistent state and its
	// revision, a number that grows with every change to the service's
	// instances (their stored health included) or settings. The checker
	// reads a service with Service again only when its revision differs
	// from the one it last read it at, so a round costs O(services), not
	// O(instances), while nothing changes. A Source without revisions
	// returns 0 for all: every service is then read every round.
	Services() (map[naming.ServiceKey]uint64, error)
	// Service returns the persistent instances of a service, with their
	// stored Healthy flag, and the service's check settings (zero fields
	// are filled by HealthCheck.WithDefaults). A service that has gone
	// returns no instances and a nil error; an error keeps the checker's
	// last view of the service for the round.
	Service(key naming.ServiceKey) (instances []naming.Instance, check naming.HealthCheck, err error)
}

// Writer records a verdict (through Raft in production). It returns an
// error when the write failed; the checker retries on the instance's next
// result, if that result still calls for the write. SetHealthy must honour ctx (it carries Config.WriteTimeout) and is
// called from many goroutines at once. It may read the Source or call
// Checker.Stats, but not Tick: the round that called it is still running.
type Writer interface {
	SetHealthy(ctx context.Context, key naming.ServiceKey, id naming.InstanceID, healthy bool) error
}

// Stats counts what a Checker has done since New.
type Stats struct {
	// OwnedServices is the number of services this node owned at the last
	// round, checked or not.
	OwnedServices int
	// CheckedInstances is the number of instances it checks.
	CheckedInstances int
	// Rounds is the number of rounds (Tick calls) run.
	Rounds uint64
	// ProbesRun is the number of probes that gave a result.
	ProbesRun uint64
	// ProbeFailures is how many of those failed.
	ProbeFailures uint64
	// Writes is the number of verdicts recorded.
	Writes uint64
	// WriteFailures is the number of Writer calls that returned an error.
	WriteFailures uint64
}

// Checker checks the persistent instances of the services this node owns
// (see Owner) and records their changes of health. Create it with New and
// start it with Run, or drive it round by round with Tick.
type Checker struct {
	cfg Config
	log *slog.Logger

	// roundMu serializes rounds; it guards services.
	roundMu sync.Mutex
	// services is the state of the owned services, by
	// key.WithDefaults().String().
	services map[string]*serviceState

	ownedServices    atomic.Int64
	checkedInstances atomic.Int64
	rounds           atomic.Uint64
	probes           atomic.Uint64
	probeFailures    atomic.Uint64
	writes           atomic.Uint64
	writeFailures    atomic.Uint64
}

// serviceState is an owned service as last read from the Source.
type serviceState struct {
	key       naming.ServiceKey  // as the Source spells it
	name      string             // key.WithDefaults().String(), for logs and ordering
	check     naming.HealthCheck // normalized
	instances map[naming.InstanceID]*instanceState
	// rev is the service's revision when it was last read (0: read it
	// every round).
	rev uint64
}

// instanceState is one checked instance. During a round's probe phase it
// belongs to the one worker probing it.
type instanceState struct {
	id        naming.InstanceID
	healthy   bool // as stored, read whenever the service's revision moves
	probed    bool
	lastProbe time.Time
	failures  int // consecutive failed probes
	successes int // consecutive successful probes
}

// job is one due probe.
type job struct {
	svc     *serviceState
	inst    *instanceState
	timeout time.Duration
}

// New returns a Checker for cfg, after Validate. A nil Prober, Clock or
// Logger gets its default.
func New(cfg Config) (*Checker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Prober == nil {
		cfg.Prober = NewNetProber(cfg.ProbeTimeout)
	}
	if cfg.Clock == nil {
		cfg.Clock = RealClock()
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Checker{
		cfg:      cfg,
		log:      log.With("component", "health"), // the caller's logger names the node
		services: make(map[string]*serviceState),
	}, nil
}

// Run runs a round at once and then RescanInterval after the end of each
// round, until ctx is done. It returns after every goroutine it started has finished, and
// forgets the per-instance counters, so a later Run starts afresh as a node
// taking the services over would.
func (c *Checker) Run(ctx context.Context) {
	c.log.Info("health checker started", "rescan-interval", c.cfg.RescanInterval,
		"max-concurrent-probes", c.cfg.MaxConcurrentProbes)
	defer func() {
		c.roundMu.Lock()
		clear(c.services)
		c.roundMu.Unlock()
		c.ownedServices.Store(0)
		c.checkedInstances.Store(0)
		c.log.Info("health checker stopped")
	}()
	for {
		c.Tick(ctx)
		select {
		case <-ctx.Done():
			return
		case <-c.cfg.Clock.After(c.cfg.RescanInterval):
		}
	}
}

// Tick runs one round synchronously: it re-reads the owned services and
// their instances, drops the state of those no longer owned or gone, probes
// every instance whose interval has passed since its last probe (at most
// MaxConcurrentProbes at once, each bounded by the probe timeout), applies
// the results to the consecutive counters and writes the verdicts that
// reached their threshold and differ from the stored health. It returns when
// every probe and write it started has finished. Concurrent calls run one
// after the other.
func (c *Checker) Tick(ctx context.Context) {
	c.roundMu.Lock()
	defer c.roundMu.Unlock()
	if ctx.Err() != nil {
		return
	}
	c.rounds.Add(1)
	now := c.cfg.Clock.Now()
	if !c.rescan() {
		return
	}
	jobs := c.due(now)
	if len(jobs) == 0 {
		return
	}
	c.runJobs(ctx, jobs)
}

// Stats returns the counters. It takes no lock a round holds, so it can be
// called at any time, from a Writer too.
func (c *Checker) Stats() Stats {
	return Stats{
		OwnedServices:    int(c.ownedServices.Load()),
		CheckedInstances: int(c.checkedInstances.Load()),
		Rounds:           c.rounds.Load(),
		ProbesRun:        c.probes.Load(),
		ProbeFailures:    c.probeFailures.Load(),
		Writes:           c.writes.Load(),
		WriteFailures:    c.writeFailures.Load(),
	}
}

// rescan brings c.services up to date with the Source and the members. It
// reports false when the services could not be listed: the round is then
// skipped and the state kept.
func (c *Checker) rescan() bool {
	revs, err := c.cfg.Source.Services()
	if err != nil {
		c.log.Warn("cannot list persistent services", "error", err)
		return false
	}
	members := c.cfg.Members()
	owned := make(map[string]naming.ServiceKey)
	for k := range revs {
		name := k.WithDefaults().String()
		if ownerOf(name, members) == c.cfg.Self {
			owned[name] = k
		}
	}

	var gained, lost int
	for name := range c.services {
		if _, ok := owned[name]; !ok {
			delete(c.services, name)
			lost++
		}
	}
	checked := 0
	for name, key := range owned {
		st := c.services[name]
		rev := revs[key]
		if st != nil && rev != 0 && st.rev == rev {
			// Unchanged since it was last read: instances, stored
			// health and settings are as this state holds them.
			checked += len(st.instances)
			continue
		}
		ins, check, err := c.cfg.Source.Service(key)
		if err != nil {
			c.log.Warn("cannot read persistent service", "service", name, "error", err)
			if st != nil {
				checked += len(st.instances)
			}
			continue
		}
		check = normalize(check)
		switch {
		case st == nil:
			st = &serviceState{key: key, name: name, check: check, instances: make(map[naming.InstanceID]*instanceState)}
			c.services[name] = st
			gained++
			c.logCheck("service owned", name, check)
		case !sameProbe(st.check, check):
			// Results of another check say nothing about this one.
			clear(st.instances)
			c.logCheck("service check changed", name, check)
		}
		// The revision listed before this read: a change in between
		// moves it again, and the next round reads the service again.
		st.key, st.check, st.rev = key, check, rev
		if !probed(check.Type) {
			clear(st.instances)
			continue
		}
		seen := make(map[naming.InstanceID]struct{}, len(ins))
		for i := range ins {
			in := &ins[i]
			if in.Ephemeral || (c.cfg.Probeable != nil && !c.cfg.Probeable(in.IP)) {
				continue
			}
			id := in.ID()
			seen[id] = struct{}{}
			is := st.instances[id]
			if is == nil {
				is = &instanceState{id: id}
				st.instances[id] = is
			}
			is.healthy = in.Healthy
		}
		for id := range st.instances {
			if _, ok := seen[id]; !ok {
				delete(st.instances, id)
			}
		}
		checked += len(st.instances)
	}
	c.ownedServices.Store(int64(len(owned)))
	c.checkedInstances.Store(int64(checked))
	if gained > 0 || lost > 0 {
		c.log.Info("health check ownership changed", "services-gained", gained,
			"services-lost", lost, "services-owned", len(owned), "members", len(members))
	}
	return true
}

// due returns the probes to run at now, in service then instance order, and
// marks them probed at now.
func (c *Checker) due(now time.Time) []job {
	var jobs []job
	for _, st := range c.services {
		if len(st.instances) == 0 {
			continue
		}
		interval := time.Duration(st.check.IntervalMS) * time.Millisecond
		timeout := min(c.cfg.ProbeTimeout, interval)
		for _, is := range st.instances {
			if is.probed && now.Before(is.lastProbe.Add(interval)) {
				continue
			}
			is.probed, is.lastProbe = true, now
			jobs = append(jobs, job{svc: st, inst: is, timeout: timeout})
		}
	}
	slices.SortFunc(jobs, func(a, b job) int {
		return cmp.Or(
			cmp.Compare(a.svc.name, b.svc.name),
			cmp.Compare(a.inst.id.Cluster, b.inst.id.Cluster),
			cmp.Compare(a.inst.id.IP, b.inst.id.IP),
			cmp.Compare(a.inst.id.Port, b.inst.id.Port),
		)
	})
	return jobs
}

// runJobs runs jobs on at most MaxConcurrentProbes workers and waits for
// them. Each job's instanceState belongs to its worker until then; the
// service states are only read.
func (c *Checker) runJobs(ctx context.Context, jobs []job) {
	ch := make(chan job)
	var wg sync.WaitGroup
	for range min(len(jobs), c.cfg.MaxConcurrentProbes) {
		wg.Go(func() {
			for j := range ch {
				c.check(ctx, j)
			}
		})
	}
	for _, j := range jobs {
		ch <- j
	}
	close(ch)
	wg.Wait()
}

// check probes one instance, counts the result and writes the verdict when
// the rule says so: UnhealthyThreshold consecutive failures turn a stored
// healthy instance unhealthy, HealthyThreshold consecutive successes turn a
// stored unhealthy one healthy, and nothing else is ever written.
func (c *Checker) check(ctx context.Context, j job) {
	if ctx.Err() != nil {
		return
	}
	check, is := j.svc.check, j.inst
	pctx, cancel := context.WithTimeout(ctx, j.timeout)
	perr := c.cfg.Prober.Probe(pctx, check, is.id.IP, is.id.Port)
	cancel()
	if ctx.Err() != nil {
		return // stopping: the result says nothing about the instance
	}
	c.probes.Add(1)
	if perr != nil {
		c.probeFailures.Add(1)
		is.failures++
		is.successes = 0
	} else {
		is.successes++
		is.failures = 0
	}

	var verdict bool
	switch {
	case is.healthy && is.failures >= check.UnhealthyThreshold:
		verdict = false
	case !is.healthy && is.successes >= check.HealthyThreshold:
		verdict = true
	default:
		if perr != nil {
			c.log.Debug("probe failed", "service", j.svc.name, "instance", is.id.String(),
				"consecutive-failures", is.failures, "error", perr)
		}
		return
	}

	wctx, cancel := context.WithTimeout(ctx, c.cfg.WriteTimeout)
	werr := c.cfg.Writer.SetHealthy(wctx, j.svc.key, is.id, verdict)
	cancel()
	if werr != nil {
		c.writeFailures.Add(1)
		level := slog.LevelWarn
		if ctx.Err() != nil {
			level = slog.LevelDebug
		}
		c.log.Log(ctx, level, "cannot record instance health, retrying on the next result",
			"service", j.svc.name, "instance", is.id.String(), "healthy", verdict, "error", werr)
		return
	}
	c.writes.Add(1)
	attrs := []any{"service", j.svc.name, "instance", is.id.String(), "healthy", verdict,
		"check", checkType(check.Type)}
	if verdict {
		attrs = append(attrs, "consecutive-successes", is.successes)
	} else {
		attrs = append(attrs, "consecutive-failures", is.failures, "error", perr)
	}
	c.log.Info("instance health changed", attrs...)
}

// logCheck logs a service's new check, at warn level when the checker does
// not know its type (its instances are then not checked).
func (c *Checker) logCheck(msg, service string, check naming.HealthCheck) {
	level := slog.LevelDebug
	if !probed(check.Type) && check.Type != naming.CheckNone {
		level = slog.LevelWarn
		msg += ", not checking an unknown check type"
	}
	c.log.Log(context.Background(), level, msg, "service", service,
		"check", checkType(check.Type), "check-type", int(check.Type))
}

// normalize fills a check's defaults and replaces values no check can run
// with (the API validates them; the checker does not trust its input).
func normalize(h naming.HealthCheck) naming.HealthCheck {
	h = h.WithDefaults()
	d := naming.DefaultHealthCheck()
	if h.IntervalMS <= 0 {
		h.IntervalMS = d.IntervalMS
	}
	if h.UnhealthyThreshold < 1 {
		h.UnhealthyThreshold = d.UnhealthyThreshold
	}
	if h.HealthyThreshold < 1 {
		h.HealthyThreshold = d.HealthyThreshold
	}
	return h
}

// sameProbe reports whether two checks probe the same way, so that results
// of one count for the other.
func sameProbe(a, b naming.HealthCheck) bool {
	return a.Type == b.Type && a.HTTPPath == b.HTTPPath && a.ExpectedStatus == b.ExpectedStatus
}

// probed reports whether instances of a service with this check type are
// probed at all: CheckNone and unknown types are not.
func probed(t naming.HealthCheckType) bool {
	return t == naming.CheckTCP || t == naming.CheckHTTP
}

// checkType names a check type for logs.
func checkType(t naming.HealthCheckType) string {
	switch t {
	case naming.CheckTCP:
		return "tcp"
	case naming.CheckHTTP:
		return "http"
	case naming.CheckNone:
		return "none"
	default:
		return "unknown"
	}
}
