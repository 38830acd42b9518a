package storage

import (
	"errors"
	"fmt"
)

var (
	// ErrCorrupt is wrapped by every error about a record that cannot be
	// decoded or a layout that is not what this package writes.
	ErrCorrupt = errors.New("storage: corrupt record")
	// ErrClosed is returned by operations on a closed DB.
	ErrClosed = errors.New("storage: database closed")
	// ErrDeferredLost: writes UpdateDeferred had accepted were not
	// committed (their transaction was rolled back or its commit failed);
	// the DB then refuses everything but Close.
	ErrDeferredLost = errors.New("storage: deferred writes lost")
	// ErrLocked is returned by Open when another process (or another DB in
	// this process) holds the file lock for longer than Options.Timeout.
	ErrLocked = errors.New("storage: database locked by another process")
	// ErrSchema is returned by Open and Restore for a database written with
	// a layout version this code does not know.
	ErrSchema = errors.New("storage: unsupported schema version")
	// ErrInvalidKey is returned for a service key that cannot be stored
	// (an empty part, or a part containing '/').
	ErrInvalidKey = errors.New("storage: invalid service key")
)

// joinCheck wraps the errors of a bbolt consistency check, or returns nil.
func joinCheck(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("storage: consistency check: %w: %w", errors.Join(errs...), ErrCorrupt)
}
