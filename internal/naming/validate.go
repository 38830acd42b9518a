package naming

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"regexp"
	"unicode/utf8"
)

// ErrInvalid is wrapped by every validation error; rpc maps it to
// InvalidArgument.
var ErrInvalid = errors.New("invalid argument")

// Limits written down in docs/validation.md.
const (
	MaxNameLen          = 128
	MaxServiceLen       = 256
	MaxHostLen          = 253
	MaxWeight           = 10000
	MaxMetadataEntries  = 64
	MaxMetadataKeyLen   = 128
	MaxMetadataValueLen = 1024
	MaxMetadataBytes    = 8 * 1024
	MaxBatch            = 1000
	MaxClientIDLen      = 128
)

var (
	// Namespace, group and cluster: letters, digits and . _ -
	nameRE = newCharset("._-")
	// Service names also allow ':' and '@' (Nacos users put "group@@name" or
	// "providers:com.x:1.0" in them).
	serviceRE  = newCharset("._:@-")
	clientIDRE = newCharset("._:-")
	hostRE     = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)
)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// charset is a set of allowed bytes: letters, digits and some punctuation.
// It matches what ^[A-Za-z0-9<extra>]+$ matches, without a regexp on the
// hot path of every write.
type charset struct {
	ok    [256]bool
	extra string
}

func newCharset(extra string) *charset {
	c := &charset{extra: extra}
	for b := '0'; b <= '9'; b++ {
		c.ok[b] = true
	}
	for b := 'a'; b <= 'z'; b++ {
		c.ok[b], c.ok[b-'a'+'A'] = true, true
	}
	for i := range len(extra) {
		c.ok[extra[i]] = true
	}
	return c
}

// MatchString reports whether v is non-empty and made of allowed bytes.
func (c *charset) MatchString(v string) bool {
	for i := range len(v) {
		if !c.ok[v[i]] {
			return false
		}
	}
	return v != ""
}

// String renders the set as the equivalent regular expression.
func (c *charset) String() string { return "^[A-Za-z0-9" + c.extra + "]+$" }

func checkName(what, v string, re *charset, max int) error {
	if v == "" {
		return invalid("%s is empty", what)
	}
	if len(v) > max {
		return invalid("%s is %d bytes, at most %d allowed", what, len(v), max)
	}
	if !re.MatchString(v) {
		return invalid("%s %q has characters outside %s", what, v, re.String())
	}
	return nil
}

// NormalizeKey fills defaults and validates a service key.
func NormalizeKey(k ServiceKey) (ServiceKey, error) {
	k = k.WithDefaults()
	if err := checkName("namespace", k.Namespace, nameRE, MaxNameLen); err != nil {
		return k, err
	}
	if err := checkName("group", k.Group, nameRE, MaxNameLen); err != nil {
		return k, err
	}
	if err := checkName("service", k.Service, serviceRE, MaxServiceLen); err != nil {
		return k, err
	}
	return k, nil
}

// ValidateCluster checks a cluster name.
func ValidateCluster(c string) error {
	return checkName("cluster", c, nameRE, MaxNameLen)
}

// ValidateClientID checks the stable client id of a Hello.
func ValidateClientID(id string) error {
	return checkName("client id", id, clientIDRE, MaxClientIDLen)
}

// ValidateHost checks an instance address: an IP literal or a DNS name.
func ValidateHost(h string) error {
	if h == "" {
		return invalid("ip is empty")
	}
	if len(h) > MaxHostLen {
		return invalid("ip is %d bytes, at most %d allowed", len(h), MaxHostLen)
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return nil
	}
	if !hostRE.MatchString(h) {
		return invalid("ip %q is neither an IP address nor a host name", h)
	}
	return nil
}

// ValidateMetadata checks the count and size of a metadata map.
func ValidateMetadata(md map[string]string) error {
	if len(md) > MaxMetadataEntries {
		return invalid("metadata has %d entries, at most %d allowed", len(md), MaxMetadataEntries)
	}
	total := 0
	for k, v := range md {
		if k == "" {
			return invalid("metadata key is empty")
		}
		if len(k) > MaxMetadataKeyLen {
			return invalid("metadata key of %d bytes, at most %d allowed", len(k), MaxMetadataKeyLen)
		}
		if len(v) > MaxMetadataValueLen {
			return invalid("metadata value of key %q is %d bytes, at most %d allowed", k, len(v), MaxMetadataValueLen)
		}
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return invalid("metadata key %q or its value is not valid UTF-8", k)
		}
		total += len(k) + len(v)
	}
	if total > MaxMetadataBytes {
		return invalid("metadata is %d bytes, at most %d allowed", total, MaxMetadataBytes)
	}
	return nil
}

// NormalizeInstance fills the cluster default and validates an instance.
// Weight, healthy and enabled defaults are the caller's (they depend on
// whether the wire field was set).
func NormalizeInstance(in Instance) (Instance, error) {
	if in.Cluster == "" {
		in.Cluster = DefaultCluster
	}
	if err := ValidateHost(in.IP); err != nil {
		return in, err
	}
	if in.Port < 1 || in.Port > 65535 {
		return in, invalid("port %d is outside 1..65535", in.Port)
	}
	if err := ValidateCluster(in.Cluster); err != nil {
		return in, err
	}
	if math.IsNaN(in.Weight) || in.Weight < 0 || in.Weight > MaxWeight {
		return in, invalid("weight %v is outside 0..%d", in.Weight, MaxWeight)
	}
	if err := ValidateMetadata(in.Metadata); err != nil {
		return in, err
	}
	return in, nil
}

// NormalizeMeta fills defaults and validates service metadata.
func NormalizeMeta(m ServiceMeta) (ServiceMeta, error) {
	if math.IsNaN(m.ProtectThreshold) || m.ProtectThreshold < 0 || m.ProtectThreshold > 1 {
		return m, invalid("protect threshold %v is outside 0..1", m.ProtectThreshold)
	}
	if err := ValidateMetadata(m.Metadata); err != nil {
		return m, err
	}
	h := m.HealthCheck.WithDefaults()
	switch h.Type {
	case CheckTCP, CheckNone:
	case CheckHTTP:
		if len(h.HTTPPath) > 1024 || h.HTTPPath[0] != '/' || !utf8.ValidString(h.HTTPPath) {
			return m, invalid("health check path must start with / and be at most 1024 bytes of UTF-8")
		}
	default:
		return m, invalid("unknown health check type %d", h.Type)
	}
	if h.ExpectedStatus < 100 || h.ExpectedStatus > 599 {
		return m, invalid("expected status %d is outside 100..599", h.ExpectedStatus)
	}
	if h.IntervalMS < 1000 || h.IntervalMS > 300000 {
		return m, invalid("health check interval %d ms is outside 1000..300000", h.IntervalMS)
	}
	if h.UnhealthyThreshold < 1 || h.UnhealthyThreshold > 100 || h.HealthyThreshold < 1 || h.HealthyThreshold > 100 {
		return m, invalid("health check thresholds must be 1..100")
	}
	m.HealthCheck = h
	return m, nil
}
