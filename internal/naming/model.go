package naming

import (
	"maps"
	"sort"
	"strconv"
	"strings"
)

// Defaults, as in Nacos naming.
const (
	DefaultNamespace = "public"
	DefaultGroup     = "DEFAULT_GROUP"
	DefaultCluster   = "DEFAULT"
	DefaultWeight    = 1.0
)

// ServiceKey names a service: namespace, group and service name.
type ServiceKey struct {
	Namespace string
	Group     string
	Service   string
}

// WithDefaults fills an empty namespace or group.
func (k ServiceKey) WithDefaults() ServiceKey {
	if k.Namespace == "" {
		k.Namespace = DefaultNamespace
	}
	if k.Group == "" {
		k.Group = DefaultGroup
	}
	return k
}

// String renders the key as namespace/group/service. Names cannot contain
// '/', so the rendering is unambiguous and sorts by namespace, group, service.
func (k ServiceKey) String() string {
	return k.Namespace + "/" + k.Group + "/" + k.Service
}

// Compare orders keys by namespace, then group, then service.
func (k ServiceKey) Compare(o ServiceKey) int {
	if c := strings.Compare(k.Namespace, o.Namespace); c != 0 {
		return c
	}
	if c := strings.Compare(k.Group, o.Group); c != 0 {
		return c
	}
	return strings.Compare(k.Service, o.Service)
}

// ParseServiceKey is the inverse of String.
func ParseServiceKey(s string) (ServiceKey, bool) {
	parts := strings.SplitN(s, "/", 3)
	if len(parts) != 3 {
		return ServiceKey{}, false
	}
	return ServiceKey{Namespace: parts[0], Group: parts[1], Service: parts[2]}, true
}

// Instance is one endpoint of a service.
type Instance struct {
	IP        string
	Port      int
	Cluster   string
	Weight    float64
	Healthy   bool
	Enabled   bool
	Ephemeral bool
	Metadata  map[string]string
}

// InstanceID identifies an instance within its service.
type InstanceID struct {
	IP      string
	Port    int
	Cluster string
}

// String renders ip:port@cluster.
func (id InstanceID) String() string {
	return id.IP + ":" + strconv.Itoa(id.Port) + "@" + id.Cluster
}

// ID returns the instance's identity within its service.
func (in *Instance) ID() InstanceID {
	return InstanceID{IP: in.IP, Port: in.Port, Cluster: in.Cluster}
}

// Clone returns a deep copy.
func (in Instance) Clone() Instance {
	if in.Metadata != nil {
		in.Metadata = maps.Clone(in.Metadata)
	}
	return in
}

// Equal reports whether two instances carry the same data.
func (in *Instance) Equal(o *Instance) bool {
	return in.IP == o.IP && in.Port == o.Port && in.Cluster == o.Cluster &&
		in.Weight == o.Weight && in.Healthy == o.Healthy && in.Enabled == o.Enabled &&
		in.Ephemeral == o.Ephemeral && maps.Equal(in.Metadata, o.Metadata)
}

// SortInstances orders instances by cluster, ip, port: the order of every
// answer, so that equal sets print equally.
func SortInstances(list []Instance) {
	sort.Slice(list, func(i, j int) bool {
		a, b := &list[i], &list[j]
		if a.Cluster != b.Cluster {
			return a.Cluster < b.Cluster
		}
		if a.IP != b.IP {
			return a.IP < b.IP
		}
		return a.Port < b.Port
	})
}

// HealthCheckType is how the cluster checks persistent instances.
type HealthCheckType int

// Health-check kinds.
const (
	CheckTCP HealthCheckType = iota
	CheckHTTP
	CheckNone
)

// HealthCheck holds a service's check settings for persistent instances.
type HealthCheck struct {
	Type               HealthCheckType
	HTTPPath           string
	ExpectedStatus     int
	IntervalMS         int
	UnhealthyThreshold int
	HealthyThreshold   int
}

// ServiceMeta is a service's own settings.
type ServiceMeta struct {
	ProtectThreshold float64
	Metadata         map[string]string
	HealthCheck      HealthCheck
}

// DefaultHealthCheck is the check a service gets when none is set.
func DefaultHealthCheck() HealthCheck {
	return HealthCheck{Type: CheckTCP, ExpectedStatus: 200, IntervalMS: 5000, UnhealthyThreshold: 3, HealthyThreshold: 1}
}

// WithDefaults fills zero-valued check fields with their defaults.
func (h HealthCheck) WithDefaults() HealthCheck {
	d := DefaultHealthCheck()
	if h.ExpectedStatus == 0 {
		h.ExpectedStatus = d.ExpectedStatus
	}
	if h.IntervalMS == 0 {
		h.IntervalMS = d.IntervalMS
	}
	if h.UnhealthyThreshold == 0 {
		h.UnhealthyThreshold = d.UnhealthyThreshold
	}
	if h.HealthyThreshold == 0 {
		h.HealthyThreshold = d.HealthyThreshold
	}
	if h.Type == CheckHTTP && h.HTTPPath == "" {
		h.HTTPPath = "/"
	}
	return h
}
