// Package persistent owns the write path of persistent instances and service
// metadata. Local writes straight into the bbolt store of package storage in
// one transaction per request; the Raft store that replaces it in a cluster
// applies the same operations (see Op) from its FSM, so the API layer does not
// change when consensus is put in front.
package persistent
