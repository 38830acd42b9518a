package rpc

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	regentv1 "github.com/regent-registry/regent/proto/regent/v1"

	"github.com/regent-registry/regent/internal/naming"
)

// RegisterInstance writes a persistent instance.
func (s *Server) RegisterInstance(ctx context.Context, r *regentv1.RegisterInstanceRequest) (*regentv1.RegisterInstanceResponse, error) {
	rev, err := s.registerPersistent(ctx, r)
	if err != nil {
		return nil, toStatus(err)
	}
	s.tellLeader(ctx)
	return &regentv1.RegisterInstanceResponse{Revision: rev}, nil
}

// registerPersistent is RegisterInstance's write, for the unary call and
// the Write stream alike: the service's revision after it.
func (s *Server) registerPersistent(ctx context.Context, r *regentv1.RegisterInstanceRequest) (uint64, error) {
	key, err := keyFromProto(r.GetService())
	if err != nil {
		return 0, err
	}
	if r.GetInstance().GetEphemeral() {
		return 0, fmt.Errorf("%w: ephemeral instances are registered over a Session", naming.ErrInvalid)
	}
	in, err := instanceFromProto(r.GetInstance(), false)
	if err != nil {
		return 0, err
	}
	rev, err := s.reg.Persistent().Register(ctx, key, []naming.Instance{in})
	if err != nil {
		return 0, err
	}
	return s.serviceRevision(key, rev), nil
}

// DeregisterInstance removes a persistent instance.
func (s *Server) DeregisterInstance(ctx context.Context, r *regentv1.DeregisterInstanceRequest) (*regentv1.DeregisterInstanceResponse, error) {
	rev, err := s.deregisterPersistent(ctx, r)
	if err != nil {
		return nil, toStatus(err)
	}
	s.tellLeader(ctx)
	return &regentv1.DeregisterInstanceResponse{Revision: rev}, nil
}

// deregisterPersistent is DeregisterInstance's write, for the unary call
// and the Write stream alike.
func (s *Server) deregisterPersistent(ctx context.Context, r *regentv1.DeregisterInstanceRequest) (uint64, error) {
	key, err := keyFromProto(r.GetService())
	if err != nil {
		return 0, err
	}
	id, err := idFromProto(r.GetInstance())
	if err != nil {
		return 0, err
	}
	rev, err := s.reg.Persistent().Deregister(ctx, key, id)
	if err != nil {
		return 0, err
	}
	return s.serviceRevision(key, rev), nil
}

// BatchRegisterInstances writes several persistent instances, all or none.
func (s *Server) BatchRegisterInstances(ctx context.Context, r *regentv1.BatchRegisterInstancesRequest) (*regentv1.BatchRegisterInstancesResponse, error) {
	key, err := keyFromProto(r.GetService())
	if err != nil {
		return nil, toStatus(err)
	}
	n := len(r.GetInstances())
	if n == 0 || n > naming.MaxBatch {
		return nil, toStatus(fmt.Errorf("%w: batch of %d instances, want 1..%d", naming.ErrInvalid, n, naming.MaxBatch))
	}
	list := make([]naming.Instance, n)
	seen := make(map[naming.InstanceID]bool, n)
	for i, p := range r.GetInstances() {
		if p.GetEphemeral() {
			return nil, toStatus(fmt.Errorf("%w: instance %d is ephemeral; register those over a Session", naming.ErrInvalid, i))
		}
		if list[i], err = instanceFromProto(p, false); err != nil {
			return nil, toStatus(fmt.Errorf("instance %d: %w", i, err))
		}
		if seen[list[i].ID()] {
			return nil, toStatus(fmt.Errorf("%w: instance %s appears twice in the batch", naming.ErrInvalid, list[i].ID()))
		}
		seen[list[i].ID()] = true
	}
	rev, err := s.reg.Persistent().Register(ctx, key, list)
	if err != nil {
		return nil, toStatus(err)
	}
	s.tellLeader(ctx)
	return &regentv1.BatchRegisterInstancesResponse{Revision: s.serviceRevision(key, rev)}, nil
}

