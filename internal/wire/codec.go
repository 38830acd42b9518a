// Package wire holds what Regent's gRPC servers and clients share on the
// wire beside the generated code: the codec.
package wire

import (
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"

	// Registers gRPC's proto codec, the fallback.
	_ "google.golang.org/grpc/encoding/proto"
)

// vtMessage is a message with vtprotobuf's generated fast paths (every
// message of regent.v1 and regent.cluster.v1).
type vtMessage interface {
	SizeVT() int
	MarshalToSizedBufferVT(dAtA []byte) (int, error)
	UnmarshalVT(dAtA []byte) error
}

// Codec is gRPC's "proto" codec, with the marshal and unmarshal code that
// vtprotobuf generates for Regent's own messages: no reflection, about a
// third of the CPU of google.golang.org/protobuf's (BenchmarkCodec). Other
// messages (health, reflection) go through gRPC's proto codec as before.
// The bytes on the wire are the same either way.
//
// The generated unmarshal, unlike proto.Unmarshal, does not check that
// string fields are valid UTF-8; every string a node keeps passes a
// charset or UTF-8 check of its own (naming, rpc's validation).
type Codec struct{}

var _ encoding.CodecV2 = Codec{}

// fallback is gRPC's own proto codec.
var fallback = encoding.GetCodecV2("proto")

// Name is the content-subtype: "proto", so peers that use gRPC's codec
// interoperate.
func (Codec) Name() string { return "proto" }

// Marshal encodes v.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(vtMessage)
	if !ok {
		return fallback.Marshal(v)
	}
	size := m.SizeVT()
	if mem.IsBelowBufferPoolingThreshold(size) {
		buf := make([]byte, size)
		if _, err := m.MarshalToSizedBufferVT(buf); err != nil {
			return nil, fmt.Errorf("wire: marshal %T: %w", v, err)
		}
		return mem.BufferSlice{mem.SliceBuffer(buf)}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	if _, err := m.MarshalToSizedBufferVT((*buf)[:size]); err != nil {
		pool.Put(buf)
		return nil, fmt.Errorf("wire: marshal %T: %w", v, err)
	}
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

// Unmarshal decodes data into v. The generated code copies what it keeps,
// so the buffer goes back to the pool at once.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(vtMessage)
	if !ok {
		return fallback.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return m.UnmarshalVT(buf.ReadOnlyData())
}

// ServerOption makes a server use Codec.
func ServerOption() grpc.ServerOption { return grpc.ForceServerCodecV2(Codec{}) }

// DialOption makes a client use Codec.
func DialOption() grpc.DialOption {
	return grpc.WithDefaultCallOptions(grpc.ForceCodecV2(Codec{}))
}
