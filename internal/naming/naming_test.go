package naming

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestNormalizeKey(t *testing.T) {
	k, err := NormalizeKey(ServiceKey{Service: "orders"})
	if err != nil {
		t.Fatal(err)
	}
	if k.Namespace != DefaultNamespace || k.Group != DefaultGroup {
		t.Fatalf("defaults not filled: %+v", k)
	}
	bad := []ServiceKey{
		{},
		{Service: "a/b"},
		{Service: "a b"},
		{Service: strings.Repeat("x", MaxServiceLen+1)},
		{Namespace: "n s", Service: "ok"},
		{Group: "g@g", Service: "ok"},
	}
	for _, b := range bad {
		if _, err := NormalizeKey(b); !errors.Is(err, ErrInvalid) {
			t.Errorf("NormalizeKey(%+v) = %v, want ErrInvalid", b, err)
		}
	}
	if _, err := NormalizeKey(ServiceKey{Service: "providers:com.x.Api:1.0@@g"}); err != nil {
		t.Errorf("dubbo-style name refused: %v", err)
	}
}

func TestServiceKeyStringRoundTrip(t *testing.T) {
	k := ServiceKey{Namespace: "ns", Group: "g", Service: "s:1@x"}
	got, ok := ParseServiceKey(k.String())
	if !ok || got != k {
		t.Fatalf("round trip %v -> %v %v", k, got, ok)
	}
	if _, ok := ParseServiceKey("only/two"); ok {
		t.Fatal("parsed a two-part key")
	}
}

