package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	regentv1 "github.com/regent-registry/regent/proto/regent/v1"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/internal/registry"
)

type recvResult struct {
	msg *regentv1.ClientMessage
	err error
}

// Session implements the Session stream: Hello first, then requests until
// the stream ends, the session is superseded, a probe goes unanswered or the
// node shuts down. Whatever ends it, its instances and subscriptions go.
//
// A session costs two goroutines: gRPC's handler goroutine, which runs the
// session's control and sends (acks, pushes, probes), and a receiver that
// reads the client's messages and serves each one as it arrives.
func (s *Server) Session(stream regentv1.Registry_SessionServer) error {
	ctx := stream.Context()
	first := make(chan recvResult, 1)
	opened := make(chan *session, 1)
	recvErr := make(chan error, 1)
	// The receiver ends when the handler returns, because grpc then
	// cancels the stream and Recv fails.
	go func() {
		m, err := stream.Recv()
		first <- recvResult{m, err}
		if err != nil {
			return
		}
		select {
		case sess := <-opened:
			recvErr <- s.receiveLoop(stream, sess)
		case <-ctx.Done():
		}
	}()

	hello, err := s.awaitHello(ctx, first)
	if err != nil {
		return err
	}
	sess, err := s.openSession(ctx, hello)
	if err != nil {
		return toStatus(err)
	}
	// Queued before the session is visible to the manager, so that nothing
	// it sends (a probe, a reconnect) can overtake the HelloReply. The queue
	// is new and holds at least one message: this never blocks.
	sess.out.tryPush(&regentv1.ServerMessage{Body: &regentv1.ServerMessage_HelloReply{HelloReply: &regentv1.HelloReply{
		SessionId:      sess.id,
		Node:           s.cfg.NodeName,
		KeepaliveMs:    uint32(s.cfg.Session.KeepaliveHint / time.Millisecond),
		SessionLookups: true,
	}}})
	sessCtx, cancel := context.WithCancelCause(ctx)
	sess.cancel = cancel
	sess.ctx = sessCtx
	if err := s.sessions.add(sess); err != nil {
		cancel(err)
		return toStatus(err)
	}
	// Take the client over (and fetch its state from its previous node if
	// this node has none) before the client sees the HelloReply and redoes,
	// and before the receiver serves its first request.
	s.eph.Connect(sessCtx, sess.clientID, hello.GetHello().GetPreviousNode())
	opened <- sess
	cause := s.sendLoop(sessCtx, stream, sess, recvErr)
	cancel(cause)
	// A request being served finishes first; none is served after.
	sess.handleMu.Lock()
	sess.ended = true
	sess.handleMu.Unlock()
	s.sessions.remove(sess, cause)
	if errors.Is(cause, io.EOF) || errors.Is(cause, context.Canceled) {
		return nil
	}
	return toStatus(cause)
}

func (s *Server) awaitHello(ctx context.Context, first <-chan recvResult) (*regentv1.ClientMessage, error) {
	timer := time.NewTimer(s.cfg.Session.HelloTimeout)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-timer.C:
		return nil, status.Errorf(codes.DeadlineExceeded, "no Hello within %v", s.cfg.Session.HelloTimeout)
	case r := <-first:
		if r.err != nil {
			return nil, r.err
		}
		if r.msg.GetHello() == nil {
			return nil, status.Error(codes.FailedPrecondition, "the first message of a session must be Hello")
		}
		return r.msg, nil
	}
}

func (s *Server) openSession(ctx context.Context, m *regentv1.ClientMessage) (*session, error) {
	h := m.GetHello()
	if err := naming.ValidateClientID(h.GetClientId()); err != nil {
		return nil, err
	}
	if len(h.GetClientName()) > 256 || len(h.GetSdkVersion()) > 256 {
		return nil, fmt.Errorf("%w: client name and sdk version are limited to 256 bytes", naming.ErrInvalid)
	}
	if !utf8.ValidString(h.GetClientName()) || !utf8.ValidString(h.GetSdkVersion()) || !utf8.ValidString(h.GetPreviousNode()) {
		return nil, fmt.Errorf("%w: client name, sdk version and previous node must be UTF-8", naming.ErrInvalid)
	}
	if err := naming.ValidateMetadata(h.GetLabels()); err != nil {
		return nil, err
	}
	ip := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		if host, _, err := net.SplitHostPort(p.Addr.String()); err == nil {
			ip = host
		} else {
			ip = p.Addr.String()
		}
	}
	return &session{
		id:       uuid.NewString(),
		clientID: h.GetClientId(),
		name:     h.GetClientName(),
		ip:       ip,
		app:      h.GetLabels()["app"],
		created:  s.sessions.clock.Now(),
		out:      newSendQueue(s.cfg.Session.SendQueue),
		pending:  make(map[naming.ServiceKey]registry.Snapshot),
		pushCh:   make(chan struct{}, 1),
		subs:     make(map[naming.ServiceKey]struct{}),
	}, nil
}

