// Package membership tells a Regent node which other nodes are in its
// cluster and how to reach them. It wraps hashicorp/memberlist (SWIM gossip
// with failure detection) behind a small API, so that no other package
// imports memberlist.
//
// A node calls New (memberlist starts listening; the node is alive and
// alone), then Join or RetryJoin with the gossip addresses of a few seeds.
// Members lists every node with its Status and Meta (the gRPC, peer and
// Raft addresses, version and role the node gossips about itself); Peers
// lists the reachable others. Subscribe delivers Events about the other
// nodes (join, update, suspect, dead, left) to a Listener, in order, from
// one goroutine per Cluster. Leave announces a graceful departure; Shutdown
// stops.
//
// What memberlist lacks and this package adds:
//
//   - Left versus dead, and suspect. memberlist v0.7.0 reports a departure
//     through NotifyLeave without a usable state (Node.State is always
//     "alive", hashicorp/memberlist#293) and has no callback for suspicion.
//     This package reads the state memberlist keeps internally, under
//     memberlist's own lock (introspect.go), in NotifyLeave and in a poll
//     every Config.StatePollInterval. A suspect node that refutes the
//     suspicion is reported by EventJoin: it is alive again.
//   - A retained view: dead and left nodes stay in Members for
//     Config.DeadRetention, so operators can see what failed.
//   - Typed, versioned metadata: Meta is encoded with a format byte and
//     checked against memberlist's size limit (serf's tag encoding).
//   - slog logging: memberlist's "[LEVEL] memberlist: ..." lines are turned
//     into slog records at the matching level.
//
// What it deliberately does not do: application messages over gossip,
// coalescing of event bursts (consumers such as ephemeral debounce), and
// rejoining after Leave (memberlist cannot; create a new Cluster).
//
// Goroutines: besides memberlist's own, a Cluster runs a dispatcher, which
// owns the membership table and calls listeners, and a state poller. The
// memberlist delegates never block: they copy what they need and queue it
// for the dispatcher on an unbounded queue. Shutdown stops both, then
// memberlist.
package membership