// GetService answers a query.
func (s *Server) GetService(ctx context.Context, r *regentv1.GetServiceRequest) (*regentv1.GetServiceResponse, error) {
	resp, err := s.getService(ctx, r)
	if err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

// getService answers a lookup, unary or over a session.
func (s *Server) getService(ctx context.Context, r *regentv1.GetServiceRequest) (*regentv1.GetServiceResponse, error) {
	key, err := keyFromProto(r.GetService())
	if err != nil {
		return nil, err
	}
	f, err := filterFromProto(r.GetHealthyOnly(), r.GetClusters())
	if err != nil {
		return nil, err
	}
	if r.GetLinearizable() {
		// A store without a barrier (one node, no consensus) is
		// linearizable as it is.
		if b, ok := s.reg.Persistent().(barrier); ok {
			if err := b.Barrier(ctx); err != nil {
				return nil, err
			}
		}
	}
	snap, meta, err := s.reg.Get(key, f)
	if err != nil {
		return nil, err
	}
	return &regentv1.GetServiceResponse{Snapshot: snapshotToProto(snap), Meta: metaToProto(meta)}, nil
}

// barrier is the persistent side's read barrier (persistent.Store).
type barrier interface {
	Barrier(ctx context.Context) error
}

// ListServices pages through services.
func (s *Server) ListServices(_ context.Context, r *regentv1.ListServicesRequest) (*regentv1.ListServicesResponse, error) {
	ns := r.GetNamespace()
	if ns == "" {
		ns = naming.DefaultNamespace
	}
	probe := naming.ServiceKey{Namespace: ns, Group: r.GetGroup(), Service: "x"}
	if _, err := naming.NormalizeKey(probe); err != nil {
		return nil, toStatus(err)
	}
	size := int(r.GetPageSize())
	switch {
	case size == 0:
		size = 100
	case size > 1000:
		return nil, toStatus(fmt.Errorf("%w: page size %d above 1000", naming.ErrInvalid, size))
	}
	after := r.GetPageToken()
	if after != "" {
		k, ok := naming.ParseServiceKey(after)
		if !ok || k.Namespace != ns {
			return nil, toStatus(fmt.Errorf("%w: page token does not belong to namespace %q", naming.ErrInvalid, ns))
		}
	}
	page, next, err := s.reg.ListServices(ns, r.GetGroup(), after, size)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &regentv1.ListServicesResponse{NextPageToken: next}
	for _, p := range page {
		out.Services = append(out.Services, &regentv1.ServiceSummary{Service: keyToProto(p.Key), InstanceCount: uint32(p.Instances), HealthyCount: uint32(p.Healthy)})
	}
	return out, nil
}

// UpdateServiceMetadata replaces a service's settings.
func (s *Server) UpdateServiceMetadata(ctx context.Context, r *regentv1.UpdateServiceMetadataRequest) (*regentv1.UpdateServiceMetadataResponse, error) {
	key, err := keyFromProto(r.GetService())
	if err != nil {
		return nil, toStatus(err)
	}
	meta, err := metaFromProto(r.GetMeta())
	if err != nil {
		return nil, toStatus(err)
	}
	stored, err := s.reg.Persistent().UpdateMeta(ctx, key, meta)
	if err != nil {
		return nil, toStatus(err)
	}
	s.tellLeader(ctx)
	return &regentv1.UpdateServiceMetadataResponse{Meta: metaToProto(stored)}, nil
}

// ListMembers lists the cluster's nodes.
func (s *Server) ListMembers(context.Context, *regentv1.ListMembersRequest) (*regentv1.ListMembersResponse, error) {
	var members []*regentv1.Member
	if s.members != nil {
		members = s.members()
	}
	return &regentv1.ListMembersResponse{Members: members}, nil
}

// serviceRevision turns the persistent side's revision into the service
// revision that queries and pushes report (ephemeral plus persistent).
func (s *Server) serviceRevision(key naming.ServiceKey, persistentRev uint64) uint64 {
	return s.reg.Ephemeral().Revision(key) + persistentRev
}

// tellLeader sets regentv1.LeaderHeader on a persistent write's response
// when the leader is known. A header that cannot be set (the call already sent
// its headers) changes nothing: the hint is only a shortcut.
func (s *Server) tellLeader(ctx context.Context) {
	if s.leader == nil {
		return
	}
	if addr, ok := s.leader(); ok {
		_ = grpc.SetHeader(ctx, metadata.Pairs(regentv1.LeaderHeader, addr))
	}
}
