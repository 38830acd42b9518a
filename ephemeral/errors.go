package ephemeral

import "errors"

var (
	// ErrConfig wraps every Config.Validate failure.
	ErrConfig = errors.New("ephemeral: invalid config")
	// ErrStopped is returned by calls on an engine that was stopped.
	ErrStopped = errors.New("ephemeral: engine stopped")
	// ErrUnreachable is returned by a transport for a peer it cannot reach.
	ErrUnreachable = errors.New("ephemeral: peer unreachable")
	// ErrBadCursor is returned for a snapshot cursor this node did not issue.
	ErrBadCursor = errors.New("ephemeral: bad snapshot cursor")
)
