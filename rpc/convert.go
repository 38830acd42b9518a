package rpc

import (
	"maps"

	regentv1 "github.com/regent-registry/regent/proto/regent/v1"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/internal/registry"
)

func keyFromProto(r *regentv1.ServiceRef) (naming.ServiceKey, error) {
	if r == nil {
		return naming.NormalizeKey(naming.ServiceKey{})
	}
	return naming.NormalizeKey(naming.ServiceKey{Namespace: r.GetNamespace(), Group: r.GetGroup(), Service: r.GetService()})
}

func keyToProto(k naming.ServiceKey) *regentv1.ServiceRef {
	return &regentv1.ServiceRef{Namespace: k.Namespace, Group: k.Group, Service: k.Service}
}

// instanceFromProto applies wire defaults (weight 1, healthy, enabled) and
// validates.
func instanceFromProto(p *regentv1.Instance, ephemeral bool) (naming.Instance, error) {
	if p == nil {
		p = &regentv1.Instance{}
	}
	in := naming.Instance{
		IP:        p.GetIp(),
		Port:      int(p.GetPort()),
		Cluster:   p.GetCluster(),
		Weight:    naming.DefaultWeight,
		Healthy:   true,
		Enabled:   true,
		Ephemeral: ephemeral,
	}
	if p.Port > 65535 {
		in.Port = 0 // reported as out of range below, not wrapped
	}
	if p.Weight != nil {
		in.Weight = p.GetWeight()
	}
	if p.Healthy != nil {
		in.Healthy = p.GetHealthy()
	}
	if p.Enabled != nil {
		in.Enabled = p.GetEnabled()
	}
	if len(p.Metadata) > 0 {
		// Shared, not copied: p is a decoded request that nothing uses
		// after, and every store keeps its own copy of what it holds.
		in.Metadata = p.Metadata
	}
	return naming.NormalizeInstance(in)
}

// idFromProto reads an instance identity (ip, port, cluster) and validates it.
func idFromProto(p *regentv1.Instance) (naming.InstanceID, error) {
	in, err := instanceFromProto(&regentv1.Instance{Ip: p.GetIp(), Port: p.GetPort(), Cluster: p.GetCluster()}, false)
	return in.ID(), err
}

// instancesToProto converts a list of instances with four allocations
// whatever its length (the messages, their optional fields and the slice
// of pointers each come from one array), not four per instance: lookups,
// pushes and Distro syncs convert whole lists. The messages share the
// instances' metadata maps and are only to be encoded, never changed.
func instancesToProto(ins []naming.Instance) []*regentv1.Instance {
	n := len(ins)
	msgs := make([]regentv1.Instance, n)
	weights := make([]float64, n)
	flags := make([]bool, 2*n)
	out := make([]*regentv1.Instance, n)
	for i := range ins {
		in, m := &ins[i], &msgs[i]
		weights[i], flags[2*i], flags[2*i+1] = in.Weight, in.Healthy, in.Enabled
		m.Ip, m.Port, m.Cluster = in.IP, uint32(in.Port), in.Cluster
		m.Weight, m.Healthy, m.Enabled = &weights[i], &flags[2*i], &flags[2*i+1]
		m.Ephemeral, m.Metadata = in.Ephemeral, in.Metadata
		out[i] = m
	}
	return out
}

func snapshotToProto(s registry.Snapshot) *regentv1.ServiceSnapshot {
	return &regentv1.ServiceSnapshot{
		Service:             keyToProto(s.Key),
		Revision:            s.Revision,
		Instances:           instancesToProto(s.Instances),
		ProtectionTriggered: s.Protected,
		ProtectThreshold:    s.Threshold,
	}
}

func metaFromProto(p *regentv1.ServiceMeta) (naming.ServiceMeta, error) {
	if p == nil {
		p = &regentv1.ServiceMeta{}
	}
	m := naming.ServiceMeta{ProtectThreshold: p.GetProtectThreshold()}
	if len(p.Metadata) > 0 {
		m.Metadata = maps.Clone(p.Metadata)
	}
	if hc := p.GetHealthCheck(); hc != nil {
		switch hc.GetType() {
		case regentv1.HealthCheck_TYPE_UNSPECIFIED, regentv1.HealthCheck_TYPE_TCP:
			m.HealthCheck.Type = naming.CheckTCP
		case regentv1.HealthCheck_TYPE_HTTP:
			m.HealthCheck.Type = naming.CheckHTTP
		case regentv1.HealthCheck_TYPE_NONE:
			m.HealthCheck.Type = naming.CheckNone
		default:
			m.HealthCheck.Type = naming.HealthCheckType(-1) // refused by NormalizeMeta
		}
		m.HealthCheck.HTTPPath = hc.GetHttpPath()
		m.HealthCheck.ExpectedStatus = clampInt(hc.GetExpectedStatus())
		m.HealthCheck.IntervalMS = clampInt(hc.GetIntervalMs())
		m.HealthCheck.UnhealthyThreshold = clampInt(hc.GetUnhealthyThreshold())
		m.HealthCheck.HealthyThreshold = clampInt(hc.GetHealthyThreshold())
	}
	return naming.NormalizeMeta(m)
}

// clampInt keeps huge wire values huge (and so refused) on 32-bit platforms.
func clampInt(v uint32) int {
	if v > 1<<30 {
		return 1 << 30
	}
	return int(v)
}

func metaToProto(m naming.ServiceMeta) *regentv1.ServiceMeta {
	t := regentv1.HealthCheck_TYPE_TCP
	switch m.HealthCheck.Type {
	case naming.CheckHTTP:
		t = regentv1.HealthCheck_TYPE_HTTP
	case naming.CheckNone:
		t = regentv1.HealthCheck_TYPE_NONE
	}
	return &regentv1.ServiceMeta{
		ProtectThreshold: m.ProtectThreshold,
		Metadata:         m.Metadata,
		HealthCheck: &regentv1.HealthCheck{
			Type:               t,
			HttpPath:           m.HealthCheck.HTTPPath,
			ExpectedStatus:     uint32(m.HealthCheck.ExpectedStatus),
			IntervalMs:         uint32(m.HealthCheck.IntervalMS),
			UnhealthyThreshold: uint32(m.HealthCheck.UnhealthyThreshold),
			HealthyThreshold:   uint32(m.HealthCheck.HealthyThreshold),
		},
	}
}
