package chaos

// Regression tests of product findings the suite made (see README.md,
// "Findings"); each failed before its fix.

import (
	"context"
	"os"
	"testing"
	"time"
)

// Every node is given the same --join list: node1's gossip address, node1
// included (one uniform configuration). node1 leaves gracefully (SIGTERM)
// and is started again on the same flags and data: it must rejoin.
//
// Before the fix, node1's join contacted only itself, memberlist counted
// that as one node contacted and the daemon never retried; the others kept
// node1 as "left" and never contacted it again, so node1 stayed a cluster
// of one (and Raft had removed it). Now a node never joins itself and
// also joins the peers it knew when it last ran (data-dir/peers.json).
func TestFindingSeedRejoinsAfterGracefulLeave(t *testing.T) {
	dir, err := os.MkdirTemp("", "regent-chaos-finding-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	bin, err := Build(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := NewCluster(ClusterConfig{Nodes: 3, Bin: bin, Dir: dir, SeedJoinsItself: true, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Stop()
	if err := cl.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.WaitFormed(ctx, 60*time.Second); err != nil {
		t.Fatalf("initial formation: %v (logs in %s)", err, dir)
	}
	n1 := cl.Nodes[0]
	if err := n1.Term(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := n1.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.WaitFormed(ctx, 45*time.Second); err != nil {
		t.Errorf("node1, restarted after a graceful leave with --join naming only itself, did not rejoin: %v (logs in %s)", err, dir)
		for _, l := range cl.GrepLogs("joined the cluster", 10) {
			t.Log(l)
		}
		return
	}
	os.RemoveAll(dir)
}
