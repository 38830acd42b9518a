package ephemeral

import (
	"iter"
	"slices"
)

// smallMax is how many entries a smallMap keeps in its list before it
// moves them to a Go map.
const smallMax = 8

// smallMap is a map for the few entries a client holds as a rule: a
// session per instance is one service of one instance. Up to smallMax
// entries live in a list that lookups scan; past that, in a Go map. A Go
// map's smallest table has 8 slots, 400-500 bytes for these keys, for
// the one entry it holds here, on every node for every client.
//
// The zero value is empty and ready. Reads on a nil *smallMap see it
// empty. Iteration order is unspecified, as a map's; the map must not be
// changed while All's sequence runs.
type smallMap[K comparable, V any] struct {
	list []smallEntry[K, V]
	m    map[K]V
}

type smallEntry[K comparable, V any] struct {
	k K
	v V
}

// newSmallMap returns a map sized for n entries.
func newSmallMap[K comparable, V any](n int) *smallMap[K, V] {
	if n > smallMax {
		return &smallMap[K, V]{m: make(map[K]V, n)}
	}
	return &smallMap[K, V]{list: make([]smallEntry[K, V], 0, n)}
}

func (s *smallMap[K, V]) Len() int {
	if s == nil {
		return 0
	}
	if s.m != nil {
		return len(s.m)
	}
	return len(s.list)
}

func (s *smallMap[K, V]) Get(k K) (V, bool) {
	if s != nil {
		if s.m != nil {
			v, ok := s.m[k]
			return v, ok
		}
		for i := range s.list {
			if s.list[i].k == k {
				return s.list[i].v, true
			}
		}
	}
	var zero V
	return zero, false
}

func (s *smallMap[K, V]) Put(k K, v V) {
	if s.m != nil {
		s.m[k] = v
		return
	}
	for i := range s.list {
		if s.list[i].k == k {
			s.list[i].v = v
			return
		}
	}
	if len(s.list) < smallMax {
		s.list = append(s.list, smallEntry[K, V]{k, v})
		return
	}
	s.m = make(map[K]V, 2*smallMax)
	for _, e := range s.list {
		s.m[e.k] = e.v
	}
	s.m[k] = v
	s.list = nil
}

func (s *smallMap[K, V]) Delete(k K) {
	if s.m != nil {
		delete(s.m, k)
		return
	}
	for i := range s.list {
		if s.list[i].k == k {
			s.list = slices.Delete(s.list, i, i+1)
			return
		}
	}
}

// All yields every entry.
func (s *smallMap[K, V]) All() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		if s == nil {
			return
		}
		if s.m != nil {
			for k, v := range s.m {
				if !yield(k, v) {
					return
				}
			}
			return
		}
		for _, e := range s.list {
			if !yield(e.k, e.v) {
				return
			}
		}
	}
}
