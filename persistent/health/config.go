package health

import (
	"fmt"
	"log/slog"
	"time"
)

// Clock is the Checker's source of time. Tests use a fake one to drive
// Tick and Run without sleeping.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// After returns a channel that receives once d has passed.
	After(d time.Duration) <-chan time.Time
}

// realClock is the wall clock.
type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// RealClock returns the wall clock.
func RealClock() Clock { return realClock{} }

// Config configures a Checker. Start from DefaultConfig and set Self,
// Members, Source and Writer.
type Config struct {
	// Self is this node's member name, as Members reports it. Required.
	Self string

	// Members returns the names of the alive members, Self included. It is
	// called once per round and must not block. Required.
	Members func() []string

	// Source reads the persistent services and instances. Required.
	Source Source

	// Writer records verdicts. Required.
	Writer Writer

	// Prober runs the checks; nil means a NetProber bounded by ProbeTimeout.
	Prober Prober

	// Clock gives the time; nil means the wall clock.
	Clock Clock

	// RescanInterval is the time between two rounds: how often the set of
	// owned services and their instances is re-read and due probes are run.
	// An instance's effective interval is its IntervalMS rounded up to the
	// next round. Default 1s: a membership change or a new instance is
	// picked up within a second, at the cost of one Source read per owned
	// service per second.
	RescanInterval time.Duration

	// ProbeTimeout bounds one probe; a probe is also never given longer
	// than its service's interval. Default 2s, as a check that has not
	// answered in 2s is a failure for any caller worth serving.
	ProbeTimeout time.Duration

	// WriteTimeout bounds one Writer call, so a slow Writer (a Raft cluster
	// without a leader) delays a round by at most this much. A write that
	// times out is retried on the instance's next result. Default 5s, above
	// a Raft election.
	WriteTimeout time.Duration

	// Probeable, when set, limits the checks to instances whose address it
	// accepts; the others are never probed and their health is never
	// written (an operator's fence around what the cluster may connect
	// to). Nil checks every instance.
	Probeable func(ip string) bool

	// MaxConcurrentProbes bounds the probes (and the writes that follow
	// them) in flight at once. Default 64.
	MaxConcurrentProbes int

	// Logger receives the Checker's logs; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the production settings, without the required
// fields.
func DefaultConfig() Config {
	return Config{
		RescanInterval:      time.Second,
		ProbeTimeout:        defaultProbeTimeout,
		WriteTimeout:        5 * time.Second,
		MaxConcurrentProbes: 64,
	}
}

// Validate reports the first problem with c; every error wraps
// ErrInvalidConfig.
func (c *Config) Validate() error {
	switch {
	case c.Self == "":
		return fmt.Errorf("%w: Self is empty", ErrInvalidConfig)
	case c.Members == nil:
		return fmt.Errorf("%w: Members is nil", ErrInvalidConfig)
	case c.Source == nil:
		return fmt.Errorf("%w: Source is nil", ErrInvalidConfig)
	case c.Writer == nil:
		return fmt.Errorf("%w: Writer is nil", ErrInvalidConfig)
	case c.RescanInterval <= 0:
		return fmt.Errorf("%w: RescanInterval %v is not positive", ErrInvalidConfig, c.RescanInterval)
	case c.ProbeTimeout <= 0:
		return fmt.Errorf("%w: ProbeTimeout %v is not positive", ErrInvalidConfig, c.ProbeTimeout)
	case c.WriteTimeout <= 0:
		return fmt.Errorf("%w: WriteTimeout %v is not positive", ErrInvalidConfig, c.WriteTimeout)
	case c.MaxConcurrentProbes <= 0:
		return fmt.Errorf("%w: MaxConcurrentProbes %d is not positive", ErrInvalidConfig, c.MaxConcurrentProbes)
	}
	return nil
}
