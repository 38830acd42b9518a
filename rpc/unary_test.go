package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	regentv1 "github.com/regent-registry/regent/proto/regent/v1"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/internal/registry"
)

func ptr[T any](v T) *T { return &v }

func TestUnaryPersistentRegisterDeregister(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()

	r1, err := e.client.RegisterInstance(ctx, &regentv1.RegisterInstanceRequest{Service: svcRef("svc-p"), Instance: inst("10.0.0.1", 8080)})
	if err != nil {
		t.Fatalf("RegisterInstance: %v", err)
	}
	if r1.GetRevision() == 0 {
		t.Fatal("RegisterInstance returned revision 0")
	}
	resp, code := e.getService(t, "svc-p")
	if code != codes.OK {
		t.Fatalf("GetService: %v", code)
	}
	if got := resp.GetSnapshot().GetRevision(); got != r1.GetRevision() {
		t.Fatalf("GetService revision %d, RegisterInstance said %d: one service, one revision", got, r1.GetRevision())
	}
	ins := resp.GetSnapshot().GetInstances()
	if len(ins) != 1 {
		t.Fatalf("instances = %v, want 1", ins)
	}
	in := ins[0]
	if in.GetEphemeral() || in.Weight == nil || in.GetWeight() != 1 || in.Healthy == nil || !in.GetHealthy() ||
		in.Enabled == nil || !in.GetEnabled() || in.GetCluster() != "DEFAULT" || in.GetIp() != "10.0.0.1" || in.GetPort() != 8080 {
		t.Fatalf("instance = %v, want persistent with weight 1, healthy, enabled, cluster DEFAULT", in)
	}
	// Metadata defaults are reported for a service that never had any set.
	if hc := resp.GetMeta().GetHealthCheck(); hc.GetType() != regentv1.HealthCheck_TYPE_TCP || hc.GetIntervalMs() == 0 {
		t.Fatalf("default health check = %v", hc)
	}

	// Registering again with new settings updates in place.
	_, err = e.client.RegisterInstance(ctx, &regentv1.RegisterInstanceRequest{Service: svcRef("svc-p"), Instance: &regentv1.Instance{
		Ip: "10.0.0.1", Port: 8080, Weight: ptr(2.5), Enabled: ptr(false), Metadata: map[string]string{"v": "2"},
	}})
	if err != nil {
		t.Fatalf("RegisterInstance update: %v", err)
	}
	resp, _ = e.getService(t, "svc-p")
	if n := len(resp.GetSnapshot().GetInstances()); n != 0 {
		t.Fatalf("a disabled instance is listed (%d instances)", n)
	}

	// Deregister twice: both succeed.
	id := &regentv1.DeregisterInstanceRequest{Service: svcRef("svc-p"), Instance: inst("10.0.0.1", 8080)}
	d1, err := e.client.DeregisterInstance(ctx, id)
	if err != nil {
		t.Fatalf("DeregisterInstance: %v", err)
	}
	if d1.GetRevision() <= r1.GetRevision() {
		t.Fatalf("deregister revision %d not above %d", d1.GetRevision(), r1.GetRevision())
	}
	if _, err := e.client.DeregisterInstance(ctx, id); err != nil {
		t.Fatalf("second DeregisterInstance: %v", err)
	}
	// A service that had instances lists empty (or is not found).
	wantAddrs(t, "svc-p after deregister", e.listed(t, "svc-p"))
	_, err = e.client.DeregisterInstance(ctx, &regentv1.DeregisterInstanceRequest{Service: svcRef("svc-p"), Instance: inst("10.0.0.1", 0)})
	wantCode(t, "deregister with port 0", err, codes.InvalidArgument)

	// Ephemeral instances are not registered by unary calls.
	_, err = e.client.RegisterInstance(ctx, &regentv1.RegisterInstanceRequest{Service: svcRef("svc-p"), Instance: &regentv1.Instance{Ip: "10.0.0.1", Port: 80, Ephemeral: true}})
	wantCode(t, "ephemeral RegisterInstance", err, codes.InvalidArgument)
	for name, req := range map[string]*regentv1.RegisterInstanceRequest{
		"no service":  {Instance: inst("10.0.0.1", 80)},
		"no instance": {Service: svcRef("svc-p")},
		"port 0":      {Service: svcRef("svc-p"), Instance: inst("10.0.0.1", 0)},
		"weight -1":   {Service: svcRef("svc-p"), Instance: &regentv1.Instance{Ip: "10.0.0.1", Port: 80, Weight: ptr(-1.0)}},
	} {
		_, err := e.client.RegisterInstance(ctx, req)
		wantCode(t, name, err, codes.InvalidArgument)
	}
	wantAddrs(t, "svc-p after refused registers", e.listed(t, "svc-p"))
	if _, code := e.getService(t, "never-registered"); code != codes.NotFound {
		t.Fatalf("GetService of a service never registered: %v, want NotFound", code)
	}
}

