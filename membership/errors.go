package membership

import "errors"

// Sentinels of this package. Errors returned by this package wrap one of
// them (test with errors.Is) together with the cause.
var (
	// ErrConfig wraps every Config.Validate failure.
	ErrConfig = errors.New("membership: invalid config")
	// ErrInvalidKey is returned by ParseKey, and wrapped by Validate, for a
	// gossip key that is not valid base64 or not 16, 24 or 32 bytes long.
	ErrInvalidKey = errors.New("membership: invalid gossip key")
	// ErrMetaTooLarge is returned when the encoded node metadata does not
	// fit memberlist's limit (memberlist.MetaMaxSize bytes).
	ErrMetaTooLarge = errors.New("membership: node meta too large")
	// ErrBadMeta is returned by the metadata decoder for bytes that are not
	// node metadata written by this package.
	ErrBadMeta = errors.New("membership: bad node meta")
	// ErrBind is returned by New when the gossip address cannot be bound
	// (TCP or UDP), for example because the port is in use.
	ErrBind = errors.New("membership: cannot bind gossip address")
	// ErrJoinFailed is returned by Join and RetryJoin when no seed could be
	// contacted.
	ErrJoinFailed = errors.New("membership: join failed")
	// ErrNameConflict is returned by Join when the cluster already has an
	// alive node with this node's name at another address. Retrying does
	// not help: the other node must leave or be declared dead first.
	ErrNameConflict = errors.New("membership: node name already in use")
	// ErrTimeout is returned by UpdateMeta and Leave when the broadcast did
	// not go out before the timeout. The change still applies locally and
	// may still spread through gossip.
	ErrTimeout = errors.New("membership: timed out waiting for broadcast")
	// ErrLeft is returned by calls that need cluster membership after this
	// node has left (memberlist cannot rejoin after a leave: create a new
	// Cluster instead).
	ErrLeft = errors.New("membership: node has left the cluster")
	// ErrShutdown is returned by calls on a Cluster that was shut down.
	ErrShutdown = errors.New("membership: cluster is shut down")
)
