package ephemeral

import (
	"fmt"
	"slices"
	"testing"

	"github.com/regent-registry/regent/internal/naming"
)

func svcN(i int) naming.ServiceKey {
	return naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: fmt.Sprintf("s%02d", i)}
}

func TestDedupeLeavesAWellFormedStateAsItIs(t *testing.T) {
	for _, n := range []int{1, 8, 9, 20} { // both sides of the scan/set switch
		var in []ServiceInstances
		for i := range n {
			var ins []naming.Instance
			for j := range n {
				ins = append(ins, inst("10.0.0.1", 1000+j))
			}
			in = append(in, ServiceInstances{Key: svcN(i), Instances: ins})
		}
		out := dedupe(in)
		if len(out) != n || &out[0] != &in[0] {
			t.Fatalf("%d services: a well-formed state was rebuilt", n)
		}
	}
}

func TestDedupeKeepsOneOfEachServiceAndInstance(t *testing.T) {
	withMeta := func(port int, v string) naming.Instance {
		in := inst("10.0.0.1", port)
		in.Metadata = map[string]string{"v": v}
		return in
	}
	many := func(from, n int) []naming.Instance {
		var out []naming.Instance
		for j := range n {
			out = append(out, inst("10.0.0.2", from+j))
		}
		return out
	}
	cases := []struct {
		name string
		in   []ServiceInstances
		want map[naming.ServiceKey][]string // instance IDs, with metadata v
	}{
		{"instance twice in a service: the last wins",
			[]ServiceInstances{{Key: svcN(1), Instances: []naming.Instance{withMeta(80, "a"), withMeta(81, "x"), withMeta(80, "b")}}},
			map[naming.ServiceKey][]string{svcN(1): {"10.0.0.1:80@DEFAULT=b", "10.0.0.1:81@DEFAULT=x"}}},
		{"service twice: the union, the last instance wins",
			[]ServiceInstances{
				{Key: svcN(1), Instances: []naming.Instance{withMeta(80, "a")}},
				{Key: svcN(2), Instances: []naming.Instance{withMeta(90, "c")}},
				{Key: svcN(1), Instances: []naming.Instance{withMeta(81, "x"), withMeta(80, "b")}},
			},
			map[naming.ServiceKey][]string{svcN(1): {"10.0.0.1:80@DEFAULT=b", "10.0.0.1:81@DEFAULT=x"}, svcN(2): {"10.0.0.1:90@DEFAULT=c"}}},
		{"a service with no instance goes",
			[]ServiceInstances{{Key: svcN(1)}, {Key: svcN(2), Instances: []naming.Instance{withMeta(90, "c")}}},
			map[naming.ServiceKey][]string{svcN(2): {"10.0.0.1:90@DEFAULT=c"}}},
		{"an instance twice among many",
			[]ServiceInstances{{Key: svcN(1), Instances: append(many(1, 12), inst("10.0.0.2", 5))}},
			nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !hasDuplicates(tc.in) {
				t.Fatal("hasDuplicates missed it")
			}
			out := dedupe(tc.in)
			if hasDuplicates(out) {
				t.Fatalf("still duplicates: %+v", out)
			}
			if tc.want == nil {
				if len(out) != 1 || len(out[0].Instances) != 12 {
					t.Fatalf("%+v", out)
				}
				return
			}
			got := map[naming.ServiceKey][]string{}
			for _, s := range out {
				for _, in := range s.Instances {
					got[s.Key] = append(got[s.Key], in.ID().String()+"="+in.Metadata["v"])
				}
				slices.Sort(got[s.Key])
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	// Many services, one named twice: the set side of the check.
	var in []ServiceInstances
	for i := range 12 {
		in = append(in, ServiceInstances{Key: svcN(i), Instances: []naming.Instance{inst("10.0.0.3", 80)}})
	}
	in = append(in, ServiceInstances{Key: svcN(3), Instances: []naming.Instance{inst("10.0.0.3", 81)}})
	if !hasDuplicates(in) || len(dedupe(in)) != 12 {
		t.Fatal("a service named twice among many was not merged")
	}
}

// replaceClient drops the services a new state no longer names, with few
// services (a scan) and many (a set).
func TestReplaceClientDropsServicesItNoLongerNames(t *testing.T) {
	for _, n := range []int{3, 20} {
		s := NewStore(nil)
		var all []ServiceInstances
		for i := range n {
			all = append(all, ServiceInstances{Key: svcN(i), Instances: []naming.Instance{inst("10.0.0.4", 80)}})
		}
		if !s.replaceClient("c1", "n1", all) {
			t.Fatal("first state: no change")
		}
		kept := append([]ServiceInstances(nil), all[:n-2]...)
		if !s.replaceClient("c1", "n1", kept) {
			t.Fatal("second state: no change")
		}
		if s.replaceClient("c1", "n1", kept) {
			t.Fatal("the same state again counted as a change")
		}
		if got := s.ClientInstances("c1"); len(got) != n-2 || got[svcN(n-1)] != nil || got[svcN(0)] == nil {
			t.Fatalf("%d services: holds %d after dropping two", n, len(got))
		}
		if st := s.Stats(); st.Instances != n-2 || st.Services != n-2 {
			t.Fatalf("%d services: stats %+v", n, st)
		}
	}
}
