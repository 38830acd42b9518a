// Package scale is a scale model of Distro: it runs the real engine of
// package ephemeral for dozens of nodes and up to a million clients in one
// process, over the in-memory transport, on a virtual clock, and counts
// what each node sends. Beside it, a counting model of Nacos 2.x's Distro
// (one sync request per client change per peer after a 1 s merge, one
// verify request per client per peer every 5 s, a 3-minute lease) is fed
// the same schedule of registrations, moves, disconnects and one node
// failure, so the two are compared on identical load.
//
// The engines are never started: the driver calls Distro.Step and
// Distro.Sweep at the instants the virtual clock says they are due, one
// node at a time, so a run is deterministic for a given seed as far as the
// engine's map iteration allows (which clients share a batch, never when or
// how many).
package scale