// receiveLoop reads and serves the session's requests, queueing their acks
// for the sender, until Recv fails or the session ends; it returns why.
func (s *Server) receiveLoop(stream regentv1.Registry_SessionServer, sess *session) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		s.sessions.touch(sess)
		ack, live := s.serve(sess, m)
		if !live {
			return context.Cause(sess.ctx)
		}
		if ack == nil {
			continue
		}
		if err := sess.out.push(sess.ctx, ack); err != nil {
			return err
		}
	}
}

// serve handles m unless the session has ended (live is then false): a
// request is either served before the session's clean-up or not at all.
func (s *Server) serve(sess *session, m *regentv1.ClientMessage) (ack *regentv1.ServerMessage, live bool) {
	sess.handleMu.Lock()
	defer sess.handleMu.Unlock()
	if sess.ended || sess.ctx.Err() != nil {
		return nil, false
	}
	return s.handle(sess, m), true
}

// sendLoop sends the session's acks, control messages and pushes until the
// session ends or the receiver stops, and returns why.
func (s *Server) sendLoop(ctx context.Context, stream regentv1.Registry_SessionServer, sess *session, recvErr <-chan error) error {
	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case err := <-recvErr:
			return err
		case <-sess.out.ready:
			for _, m := range sess.out.take() {
				if err := stream.Send(m); err != nil {
					return err
				}
			}
		case <-sess.pushCh:
			for _, sn := range sess.takePending() {
				if err := stream.Send(&regentv1.ServerMessage{Body: &regentv1.ServerMessage_Push{Push: &regentv1.Push{Snapshot: snapshotToProto(sn)}}}); err != nil {
					return err
				}
			}
		}
	}
}

func ackMsg(id uint64, err error) *regentv1.ServerMessage {
	if id == 0 {
		return nil
	}
	a := &regentv1.Ack{RequestId: id}
	if err != nil {
		st, _ := status.FromError(toStatus(err))
		a.Code, a.Message = int32(st.Code()), st.Message()
	}
	return &regentv1.ServerMessage{Body: &regentv1.ServerMessage_Ack{Ack: a}}
}

// handle serves one client message and returns the ack to send, if any.
func (s *Server) handle(sess *session, m *regentv1.ClientMessage) *regentv1.ServerMessage {
	id := m.GetRequestId()
	switch b := m.GetBody().(type) {
	case *regentv1.ClientMessage_Ping:
		return ackMsg(id, nil)
	case *regentv1.ClientMessage_ProbeReply:
		s.sessions.probeAnswered(sess, b.ProbeReply.GetProbeId())
		return nil
	case *regentv1.ClientMessage_Register:
		return ackMsg(id, s.registerEphemeral(sess, b.Register))
	case *regentv1.ClientMessage_Deregister:
		return ackMsg(id, s.deregisterEphemeral(sess, b.Deregister))
	case *regentv1.ClientMessage_RegisterAll:
		return ackMsg(id, s.registerAll(sess, b.RegisterAll))
	case *regentv1.ClientMessage_Subscribe:
		return ackMsg(id, s.subscribe(sess, b.Subscribe))
	case *regentv1.ClientMessage_Unsubscribe:
		return ackMsg(id, s.unsubscribe(sess, b.Unsubscribe))
	case *regentv1.ClientMessage_GetService:
		return s.sessionLookup(sess, id, b.GetService)
	case *regentv1.ClientMessage_Hello:
		return ackMsg(id, fmt.Errorf("%w: Hello was already sent on this session", ErrFailedPrecondition))
	default:
		return ackMsg(id, fmt.Errorf("%w: empty or unknown message", naming.ErrInvalid))
	}
}