// Every persistent write names the Raft leader in its response header
// while one is known, and only then; reads and refused writes name none.
func TestUnaryWritesNameTheLeader(t *testing.T) {
	var known atomic.Bool
	e := newEnv(t, envOptions{leader: func() (string, bool) { return "10.9.9.9:9101", known.Load() }})
	ctx := context.Background()
	writes := map[string]func(...grpc.CallOption) error{
		"RegisterInstance": func(o ...grpc.CallOption) error {
			_, err := e.client.RegisterInstance(ctx, &regentv1.RegisterInstanceRequest{Service: svcRef("svc-l"), Instance: inst("10.0.0.1", 80)}, o...)
			return err
		},
		"BatchRegisterInstances": func(o ...grpc.CallOption) error {
			_, err := e.client.BatchRegisterInstances(ctx, &regentv1.BatchRegisterInstancesRequest{Service: svcRef("svc-l"), Instances: []*regentv1.Instance{inst("10.0.0.2", 80)}}, o...)
			return err
		},
		"DeregisterInstance": func(o ...grpc.CallOption) error {
			_, err := e.client.DeregisterInstance(ctx, &regentv1.DeregisterInstanceRequest{Service: svcRef("svc-l"), Instance: inst("10.0.0.2", 80)}, o...)
			return err
		},
		"UpdateServiceMetadata": func(o ...grpc.CallOption) error {
			_, err := e.client.UpdateServiceMetadata(ctx, &regentv1.UpdateServiceMetadataRequest{Service: svcRef("svc-l"), Meta: &regentv1.ServiceMeta{ProtectThreshold: 0.5}}, o...)
			return err
		},
	}
	for _, k := range []bool{false, true} {
		known.Store(k)
		for name, call := range writes {
			var md metadata.MD
			if err := call(grpc.Header(&md)); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			got := md.Get(regentv1.LeaderHeader)
			if k && !slices.Equal(got, []string{"10.9.9.9:9101"}) || !k && len(got) != 0 {
				t.Errorf("%s with leader known=%v: header %q", name, k, got)
			}
		}
	}
	var md metadata.MD
	if _, err := e.client.GetService(ctx, &regentv1.GetServiceRequest{Service: svcRef("svc-l")}, grpc.Header(&md)); err != nil {
		t.Fatal(err)
	}
	if got := md.Get(regentv1.LeaderHeader); len(got) != 0 {
		t.Errorf("a read names the leader: %q", got)
	}
	md = nil
	if _, err := e.client.RegisterInstance(ctx, &regentv1.RegisterInstanceRequest{Service: svcRef("svc-l"), Instance: inst("", 80)}, grpc.Header(&md)); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad register: %v", err)
	}
	if got := md.Get(regentv1.LeaderHeader); len(got) != 0 {
		t.Errorf("a refused write names the leader: %q", got)
	}
}

