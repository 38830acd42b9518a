// Package storage is Regent's durable store for persistent instances and
// service metadata, built on bbolt.
//
// All changes go through DB.Update, which runs one bbolt write transaction:
// several operations (and the raft applied index, see Tx.SetAppliedIndex)
// commit together or not at all. DB.Snapshot writes a consistent copy of the
// whole database and DB.Restore atomically replaces it, which is what a raft
// FSM needs for its snapshots.
//
// Layout (all names are declared in schema.go):
//
//	regent_meta/             schema version, raft applied index
//	services/
//	  <ns>/<group>/<service>/  one nested bucket per service
//	    rev                    revision, uint64 big-endian, only grows
//	    meta                   encoded naming.ServiceMeta (optional)
//	    instances/
//	      <ip>:<port>@<cluster>  encoded naming.Instance
//
// Values are one format-version byte followed by JSON. A service bucket is
// kept after its last instance is deleted, so that its revision keeps
// growing if the service comes back.
//
// A Tx is only valid inside the function passed to Update or View; every
// value it returns is a copy and stays valid afterwards. Update and View must
// not be nested, and Restore must not be called from inside them.
package storage
