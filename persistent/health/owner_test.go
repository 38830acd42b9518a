package health

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/regent-registry/regent/internal/naming"
)

func serviceKeys(n int) []naming.ServiceKey {
	keys := make([]naming.ServiceKey, n)
	for i := range keys {
		keys[i] = naming.ServiceKey{Service: fmt.Sprintf("svc-%d", i)}
	}
	return keys
}

var fiveMembers = []string{"n1", "n2", "n3", "n4", "n5"}

func TestOwnerIsOneDeterministicMember(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, key := range serviceKeys(1000) {
		owner := Owner(key, fiveMembers)
		if !slices.Contains(fiveMembers, owner) {
			t.Fatalf("Owner(%v) = %q, not a member", key, owner)
		}
		if again := Owner(key, fiveMembers); again != owner {
			t.Fatalf("Owner(%v) = %q then %q", key, owner, again)
		}
		// Each node computes ownership from its own view of the member list:
		// the order of that list must not matter.
		shuffled := slices.Clone(fiveMembers)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if got := Owner(key, shuffled); got != owner {
			t.Fatalf("Owner(%v) over %v = %q, over %v = %q", key, shuffled, got, fiveMembers, owner)
		}
		// The defaulted spelling of a key is the same service.
		if got := Owner(key.WithDefaults(), fiveMembers); got != owner {
			t.Fatalf("Owner(%v) = %q, with defaults %q", key, owner, got)
		}
		// Exactly one member considers itself the owner.
		claims := 0
		for _, m := range fiveMembers {
			if Owner(key, fiveMembers) == m {
				claims++
			}
		}
		if claims != 1 {
			t.Fatalf("%v has %d owners", key, claims)
		}
	}
}

func TestOwnerEdgeCases(t *testing.T) {
	key := naming.ServiceKey{Service: "orders"}
	if got := Owner(key, nil); got != "" {
		t.Errorf("Owner with no members = %q, want empty", got)
	}
	if got := Owner(key, []string{"solo"}); got != "solo" {
		t.Errorf("Owner with one member = %q, want solo", got)
	}
	if got := Owner(key, []string{"a", "a", "b"}); got != Owner(key, []string{"a", "b"}) {
		t.Errorf("a duplicated member changes the owner to %q", got)
	}
}

// The weight must be exactly the documented hash: every node of a cluster,
// whatever its version, has to agree on every owner.
func TestOwnerWeightIsFNV1aFinalized(t *testing.T) {
	for _, tc := range []struct{ member, key string }{
		{"n1", "public/DEFAULT_GROUP/orders"},
		{"", ""},
		{"10.0.0.1:7403", "ns/group/a-very-long-service-name-with-many-bytes"},
	} {
		h := fnv.New64a()
		h.Write([]byte(tc.member + "\x00" + tc.key))
		if got, want := weight(tc.member, tc.key), fmix64(h.Sum64()); got != want {
			t.Errorf("weight(%q, %q) = %#x, want %#x", tc.member, tc.key, got, want)
		}
	}
	// Golden owners: a change here reassigns services between nodes running
	// different versions during a rolling upgrade.
	members := []string{"n1", "n2", "n3"}
	want := []string{"n1", "n1", "n2", "n3", "n1", "n3"}
	for i, key := range serviceKeys(len(want)) {
		if got := Owner(key, members); got != want[i] {
			t.Errorf("Owner(%v, %v) = %q, want %q", key, members, got, want[i])
		}
	}
}

func TestOwnerRemovingAMemberMovesOnlyItsServices(t *testing.T) {
	keys := serviceKeys(1000)
	before := make([]string, len(keys))
	for i, k := range keys {
		before[i] = Owner(k, fiveMembers)
	}
	for _, gone := range fiveMembers {
		rest := slices.DeleteFunc(slices.Clone(fiveMembers), func(m string) bool { return m == gone })
		moved := 0
		for i, k := range keys {
			after := Owner(k, rest)
			switch {
			case before[i] != gone && after != before[i]:
				t.Errorf("removing %s moved %v from %s (still alive) to %s", gone, k, before[i], after)
			case before[i] == gone:
				if !slices.Contains(rest, after) {
					t.Errorf("removing %s gave %v to %q, not a remaining member", gone, k, after)
				}
				moved++
			}
		}
		if moved == 0 {
			t.Errorf("%s owned nothing to move", gone)
		}
	}
}

func TestOwnerAddingAMemberMovesServicesOnlyToIt(t *testing.T) {
	keys := serviceKeys(1000)
	grown := append(slices.Clone(fiveMembers), "n6")
	gainedByNew := 0
	for _, k := range keys {
		before, after := Owner(k, fiveMembers), Owner(k, grown)
		if after != before && after != "n6" {
			t.Errorf("adding n6 moved %v from %s to %s", k, before, after)
		}
		if after == "n6" {
			gainedByNew++
		}
	}
	if gainedByNew == 0 {
		t.Error("the new member gained no service")
	}
}

func TestOwnerDistribution(t *testing.T) {
	counts := map[string]int{}
	for _, k := range serviceKeys(1000) {
		counts[Owner(k, fiveMembers)]++
	}
	t.Logf("services per member: %v", counts)
	for _, m := range fiveMembers {
		// 200 expected; the hash is deterministic, so this bound (8 standard
		// deviations below) only rejects a degenerate hash, never flakes.
		if counts[m] < 100 {
			t.Errorf("%s owns %d of 1000 services: %v", m, counts[m], counts)
		}
	}
	// Keys differing only in namespace or group spread too.
	counts = map[string]int{}
	for i := range 1000 {
		k := naming.ServiceKey{Namespace: fmt.Sprintf("ns-%d", i%10), Group: fmt.Sprintf("g-%d", i/10), Service: "same"}
		counts[Owner(k, fiveMembers)]++
	}
	for _, m := range fiveMembers {
		if counts[m] < 100 {
			t.Errorf("by namespace and group, %s owns %d of 1000 services: %v", m, counts[m], counts)
		}
	}
}
