// Package health checks persistent instances from the server side, as Nacos
// does for its persistent (non-ephemeral) instances.
//
// Every service is checked by exactly one alive node: the member with the
// highest rendezvous weight for the service key (see Owner), so a membership
// change moves only the services of the members that came or went. The owner
// probes each instance of the service at the service's interval with the
// service's check (TCP connect, HTTP GET, or none) and records a change of
// health through a Writer (Raft in production) only after the configured
// number of consecutive results agree.
//
// The Checker keeps no state that matters across owners: counters start at
// zero on the node that takes a service over, and the stored Healthy flag is
// read back from the Source every round and compared with each verdict, so a
// takeover or a failed write delays a verdict by at most one threshold's
// worth of probes but never loses one. (A Source that lags behind the Writer
// can see the same verdict written twice; SetHealthy is idempotent.)
//
// The package depends on the rest of the daemon only through three small
// interfaces: Source (read persistent state), Writer (record a verdict) and
// Prober (run one check; NetProber is the real one).
package health
