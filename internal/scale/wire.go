package scale

import (
	"encoding/base64"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/regent-registry/regent/ephemeral"
	"github.com/regent-registry/regent/internal/naming"
	clusterv1 "github.com/regent-registry/regent/proto/cluster/v1"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"
)

// Framing is the bytes a unary gRPC message costs beyond its body, counted
// for every request and every reply of both systems (both use unary gRPC
// between nodes): the 5-byte length prefix, the 9-byte HTTP/2 DATA frame
// header, and a HEADERS frame (9 bytes plus HPACK-indexed fields, about 20).
// TCP/IP headers and TLS are left out for both.
const Framing = 5 + 9 + 9 + 17

// ---- Regent: the protobuf messages rpc/peer.go sends, sized exactly ----
//
// The conversions mirror rpc/peer_convert.go (the *ToProto functions),
// which are not exported.

func versionPB(v ephemeral.Version) *clusterv1.Version {
	return &clusterv1.Version{Epoch: v.Epoch, Seq: v.Seq}
}

func instancePB(in *naming.Instance) *regentv1.Instance {
	w, h, e := in.Weight, in.Healthy, in.Enabled
	return &regentv1.Instance{
		Ip: in.IP, Port: uint32(in.Port), Cluster: in.Cluster,
		Weight: &w, Healthy: &h, Enabled: &e, Ephemeral: in.Ephemeral, Metadata: in.Metadata,
	}
}

func clientStatePB(c *ephemeral.ClientState) *clusterv1.ClientState {
	out := &clusterv1.ClientState{Id: c.ID, Owner: c.Owner, Version: versionPB(c.Version),
		Services: make([]*clusterv1.ServiceInstances, len(c.Services))}
	for i := range c.Services {
		s := &c.Services[i]
		ps := &clusterv1.ServiceInstances{
			Service:   &regentv1.ServiceRef{Namespace: s.Key.Namespace, Group: s.Key.Group, Service: s.Key.Service},
			Instances: make([]*regentv1.Instance, len(s.Instances)),
		}
		for j := range s.Instances {
			ps.Instances[j] = instancePB(&s.Instances[j])
		}
		out.Services[i] = ps
	}
	return out
}

func clientStatesPB(list []ephemeral.ClientState) []*clusterv1.ClientState {
	if len(list) == 0 {
		return nil
	}
	out := make([]*clusterv1.ClientState, len(list))
	for i := range list {
		out[i] = clientStatePB(&list[i])
	}
	return out
}

func regentSyncSize(r *ephemeral.SyncRequest) int {
	m := &clusterv1.SyncRequest{From: r.From, Changes: clientStatesPB(r.Changes)}
	for _, t := range r.Deletes {
		m.Deletes = append(m.Deletes, &clusterv1.Tombstone{Id: t.ID, Owner: t.Owner, Version: versionPB(t.Version)})
	}
	return proto.Size(m) + Framing
}

func regentSyncReplySize(r *ephemeral.SyncReply) int {
	return proto.Size(&clusterv1.SyncResponse{Applied: r.Applied}) + Framing
}

func regentVerifySize(r *ephemeral.VerifyRequest) int {
	m := &clusterv1.VerifyRequest{From: r.From, List: r.List,
		Digest: &clusterv1.Digest{Count: r.Digest.Count, Xor: r.Digest.Xor, Sum: r.Digest.Sum}}
	if len(r.Clients) > 0 {
		m.Clients = make([]*clusterv1.ClientVersion, len(r.Clients))
		for i, cv := range r.Clients {
			m.Clients[i] = &clusterv1.ClientVersion{Id: cv.ID, Version: versionPB(cv.Version)}
		}
	}
	return proto.Size(m) + Framing
}

func regentVerifyReplySize(r *ephemeral.VerifyReply) int {
	return proto.Size(&clusterv1.VerifyResponse{Match: r.Match, Want: r.Want}) + Framing
}

func regentQuerySize(r *ephemeral.QueryRequest) int {
	return proto.Size(&clusterv1.QueryRequest{From: r.From, Ids: r.IDs}) + Framing
}

func regentQueryReplySize(r *ephemeral.QueryReply) int {
	return proto.Size(&clusterv1.QueryResponse{Clients: clientStatesPB(r.Clients)}) + Framing
}

func regentSnapshotSize(r *ephemeral.SnapshotRequest) int {
	return proto.Size(&clusterv1.SnapshotRequest{From: r.From, Cursor: r.Cursor, MaxBytes: uint32(max(r.MaxBytes, 0))}) + Framing
}

func regentSnapshotReplySize(p *ephemeral.SnapshotPage) int {
	return proto.Size(&clusterv1.SnapshotResponse{Clients: clientStatesPB(p.Clients), Next: p.Next, Done: p.Done}) + Framing
}

// ---- Nacos: the JSON-in-protobuf messages of Nacos 2.x, estimated ----
//
// A cluster request is a Payload{Metadata{type, clientIp, headers},
// Any{value: JSON}} on the unary Request service (nacos.md §3.1); the JSON
// of a DistroDataRequest carries a DistroData whose content is the
// base64 of the Jackson JSON of a ClientSyncData (CHANGE) or a
// DistroClientVerifyInfo (VERIFY) (nacos.md §1.1, §1.5, §1.7). The shapes
// below follow those sections; values have the lengths of a real cluster
// (connection ids "<millis>_<ip>_<port>", member addresses ip:port).

// NacosSizes are the bytes of one Nacos message of each kind, framing
// included.
type NacosSizes struct {
	Change, Delete, Verify, Response int
}

type nacosDistroKey struct {
	ResourceKey  string `json:"resourceKey"`
	ResourceType string `json:"resourceType"`
	TargetServer string `json:"targetServer"`
}

