package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/regent-registry/regent/internal/naming"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"
)

// Service names a service; empty Namespace and Group take the defaults
// "public" and "DEFAULT_GROUP".
type Service struct {
	Namespace string `json:"namespace"`
	Group     string `json:"group"`
	Name      string `json:"service"`
}

func (s Service) key() (naming.ServiceKey, error) {
	return naming.NormalizeKey(naming.ServiceKey{Namespace: s.Namespace, Group: s.Group, Service: s.Name})
}

func serviceOf(k naming.ServiceKey) Service {
	return Service{Namespace: k.Namespace, Group: k.Group, Name: k.Service}
}

func (s Service) proto() *regentv1.ServiceRef {
	return &regentv1.ServiceRef{Namespace: s.Namespace, Group: s.Group, Service: s.Name}
}

// Instance is one endpoint. A zero Weight means the default 1.0 when
// registering; set Disabled or Unhealthy to register those states.
type Instance struct {
	IP        string            `json:"ip"`
	Port      int               `json:"port"`
	Cluster   string            `json:"cluster"`
	Weight    float64           `json:"weight"`
	Healthy   bool              `json:"healthy"`
	Enabled   bool              `json:"enabled"`
	Ephemeral bool              `json:"ephemeral"`
	Metadata  map[string]string `json:"metadata"`

	// Unhealthy and Disabled are for registering: the zero Instance is
	// healthy and enabled.
	Unhealthy bool `json:"-"`
	Disabled  bool `json:"-"`
}

func (in Instance) id() string {
	c := in.Cluster
	if c == "" {
		c = naming.DefaultCluster
	}
	return fmt.Sprintf("%s:%d@%s", in.IP, in.Port, c)
}

func (in Instance) proto() *regentv1.Instance {
	p := &regentv1.Instance{Ip: in.IP, Port: uint32(in.Port), Cluster: in.Cluster, Metadata: in.Metadata}
	if in.Port < 0 || in.Port > 65535 {
		p.Port = 0 // refused by the server as out of range
	}
	if in.Weight != 0 {
		w := in.Weight
		p.Weight = &w
	}
	if in.Unhealthy {
		f := false
		p.Healthy = &f
	}
	if in.Disabled {
		f := false
		p.Enabled = &f
	}
	return p
}

func instanceFromProto(p *regentv1.Instance) Instance {
	in := Instance{
		IP: p.GetIp(), Port: int(p.GetPort()), Cluster: p.GetCluster(),
		Weight: 1, Healthy: true, Enabled: true, Ephemeral: p.GetEphemeral(),
		Metadata: maps.Clone(p.GetMetadata()),
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
	return in
}

// ServiceInfo is a service's instance list at a revision.
type ServiceInfo struct {
	Service             Service    `json:"service"`
	Revision            uint64     `json:"revision"`
	Instances           []Instance `json:"instances"`
	ProtectionTriggered bool       `json:"protection_triggered"`
	// FromCache is true when the answer came from the local cache because
	// no server could be reached.
	FromCache bool `json:"from_cache,omitempty"`
}

func serviceInfoFromProto(p *regentv1.ServiceSnapshot) ServiceInfo {
	out := ServiceInfo{
		Service:             Service{Namespace: p.GetService().GetNamespace(), Group: p.GetService().GetGroup(), Name: p.GetService().GetService()},
		Revision:            p.GetRevision(),
		Instances:           make([]Instance, 0, len(p.GetInstances())),
		ProtectionTriggered: p.GetProtectionTriggered(),
	}
	for _, in := range p.GetInstances() {
		out.Instances = append(out.Instances, instanceFromProto(in))
	}
	return out
}

// Filter selects instances in queries and watches.
type Filter struct {
	HealthyOnly bool
	Clusters    []string
	// Linearizable (GetService only) skips the local cache and asks the
	// server for a linearizable read of the persistent instances: it
	// reflects every write acknowledged before the call, or fails with
	// ErrUnavailable when the cluster has no quorum.
	Linearizable bool
}

// Errors returned by the client; test with errors.Is.
var (
	ErrInvalid      = errors.New("regent: invalid argument")
	ErrNotFound     = errors.New("regent: not found")
	ErrUnavailable  = errors.New("regent: unavailable")
	ErrExhausted    = errors.New("regent: resource exhausted")
	ErrPrecondition = errors.New("regent: failed precondition")
	ErrClosed       = errors.New("regent: client closed")
)

var codeErrors = map[codes.Code]error{
	codes.InvalidArgument:    ErrInvalid,
	codes.NotFound:           ErrNotFound,
	codes.Unavailable:        ErrUnavailable,
	codes.ResourceExhausted:  ErrExhausted,
	codes.FailedPrecondition: ErrPrecondition,
}

// Error is an error answered by a server, carrying its gRPC code.
type Error struct {
	Code    codes.Code
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("regent: %s: %s", e.Code, e.Message) }

// Is matches the package's sentinels by code, and the context errors by
// the codes gRPC gives them, so errors.Is(err, context.DeadlineExceeded)
// holds for a call that ran out of time.
func (e *Error) Is(target error) bool {
	switch {
	case target == nil:
		return false
	case e.Code == codes.DeadlineExceeded && target == context.DeadlineExceeded,
		e.Code == codes.Canceled && target == context.Canceled:
		return true
	}
	return codeErrors[e.Code] == target
}

// GRPCStatus lets status.FromError see the code.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

func fromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	return &Error{Code: st.Code(), Message: st.Message()}
}

func fromAck(a *regentv1.Ack) error {
	if a.GetCode() == 0 {
		return nil
	}
	return &Error{Code: codes.Code(a.GetCode()), Message: a.GetMessage()}
}

// invalid reports a locally detected bad argument as the server would.
func invalid(err error) error {
	msg := strings.TrimPrefix(err.Error(), naming.ErrInvalid.Error()+": ")
	return &Error{Code: codes.InvalidArgument, Message: msg}
}
