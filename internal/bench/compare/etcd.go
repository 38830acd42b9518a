package compare

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdCluster is a 3-member etcd cluster of real processes on 127.0.0.1,
// started as ../shared/docs/peers.md §4.1 did on this kind of machine
// (default settings: fsync on, 100 ms heartbeat, 1 s election timeout).
type etcdCluster struct {
	Endpoints []string
	procGroup
}

// procGroup is the server processes of a cluster, with their logs.
type procGroup struct {
	procs []*exec.Cmd
	done  []chan struct{}
	logs  []*os.File
}

// start runs cmd with its output to logf and keeps it in the group; the
// process is killed if this one dies.
func (g *procGroup) start(cmd *exec.Cmd, logf *os.File) error {
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	g.procs, g.done, g.logs = append(g.procs, cmd), append(g.done, done), append(g.logs, logf)
	return nil
}

// stop ends the processes (SIGTERM, then SIGKILL after 10 s) and waits for
// them, so that nothing rewrites their folders afterwards.
func (g *procGroup) stop() {
	for _, p := range g.procs {
		p.Process.Signal(syscall.SIGTERM)
	}
	for i, p := range g.procs {
		select {
		case <-g.done[i]:
		case <-time.After(10 * time.Second):
			p.Process.Kill()
			<-g.done[i]
		}
	}
	for _, l := range g.logs {
		l.Close()
	}
}

// pids are the processes' IDs.
func (g *procGroup) pids() []int {
	var out []int
	for _, p := range g.procs {
		if p.Process != nil {
			out = append(out, p.Process.Pid)
		}
	}
	return out
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startEtcd starts the members with their data and logs under dir and
// waits until every member answers and they agree on a leader.
func startEtcd(ctx context.Context, bin, dir string, n int) (*etcdCluster, error) {
	c := &etcdCluster{}
	var clientURLs, peerURLs, initial []string
	for i := range n {
		ca, err := freePort()
		if err != nil {
			return nil, err
		}
		pa, err := freePort()
		if err != nil {
			return nil, err
		}
		clientURLs = append(clientURLs, "http://"+ca)
		peerURLs = append(peerURLs, "http://"+pa)
		initial = append(initial, fmt.Sprintf("e%d=http://%s", i+1, pa))
		c.Endpoints = append(c.Endpoints, ca)
	}
	for i := range n {
		name := fmt.Sprintf("e%d", i+1)
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			c.stop()
			return nil, err
		}
		cmd := exec.Command(bin, "--name", name, "--data-dir", filepath.Join(dir, name),
			"--listen-client-urls", clientURLs[i], "--advertise-client-urls", clientURLs[i],
			"--listen-peer-urls", peerURLs[i], "--initial-advertise-peer-urls", peerURLs[i],
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-token", "regent-compare",
			"--initial-cluster-state", "new")
		if err := c.start(cmd, logf); err != nil {
			c.stop()
			return nil, fmt.Errorf("start etcd %s: %w", name, err)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, leaders, err := c.terms(ctx)
		if err == nil && len(leaders) == 1 {
			return c, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			c.stop()
			return nil, fmt.Errorf("etcd cluster not up after 60 s (logs in %s): %v", dir, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// terms returns each member's Raft term and the set of leaders they name.
func (c *etcdCluster) terms(ctx context.Context) ([]uint64, map[uint64]bool, error) {
	cli, err := newEtcdClient(c.Endpoints)
	if err != nil {
		return nil, nil, err
	}
	defer cli.Close()
	var terms []uint64
	leaders := map[uint64]bool{}
	for _, ep := range c.Endpoints {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cli.Status(sctx, ep)
		cancel()
		if err != nil {
			return nil, nil, fmt.Errorf("status of %s: %w", ep, err)
		}
		terms = append(terms, st.RaftTerm)
		if st.Leader != 0 {
			leaders[st.Leader] = true
		}
	}
	return terms, leaders, nil
}

func newEtcdClient(endpoints []string) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return cli, nil
}

var errNotSeen = errors.New("not seen in time")
