// Package chaos is Regent's fault-injection suite: it starts real
// `regent server` processes, injects faults on a schedule drawn from a
// printed seed (SIGKILL and restart, SIGSTOP/SIGCONT, SIGTERM and restart,
// and, when it can make network namespaces, a node isolated, a minority
// partitioned off, a bridge node (the leader, or a follower with the
// leader on one side) that still reaches both sides of a partition, and
// SDK clients on the far side of a partition; client
// processes killed, a client whose traffic is cut silently), runs SDK load
// meanwhile while recording every operation with its start, end and
// result, and then checks what the clients saw against the promises the
// cluster makes:
//
//   - no acknowledged persistent write is lost, and the persistent history
//     is linearizable (porcupine, one set-membership register per instance);
//   - every ephemeral instance of a live client is listed on every node
//     within a bound after the heal, and each node's subscriber ends with the
//     node's list;
//   - no instance of a dead client is listed past its bound (no zombie), and
//     none comes back once gone from every node (no resurrection);
//   - clients on the far side of a partition stay listed on the nodes they
//     reach, and their persistent writes fail as unavailable (a minority
//     acknowledges none);
//   - all nodes agree on membership and on the Raft configuration, exactly
//     one node ever bootstrapped, no node crashed, and every node's bbolt
//     files pass a consistency check after a final SIGKILL.
//
// The report prints the measured times, not only pass/fail. See README.md
// for how to run it (TestChaosShort, and cmd/regent-chaos for longer random
// schedules).
package chaos
