package regentv1

// LeaderHeader is the response header in which a node names the Raft
// leader's client (gRPC) address, host:port as the leader listens (its own
// when it leads), after a persistent write (RegisterInstance,
// DeregisterInstance, BatchRegisterInstances, UpdateServiceMetadata). A
// client with a connection to that address may send its next persistent
// writes there: a follower forwards them there, one hop longer. Any node
// still takes them.
const LeaderHeader = "regent-leader"