type nacosDistroData struct {
	DistroKey nacosDistroKey `json:"distroKey"`
	Type      string         `json:"type"`
	Content   string         `json:"content,omitempty"` // byte[] as base64
}

type nacosDistroDataRequest struct {
	Headers       map[string]string `json:"headers"`
	RequestID     string            `json:"requestId"`
	DistroData    nacosDistroData   `json:"distroData"`
	DataOperation string            `json:"dataOperation"`
	Module        string            `json:"module"`
}

type nacosResponse struct {
	ResultCode int    `json:"resultCode"`
	ErrorCode  int    `json:"errorCode"`
	RequestID  string `json:"requestId"`
	Success    bool   `json:"success"`
}

type nacosPublishInfo struct {
	IP          string            `json:"ip"`
	Port        int               `json:"port"`
	Healthy     bool              `json:"healthy"`
	Cluster     string            `json:"cluster"`
	ExtendDatum map[string]string `json:"extendDatum"`
	MetadataID  string            `json:"metadataId"`
}

type nacosConnectionMeta struct {
	ConnectType             string            `json:"connectType"`
	ClientIP                string            `json:"clientIp"`
	RemoteIP                string            `json:"remoteIp"`
	RemotePort              int               `json:"remotePort"`
	LocalPort               int               `json:"localPort"`
	Version                 string            `json:"version"`
	ConnectionID            string            `json:"connectionId"`
	CreateTime              int64             `json:"createTime"`
	LastActiveTime          int64             `json:"lastActiveTime"`
	AppName                 string            `json:"appName"`
	Tenant                  string            `json:"tenant"`
	Labels                  map[string]string `json:"labels"`
	FirstPushQueueBlockTime int64             `json:"firstPushQueueBlockTime"`
	LastPushQueueBlockTime  int64             `json:"lastPushQueueBlockTime"`
}

type nacosClientSyncData struct {
	ClientID             string             `json:"clientId"`
	Attributes           map[string]any     `json:"attributes"`
	Namespaces           []string           `json:"namespaces"`
	GroupNames           []string           `json:"groupNames"`
	ServiceNames         []string           `json:"serviceNames"`
	InstancePublishInfos []nacosPublishInfo `json:"instancePublishInfos"`
	BatchInstanceData    map[string][]any   `json:"batchInstanceData"`
}

type nacosVerifyInfo struct {
	ClientID string `json:"clientId"`
	Revision int64  `json:"revision"`
}

// nacosPayloadSize is the protobuf size of a Payload carrying body as the
// JSON of a request or response of the given type.
func nacosPayloadSize(typ, clientIP string, body []byte) int {
	meta := protowire.SizeTag(3) + protowire.SizeBytes(len(typ)) + protowire.SizeTag(8) + protowire.SizeBytes(len(clientIP))
	anyMsg := protowire.SizeTag(2) + protowire.SizeBytes(len(body)) // Any.value, empty type_url
	return protowire.SizeTag(2) + protowire.SizeBytes(meta) + protowire.SizeTag(3) + protowire.SizeBytes(anyMsg)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("scale: marshal %T: %v", v, err)) // static shapes: cannot fail
	}
	return b
}

// NewNacosSizes sizes Nacos' messages for a client with one instance of a
// service named like the model's.
func NewNacosSizes() NacosSizes {
	const (
		connID  = "1767225600000_10.12.34.56_54321"
		member  = "10.0.0.17:7848"
		self    = "10.0.0.16"
		resType = "Nacos:Naming:v2:ClientData"
	)
	sync := nacosClientSyncData{
		ClientID: connID,
		Attributes: map[string]any{"clientAttributes": map[string]any{
			"revision":       1,
			"connectionType": "GRPC",
			"connectionMetadata": nacosConnectionMeta{
				ConnectType: "GRPC", ClientIP: "10.12.34.56", RemoteIP: "10.12.34.56", RemotePort: 54321,
				LocalPort: 9848, Version: "Nacos-Go-Client:v2.3.2", ConnectionID: connID,
				CreateTime: 1767225600000, LastActiveTime: 1767225600000, AppName: "-", Tenant: "",
				Labels: map[string]string{"source": "sdk", "module": "naming"},
			},
		}},
		Namespaces: []string{"public"}, GroupNames: []string{"DEFAULT_GROUP"}, ServiceNames: []string{"svc-00042"},
		InstancePublishInfos: []nacosPublishInfo{{IP: "10.12.34.56", Port: 8080, Healthy: true, Cluster: "DEFAULT",
			ExtendDatum: map[string]string{}, MetadataID: "10.12.34.56:8080:DEFAULT"}},
		BatchInstanceData: map[string][]any{"namespaces": {}, "groupNames": {}, "serviceNames": {}, "batchInstancePublishInfos": {}},
	}
	req := func(op string, content []byte) int {
		r := nacosDistroDataRequest{
			Headers: map[string]string{}, RequestID: "1234567",
			DistroData: nacosDistroData{
				DistroKey: nacosDistroKey{ResourceKey: connID, ResourceType: resType, TargetServer: member},
				Type:      op,
			},
			DataOperation: op, Module: "naming",
		}
		if content != nil {
			r.DistroData.Content = base64.StdEncoding.EncodeToString(content)
		}
		return nacosPayloadSize("DistroDataRequest", self, mustJSON(r)) + Framing
	}
	resp := mustJSON(nacosResponse{ResultCode: 200, RequestID: "1234567", Success: true})
	return NacosSizes{
		Change:   req("CHANGE", mustJSON(sync)),
		Delete:   req("DELETE", nil),
		Verify:   req("VERIFY", mustJSON(nacosVerifyInfo{ClientID: connID, Revision: 1})),
		Response: nacosPayloadSize("DistroDataResponse", self, resp) + Framing,
	}
}
