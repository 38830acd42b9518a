package membership

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func TestDefaultConfigIsValidWithName(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err == nil {
		t.Fatal("DefaultConfig without a name validated")
	}
	c.Name = "n1"
	if err := c.Validate(); err != nil {
		t.Fatalf("DefaultConfig with a name: %v", err)
	}
}

func TestDefaultLocalConfig(t *testing.T) {
	c := DefaultLocalConfig()
	c.Name = "n1"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Profile != ProfileLocal || c.BindAddr != "127.0.0.1:0" {
		t.Fatalf("not a local config: %+v", c)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string // substring; "" means valid
		wantIs  error  // extra sentinel the error must wrap
	}{
		{"valid", func(*Config) {}, "", nil},
		{"valid local with key", func(c *Config) { c.Profile = ProfileLocal; c.SecretKey = make([]byte, 32) }, "", nil},
		{"valid 16 and 24 byte keys", func(c *Config) { c.SecretKey = make([]byte, 24) }, "", nil},
		{"valid zero retention", func(c *Config) { c.DeadRetention = 0 }, "", nil},
		{"valid advertise", func(c *Config) { c.AdvertiseAddr = "10.0.0.1:7946" }, "", nil},
		{"valid bind any host", func(c *Config) { c.BindAddr = ":0" }, "", nil},
		{"transport skips bind address", func(c *Config) {
			c.BindAddr = "not an address"
			c.Transport = (&memberlist.MockNetwork{}).NewTransport("n1")
		}, "", nil},
		{"empty name", func(c *Config) { c.Name = "" }, "name is required", nil},
		{"key length", func(c *Config) { c.SecretKey = make([]byte, 15) }, "15 bytes", ErrInvalidKey},
		{"empty non-nil key", func(c *Config) { c.SecretKey = []byte{} }, "0 bytes", ErrInvalidKey},
		{"bad profile", func(c *Config) { c.Profile = "wan" }, "profile", nil},
		{"empty profile", func(c *Config) { c.Profile = "" }, "profile", nil},
		{"negative retry interval", func(c *Config) { c.RetryJoinInterval = -time.Second }, "retry join interval", nil},
		{"zero retry interval", func(c *Config) { c.RetryJoinInterval = 0 }, "retry join interval", nil},
		{"negative retry max", func(c *Config) { c.RetryJoinMax = -1 }, "retry join max", nil},
		{"negative dead retention", func(c *Config) { c.DeadRetention = -time.Minute }, "dead retention", nil},
		{"zero poll interval", func(c *Config) { c.StatePollInterval = 0 }, "state poll interval", nil},
		{"bind without port", func(c *Config) { c.BindAddr = "127.0.0.1" }, "bind address", nil},
		{"bind host name", func(c *Config) { c.BindAddr = "localhost:7946" }, "must be an IP", nil},
		{"bind port range", func(c *Config) { c.BindAddr = "127.0.0.1:70000" }, "bad port", nil},
		{"advertise unspecified", func(c *Config) { c.AdvertiseAddr = "0.0.0.0:7946" }, "specific IP", nil},
		{"advertise host name", func(c *Config) { c.AdvertiseAddr = "example.com:7946" }, "must be an IP", nil},
		{"meta too large", func(c *Config) { c.Meta.Role = strings.Repeat("x", memberlist.MetaMaxSize) }, "too large", ErrMetaTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Name = "n1"
			tt.mod(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want one containing %q", tt.wantErr)
			}
			if !errors.Is(err, ErrConfig) {
				t.Errorf("error %v does not wrap ErrConfig", err)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %v does not wrap %v", err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not contain %q", err, tt.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "membership: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c := Config{}
	err := c.Validate()
	if err == nil {
		t.Fatal("zero Config validated")
	}
	for _, want := range []string{"name is required", "profile", "retry join interval", "state poll interval", "bind address"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	c := DefaultConfig()
	if _, err := New(c); !errors.Is(err, ErrConfig) {
		t.Fatalf("New without a name: %v, want ErrConfig", err)
	}
}

func TestParseKey(t *testing.T) {
	for _, n := range []int{16, 24, 32} {
		key := bytes.Repeat([]byte{byte(n)}, n)
		got, err := ParseKey(" " + base64.StdEncoding.EncodeToString(key) + "\n")
		if err != nil {
			t.Fatalf("%d-byte key: %v", n, err)
		}
		if !bytes.Equal(got, key) {
			t.Fatalf("%d-byte key: got %x, want %x", n, got, key)
		}
	}
	bad := []struct {
		in, want string
	}{
		{"", "empty"},
		{"   ", "empty"},
		{"not*base64!", "base64"},
		{base64.StdEncoding.EncodeToString(make([]byte, 10)), "10 bytes"},
		{base64.StdEncoding.EncodeToString(make([]byte, 33)), "33 bytes"},
		{base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 32)), "base64"},
	}
	for _, b := range bad {
		_, err := ParseKey(b.in)
		if !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ParseKey(%q) = %v, want ErrInvalidKey", b.in, err)
			continue
		}
		if !strings.Contains(err.Error(), b.want) || !strings.HasPrefix(err.Error(), "membership: ") {
			t.Errorf("ParseKey(%q) = %q, want a message with %q", b.in, err, b.want)
		}
	}
}
