// Package storage is Regent's durable store for persistent instances and
// service metadata, built on bbolt.
//
// All changes go through DB.Update, which runs one bbolt write transaction:
// several operations (and the raft applied index, see Tx.SetAppliedIndex)
// commit together or not at all. DB.Snapshot writes a consistent copy of the
// whole database and DB.Restore atomically replaces it, which is what a raft
// FSM needs for its snapshots.
//
// Layout (schema version 2; all names are declared in schema.go):
//
//	regent_meta/    schema version, raft applied index
//	service_rev/    <ns>/<group>/<service> -> revision, uint64 big-endian, only grows
//	service_meta/   <ns>/<group>/<service> -> encoded naming.ServiceMeta (optional)
//	instances/      <ns>/<group>/<service> 0x00 <ip>:<port>@<cluster> -> encoded naming.Instance
//
// Each kind of record lives in one flat bucket, so that the entries of one
// Raft batch touching many services share pages and a commit rewrites few
// of them. Values are one format-version byte followed by JSON. A service's
// revision is kept after its last instance is deleted, so that it keeps
// growing if the service comes back. A version 1 file (a nested bucket per
// service) is migrated in place by Open, and a version 1 snapshot by
// Restore (migrate.go).
//
// A Tx is only valid inside the function passed to Update or View; every
// value it returns is a copy and stays valid afterwards. Update and View must
// not be nested, and Restore must not be called from inside them.
package storage
