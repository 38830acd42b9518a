package ephemeral

import (
	"maps"
	"math/rand/v2"
	"testing"
)

// smallMap behaves as a Go map through its move from list to map and
// back down in size, under a random mix of puts and deletes checked
// against a map after every step.
func TestSmallMapActsAsAMap(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		var s smallMap[int, int]
		want := map[int]int{}
		keys := 1 + round%24 // both sides of smallMax
		for step := range 300 {
			k := r.IntN(keys)
			if r.IntN(3) == 0 {
				s.Delete(k)
				delete(want, k)
			} else {
				s.Put(k, step)
				want[k] = step
			}
			if s.Len() != len(want) {
				t.Fatalf("round %d step %d: Len %d, want %d", round, step, s.Len(), len(want))
			}
			for k := range keys {
				v, ok := s.Get(k)
				if w, wok := want[k]; ok != wok || v != w {
					t.Fatalf("round %d step %d: Get(%d) = %d %v, want %d %v", round, step, k, v, ok, w, wok)
				}
			}
			if got := maps.Collect(s.All()); !maps.Equal(got, want) {
				t.Fatalf("round %d step %d: All gave %v, want %v", round, step, got, want)
			}
		}
	}
}

func TestSmallMapNilReadsEmptyAndAllStops(t *testing.T) {
	var nilMap *smallMap[string, int]
	if _, ok := nilMap.Get("a"); ok || nilMap.Len() != 0 {
		t.Fatal("a nil smallMap is not empty")
	}
	for range nilMap.All() {
		t.Fatal("a nil smallMap yielded")
	}
	for _, n := range []int{3, 20} {
		s := newSmallMap[int, int](n)
		for i := range n {
			s.Put(i, i)
		}
		seen := 0
		for range s.All() {
			seen++
			if seen == 2 {
				break
			}
		}
		if seen != 2 {
			t.Fatalf("%d entries: All went on after a break", n)
		}
	}
}
