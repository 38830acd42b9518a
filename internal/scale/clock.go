package scale

import (
	"sync/atomic"
	"time"
)

// Clock is a virtual clock for ephemeral.Config.Clock: it reads the time the
// driver last set, and moves only when the driver moves it.
type Clock struct{ ns atomic.Int64 }

// NewClock returns a clock reading start.
func NewClock(start time.Time) *Clock {
	c := &Clock{}
	c.ns.Store(start.UnixNano())
	return c
}

// Now returns the virtual time.
func (c *Clock) Now() time.Time { return time.Unix(0, c.ns.Load()).UTC() }

// Set moves the clock to t; the driver never moves it backwards.
func (c *Clock) Set(t time.Time) { c.ns.Store(t.UnixNano()) }