// sessionLookup answers a get_service request in its ack. It is served
// inline, as the session's other requests are, so a linearizable read,
// which waits on a quorum, is refused here.
func (s *Server) sessionLookup(sess *session, id uint64, r *regentv1.GetServiceRequest) *regentv1.ServerMessage {
	if id == 0 {
		return nil // nobody would read the answer
	}
	if r.GetLinearizable() {
		return ackMsg(id, fmt.Errorf("%w: linearizable lookups go over the unary GetService, not a session", naming.ErrInvalid))
	}
	resp, err := s.getService(sess.ctx, r)
	if err != nil {
		return ackMsg(id, err)
	}
	m := ackMsg(id, nil)
	m.GetAck().Service = resp
	return m
}

func (s *Server) registerEphemeral(sess *session, r *regentv1.RegisterEphemeral) error {
	key, err := keyFromProto(r.GetService())
	if err != nil {
		return err
	}
	if len(r.GetInstances()) == 0 || len(r.GetInstances()) > naming.MaxBatch {
		return fmt.Errorf("%w: register carries %d instances, want 1..%d", naming.ErrInvalid, len(r.GetInstances()), naming.MaxBatch)
	}
	list := make([]naming.Instance, len(r.GetInstances()))
	for i, p := range r.GetInstances() {
		if list[i], err = instanceFromProto(p, true); err != nil {
			return err
		}
	}
	s.eph.Register(sess.clientID, key, list)
	return nil
}

// maxRegisterAll bounds the instances of one RegisterAll.
const maxRegisterAll = 10 * naming.MaxBatch

func (s *Server) registerAll(sess *session, r *regentv1.RegisterAll) error {
	services := make(map[naming.ServiceKey][]naming.Instance, len(r.GetServices()))
	total := 0
	for _, e := range r.GetServices() {
		key, err := keyFromProto(e.GetService())
		if err != nil {
			return err
		}
		total += len(e.GetInstances())
		if total > maxRegisterAll {
			return fmt.Errorf("%w: register-all carries more than %d instances", naming.ErrInvalid, maxRegisterAll)
		}
		list := services[key]
		for _, p := range e.GetInstances() {
			in, err := instanceFromProto(p, true)
			if err != nil {
				return err
			}
			list = append(list, in)
		}
		if len(list) > 0 {
			services[key] = list
		}
	}
	s.eph.Replace(sess.clientID, services)
	return nil
}

func (s *Server) deregisterEphemeral(sess *session, r *regentv1.DeregisterEphemeral) error {
	key, err := keyFromProto(r.GetService())
	if err != nil {
		return err
	}
	if len(r.GetInstances()) == 0 || len(r.GetInstances()) > naming.MaxBatch {
		return fmt.Errorf("%w: deregister carries %d instances, want 1..%d", naming.ErrInvalid, len(r.GetInstances()), naming.MaxBatch)
	}
	ids := make([]naming.InstanceID, len(r.GetInstances()))
	for i, p := range r.GetInstances() {
		if ids[i], err = idFromProto(p); err != nil {
			return err
		}
	}
	s.eph.Deregister(sess.clientID, key, ids)
	return nil
}

func filterFromProto(healthyOnly bool, clusters []string) (naming.Filter, error) {
	if len(clusters) > 64 {
		return naming.Filter{}, fmt.Errorf("%w: at most 64 clusters in a filter", naming.ErrInvalid)
	}
	for _, c := range clusters {
		if err := naming.ValidateCluster(c); err != nil {
			return naming.Filter{}, err
		}
	}
	return naming.Filter{HealthyOnly: healthyOnly, Clusters: clusters}, nil
}

// maxSubscriptions bounds what one session may subscribe to.
const maxSubscriptions = 10000

func (s *Server) subscribe(sess *session, r *regentv1.Subscribe) error {
	key, err := keyFromProto(r.GetService())
	if err != nil {
		return err
	}
	f, err := filterFromProto(r.GetHealthyOnly(), r.GetClusters())
	if err != nil {
		return err
	}
	sess.subMu.Lock()
	if _, ok := sess.subs[key]; !ok && len(sess.subs) >= maxSubscriptions {
		sess.subMu.Unlock()
		return fmt.Errorf("%w: a session holds at most %d subscriptions", ErrFailedPrecondition, maxSubscriptions)
	}
	sess.subs[key] = struct{}{}
	sess.subMu.Unlock()
	return s.reg.Subscribe(key, f, sess)
}

func (s *Server) unsubscribe(sess *session, r *regentv1.Unsubscribe) error {
	key, err := keyFromProto(r.GetService())
	if err != nil {
		return err
	}
	sess.subMu.Lock()
	delete(sess.subs, key)
	sess.subMu.Unlock()
	s.reg.Unsubscribe(key, sess)
	return nil
}
