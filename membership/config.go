package membership

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// Profiles select memberlist's timing defaults.
const (
	// ProfileLAN is memberlist.DefaultLANConfig: production settings for
	// nodes in one data centre.
	ProfileLAN = "lan"
	// ProfileLocal is memberlist.DefaultLocalConfig: faster failure
	// detection for loopback and tests.
	ProfileLocal = "local"
)

// Config configures a Cluster. Start from DefaultConfig and set Name.
type Config struct {
	// Name is this node's name, unique in the cluster (required).
	Name string
	// BindAddr is the gossip host:port, bound for TCP and UDP. The host
	// must be an IP address ("0.0.0.0" for every interface); port 0 picks
	// a free port. Ignored when Transport is set.
	BindAddr string
	// AdvertiseAddr is the ip:port other nodes use to reach this node, when
	// it differs from the bound address (NAT, containers). Empty: advertise
	// the bound address (with BindAddr 0.0.0.0, a private IP of this host).
	// Port 0 advertises the bound port.
	AdvertiseAddr string
	// Meta is this node's initial metadata (see UpdateMeta).
	Meta Meta
	// SecretKey enables memberlist's gossip encryption (AES-GCM) with this
	// key: 16, 24 or 32 bytes (AES-128, -192, -256). Nil: no encryption.
	// All nodes of a cluster must use the same key. See ParseKey.
	SecretKey []byte
	// Profile selects memberlist's timing defaults: ProfileLAN or
	// ProfileLocal.
	Profile string
	// RetryJoinInterval is the pause between RetryJoin attempts.
	RetryJoinInterval time.Duration
	// RetryJoinMax bounds the RetryJoin attempts; 0 retries until the
	// context ends, like Consul's retry_join.
	RetryJoinMax int
	// DeadRetention is how long Members keeps listing a dead or left node,
	// unless it comes back. 0 drops it at the next state poll.
	DeadRetention time.Duration
	// StatePollInterval is how often memberlist's node states are read to
	// notice suspect and refuted nodes (memberlist has no callback for
	// them) and to drop dead nodes after DeadRetention.
	StatePollInterval time.Duration
	// ReconnectInterval is how often one member this node holds dead (not
	// left) is contacted again by a push-pull join, as serf reconnects to
	// failed members. After a partition heals each side holds the other
	// dead, and memberlist neither probes dead nodes nor picks them for
	// push-pull: without this they meet again only when a push-pull of
	// the side that still sees someone alive happens to carry the news
	// (up to PushPullInterval, 30 s on a LAN). 0 disables it.
	ReconnectInterval time.Duration
	// Logger receives this package's and memberlist's logs (nil: discarded).
	Logger *slog.Logger
	// Transport replaces memberlist's network transport on BindAddr, e.g.
	// (&memberlist.MockNetwork{}).NewTransport(name) in tests. memberlist
	// shuts it down in Shutdown (if New fails, the caller still owns it).
	Transport memberlist.Transport

	// tune, if set, adjusts the memberlist configuration after the profile
	// is applied. Tests use it to shorten failure detection further.
	tune func(*memberlist.Config)
}

// DefaultConfig returns production settings. Name must still be set.
func DefaultConfig() Config {
	return Config{
		BindAddr:          "0.0.0.0:7946",         // memberlist's and serf's usual gossip port, every interface
		Profile:           ProfileLAN,             // memberlist's tuned LAN timings (1 s probes, 500 ms probe timeout)
		RetryJoinInterval: time.Second,            // seeds that are starting come up within seconds; cheap to retry
		RetryJoinMax:      0,                      // keep retrying until the caller gives up, like Consul's retry_join
		DeadRetention:     time.Hour,              // long enough for an operator to see which node failed
		StatePollInterval: 500 * time.Millisecond, // well under the LAN suspicion timeout (≥ 4 s), so suspects are seen
		ReconnectInterval: 3 * time.Second,        // a healed partition is whole again within seconds (Distro's 10 s bound); one dial per tick
	}
}

// DefaultLocalConfig returns settings for tests and single-machine
// clusters: loopback with a free port, memberlist's local profile, and
// quick retries and polls. Name must still be set.
func DefaultLocalConfig() Config {
	c := DefaultConfig()
	c.BindAddr = "127.0.0.1:0"
	c.Profile = ProfileLocal
	c.RetryJoinInterval = 100 * time.Millisecond
	c.StatePollInterval = 100 * time.Millisecond
	c.ReconnectInterval = time.Second
	c.DeadRetention = time.Minute
	return c
}

// Validate checks each field and the rules across fields. Errors wrap
// ErrConfig.
func (c *Config) Validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("name is required"))
	}
	if c.Transport == nil {
		if _, _, err := splitIPPort(c.BindAddr); err != nil {
			errs = append(errs, fmt.Errorf("bind address: %w", err))
		}
	}
	if c.AdvertiseAddr != "" {
		if host, _, err := splitIPPort(c.AdvertiseAddr); err != nil {
			errs = append(errs, fmt.Errorf("advertise address: %w", err))
		} else if host == "" || net.ParseIP(host).IsUnspecified() {
			errs = append(errs, fmt.Errorf("advertise address %q: a specific IP is required", c.AdvertiseAddr))
		}
	}
	if _, err := encodeMeta(c.Meta); err != nil {
		errs = append(errs, err)
	}
	if c.SecretKey != nil {
		if err := checkKeyLen(len(c.SecretKey)); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Profile != ProfileLAN && c.Profile != ProfileLocal {
		errs = append(errs, fmt.Errorf("profile must be %q or %q, got %q", ProfileLAN, ProfileLocal, c.Profile))
	}
	if c.RetryJoinInterval <= 0 {
		errs = append(errs, fmt.Errorf("retry join interval must be positive, got %v", c.RetryJoinInterval))
	}
	if c.RetryJoinMax < 0 {
		errs = append(errs, fmt.Errorf("retry join max must not be negative, got %d", c.RetryJoinMax))
	}
	if c.DeadRetention < 0 {
		errs = append(errs, fmt.Errorf("dead retention must not be negative, got %v", c.DeadRetention))
	}
	if c.ReconnectInterval < 0 {
		errs = append(errs, fmt.Errorf("reconnect interval must not be negative, got %v", c.ReconnectInterval))
	}
	if c.StatePollInterval <= 0 {
		errs = append(errs, fmt.Errorf("state poll interval must be positive, got %v", c.StatePollInterval))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return nil
}

// splitIPPort splits "ip:port" where ip is empty or an IP literal (memberlist
// binds and advertises IPs, not host names) and port is 0-65535.
func splitIPPort(addr string) (host string, port int, err error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	if host != "" && net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("%q: host must be an IP address", addr)
	}
	port, err = strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%q: bad port %q", addr, portStr)
	}
	return host, port, nil
}

func checkKeyLen(n int) error {
	switch n {
	case 16, 24, 32:
		return nil
	}
	return fmt.Errorf("%w: key is %d bytes, want 16, 24 or 32", ErrInvalidKey, n)
}

// ParseKey decodes a base64 gossip key (standard encoding, as printed by
// `openssl rand -base64 32` or `consul keygen`), for a --gossip-key flag.
// The key must decode to 16, 24 or 32 bytes. Errors wrap ErrInvalidKey.
func ParseKey(base64Key string) ([]byte, error) {
	s := strings.TrimSpace(base64Key)
	if s == "" {
		return nil, fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: not valid base64: %w", ErrInvalidKey, err)
	}
	if err := checkKeyLen(len(key)); err != nil {
		return nil, err
	}
	return key, nil
}
