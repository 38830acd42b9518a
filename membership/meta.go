package membership

import (
	"encoding/json"
	"fmt"

	"github.com/hashicorp/memberlist"
)

// metaFormatJSON is the leading byte of the node metadata encoding: a format
// marker and version in one (serf's tagMagicByte). A new encoding gets a new
// byte, so that nodes can tell the formats apart during a rolling upgrade.
const metaFormatJSON byte = 0x01

// wireMeta is the JSON form of Meta. Empty fields are omitted to save
// space; unknown fields are ignored on decode so that a later version may
// add fields.
type wireMeta struct {
	GRPCAddr string `json:"grpc,omitempty"`
	PeerAddr string `json:"peer,omitempty"`
	RaftAddr string `json:"raft,omitempty"`
	Version  string `json:"version,omitempty"`
	Role     string `json:"role,omitempty"`
	// HasRaftState: see Meta.
	HasRaftState bool `json:"rs,omitempty"`
}

// encodeMeta encodes m for memberlist's NodeMeta. It fails with
// ErrMetaTooLarge beyond memberlist.MetaMaxSize bytes, the limit memberlist
// passes to NodeMeta (it panics on longer metadata).
func encodeMeta(m Meta) ([]byte, error) {
	body, err := json.Marshal(wireMeta(m))
	if err != nil { // not reachable: strings and a bool
		return nil, fmt.Errorf("membership: encode meta: %w", err)
	}
	b := make([]byte, 0, 1+len(body))
	b = append(b, metaFormatJSON)
	b = append(b, body...)
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("%w: %d bytes encoded, limit %d", ErrMetaTooLarge, len(b), memberlist.MetaMaxSize)
	}
	return b, nil
}

// decodeMeta decodes metadata written by encodeMeta. It never panics; bad
// input returns an error wrapping ErrBadMeta.
func decodeMeta(b []byte) (Meta, error) {
	if len(b) == 0 {
		return Meta{}, fmt.Errorf("%w: empty", ErrBadMeta)
	}
	if b[0] != metaFormatJSON {
		return Meta{}, fmt.Errorf("%w: unknown format byte 0x%02x", ErrBadMeta, b[0])
	}
	var w wireMeta
	if err := json.Unmarshal(b[1:], &w); err != nil {
		return Meta{}, fmt.Errorf("%w: %w", ErrBadMeta, err)
	}
	return Meta(w), nil
}