func TestUnaryBatchRegister(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()
	batch := func(service string, ins ...*regentv1.Instance) error {
		_, err := e.client.BatchRegisterInstances(ctx, &regentv1.BatchRegisterInstancesRequest{Service: svcRef(service), Instances: ins})
		return err
	}
	if err := batch("svc-b", inst("10.0.0.1", 80), inst("10.0.0.2", 80), &regentv1.Instance{Ip: "10.0.0.1", Port: 80, Cluster: "c2"}); err != nil {
		t.Fatalf("BatchRegisterInstances: %v", err)
	}
	resp, _ := e.getService(t, "svc-b")
	if n := len(resp.GetSnapshot().GetInstances()); n != 3 {
		t.Fatalf("listed %d instances, want 3", n)
	}
	for _, in := range resp.GetSnapshot().GetInstances() {
		if in.GetEphemeral() {
			t.Fatalf("batch instance %v is ephemeral", in)
		}
	}

	for _, tc := range []struct {
		name string
		ins  []*regentv1.Instance
		want string
	}{
		{"one bad", []*regentv1.Instance{inst("10.0.1.1", 80), inst("10.0.1.2", 0), inst("10.0.1.3", 80)}, "instance 1"},
		{"duplicate", []*regentv1.Instance{inst("10.0.1.1", 80), inst("10.0.1.1", 80)}, "twice"},
		{"duplicate with default cluster spelled out", []*regentv1.Instance{inst("10.0.1.1", 80), {Ip: "10.0.1.1", Port: 80, Cluster: "DEFAULT"}}, "twice"},
		{"ephemeral", []*regentv1.Instance{inst("10.0.1.1", 80), {Ip: "10.0.1.2", Port: 80, Ephemeral: true}}, "ephemeral"},
		{"empty", nil, "batch of 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := batch("svc-new", tc.ins...)
			st := wantCode(t, tc.name, err, codes.InvalidArgument)
			if !strings.Contains(st.Message(), tc.want) {
				t.Fatalf("message %q does not contain %q", st.Message(), tc.want)
			}
			if _, code := e.getService(t, "svc-new"); code != codes.NotFound {
				t.Fatalf("GetService(svc-new) = %v: part of a refused batch was stored", code)
			}
		})
	}
	tooMany := make([]*regentv1.Instance, naming.MaxBatch+1)
	for i := range tooMany {
		tooMany[i] = inst(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), 80)
	}
	wantCode(t, "batch above MaxBatch", batch("svc-new", tooMany...), codes.InvalidArgument)
	if err := batch("svc-new", tooMany[:naming.MaxBatch]...); err != nil {
		t.Fatalf("batch of MaxBatch: %v", err)
	}
	if got := len(e.listed(t, "svc-new")); got != naming.MaxBatch {
		t.Fatalf("listed %d, want %d", got, naming.MaxBatch)
	}
	// The first batch is untouched by all this.
	if got := len(e.listed(t, "svc-b")); got != 3 {
		t.Fatalf("svc-b lists %d, want 3", got)
	}
}

