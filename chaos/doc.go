// Package chaos is Regent's fault-injection suite: it starts real
// `regent server` processes, injects faults on a schedule drawn from a
// printed seed (SIGKILL and restart, SIGSTOP/SIGCONT, SIGTERM and restart,
// a node isolated or a minority partitioned off when it can make network
// namespaces, client processes killed, a client whose traffic is cut
// silently), runs
// SDK load meanwhile while recording every operation with its start, end
// and result, and then checks what the clients saw against the promises
// the cluster makes:
//
//   - no acknowledged persistent write is lost, and the persistent history
//     is linearizable (porcupine, one set-membership register per instance);
//   - every ephemeral instance of a live client is listed on every node
//     within a bound after the heal, and each node's subscriber ends with the
//     node's list;
//   - no instance of a dead client is listed past its bound (no zombie), and
//     none comes back once gone from every node (no resurrection);
//   - all nodes agree on membership and on the Raft configuration, exactly
//     one node ever bootstrapped, no node crashed, and every node's bbolt
//     files pass a consistency check after a final SIGKILL.
//
// The report prints the measured times, not only pass/fail. See README.md
// for how to run it (TestChaosShort, and cmd/regent-chaos for longer random
// schedules).
package chaos
