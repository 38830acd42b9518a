// Package ephemeral holds the instances that live as long as a client
// session: an in-memory store of clients, each owning any number of instances
// in any number of services, indexed by service for fast lookups.
//
// A client is identified by the stable client id its SDK keeps for life, not
// by the session, so that a later session of the same client (after a
// reconnect, or on another node once Distro replication lands) takes over its
// instances without a gap. Every client carries a revision that grows with
// each change and an owner (the node holding its session): the two things the
// Distro protocol replicates and compares.
//
// The store never blocks on I/O; it reports changed services to one observer
// function, called after its lock is released.
package ephemeral
