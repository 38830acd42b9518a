package persistent

import (
	"errors"
	"fmt"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/storage"
)

// MaxCommandBytes caps one encoded command. A larger write is refused with
// naming.ErrInvalid before it reaches the Raft log, so one request can never
// make every node store and replay a huge entry.
const MaxCommandBytes = 1 << 20

// MaxInstancesPerCommand caps the instances of one Register: the API's
// batch limit.
const MaxInstancesPerCommand = naming.MaxBatch

// Op is what a command does.
type Op string

// The operations that go through the Raft log.
const (
	OpRegister   Op = "register"   // put Instances into Key, all or none
	OpDeregister Op = "deregister" // remove ID from Key
	OpMeta       Op = "meta"       // replace Key's metadata with Meta
	OpHealth     Op = "health"     // set ID's Healthy flag, if it exists
)

// Command is one write of persistent state: the payload of a Raft log entry
// and of a write forwarded to the leader. It is validated (Normalize) before
// it is proposed and again when it is decoded, so a node applies only
// commands it would have accepted from a client.
type Command struct {
	Op        Op
	Key       naming.ServiceKey
	Instances []naming.Instance
	ID        naming.InstanceID
	Meta      naming.ServiceMeta
	Healthy   bool
}

// Result is what applying a command returns to the writer.
type Result struct {
	// Revision is the service's persistent revision after the command.
	Revision uint64
	// Meta is the stored metadata (OpMeta).
	Meta naming.ServiceMeta
}

// Normalize fills defaults and validates c; errors wrap naming.ErrInvalid.
func (c Command) Normalize() (Command, error) {
	key, err := naming.NormalizeKey(c.Key)
	if err != nil {
		return c, err
	}
	c.Key = key
	switch c.Op {
	case OpRegister:
		if len(c.Instances) == 0 {
			return c, fmt.Errorf("%w: register without instances", naming.ErrInvalid)
		}
		if len(c.Instances) > MaxInstancesPerCommand {
			return c, fmt.Errorf("%w: %d instances in one register, at most %d", naming.ErrInvalid, len(c.Instances), MaxInstancesPerCommand)
		}
		ins := make([]naming.Instance, len(c.Instances))
		seen := make(map[naming.InstanceID]struct{}, len(ins))
		for i, in := range c.Instances {
			if ins[i], err = naming.NormalizeInstance(in); err != nil {
				return c, err
			}
			ins[i].Ephemeral = false
			id := ins[i].ID()
			if _, dup := seen[id]; dup {
				return c, fmt.Errorf("%w: instance %s given twice", naming.ErrInvalid, id)
			}
			seen[id] = struct{}{}
		}
		c.Instances = ins
	case OpDeregister, OpHealth:
		in, err := naming.NormalizeInstance(naming.Instance{IP: c.ID.IP, Port: c.ID.Port, Cluster: c.ID.Cluster})
		if err != nil {
			return c, err
		}
		c.ID = in.ID()
	case OpMeta:
		if c.Meta, err = naming.NormalizeMeta(c.Meta); err != nil {
			return c, err
		}
	default:
		return c, fmt.Errorf("%w: unknown operation %q", naming.ErrInvalid, c.Op)
	}
	return c, nil
}

// Encode normalizes and encodes c for the log (the binary form of
// wire.go); it refuses commands over MaxCommandBytes.
func (c Command) Encode() ([]byte, error) {
	c, err := c.Normalize()
	if err != nil {
		return nil, err
	}
	b := encodeWire(c)
	if len(b) > MaxCommandBytes {
		return nil, fmt.Errorf("%w: write of %d bytes, at most %d allowed", naming.ErrInvalid, len(b), MaxCommandBytes)
	}
	return b, nil
}

// DecodeCommand decodes and validates bytes written by Encode (a log entry
// or a forwarded write). It never panics; bad input wraps naming.ErrInvalid.
func DecodeCommand(b []byte) (Command, error) {
	if len(b) > MaxCommandBytes {
		return Command{}, fmt.Errorf("%w: command of %d bytes, at most %d allowed", naming.ErrInvalid, len(b), MaxCommandBytes)
	}
	var c Command
	if len(b) == 0 || b[0] != wireV1 {
		return Command{}, fmt.Errorf("%w: command: unknown format", naming.ErrInvalid)
	}
	c, err := decodeWire(b[1:])
	if err != nil {
		return Command{}, fmt.Errorf("%w: command: %w", naming.ErrInvalid, err)
	}
	return c.Normalize()
}

// errApply marks a failure of the storage itself while applying (not of the
// command): the node cannot go on applying the log.
var errApply = errors.New("persistent: apply")

// apply runs a normalized command in tx. It is the one write path of
// persistent state, shared by Local and the Raft FSM.
func (c Command) apply(tx *storage.Tx) (Result, error) {
	switch c.Op {
	case OpRegister:
		for _, in := range c.Instances {
			if _, err := tx.PutInstance(c.Key, in); err != nil {
				return Result{}, err
			}
		}
	case OpDeregister:
		if _, err := tx.DeleteInstance(c.Key, c.ID); err != nil {
			return Result{}, err
		}
	case OpHealth:
		in, ok, err := tx.Instance(c.Key, c.ID)
		if err != nil {
			return Result{}, err
		}
		if ok && in.Healthy != c.Healthy {
			in.Healthy = c.Healthy
			if _, err := tx.PutInstance(c.Key, in); err != nil {
				return Result{}, err
			}
		}
	case OpMeta:
		if err := tx.PutMeta(c.Key, c.Meta); err != nil {
			return Result{}, err
		}
		return Result{Revision: tx.Revision(c.Key), Meta: c.Meta}, nil
	default:
		return Result{}, fmt.Errorf("%w: unknown operation %q", naming.ErrInvalid, c.Op)
	}
	return Result{Revision: tx.Revision(c.Key)}, nil
}