func TestUnaryGetServiceAndProtection(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()

	_, err := e.client.GetService(ctx, &regentv1.GetServiceRequest{Service: svcRef("unknown")})
	wantCode(t, "unknown service", err, codes.NotFound)
	_, err = e.client.GetService(ctx, &regentv1.GetServiceRequest{Service: svcRef("")})
	wantCode(t, "empty service name", err, codes.InvalidArgument)
	_, err = e.client.GetService(ctx, &regentv1.GetServiceRequest{Service: svcRef("x"), Clusters: []string{"bad cluster"}})
	wantCode(t, "bad cluster filter", err, codes.InvalidArgument)

	um, err := e.client.UpdateServiceMetadata(ctx, &regentv1.UpdateServiceMetadataRequest{Service: svcRef("svc-h"), Meta: &regentv1.ServiceMeta{
		ProtectThreshold: 0.5, Metadata: map[string]string{"owner": "team-a"},
	}})
	if err != nil {
		t.Fatalf("UpdateServiceMetadata: %v", err)
	}
	if m := um.GetMeta(); m.GetProtectThreshold() != 0.5 || m.GetMetadata()["owner"] != "team-a" ||
		m.GetHealthCheck().GetType() != regentv1.HealthCheck_TYPE_TCP || m.GetHealthCheck().GetIntervalMs() == 0 {
		t.Fatalf("stored meta = %v, want threshold 0.5 and health-check defaults filled in", m)
	}
	// A service with metadata but no instances is found, and empty.
	resp, code := e.getService(t, "svc-h")
	if code != codes.OK || len(resp.GetSnapshot().GetInstances()) != 0 || resp.GetMeta().GetProtectThreshold() != 0.5 {
		t.Fatalf("GetService of a metadata-only service = %v, %v", resp, code)
	}

	_, err = e.client.BatchRegisterInstances(ctx, &regentv1.BatchRegisterInstancesRequest{Service: svcRef("svc-h"), Instances: []*regentv1.Instance{
		inst("10.0.0.1", 80),
		{Ip: "10.0.0.2", Port: 80, Healthy: ptr(false)},
		{Ip: "10.0.0.3", Port: 80, Healthy: ptr(false)},
		{Ip: "10.0.0.4", Port: 80, Healthy: ptr(false), Cluster: "c2"},
	}})
	if err != nil {
		t.Fatalf("BatchRegisterInstances: %v", err)
	}
	get := func(healthyOnly bool, clusters ...string) *regentv1.ServiceSnapshot {
		t.Helper()
		resp, err := e.client.GetService(ctx, &regentv1.GetServiceRequest{Service: svcRef("svc-h"), HealthyOnly: healthyOnly, Clusters: clusters})
		if err != nil {
			t.Fatalf("GetService: %v", err)
		}
		return resp.GetSnapshot()
	}
	sn := get(true)
	if len(sn.GetInstances()) != 4 || !sn.GetProtectionTriggered() || sn.GetProtectThreshold() != 0.5 {
		t.Fatalf("healthy_only with 1/4 healthy and threshold 0.5: %d instances, protected=%v, threshold=%v; want 4, true, 0.5",
			len(sn.GetInstances()), sn.GetProtectionTriggered(), sn.GetProtectThreshold())
	}
	sn = get(false)
	if len(sn.GetInstances()) != 4 || sn.GetProtectionTriggered() {
		t.Fatalf("unfiltered query: %d instances, protected=%v", len(sn.GetInstances()), sn.GetProtectionTriggered())
	}
	sn = get(false, "c2")
	wantAddrs(t, "cluster filter", addrs(sn), "10.0.0.4:80")

	// Protection off: healthy_only returns only the healthy one.
	if _, err := e.client.UpdateServiceMetadata(ctx, &regentv1.UpdateServiceMetadataRequest{Service: svcRef("svc-h"), Meta: &regentv1.ServiceMeta{ProtectThreshold: 0}}); err != nil {
		t.Fatalf("UpdateServiceMetadata: %v", err)
	}
	sn = get(true)
	wantAddrs(t, "healthy only without protection", addrs(sn), "10.0.0.1:80")
	if sn.GetProtectionTriggered() {
		t.Fatal("protection triggered with threshold 0")
	}

	for name, m := range map[string]*regentv1.ServiceMeta{
		"threshold 1.5":       {ProtectThreshold: 1.5},
		"threshold -0.1":      {ProtectThreshold: -0.1},
		"http without path":   {HealthCheck: &regentv1.HealthCheck{Type: regentv1.HealthCheck_TYPE_HTTP, HttpPath: "x"}},
		"unknown check type":  {HealthCheck: &regentv1.HealthCheck{Type: regentv1.HealthCheck_Type(42)}},
		"interval too short":  {HealthCheck: &regentv1.HealthCheck{IntervalMs: 10}},
		"huge interval":       {HealthCheck: &regentv1.HealthCheck{IntervalMs: 1 << 31}},
		"bad expected status": {HealthCheck: &regentv1.HealthCheck{Type: regentv1.HealthCheck_TYPE_HTTP, HttpPath: "/h", ExpectedStatus: 700}},
	} {
		_, err := e.client.UpdateServiceMetadata(ctx, &regentv1.UpdateServiceMetadataRequest{Service: svcRef("svc-h"), Meta: m})
		wantCode(t, name, err, codes.InvalidArgument)
	}
	if resp, _ := e.getService(t, "svc-h"); resp.GetMeta().GetProtectThreshold() != 0 {
		t.Fatalf("a refused update changed the threshold to %v", resp.GetMeta().GetProtectThreshold())
	}
	um, err = e.client.UpdateServiceMetadata(ctx, &regentv1.UpdateServiceMetadataRequest{Service: svcRef("svc-h"), Meta: &regentv1.ServiceMeta{
		HealthCheck: &regentv1.HealthCheck{Type: regentv1.HealthCheck_TYPE_HTTP, HttpPath: "/health"},
	}})
	if err != nil {
		t.Fatalf("HTTP health check: %v", err)
	}
	if hc := um.GetMeta().GetHealthCheck(); hc.GetType() != regentv1.HealthCheck_TYPE_HTTP || hc.GetHttpPath() != "/health" || hc.GetExpectedStatus() != 200 {
		t.Fatalf("stored health check = %v", hc)
	}
}

