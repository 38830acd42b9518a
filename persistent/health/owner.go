package health

import "github.com/regent-registry/regent/internal/naming"

// FNV-1a 64-bit parameters.
const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

// Owner returns the member that checks the service key: the one with the
// highest rendezvous (highest-random-weight) hash of its name and
// key.WithDefaults().String(). It is deterministic and does not depend on the
// order of members; a tie (practically impossible) goes to the smaller name.
// Removing a member moves only the services it owned; adding one moves to it
// only the services it now wins. Owner returns "" when members is empty.
func Owner(key naming.ServiceKey, members []string) string {
	return ownerOf(key.WithDefaults().String(), members)
}

// ownerOf is Owner for a key already rendered with defaults.
func ownerOf(key string, members []string) string {
	var best string
	var bestWeight uint64
	for i, m := range members {
		w := weight(m, key)
		if i == 0 || w > bestWeight || (w == bestWeight && m < best) {
			best, bestWeight = m, w
		}
	}
	return best
}

// weight is the rendezvous weight of member for key: FNV-1a 64 over
// member+"\x00"+key, finished with the murmur3 64-bit finalizer so that keys
// differing only in their last bytes still spread over all 64 bits (plain
// FNV-1a mixes the last bytes poorly into the high bits the comparison uses).
func weight(member, key string) uint64 {
	h := uint64(fnvOffset64)
	for i := 0; i < len(member); i++ {
		h ^= uint64(member[i])
		h *= fnvPrime64
	}
	h *= fnvPrime64 // the "\x00" separator: h ^= 0 is a no-op
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= fnvPrime64
	}
	return fmix64(h)
}

// fmix64 is murmur3's 64-bit finalizer: a bijection with full avalanche.
func fmix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