func TestNormalizeInstance(t *testing.T) {
	good := Instance{IP: "10.0.0.1", Port: 8080, Weight: 1, Metadata: map[string]string{"v": "1"}}
	in, err := NormalizeInstance(good)
	if err != nil {
		t.Fatal(err)
	}
	if in.Cluster != DefaultCluster {
		t.Fatalf("cluster default not filled: %q", in.Cluster)
	}
	for _, ip := range []string{"::1", "fe80::1", "host-1.example.com", "localhost"} {
		g := good
		g.IP = ip
		if _, err := NormalizeInstance(g); err != nil {
			t.Errorf("ip %q refused: %v", ip, err)
		}
	}
	bigMeta := map[string]string{}
	for i := 0; i < 9; i++ {
		bigMeta[strings.Repeat("k", i+1)] = strings.Repeat("v", 1000)
	}
	manyMeta := map[string]string{}
	for i := 0; i <= MaxMetadataEntries; i++ {
		manyMeta[strings.Repeat("k", i+1)] = ""
	}
	cases := map[string]func(*Instance){
		"empty ip":        func(i *Instance) { i.IP = "" },
		"bad ip":          func(i *Instance) { i.IP = "10.0.0.1;rm" },
		"port 0":          func(i *Instance) { i.Port = 0 },
		"port 65536":      func(i *Instance) { i.Port = 65536 },
		"negative weight": func(i *Instance) { i.Weight = -1 },
		"huge weight":     func(i *Instance) { i.Weight = MaxWeight + 1 },
		"bad cluster":     func(i *Instance) { i.Cluster = "a/b" },
		"empty meta key":  func(i *Instance) { i.Metadata = map[string]string{"": "x"} },
		"long meta value": func(i *Instance) { i.Metadata = map[string]string{"k": strings.Repeat("v", MaxMetadataValueLen+1)} },
		"meta too big":    func(i *Instance) { i.Metadata = bigMeta },
		"meta too many":   func(i *Instance) { i.Metadata = manyMeta },
	}
	for name, mutate := range cases {
		in := good.Clone()
		mutate(&in)
		if _, err := NormalizeInstance(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
}

func TestNormalizeMeta(t *testing.T) {
	m, err := NormalizeMeta(ServiceMeta{ProtectThreshold: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	if m.HealthCheck != DefaultHealthCheck() {
		t.Fatalf("health check defaults: %+v", m.HealthCheck)
	}
	for _, bad := range []ServiceMeta{
		{ProtectThreshold: 1.5},
		{ProtectThreshold: -0.1},
		{HealthCheck: HealthCheck{Type: 9}},
		{HealthCheck: HealthCheck{Type: CheckHTTP, HTTPPath: "nope"}},
		{HealthCheck: HealthCheck{IntervalMS: 10}},
		{HealthCheck: HealthCheck{ExpectedStatus: 99}},
		{HealthCheck: HealthCheck{Type: CheckHTTP, HTTPPath: "/ok\xff"}},
		{Metadata: map[string]string{"k": "bad \xc3\x28"}},
		{Metadata: map[string]string{"\xffkey": "v"}},
	} {
		if _, err := NormalizeMeta(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("NormalizeMeta(%+v) = %v, want ErrInvalid", bad, err)
		}
	}
}

// Strings a node keeps must be UTF-8: gRPC's codec checked that on decode,
// Regent's (vtprotobuf) does not, so validation does.
func TestMetadataMustBeUTF8(t *testing.T) {
	if err := ValidateMetadata(map[string]string{"zone": "zürich-1"}); err != nil {
		t.Fatalf("UTF-8 metadata refused: %v", err)
	}
	in := Instance{IP: "10.0.0.1", Port: 80, Metadata: map[string]string{"v": "\xff"}}
	if _, err := NormalizeInstance(in); !errors.Is(err, ErrInvalid) {
		t.Fatalf("instance with invalid UTF-8 metadata: %v", err)
	}
}

func inst(ip string, cluster string, healthy, enabled bool) Instance {
	return Instance{IP: ip, Port: 80, Cluster: cluster, Weight: 1, Healthy: healthy, Enabled: enabled}
}

func TestSelect(t *testing.T) {
	all := []Instance{
		inst("10.0.0.3", "A", true, true),
		inst("10.0.0.1", "A", false, true),
		inst("10.0.0.2", "B", true, true),
		inst("10.0.0.4", "A", true, false),
	}
	out, prot := Select(all, Filter{}, 0)
	if len(out) != 3 || prot {
		t.Fatalf("no filter: %d instances, protected=%v", len(out), prot)
	}
	if out[0].IP != "10.0.0.1" || out[2].Cluster != "B" {
		t.Fatalf("not sorted by cluster, ip: %+v", out)
	}
	out, _ = Select(all, Filter{HealthyOnly: true}, 0)
	if len(out) != 2 {
		t.Fatalf("healthy only: got %d, want 2", len(out))
	}
	out, _ = Select(all, Filter{Clusters: []string{"B"}}, 0)
	if len(out) != 1 || out[0].IP != "10.0.0.2" {
		t.Fatalf("cluster filter: %+v", out)
	}
	if all[0].IP != "10.0.0.3" {
		t.Fatal("Select modified its input")
	}
}

func TestSelectProtectionThreshold(t *testing.T) {
	all := []Instance{
		inst("10.0.0.1", "A", true, true),
		inst("10.0.0.2", "A", false, true),
		inst("10.0.0.3", "A", false, true),
		inst("10.0.0.4", "A", false, true),
	}
	// 1 of 4 healthy = 25% < 50%: all returned, protection reported.
	out, prot := Select(all, Filter{HealthyOnly: true}, 0.5)
	if !prot || len(out) != 4 {
		t.Fatalf("threshold 0.5: protected=%v len=%d, want true 4", prot, len(out))
	}
	// 25% >= 20%: normal filtering.
	out, prot = Select(all, Filter{HealthyOnly: true}, 0.2)
	if prot || len(out) != 1 {
		t.Fatalf("threshold 0.2: protected=%v len=%d, want false 1", prot, len(out))
	}
	// Without healthy-only the threshold does not matter.
	_, prot = Select(all, Filter{}, 0.9)
	if prot {
		t.Fatal("protection reported without healthy-only")
	}
}

// The byte sets accept exactly what their regular expressions accept.
func TestCharsetsMatchTheirRegexps(t *testing.T) {
	for _, c := range []*charset{nameRE, serviceRE, clientIDRE} {
		re := regexp.MustCompile(c.String())
		inputs := []string{"", "a", "A-b_c.d", "svc:x@@y", "a b", "ü", "a/b", "-", "x\x00"}
		for b := range 256 {
			inputs = append(inputs, string([]byte{byte(b)}), "ok"+string([]byte{byte(b)}))
		}
		for _, in := range inputs {
			if got, want := c.MatchString(in), re.MatchString(in); got != want {
				t.Fatalf("%s on %q: %v, regexp says %v", c, in, got, want)
			}
		}
	}
}
