package compare

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ZooKeeper's timings here: a 1 s tick, so that its shortest session
// timeout (2 ticks) is 2 s, the shortest lease etcd grants; forceSync
// (fsync of its transaction log before it acknowledges) stays on, its
// default.
const zkTick = time.Second

// zkCluster is a 3-server ZooKeeper ensemble of real JVM processes on
// 127.0.0.1, started as ../shared/docs/peers.md §4.4 did on this kind of
// machine with Debian's zookeeperd.
type zkCluster struct {
	Servers []string // client addresses
	procGroup
}

// startZooKeeper writes each server's zoo.cfg under dir, starts them with
// java on the classpath jar (Debian: /usr/share/java/zookeeper.jar) and
// waits until every server answers and one of them leads.
func startZooKeeper(ctx context.Context, java, jar, dir string, n int) (*zkCluster, error) {
	c := &zkCluster{}
	var quorum []string
	for i := range n {
		client, err := freePort()
		if err != nil {
			return nil, err
		}
		peer, err := freePort()
		if err != nil {
			return nil, err
		}
		elect, err := freePort()
		if err != nil {
			return nil, err
		}
		c.Servers = append(c.Servers, client)
		quorum = append(quorum, fmt.Sprintf("server.%d=127.0.0.1:%s:%s", i+1, port(peer), port(elect)))
	}
	for i := range n {
		name := fmt.Sprintf("z%d", i+1)
		home := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Join(home, "data"), 0o700); err != nil {
			c.stop()
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(home, "data", "myid"), []byte(strconv.Itoa(i+1)+"\n"), 0o600); err != nil {
			c.stop()
			return nil, err
		}
		cfg := strings.Join(append([]string{
			"tickTime=" + strconv.Itoa(int(zkTick/time.Millisecond)),
			"initLimit=10",
			"syncLimit=5",
			"dataDir=" + filepath.Join(home, "data"),
			"clientPort=" + port(c.Servers[i]),
			"clientPortAddress=127.0.0.1",
			"maxClientCnxns=0", // every client of the generator comes from 127.0.0.1
			"admin.enableServer=false",
			"4lw.commands.whitelist=srvr,ruok",
		}, quorum...), "\n") + "\n"
		if err := os.WriteFile(filepath.Join(home, "zoo.cfg"), []byte(cfg), 0o600); err != nil {
			c.stop()
			return nil, err
		}
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			c.stop()
			return nil, err
		}
		cmd := exec.Command(java, "-Xmx1g", "-cp", home+":"+jar, "org.apache.zookeeper.server.quorum.QuorumPeerMain", filepath.Join(home, "zoo.cfg"))
		if err := c.start(cmd, logf); err != nil {
			c.stop()
			return nil, fmt.Errorf("start zookeeper %s: %w", name, err)
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		_, leaders, err := c.epochs()
		if err == nil && leaders == 1 {
			return c, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			c.stop()
			return nil, fmt.Errorf("zookeeper ensemble not up after 90 s (logs in %s): %v", dir, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// epochs asks each server (the srvr four-letter word) for its last zxid and
// returns the epochs (the zxid's high 32 bits: a new leader starts a new
// one) and how many servers say they lead.
func (c *zkCluster) epochs() ([]uint64, int, error) {
	var out []uint64
	leaders := 0
	for _, s := range c.Servers {
		mode, zxid, err := srvr(s)
		if err != nil {
			return nil, 0, err
		}
		if mode == "leader" {
			leaders++
		}
		out = append(out, zxid>>32)
	}
	return out, leaders, nil
}

// srvr runs the srvr four-letter word on addr and returns the server's mode
// and last zxid.
func srvr(addr string) (mode string, zxid uint64, err error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("srvr")); err != nil {
		return "", 0, err
	}
	sc := bufio.NewScanner(conn)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "Mode":
			mode = strings.TrimSpace(v)
		case "Zxid":
			zxid, err = strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(v), "0x"), 16, 64)
			if err != nil {
				return "", 0, fmt.Errorf("srvr of %s: zxid %q: %w", addr, v, err)
			}
		}
	}
	if mode == "" {
		return "", 0, fmt.Errorf("srvr of %s: no mode (%v)", addr, sc.Err())
	}
	return mode, zxid, nil
}
