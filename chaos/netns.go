package chaos

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
)

// Netns is the "namespace" mode's network: one network namespace per node,
// each joined by a veth pair to a bridge that the harness creates, on a
// /24 of 198.18.0.0/15 (the range reserved for benchmarking) that no
// interface of the host uses. The harness, in the host's namespace, reaches
// the nodes through the bridge's address (.254); the servers listen only on
// their namespace's address. A second bridge without any address is the
// far side of a partition: a node whose link is moved there can talk to the
// other nodes moved there, and to nobody else (nor to the clients). Taking
// a node's link down isolates it. Cut splits nodes per pair instead, by
// blackhole routes inside their namespaces: the nodes cut from each other
// still reach every other node and the harness (a bridge node that sees
// both sides; clients that still reach a minority). Everything is removed
// by Close.
type Netns struct {
	id       string
	subnet   string // "198.18.K"
	bridge   string // the main side, with the harness's address
	island   string // the far side of a partition
	ns, host []string

	mu   sync.Mutex
	cuts [][2]int // blackhole routes in place: in ns[c[0]] to IP(c[1])
}

// NetnsAvailable says why namespaces cannot be made here ("" when they
// can): it needs root and iproute2.
func NetnsAvailable() string {
	if os.Geteuid() != 0 {
		return "not root"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "no ip (iproute2) command"
	}
	return ""
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// NewNetns makes the network for n nodes.
func NewNetns(n int) (_ *Netns, err error) {
	if why := NetnsAvailable(); why != "" {
		return nil, errors.New("chaos: network namespaces: " + why)
	}
	out, err := exec.Command("ip", "-4", "-o", "addr", "show").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("chaos: ip addr: %v: %s", err, out)
	}
	routes, _ := exec.Command("ip", "-4", "route", "show", "table", "all").CombinedOutput()
	used := string(out) + string(routes)
	x := &Netns{id: fmt.Sprintf("%04x", rand.IntN(1<<16))}
	for range 100 {
		k := 10 + rand.IntN(240)
		if !strings.Contains(used, fmt.Sprintf("198.18.%d.", k)) && !strings.Contains(used, "198.18.0.0/15") {
			x.subnet = fmt.Sprintf("198.18.%d", k)
			break
		}
	}
	if x.subnet == "" {
		return nil, errors.New("chaos: no free /24 in 198.18.0.0/15")
	}
	bridge, island := "rgc"+x.id+"b", "rgc"+x.id+"i"
	defer func() {
		if err != nil {
			x.Close()
		}
	}()
	// Each thing is recorded for Close only once this run created it, so
	// that a name clash never removes another run's namespace or link.
	if err := ipCmd("link", "add", bridge, "type", "bridge"); err != nil {
		return nil, err
	}
	x.bridge = bridge
	if err := ipCmd("link", "add", island, "type", "bridge"); err != nil {
		return nil, err
	}
	x.island = island
	for _, s := range [][]string{{"addr", "add", x.subnet + ".254/24", "dev", bridge}, {"link", "set", bridge, "up"}, {"link", "set", island, "up"}} {
		if err := ipCmd(s...); err != nil {
			return nil, err
		}
	}
	for i := range n {
		ns, host, peer := fmt.Sprintf("rgc%sn%d", x.id, i+1), fmt.Sprintf("rgc%sh%d", x.id, i+1), fmt.Sprintf("rgc%sp%d", x.id, i+1)
		if err := ipCmd("netns", "add", ns); err != nil {
			return nil, err
		}
		x.ns = append(x.ns, ns)
		if err := ipCmd("link", "add", host, "type", "veth", "peer", "name", peer); err != nil {
			return nil, err
		}
		x.host = append(x.host, host)
		steps := [][]string{
			{"link", "set", host, "master", bridge},
			{"link", "set", host, "up"},
			{"link", "set", peer, "netns", ns},
			{"-n", ns, "link", "set", peer, "name", "eth0"},
			{"-n", ns, "addr", "add", x.IP(i) + "/24", "dev", "eth0"},
			{"-n", ns, "link", "set", "eth0", "up"},
			{"-n", ns, "link", "set", "lo", "up"},
		}
		for _, s := range steps {
			if err := ipCmd(s...); err != nil {
				return nil, err
			}
		}
	}
	return x, nil
}

// IP is node i's address (0-based i).
func (x *Netns) IP(i int) string { return fmt.Sprintf("%s.%d", x.subnet, i+1) }

// Describe names the network for the report.
func (x *Netns) Describe() string {
	return fmt.Sprintf("network namespaces %s..%s on bridge %s (%s.0/24)", x.ns[0], x.ns[len(x.ns)-1], x.bridge, x.subnet)
}

// Command runs bin with args inside node i's namespace (`ip netns exec`
// execs bin in place, so the process's pid is the server's).
func (x *Netns) Command(i int, bin string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", x.ns[i], bin}, args...)...)
}

// Isolate takes node i's link down: it reaches nobody and nobody reaches
// it; packets are dropped silently.
func (x *Netns) Isolate(i int) error { return ipCmd("link", "set", x.host[i], "down") }

// Split moves the links of nodes to the far side: they see each other and
// nobody else.
func (x *Netns) Split(nodes []int) error {
	for _, i := range nodes {
		if err := ipCmd("link", "set", x.host[i], "master", x.island); err != nil {
			return err
		}
	}
	return nil
}

// Cut makes every node of a and every node of b unreachable from each
// other, both ways, with a blackhole route to the other's address in each
// one's namespace (a sender gets an error at once; what the other sends is
// never answered). Nothing else changes: the other nodes, and the harness
// on the bridge's address, still reach both sides.
func (x *Netns) Cut(a, b []int) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, i := range a {
		for _, j := range b {
			for _, c := range [][2]int{{i, j}, {j, i}} {
				if err := ipCmd("-n", x.ns[c[0]], "route", "add", "blackhole", x.IP(c[1])+"/32"); err != nil {
					return err
				}
				x.cuts = append(x.cuts, c)
			}
		}
	}
	return nil
}

// Heal removes every cut and puts every link back up on the main side.
func (x *Netns) Heal() error {
	var errs []error
	x.mu.Lock()
	for _, c := range x.cuts {
		errs = append(errs, ipCmd("-n", x.ns[c[0]], "route", "del", "blackhole", x.IP(c[1])+"/32"))
	}
	x.cuts = nil
	x.mu.Unlock()
	for i := range x.host {
		errs = append(errs, ipCmd("link", "set", x.host[i], "master", x.bridge), ipCmd("link", "set", x.host[i], "up"))
	}
	return errors.Join(errs...)
}

// Close removes the namespaces, links and bridges (best effort).
func (x *Netns) Close() {
	for _, ns := range x.ns {
		_ = ipCmd("netns", "del", ns)
	}
	for _, h := range x.host {
		_ = exec.Command("ip", "link", "del", h).Run() // gone with its namespace's peer, usually
	}
	for _, b := range []string{x.bridge, x.island} {
		if b != "" {
			_ = exec.Command("ip", "link", "del", b).Run()
		}
	}
}
