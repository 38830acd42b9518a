package compare

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-zookeeper/zk"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/regent-registry/regent/client"
)

// ChildArg is the first argument that makes cmd/regent-compare run as a
// client process of the removal workload (ChildMain).
const ChildArg = "child"

// child is a client process of the removal workload.
type child struct {
	cmd  *exec.Cmd
	once sync.Once
	done chan struct{}
}

// startChild runs self as a client process of system and waits until it
// has registered (it prints "ready").
func startChild(ctx context.Context, self, system, server, name, ip string, extra ...string) (*child, error) {
	args := append([]string{ChildArg, "-system", system, "-server", server, "-name", name, "-ip", ip}, extra...)
	cmd := exec.Command(self, args...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start a client process: %w", err)
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("client process said %q", line)
		}
		ready <- err
		io.Copy(io.Discard, out)
		cmd.Wait()
		close(c.done)
	}()
	select {
	case err := <-ready:
		if err != nil {
			c.kill()
			return nil, fmt.Errorf("client process %s: %w", name, err)
		}
		return c, nil
	case <-time.After(20 * time.Second):
		c.kill()
		return nil, fmt.Errorf("client process %s not ready after 20 s", name)
	case <-ctx.Done():
		c.kill()
		return nil, ctx.Err()
	}
}

// kill sends SIGKILL (once); the process is reaped in the background.
func (c *child) kill() { c.once.Do(func() { c.cmd.Process.Kill() }) }

// ChildMain runs a client process of the removal workload: it registers
// one instance (Regent: an ephemeral instance on its session; etcd: a key
// on a lease it keeps alive; ZooKeeper: an ephemeral znode of its session),
// prints "ready" and waits to be killed.
func ChildMain(args []string) error {
	fs := flag.NewFlagSet(ChildArg, flag.ContinueOnError)
	system := fs.String("system", "", "regent, etcd or zookeeper")
	server := fs.String("server", "", "a Regent gRPC address, an etcd endpoint or a ZooKeeper server")
	name := fs.String("name", "", "service (Regent), key (etcd) or znode path (ZooKeeper)")
	ip := fs.String("ip", "", "the instance's IP")
	ttl := fs.Int64("ttl", 2, "etcd lease TTL or ZooKeeper session timeout, in seconds")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx := context.Background()
	switch *system {
	case "regent":
		c, err := client.New(client.Config{Servers: []string{*server}})
		if err != nil {
			return err
		}
		if err := c.Register(ctx, client.Service{Name: *name}, client.Instance{IP: *ip, Port: 8080}); err != nil {
			return err
		}
	case "etcd":
		cli, err := newEtcdClient([]string{*server})
		if err != nil {
			return err
		}
		lease, err := cli.Grant(ctx, *ttl)
		if err != nil {
			return err
		}
		if _, err := cli.Put(ctx, *name, instanceValue(*ip), clientv3.WithLease(lease.ID)); err != nil {
			return err
		}
		ch, err := cli.KeepAlive(ctx, lease.ID)
		if err != nil {
			return err
		}
		go func() {
			for range ch {
			}
		}()
	case "zookeeper":
		c, err := zkConnect(ctx, *server, time.Duration(*ttl)*time.Second)
		if err != nil {
			return err
		}
		if _, err := c.Create(*name, []byte(instanceValue(*ip)), zk.FlagEphemeral, zkACL); err != nil {
			return err
		}
	default:
		return fmt.Errorf("-system %q: want regent, etcd or zookeeper", *system)
	}
	fmt.Println("ready")
	sctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-sctx.Done() // the workload kills it with SIGKILL
	return nil
}

// instanceValue is what an etcd-based registry stores per instance: about
// the size of Regent's instance record.
func instanceValue(ip string) string {
	return `{"ip":"` + ip + `","port":8080,"cluster":"DEFAULT","weight":1,"healthy":true,"enabled":true,"metadata":{"version":"1.0.0"}}`
}
