package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A three-process cluster on 127.0.0.1, .2 and .3, joined through gossip
// with --join, driven with the CLI as an operator would.

type clusterNode struct {
	name                  string
	grpc, http, gossipAdr string
	args                  []string
	proc                  *proc
}

// restart starts the node's process again with the same flags (data dir
// and addresses), after it was killed.
func (n *clusterNode) restart(t *testing.T) {
	t.Helper()
	n.proc = startProc(t, n.args...)
}

// freeOn returns a free TCP port on ip (checked for UDP too, for gossip).
func freeOn(t *testing.T, ip string) string {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatalf("listen on %s: %v (is the 127.0.0.0/8 loopback usable?)", ip, err)
		}
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		if !handOut(addr) {
			continue
		}
		return addr
	}
	t.Fatalf("no free port on %s", ip)
	return ""
}

func startClusterNode(t *testing.T, i int, join string, extra ...string) *clusterNode {
	t.Helper()
	ip := fmt.Sprintf("127.0.0.%d", i)
	n := &clusterNode{name: fmt.Sprintf("node%d", i), grpc: freeOn(t, ip), http: freeOn(t, ip), gossipAdr: freeOn(t, ip)}
	args := []string{"server", "--name", n.name, "--data-dir", t.TempDir(),
		"--grpc-addr", n.grpc, "--http-addr", n.http, "--peer-addr", freeOn(t, ip), "--gossip-addr", n.gossipAdr,
		"--raft-addr", freeOn(t, ip), "--gossip-profile", "local", "--log-level", "debug",
		"--health-check-networks", "127.0.0.0/8"}
	if join != "" {
		args = append(args, "--join", join)
	}
	n.args = append(args, extra...)
	n.proc = startProc(t, n.args...)
	return n
}

