package storage

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/regent-registry/regent/internal/naming"
)

// Format versions of encoded values (the first byte of every value).
const (
	instanceFormatV1 byte = 1
	metaFormatV1     byte = 1
)

type instanceRecord struct {
	IP        string            `json:"ip"`
	Port      int               `json:"p"`
	Cluster   string            `json:"c"`
	Weight    float64           `json:"w"`
	Healthy   bool              `json:"h,omitempty"`
	Enabled   bool              `json:"e,omitempty"`
	Ephemeral bool              `json:"eph,omitempty"`
	Metadata  map[string]string `json:"md,omitempty"`
}

type healthCheckRecord struct {
	Type               int    `json:"t"`
	HTTPPath           string `json:"path,omitempty"`
	ExpectedStatus     int    `json:"st,omitempty"`
	IntervalMS         int    `json:"iv,omitempty"`
	UnhealthyThreshold int    `json:"ut,omitempty"`
	HealthyThreshold   int    `json:"ht,omitempty"`
}

type metaRecord struct {
	ProtectThreshold float64           `json:"pt,omitempty"`
	Metadata         map[string]string `json:"md,omitempty"`
	HealthCheck      healthCheckRecord `json:"hc"`
}

func nilIfEmpty(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}

func encodeInstance(in naming.Instance) ([]byte, error) {
	b, err := json.Marshal(instanceRecord{
		IP: in.IP, Port: in.Port, Cluster: in.Cluster, Weight: in.Weight,
		Healthy: in.Healthy, Enabled: in.Enabled, Ephemeral: in.Ephemeral,
		Metadata: nilIfEmpty(in.Metadata),
	})
	if err != nil {
		return nil, fmt.Errorf("storage: encode instance %s: %w", in.ID(), err)
	}
	return append([]byte{instanceFormatV1}, b...), nil
}

// decodeInstance decodes v, which must not be used after the transaction;
// the result shares no memory with it.
func decodeInstance(v []byte) (naming.Instance, error) {
	if len(v) == 0 {
		return naming.Instance{}, fmt.Errorf("instance: empty value: %w", ErrCorrupt)
	}
	if v[0] != instanceFormatV1 {
		return naming.Instance{}, fmt.Errorf("instance: unknown format version %d: %w", v[0], ErrCorrupt)
	}
	var r instanceRecord
	if err := json.Unmarshal(v[1:], &r); err != nil {
		return naming.Instance{}, fmt.Errorf("instance: %v: %w", err, ErrCorrupt)
	}
	return naming.Instance{
		IP: r.IP, Port: r.Port, Cluster: r.Cluster, Weight: r.Weight,
		Healthy: r.Healthy, Enabled: r.Enabled, Ephemeral: r.Ephemeral,
		Metadata: nilIfEmpty(r.Metadata),
	}, nil
}

func encodeMeta(m naming.ServiceMeta) ([]byte, error) {
	h := m.HealthCheck
	b, err := json.Marshal(metaRecord{
		ProtectThreshold: m.ProtectThreshold,
		Metadata:         nilIfEmpty(m.Metadata),
		HealthCheck: healthCheckRecord{
			Type: int(h.Type), HTTPPath: h.HTTPPath, ExpectedStatus: h.ExpectedStatus,
			IntervalMS: h.IntervalMS, UnhealthyThreshold: h.UnhealthyThreshold,
			HealthyThreshold: h.HealthyThreshold,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("storage: encode service meta: %w", err)
	}
	return append([]byte{metaFormatV1}, b...), nil
}

func decodeMeta(v []byte) (naming.ServiceMeta, error) {
	if len(v) == 0 {
		return naming.ServiceMeta{}, fmt.Errorf("service meta: empty value: %w", ErrCorrupt)
	}
	if v[0] != metaFormatV1 {
		return naming.ServiceMeta{}, fmt.Errorf("service meta: unknown format version %d: %w", v[0], ErrCorrupt)
	}
	var r metaRecord
	if err := json.Unmarshal(v[1:], &r); err != nil {
		return naming.ServiceMeta{}, fmt.Errorf("service meta: %v: %w", err, ErrCorrupt)
	}
	h := r.HealthCheck
	return naming.ServiceMeta{
		ProtectThreshold: r.ProtectThreshold,
		Metadata:         nilIfEmpty(r.Metadata),
		HealthCheck: naming.HealthCheck{
			Type: naming.HealthCheckType(h.Type), HTTPPath: h.HTTPPath,
			ExpectedStatus: h.ExpectedStatus, IntervalMS: h.IntervalMS,
			UnhealthyThreshold: h.UnhealthyThreshold, HealthyThreshold: h.HealthyThreshold,
		},
	}, nil
}

func encodeUint64(i uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), i)
}

func decodeUint64(v []byte) (uint64, error) {
	if len(v) != 8 {
		return 0, fmt.Errorf("uint64 value of %d bytes: %w", len(v), ErrCorrupt)
	}
	return binary.BigEndian.Uint64(v), nil
}

// serviceBucketKey is a service's key in the revisions and metadata
// buckets, and the prefix of its instances' keys. No part may be empty or
// hold a '/' (the separator) or a 0 byte (which ends the prefix).
func serviceBucketKey(svc naming.ServiceKey) ([]byte, error) {
	for _, part := range []string{svc.Namespace, svc.Group, svc.Service} {
		if part == "" || strings.ContainsAny(part, "/\x00") {
			return nil, fmt.Errorf("%w: %q", ErrInvalidKey, svc.String())
		}
	}
	return []byte(svc.String()), nil
}
