package persistent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/storage"
)

// commandSeeds are valid and invalid log entries, by corpus file name.
func commandSeeds() map[string]string {
	enc := func(c Command) string {
		b, err := json.Marshal(c)
		if err != nil {
			panic(err)
		}
		return string(b)
	}
	bin := func(c Command) string {
		b, err := c.Encode()
		if err != nil {
			panic(err)
		}
		return string(b)
	}
	in := naming.Instance{IP: "10.0.0.1", Port: 80, Cluster: "c1", Weight: 1, Healthy: true, Enabled: true, Metadata: map[string]string{"k": "v", "a": "b"}}
	reg := bin(Command{Op: OpRegister, Key: tkey, Instances: []naming.Instance{in}})
	return map[string]string{
		"valid-bin-register":   reg,
		"valid-bin-deregister": bin(Command{Op: OpDeregister, Key: tkey, ID: in.ID()}),
		"valid-bin-meta":       bin(Command{Op: OpMeta, Key: tkey, Meta: naming.ServiceMeta{ProtectThreshold: 0.5, Metadata: map[string]string{"x": "y"}, HealthCheck: naming.HealthCheck{Type: naming.CheckHTTP, HTTPPath: "/h"}}}),
		"valid-bin-health":     bin(Command{Op: OpHealth, Key: tkey, ID: in.ID(), Healthy: true}),
		"bin-truncated":        reg[:len(reg)-3],
		"bin-trailing":         reg + "x",
		"bin-unknown-op":       "\x01\x09",
		"bin-huge-count":       "\x01\x00\x00\x00\x01s\xff\xff\xff\xff\x0f",
		// JSON (an early encoding) is not a command.
		"json-register":   enc(Command{Op: OpRegister, Key: tkey, Instances: []naming.Instance{in}}),
		"json-deregister": enc(Command{Op: OpDeregister, Key: tkey, ID: in.ID()}),
		"json-meta":       enc(Command{Op: OpMeta, Key: tkey, Meta: naming.ServiceMeta{ProtectThreshold: 0.5, HealthCheck: naming.HealthCheck{Type: naming.CheckHTTP}}}),
		"json-health":     enc(Command{Op: OpHealth, Key: tkey, ID: in.ID(), Healthy: false}),
		"bad-port":        `{"op":"register","key":{"Service":"s"},"instances":[{"IP":"10.0.0.1","Port":70000}]}`,
		"nan-weight":      `{"op":"register","key":{"Service":"s"},"instances":[{"IP":"10.0.0.1","Port":1,"Weight":1e999}]}`,
		"unknown-op":      `{"op":"truncate","key":{"Service":"s"}}`,
		"bad-check-type":  `{"op":"meta","key":{"Service":"s"},"meta":{"HealthCheck":{"Type":7}}}`,
		"json-http-root":  `{"op":"meta","key":{"Service":"s"},"meta":{"HealthCheck":{"Type":1,"HTTPPath":""}}}`,
		"slash-service":   `{"op":"deregister","key":{"Service":"a/b"},"id":{"IP":"1.2.3.4","Port":1}}`,
		"not-json":        `{{{`,
		"empty":           ``,
		"deep":            strings.Repeat("[", 10000),
	}
}

// TestCommandFuzzSeeds keeps the checked-in corpus in step with
// commandSeeds (run with REGENT_WRITE_CORPUS=1 to rewrite it) and checks
// that valid seeds decode and invalid ones are refused.
func TestCommandFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodeCommand")
	for name, data := range commandSeeds() {
		file := filepath.Join(dir, name)
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if os.Getenv("REGENT_WRITE_CORPUS") != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(file, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(file)
		if err != nil || string(got) != want {
			t.Fatalf("corpus file %s is missing or stale (REGENT_WRITE_CORPUS=1 rewrites it): %v", file, err)
		}
		_, err = DecodeCommand([]byte(data))
		if valid := strings.HasPrefix(name, "valid-"); valid != (err == nil) {
			t.Fatalf("%s: decode error %v", name, err)
		}
		if err != nil && !errors.Is(err, naming.ErrInvalid) {
			t.Fatalf("%s: error %v does not wrap naming.ErrInvalid", name, err)
		}
	}
}

// FuzzDecodeCommand feeds arbitrary bytes as Raft log entries: decoding
// never panics, refusals wrap naming.ErrInvalid, an accepted command
// re-encodes to one that decodes the same, and applying it (as on replay)
// never fails or panics and leaves a consistent store.
func FuzzDecodeCommand(f *testing.F) {
	for _, s := range commandSeeds() {
		f.Add([]byte(s))
	}
	db := storage.OpenTest(f)
	fsm := NewFSM(db, nil)
	var index uint64
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeCommand(data)
		if err != nil {
			if !errors.Is(err, naming.ErrInvalid) {
				t.Fatalf("refusal %v does not wrap naming.ErrInvalid", err)
			}
		} else {
			b, err := c.Encode()
			if err != nil {
				t.Fatalf("accepted command does not re-encode: %v", err)
			}
			c2, err := DecodeCommand(b)
			if err != nil {
				t.Fatalf("re-encoded command refused: %v", err)
			}
			b2, _ := c2.Encode()
			if string(b) != string(b2) {
				t.Fatalf("encoding not stable:\n%s\n%s", b, b2)
			}
		}
		// Every entry reaches the FSM as on a replay: a bad one is answered
		// with an error, never a panic.
		index++
		res := fsm.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: data}).(applyResult)
		if (res.Err == nil) != (err == nil) {
			t.Fatalf("FSM and decoder disagree: apply %v, decode %v", res.Err, err)
		}
		if fsm.AppliedIndex() != index {
			t.Fatalf("applied index %d, want %d", fsm.AppliedIndex(), index)
		}
	})
}

// A forwarded write's reply is peer input: metadata that no write could
// have stored is refused, a register's empty metadata and a stored one
// decode as sent.
func TestDecodeResultValidatesMeta(t *testing.T) {
	good, err := naming.NormalizeMeta(naming.ServiceMeta{ProtectThreshold: 0.5, Metadata: map[string]string{"team": "a"}})
	if err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]Result{"register": {Revision: 7}, "meta": {Revision: 8, Meta: good}} {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeResult(b)
		if err != nil || !reflect.DeepEqual(got, r) {
			t.Errorf("%s: %+v, %v; want %+v", name, got, err, r)
		}
	}
	for name, m := range map[string]naming.ServiceMeta{
		"threshold":  {ProtectThreshold: 3},
		"check type": {HealthCheck: naming.HealthCheck{Type: 99}},
		"interval":   {HealthCheck: naming.HealthCheck{IntervalMS: 5}},
	} {
		b, _ := json.Marshal(Result{Revision: 1, Meta: m})
		if _, err := DecodeResult(b); err == nil {
			t.Errorf("%s: a result with invalid metadata was accepted", name)
		}
	}
}