func ready(httpAddr string) bool {
	resp, err := http.Get("http://" + httpAddr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

type memberOut struct {
	Name   string `json:"name"`
	Addr   string `json:"addr"`
	Status string `json:"status"`
	Raft   string `json:"raft"`
}

func membersOf(t *testing.T, server string) []memberOut {
	t.Helper()
	out, err := runCLI(t, "members", "--server", server, "-o", "json")
	if err != nil {
		return nil
	}
	var ms []memberOut
	if err := json.Unmarshal([]byte(out), &ms); err != nil {
		t.Fatalf("members -o json is not JSON: %v\n%s", err, out)
	}
	return ms
}

func statusOf(ms []memberOut, name string) string {
	for _, m := range ms {
		if m.Name == name {
			return m.Status
		}
	}
	return ""
}

func listed(t *testing.T, server, service, ip string) bool {
	l, err := listJSONOf(t, server, service)
	if err != nil {
		return false
	}
	for _, in := range l.Instances {
		if in.IP == ip {
			return true
		}
	}
	return false
}

func TestEndToEndThreeNodeCluster(t *testing.T) {
	n1 := startClusterNode(t, 1, "")
	// The others join through node1's gossip address; node3 also names
	// node2, and either answering is enough.
	n2 := startClusterNode(t, 2, n1.gossipAdr)
	n3 := startClusterNode(t, 3, n2.gossipAdr+","+n1.gossipAdr)
	nodes := []*clusterNode{n1, n2, n3}
	for _, n := range nodes {
		waitFor(t, n.name+" ready", 30*time.Second, func() bool { return ready(n.http) })
	}
	// node1, without --join, bootstrapped Raft alone; its leadership
	// added the others as voters once gossip showed them alive.
	waitFor(t, "every node to see three alive members, one Raft leader and two followers", 30*time.Second, func() bool {
		for _, n := range nodes {
			ms := membersOf(t, n.grpc)
			if len(ms) != 3 {
				return false
			}
			roles := map[string]int{}
			for _, m := range ms {
				if m.Status != "alive" {
					return false
				}
				roles[m.Raft]++
			}
			if roles["leader"] != 1 || roles["follower"] != 2 {
				return false
			}
		}
		return true
	})

	// An instance registered on node1 with the CLI is listed on all three.
	reg := startProc(t, "register", "--server", n1.grpc, "--service", "cl", "--ip", "10.9.0.1", "--port", "80")
	for _, n := range nodes {
		waitFor(t, "the instance on "+n.name, 10*time.Second, func() bool { return listed(t, n.grpc, "cl", "10.9.0.1") })
	}
	// kill -9 of the registering process: gone from all three.
	if err := reg.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		waitFor(t, "the killed client's instance to go from "+n.name, 10*time.Second, func() bool {
			l, err := listJSONOf(t, n.grpc, "cl")
			return err == nil && len(l.Instances) == 0
		})
	}

	// A client on node1 that knows all three servers; node1 is killed with
	// SIGKILL; the client reconnects and its instance stays listed on the
	// survivors, now owned by one of them.
	servers := strings.Join([]string{n1.grpc, n2.grpc, n3.grpc}, ",")
	mover := startProc(t, "register", "--server", servers, "--service", "mv", "--ip", "10.9.0.2", "--port", "80")
	for _, n := range nodes {
		waitFor(t, "the mover on "+n.name, 10*time.Second, func() bool { return listed(t, n.grpc, "mv", "10.9.0.2") })
	}
	if err := n1.proc.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-n1.proc.done
	waitFor(t, "gossip to declare node1 dead on the survivors", 30*time.Second, func() bool {
		return statusOf(membersOf(t, n2.grpc), "node1") == "dead" && statusOf(membersOf(t, n3.grpc), "node1") == "dead"
	})
	// Past the owner grace, the client is still listed: it moved.
	time.Sleep(2 * time.Second)
	for _, n := range []*clusterNode{n2, n3} {
		waitFor(t, "the moved client on "+n.name, 10*time.Second, func() bool { return listed(t, n.grpc, "mv", "10.9.0.2") })
	}
	select {
	case <-mover.done:
		t.Fatalf("the registering client exited: %v\n%s", mover.err, mover.out.String())
	default:
	}
}

// raftRoles counts the Raft roles in server's members list.
func raftRoles(t *testing.T, server string) map[string]int {
	roles := map[string]int{}
	for _, m := range membersOf(t, server) {
		if m.Status == "alive" {
			roles[m.Raft]++
		}
	}
	return roles
}

// Three processes formed with --bootstrap-expect 3; persistent instances
// registered with the CLI through every node; every process is killed with
// SIGKILL and started again on its data: every acknowledged write is listed
// on every node, and exactly one node ever bootstrapped. On each Raft log
// store.
func TestEndToEndPersistentSurvivesKillOfEveryNode(t *testing.T) {
	for _, store := range []string{"boltdb", "wal"} {
		t.Run(store, func(t *testing.T) { persistentSurvivesKillOfEveryNode(t, store) })
	}
}

func persistentSurvivesKillOfEveryNode(t *testing.T, store string) {
	n1 := startClusterNode(t, 1, "", "--bootstrap-expect", "3", "--raft-log-store", store)
	n2 := startClusterNode(t, 2, n1.gossipAdr, "--bootstrap-expect", "3", "--raft-log-store", store)
	n3 := startClusterNode(t, 3, n1.gossipAdr, "--bootstrap-expect", "3", "--raft-log-store", store)
	nodes := []*clusterNode{n1, n2, n3}
	formed := func() bool {
		for _, n := range nodes {
			if r := raftRoles(t, n.grpc); r["leader"] != 1 || r["follower"] != 2 {
				return false
			}
		}
		return true
	}
	waitFor(t, "a Raft leader and two followers", 60*time.Second, formed)
	var ips []string
	for i := range 6 {
		n := nodes[i%3]
		ip := fmt.Sprintf("10.9.1.%d", i+1)
		if out, err := runCLI(t, "register", "--persistent", "--server", n.grpc, "--service", "pers", "--ip", ip, "--port", "80"); err != nil {
			t.Fatalf("persistent register through %s: %v\n%s", n.name, err, out)
		}
		ips = append(ips, ip)
	}
	for _, n := range nodes {
		if err := n.proc.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-n.proc.done
	}
	before := ""
	for _, n := range nodes {
		before += n.proc.out.String()
	}
	for _, n := range nodes {
		n.restart(t)
	}
	waitFor(t, "the cluster to re-form after kill -9 of every node", 60*time.Second, formed)
	for _, n := range nodes {
		for _, ip := range ips {
			if !listed(t, n.grpc, "pers", ip) {
				t.Fatalf("%s lost acknowledged write %s", n.name, ip)
			}
		}
		waitFor(t, n.name+" ready", 30*time.Second, func() bool { return ready(n.http) })
	}
	after := ""
	for _, n := range nodes {
		after += n.proc.out.String()
	}
	if got := strings.Count(before+after, "bootstrapped the Raft cluster"); got != 1 {
		t.Fatalf("%d bootstraps logged over both runs, want exactly 1", got)
	}
	// Writes go on after the restart.
	if out, err := runCLI(t, "register", "--persistent", "--server", n3.grpc, "--service", "pers", "--ip", "10.9.1.99", "--port", "80"); err != nil {
		t.Fatalf("write after the restart: %v\n%s", err, out)
	}
}
