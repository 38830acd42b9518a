package ephemeral

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Clock is the time source of the engine; tests may replace it.
type Clock interface {
	Now() time.Time
}

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// Config tunes the Distro engine of one node.
type Config struct {
	// Node is this node's name, the owner recorded on its clients.
	Node string
	// SyncDelay and SyncBurst pace the batches to each peer: on average
	// at most one per SyncDelay, and up to SyncBurst at once after a quiet
	// spell. A change goes at once while the pace allows; changes that
	// come while it does not wait for the next batch and go together. So
	// a lone change, or a moderate stream of them, is never held back,
	// and a heavy stream is merged into at most one batch per SyncDelay.
	// (Nacos waits 1 s before every sync; a few milliseconds already
	// merge bursts.) SyncBurst 0 counts as 1: batches spaced SyncDelay
	// apart.
	SyncDelay time.Duration
	SyncBurst int
	// SyncTimeout bounds one sync, verify or query call to a peer.
	SyncTimeout time.Duration
	// RetryMin and RetryMax bound the backoff after a failed call to a peer.
	RetryMin, RetryMax time.Duration
	// MaxBatchBytes caps the estimated size of one sync message or snapshot
	// page; larger backlogs go in several messages.
	MaxBatchBytes int
	// VerifyInterval is how often an owner verifies its clients with each
	// peer (one message per peer per round).
	VerifyInterval time.Duration
	// VerifyChunk caps the client versions in one verify-list message.
	VerifyChunk int
	// Expiry removes a replicated client whose owner has not confirmed it
	// (by a sync or a verify) for this long. Nacos waits 3 minutes.
	Expiry time.Duration
	// OwnerGrace is how long the clients of a node that gossip declares
	// dead or left are kept, so that their clients can reconnect to another
	// node first, before they are removed.
	OwnerGrace time.Duration
	// TombstoneTTL is how long a deleted client's version is remembered to
	// refuse late, stale changes. It should exceed the longest time a sync
	// can be in flight.
	TombstoneTTL time.Duration
	// SweepInterval is how often expiry, owner grace and tombstones are
	// checked.
	SweepInterval time.Duration
	// LoadRetry is the pause before the start-up load tries the peers
	// again after every one failed.
	LoadRetry time.Duration
	// QueryTimeout bounds the fetch of a moving client's state from the
	// node it left.
	QueryTimeout time.Duration
	// Clock is the time source (nil: the wall clock).
	Clock Clock
	// Logger receives the engine's logs (nil: discarded).
	Logger *slog.Logger
	// OwnershipLost is called, outside any lock, when another node takes
	// over a client this node holds a session for (the client moved and
	// this node's session is stale). May be nil.
	OwnershipLost func(clientID string)
}

// DefaultConfig returns production settings.
func DefaultConfig() Config {
	return Config{
		SyncDelay:      2 * time.Millisecond,   // up to 500 batches/s per peer under heavy churn
		SyncBurst:      8,                      // jitter in a moderate stream does not delay it
		SyncTimeout:    3 * time.Second,        // Nacos' sync and verify timeout
		RetryMin:       100 * time.Millisecond, // a transient error is retried quickly
		RetryMax:       3 * time.Second,        // Nacos' retry delay
		MaxBatchBytes:  1 << 20,                // far below the peer transport's message limit
		VerifyInterval: 5 * time.Second,        // Nacos' verify interval
		VerifyChunk:    20000,                  // ~0.6 MiB of ids per list message
		Expiry:         15 * time.Second,       // three missed verify rounds
		OwnerGrace:     3 * time.Second,        // time for clients of a dead node to reconnect elsewhere
		TombstoneTTL:   5 * time.Minute,        // far beyond any retry of a sync in flight
		SweepInterval:  500 * time.Millisecond, // bounds how late an expiry or grace removal runs
		LoadRetry:      time.Second,
		QueryTimeout:   500 * time.Millisecond, // a session's hello waits at most this for the old owner
	}
}

// DefaultLocalConfig returns short timeouts for tests on one machine.
func DefaultLocalConfig() Config {
	c := DefaultConfig()
	c.VerifyInterval = time.Second
	c.Expiry = 3 * time.Second
	c.OwnerGrace = 500 * time.Millisecond
	c.TombstoneTTL = 30 * time.Second
	c.SweepInterval = 100 * time.Millisecond
	c.RetryMax = 500 * time.Millisecond
	return c
}

// Validate checks ranges and the rules across fields.
func (c *Config) Validate() error {
	var errs []error
	if c.Node == "" {
		errs = append(errs, errors.New("node name is required"))
	}
	pos := func(name string, d time.Duration) {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %v", name, d))
		}
	}
	if c.SyncDelay < 0 {
		errs = append(errs, fmt.Errorf("sync delay must not be negative, got %v", c.SyncDelay))
	}
	if c.SyncBurst < 0 || c.SyncBurst > 1024 {
		errs = append(errs, fmt.Errorf("sync burst must be in [0, 1024], got %d", c.SyncBurst))
	}
	pos("sync timeout", c.SyncTimeout)
	pos("retry min", c.RetryMin)
	pos("retry max", c.RetryMax)
	pos("verify interval", c.VerifyInterval)
	pos("expiry", c.Expiry)
	pos("owner grace", c.OwnerGrace)
	pos("tombstone TTL", c.TombstoneTTL)
	pos("sweep interval", c.SweepInterval)
	pos("load retry", c.LoadRetry)
	pos("query timeout", c.QueryTimeout)
	if c.RetryMax < c.RetryMin {
		errs = append(errs, fmt.Errorf("retry max %v is below retry min %v", c.RetryMax, c.RetryMin))
	}
	if c.Expiry > 0 && c.VerifyInterval > 0 && c.Expiry < 2*c.VerifyInterval {
		errs = append(errs, fmt.Errorf("expiry %v must be at least two verify intervals (%v)", c.Expiry, 2*c.VerifyInterval))
	}
	if c.TombstoneTTL > 0 && c.TombstoneTTL < c.Expiry {
		errs = append(errs, fmt.Errorf("tombstone TTL %v must not be shorter than expiry %v", c.TombstoneTTL, c.Expiry))
	}
	// The upper bounds stay well inside what the peer transport accepts in
	// one message (64 MiB, 131072 entries).
	if c.MaxBatchBytes < 1024 || c.MaxBatchBytes > 16<<20 {
		errs = append(errs, fmt.Errorf("max batch bytes must be in [1 KiB, 16 MiB], got %d", c.MaxBatchBytes))
	}
	if c.VerifyChunk < 1 || c.VerifyChunk > 100000 {
		errs = append(errs, fmt.Errorf("verify chunk must be in [1, 100000], got %d", c.VerifyChunk))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return nil
}