func TestUnaryGetServiceMergesEphemeralAndPersistent(t *testing.T) {
	e := newEnv(t, envOptions{})
	c, _ := e.open(t, "c", nil)
	c.requestOK(registerMsg("svc-m", inst("10.0.0.1", 80)))
	if _, err := e.client.RegisterInstance(context.Background(), &regentv1.RegisterInstanceRequest{Service: svcRef("svc-m"), Instance: inst("10.0.0.2", 80)}); err != nil {
		t.Fatal(err)
	}
	resp, _ := e.getService(t, "svc-m")
	var kinds []string
	for _, in := range resp.GetSnapshot().GetInstances() {
		kinds = append(kinds, fmt.Sprintf("%s:%v", in.GetIp(), in.GetEphemeral()))
	}
	if want := []string{"10.0.0.1:true", "10.0.0.2:false"}; !slices.Equal(kinds, want) {
		t.Fatalf("instances %v, want %v", kinds, want)
	}
	// The session's end removes only its own instance.
	c.closeSend()
	c.waitEnd()
	waitFor(t, "session removed", func() bool { return e.srv.Sessions().Count() == 0 })
	wantAddrs(t, "svc-m", e.listed(t, "svc-m"), "10.0.0.2:80")
}

func TestUnaryListServicesPaging(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()
	// Three persistent services and two ephemeral ones, in one namespace,
	// plus one in another namespace that must not be listed.
	for _, s := range []string{"svc-1", "svc-3", "svc-5"} {
		if _, err := e.client.RegisterInstance(ctx, &regentv1.RegisterInstanceRequest{Service: svcRef(s), Instance: inst("10.0.0.1", 80)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.client.RegisterInstance(ctx, &regentv1.RegisterInstanceRequest{
		Service: &regentv1.ServiceRef{Namespace: "other", Service: "svc-0"}, Instance: inst("10.0.0.1", 80),
	}); err != nil {
		t.Fatal(err)
	}
	c, _ := e.open(t, "c", nil)
	c.requestOK(registerMsg("svc-2", inst("10.0.0.1", 80), &regentv1.Instance{Ip: "10.0.0.2", Port: 80, Healthy: ptr(false)}))
	c.requestOK(registerMsg("svc-4", inst("10.0.0.1", 80)))

	var got []string
	token := ""
	pages := 0
	for {
		resp, err := e.client.ListServices(ctx, &regentv1.ListServicesRequest{PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatalf("ListServices page %d: %v", pages, err)
		}
		pages++
		if len(resp.GetServices()) > 2 {
			t.Fatalf("page %d has %d services, page size 2", pages, len(resp.GetServices()))
		}
		for _, s := range resp.GetServices() {
			if s.GetService().GetNamespace() != "public" || s.GetService().GetGroup() != "DEFAULT_GROUP" {
				t.Fatalf("listed %v outside public/DEFAULT_GROUP", s.GetService())
			}
			got = append(got, s.GetService().GetService())
			if s.GetService().GetService() == "svc-2" && (s.GetInstanceCount() != 2 || s.GetHealthyCount() != 1) {
				t.Fatalf("svc-2 summary %v, want 2 instances, 1 healthy", s)
			}
		}
		token = resp.GetNextPageToken()
		if token == "" {
			break
		}
		if pages > 10 {
			t.Fatal("paging does not end")
		}
	}
	if want := []string{"svc-1", "svc-2", "svc-3", "svc-4", "svc-5"}; !slices.Equal(got, want) {
		t.Fatalf("listed %v, want %v", got, want)
	}
	if pages != 3 {
		t.Fatalf("%d pages, want 3", pages)
	}

	all, err := e.client.ListServices(ctx, &regentv1.ListServicesRequest{})
	if err != nil || len(all.GetServices()) != 5 || all.GetNextPageToken() != "" {
		t.Fatalf("default page: %v, %v", all, err)
	}
	other, err := e.client.ListServices(ctx, &regentv1.ListServicesRequest{Namespace: "other"})
	if err != nil || len(other.GetServices()) != 1 || other.GetServices()[0].GetService().GetService() != "svc-0" {
		t.Fatalf("namespace other: %v, %v", other, err)
	}
	none, err := e.client.ListServices(ctx, &regentv1.ListServicesRequest{Group: "no-such-group"})
	if err != nil || len(none.GetServices()) != 0 {
		t.Fatalf("unknown group: %v, %v", none, err)
	}

	for name, req := range map[string]*regentv1.ListServicesRequest{
		"garbage token":         {PageToken: "garbage"},
		"token of another ns":   {PageToken: "other/DEFAULT_GROUP/svc-0"},
		"page size above limit": {PageSize: 1001},
		"bad namespace":         {Namespace: "bad ns"},
		"bad group":             {Group: "bad/group"},
	} {
		_, err := e.client.ListServices(ctx, req)
		wantCode(t, name, err, codes.InvalidArgument)
	}
}

func TestUnaryListMembers(t *testing.T) {
	members := []*regentv1.Member{
		{Name: "n1", Addr: "10.0.0.1:9848", Status: "alive", Raft: "leader"},
		{Name: "n2", Addr: "10.0.0.2:9848", Status: "suspect", Raft: "follower"},
	}
	e := newEnv(t, envOptions{members: func() []*regentv1.Member { return members }})
	resp, err := e.client.ListMembers(context.Background(), &regentv1.ListMembersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetMembers()) != 2 || resp.GetMembers()[0].GetName() != "n1" || resp.GetMembers()[1].GetStatus() != "suspect" ||
		resp.GetMembers()[0].GetRaft() != "leader" || resp.GetMembers()[1].GetAddr() != "10.0.0.2:9848" {
		t.Fatalf("members = %v", resp.GetMembers())
	}

	// Without a members function the list is empty, not an error.
	e2 := newEnv(t, envOptions{})
	resp, err = e2.client.ListMembers(context.Background(), &regentv1.ListMembersRequest{})
	if err != nil || len(resp.GetMembers()) != 0 {
		t.Fatalf("no members func: %v, %v", resp, err)
	}
}

func TestUnaryPanicBecomesInternal(t *testing.T) {
	e := newEnv(t, envOptions{members: func() []*regentv1.Member { panic("boom") }})
	_, err := e.client.ListMembers(context.Background(), &regentv1.ListMembersRequest{})
	st := wantCode(t, "panicking handler", err, codes.Internal)
	if strings.Contains(st.Message(), "boom") {
		t.Fatalf("panic value leaked to the client: %q", st.Message())
	}
	// The server survives.
	if _, code := e.getService(t, "x"); code != codes.NotFound {
		t.Fatalf("GetService after a panic: %v", code)
	}
}

func TestUnaryHealthAndReflection(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()
	hc := healthpb.NewHealthClient(e.conn)
	svc := regentv1.Registry_ServiceDesc.ServiceName

	_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
	wantCode(t, "health of the registry before SetServing", err, codes.NotFound)

	e.srv.SetServing(true)
	for _, name := range []string{"", svc} {
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: name})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health %q after SetServing(true): %v, %v", name, resp, err)
		}
	}
	e.srv.SetServing(false)
	for _, name := range []string{"", svc} {
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: name})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("health %q after SetServing(false): %v, %v", name, resp, err)
		}
	}

	rc := reflectionpb.NewServerReflectionClient(e.conn)
	stream, err := rc.ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{svc, "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Fatalf("reflection lists %v, missing %s", names, want)
		}
	}
	// The Registry's file descriptor is served too.
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: svc}}); err != nil {
		t.Fatal(err)
	}
	resp, err = stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Fatalf("no file descriptor for %s: %v", svc, resp)
	}
	_ = stream.CloseSend()
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("reflection stream end: %v", err)
	}
}

