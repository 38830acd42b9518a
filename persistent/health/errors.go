package health

import "errors"

var (
	// ErrInvalidConfig is wrapped by every error Config.Validate returns.
	ErrInvalidConfig = errors.New("health: invalid config")

	// ErrUnknownCheckType is returned by NetProber for a check type it does
	// not know.
	ErrUnknownCheckType = errors.New("health: unknown check type")

	// ErrUnexpectedStatus is wrapped by NetProber's error when an HTTP check
	// answers with a status other than the expected one.
	ErrUnexpectedStatus = errors.New("health: unexpected HTTP status")
)
