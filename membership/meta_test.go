package membership

import (
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"
)

func TestMetaRoundTrip(t *testing.T) {
	for _, m := range []Meta{
		{},
		testMeta("n1"),
		{GRPCAddr: "[::1]:9000", Role: "ünïcode \"quoted\""},
		{RaftAddr: "10.0.0.1:7404", HasRaftState: true},
	} {
		b, err := encodeMeta(m)
		if err != nil {
			t.Fatal(err)
		}
		if b[0] != metaFormatJSON {
			t.Fatalf("leading byte 0x%02x, want 0x%02x", b[0], metaFormatJSON)
		}
		got, err := decodeMeta(b)
		if err != nil {
			t.Fatalf("decode %q: %v", b, err)
		}
		if got != m {
			t.Fatalf("round trip: got %+v, want %+v", got, m)
		}
	}
}

func TestEncodeMetaLimit(t *testing.T) {
	// Find the largest Role that fits, then check one more byte fails.
	overhead, _ := encodeMeta(Meta{Role: "x"})
	fit := memberlist.MetaMaxSize - len(overhead) + 1
	if b, err := encodeMeta(Meta{Role: strings.Repeat("x", fit)}); err != nil || len(b) != memberlist.MetaMaxSize {
		t.Fatalf("meta of exactly the limit: len %d, err %v", len(b), err)
	}
	if _, err := encodeMeta(Meta{Role: strings.Repeat("x", fit+1)}); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("meta over the limit: %v, want ErrMetaTooLarge", err)
	}
}

func TestDecodeMetaRejects(t *testing.T) {
	for _, b := range [][]byte{
		nil,
		{},
		{0x02, '{', '}'},           // unknown format
		[]byte(`{"grpc":"x"}`),     // no format byte
		{metaFormatJSON},           // no body
		{metaFormatJSON, '{'},      // truncated
		{metaFormatJSON, '[', ']'}, // not an object
		append([]byte{metaFormatJSON}, `{"grpc":1}`...),
		append([]byte{metaFormatJSON}, `{} {}`...), // trailing data
	} {
		if m, err := decodeMeta(b); !errors.Is(err, ErrBadMeta) {
			t.Errorf("decodeMeta(%q) = %+v, %v; want ErrBadMeta", b, m, err)
		}
	}
}

func TestDecodeMetaIgnoresUnknownFields(t *testing.T) {
	m, err := decodeMeta(append([]byte{metaFormatJSON}, `{"grpc":"g:1","zone":"eu-1"}`...))
	if err != nil || m != (Meta{GRPCAddr: "g:1"}) {
		t.Fatalf("got %+v, %v", m, err)
	}
}

// FuzzDecodeMeta checks that the decoder never panics and that what it
// accepts survives a round trip.
func FuzzDecodeMeta(f *testing.F) {
	valid, _ := encodeMeta(testMeta("n1"))
	f.Add(valid)
	f.Add([]byte{})
	f.Add([]byte{metaFormatJSON})
	f.Add([]byte{metaFormatJSON, '{', '}'})
	f.Add([]byte{0xff, '{', '}'})
	f.Add(append([]byte{metaFormatJSON}, `{"grpc":"\ud800","role":null}`...))
	f.Add(append([]byte{metaFormatJSON}, `{"grpc":"a","grpc":"b"}`...))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMeta(b)
		if err != nil {
			if !errors.Is(err, ErrBadMeta) {
				t.Fatalf("error %v does not wrap ErrBadMeta", err)
			}
			if m != (Meta{}) {
				t.Fatalf("error with non-empty meta %+v", m)
			}
			return
		}
		enc, err := encodeMeta(m)
		if err != nil {
			if errors.Is(err, ErrMetaTooLarge) {
				return // escaping can grow the encoding
			}
			t.Fatal(err)
		}
		m2, err := decodeMeta(enc)
		if err != nil || m2 != m {
			t.Fatalf("round trip of %+v: %+v, %v", m, m2, err)
		}
	})
}