func TestUnaryMetrics(t *testing.T) {
	pr := prometheus.NewRegistry()
	e := newEnv(t, envOptions{metrics: pr})
	ctx := context.Background()
	for range 2 {
		_, _ = e.client.GetService(ctx, &regentv1.GetServiceRequest{Service: svcRef("unknown")})
	}
	if _, err := e.client.ListMembers(ctx, &regentv1.ListMembersRequest{}); err != nil {
		t.Fatal(err)
	}
	mfs, err := pr.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "regent_rpc_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			counts[labels["method"]+"/"+labels["code"]] = m.GetHistogram().GetSampleCount()
		}
	}
	if counts["GetService/NotFound"] != 2 || counts["ListMembers/OK"] != 1 || len(counts) != 2 {
		t.Fatalf("latency samples by method/code = %v, want GetService/NotFound 2, ListMembers/OK 1", counts)
	}

	// Registering the same metric twice is reported.
	cfg := DefaultConfig()
	if _, err := NewServer(cfg, Deps{Registry: e.reg, Metrics: pr}); err == nil {
		t.Fatal("a second server registered the same metric without error")
	}
}

func TestToStatus(t *testing.T) {
	if toStatus(nil) != nil {
		t.Fatal("toStatus(nil) != nil")
	}
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("x: %w", naming.ErrInvalid), codes.InvalidArgument},
		{fmt.Errorf("x: %w", registry.ErrNotFound), codes.NotFound},
		{fmt.Errorf("x: %w", ErrUnavailable), codes.Unavailable},
		{fmt.Errorf("x: %w", ErrFailedPrecondition), codes.FailedPrecondition},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
		{fmt.Errorf("wrapped: %w", &LimitExceededError{Limit: "countLimit", Value: 3}), codes.ResourceExhausted},
		{status.Error(codes.Aborted, "already a status"), codes.Aborted},
		{errors.New("something else"), codes.Internal},
	} {
		got := toStatus(tc.err)
		if status.Code(got) != tc.want {
			t.Errorf("toStatus(%v) = %v, want %v", tc.err, status.Code(got), tc.want)
		}
		if st, _ := status.FromError(got); !strings.Contains(st.Message(), strings.TrimPrefix(tc.err.Error(), "rpc error: code = Aborted desc = ")) {
			t.Errorf("toStatus(%v) lost the message: %q", tc.err, st.Message())
		}
	}
}
