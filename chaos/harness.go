package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Build compiles bin/regent (static, CGO_ENABLED=0) into dir and returns
// its path. It runs `go build` on the module's import path, so it works from
// any folder inside the module.
func Build(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "regent")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/regent-registry/regent/cmd/regent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build regent: %v\n%s", err, out)
	}
	return bin, nil
}

// ClusterConfig describes the servers a Cluster starts.
type ClusterConfig struct {
	// Nodes is the number of servers (3 or 5).
	Nodes int
	// Bin is the regent binary.
	Bin string
	// Dir holds each node's data dir and log file.
	Dir string
	// LogLevel of the servers (default "info").
	LogLevel string
	// ExtraArgs are added to every server's command line.
	ExtraArgs []string
	// SeedJoinsItself gives node1 `--join` its own gossip address, like
	// every other node (one uniform join list). By default node1 joins
	// the others instead: a node whose only seed is itself cannot find the
	// cluster again after a graceful leave (see README.md, findings).
	SeedJoinsItself bool
	// Net, when set, runs node i in its own network namespace on
	// Net.IP(i) with the default ports ("namespace" mode); nil runs
	// every node on 127.0.0.(i+1) with free ports ("loopback" mode).
	Net *Netns
	// Logf receives the harness's progress lines (nil: discarded).
	Logf func(format string, args ...any)
	// Clock gives the time offsets events are stamped with.
	Clock *Clock
}

// Clock stamps events with their offset from one start time (monotonic).
type Clock struct{ t0 time.Time }

// NewClock starts a clock now.
func NewClock() *Clock { return &Clock{t0: time.Now()} }

// Now returns the time since the clock started.
func (c *Clock) Now() time.Duration { return time.Since(c.t0) }

// Cluster is N `regent server` processes, each with its own data dir and
// log file: on 127.0.0.1 .. 127.0.0.N ("loopback" mode), or each in its own
// network namespace (see Netns).
type Cluster struct {
	cfg   ClusterConfig
	Nodes []*Node
	logf  func(format string, args ...any)
	clock *Clock

	mu      sync.Mutex
	crashes []string // unexpected exits
}

// Node is one server process, restartable on the same flags and data.
type Node struct {
	c                                *Cluster
	Index                            int
	Name, IP                         string
	GRPC, HTTP, Peer, Gossip, RaftAd string
	DataDir, LogPath                 string
	args                             []string

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
	exitErr  error
	expected bool // the harness caused the coming exit
	paused   bool
	starts   int
	logFile  *os.File
}

// NewCluster picks addresses for every node (free ports on 127.0.0.i+1)
// and prepares their folders; Start starts the processes.
func NewCluster(cfg ClusterConfig) (*Cluster, error) {
	if cfg.Nodes < 1 {
		return nil, errors.New("chaos: at least one node")
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "info"
	}
	if cfg.Clock == nil {
		cfg.Clock = NewClock()
	}
	c := &Cluster{cfg: cfg, logf: cfg.Logf, clock: cfg.Clock}
	if c.logf == nil {
		c.logf = func(string, ...any) {}
	}
	for i := range cfg.Nodes {
		ip := fmt.Sprintf("127.0.0.%d", i+1)
		if cfg.Net != nil {
			ip = cfg.Net.IP(i)
		}
		n := &Node{c: c, Index: i, Name: fmt.Sprintf("node%d", i+1), IP: ip}
		addrs := make([]string, 5)
		for j := range addrs {
			if cfg.Net != nil {
				// A fresh namespace: the default ports are free.
				addrs[j] = net.JoinHostPort(ip, fmt.Sprint(7400+j))
				continue
			}
			// The kernel may hand out a port just released again: a node
			// once got the same port for gRPC and HTTP and could not start.
			for try := 0; addrs[j] == ""; try++ {
				a, err := freeOn(ip)
				if err != nil {
					return nil, err
				}
				if !slices.Contains(addrs[:j], a) {
					addrs[j] = a
				} else if try == 50 {
					return nil, fmt.Errorf("chaos: no five distinct free ports on %s", ip)
				}
			}
		}
		n.GRPC, n.HTTP, n.Peer, n.Gossip, n.RaftAd = addrs[0], addrs[1], addrs[2], addrs[3], addrs[4]
		n.DataDir = filepath.Join(cfg.Dir, n.Name, "data")
		n.LogPath = filepath.Join(cfg.Dir, n.Name+".log")
		if err := os.MkdirAll(n.DataDir, 0o700); err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, n)
	}
	seed := c.Nodes[0].Gossip
	var others []string
	for _, n := range c.Nodes[1:] {
		others = append(others, n.Gossip)
	}
	for _, n := range c.Nodes {
		join := seed
		if n.Index == 0 && !cfg.SeedJoinsItself && len(others) > 0 {
			join = strings.Join(others, ",")
		}
		n.args = []string{"server", "--name", n.Name, "--data-dir", n.DataDir,
			"--grpc-addr", n.GRPC, "--http-addr", n.HTTP, "--peer-addr", n.Peer, "--gossip-addr", n.Gossip, "--raft-addr", n.RaftAd,
			"--gossip-profile", "local", "--health-check-networks", "127.0.0.0/8",
			"--bootstrap-expect", fmt.Sprint(cfg.Nodes), "--join", join, "--log-level", cfg.LogLevel}
		n.args = append(n.args, cfg.ExtraArgs...)
	}
	return c, nil
}

// freeOn returns a TCP port on ip that is free for UDP too (gossip uses
// both).
func freeOn(ip string) (string, error) {
	for range 50 {
		l, err := net.Listen("tcp", ip+":0")
		if err != nil {
			return "", fmt.Errorf("chaos: listen on %s: %w (is 127.0.0.0/8 usable?)", ip, err)
		}
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return addr, nil
	}
	return "", fmt.Errorf("chaos: no free port on %s", ip)
}

// Servers returns every node's gRPC address, in node order.
func (c *Cluster) Servers() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.GRPC
	}
	return out
}

// Start starts every node.
func (c *Cluster) Start() error {
	for _, n := range c.Nodes {
		if err := n.Start(); err != nil {
			return err
		}
	}
	return nil
}

// Crashes lists the unexpected exits of nodes seen so far.
func (c *Cluster) Crashes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.crashes)
}

// Stop kills every node (SIGKILL) and closes the log files.
func (c *Cluster) Stop() {
	for _, n := range c.Nodes {
		_ = n.Kill()
		n.mu.Lock()
		if n.logFile != nil {
			n.logFile.Close()
			n.logFile = nil
		}
		n.mu.Unlock()
	}
}

// Start starts the node's process (again) with its flags and data dir,
// appending its output to its log file.
func (n *Node) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		select {
		case <-n.done:
		default:
			return fmt.Errorf("chaos: %s is already running", n.Name)
		}
	}
	if n.logFile == nil {
		f, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		n.logFile = f
	}
	n.starts++
	fmt.Fprintf(n.logFile, "=== chaos harness: start #%d of %s at +%v: %s %s\n", n.starts, n.Name, n.c.clock.Now().Round(time.Millisecond), n.c.cfg.Bin, strings.Join(n.args, " "))
	cmd := exec.Command(n.c.cfg.Bin, n.args...)
	if n.c.cfg.Net != nil {
		cmd = n.c.cfg.Net.Command(n.Index, n.c.cfg.Bin, n.args...)
	}
	cmd.Stdout, cmd.Stderr = n.logFile, n.logFile
	// The servers die with the harness even when it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("chaos: start %s: %w", n.Name, err)
	}
	done := make(chan struct{})
	n.cmd, n.done, n.expected, n.paused, n.exitErr = cmd, done, false, false, nil
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		n.exitErr = err
		expected := n.expected
		if n.logFile != nil {
			fmt.Fprintf(n.logFile, "=== chaos harness: %s exited at +%v: %v (expected: %v)\n", n.Name, n.c.clock.Now().Round(time.Millisecond), err, expected)
		}
		n.mu.Unlock()
		close(done)
		if !expected {
			n.c.mu.Lock()
			n.c.crashes = append(n.c.crashes, fmt.Sprintf("%s exited unexpectedly at +%v: %v", n.Name, n.c.clock.Now().Round(time.Millisecond), err))
			n.c.mu.Unlock()
		}
	}()
	return nil
}

// Running reports whether the process is alive (it may be paused).
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// PID is the process ID of the node's current process (0 if it never
// started).
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Paused reports whether the node is stopped with SIGSTOP.
func (n *Node) Paused() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.paused
}

func (n *Node) signal(sig syscall.Signal, expectExit bool) (chan struct{}, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return nil, fmt.Errorf("chaos: %s never started", n.Name)
	}
	select {
	case <-n.done:
		return n.done, fmt.Errorf("chaos: %s is not running", n.Name)
	default:
	}
	if expectExit {
		n.expected = true
	}
	if n.logFile != nil {
		fmt.Fprintf(n.logFile, "=== chaos harness: %v to %s at +%v\n", sig, n.Name, n.c.clock.Now().Round(time.Millisecond))
	}
	if err := n.cmd.Process.Signal(sig); err != nil {
		return n.done, err
	}
	switch sig {
	case syscall.SIGSTOP:
		n.paused = true
	case syscall.SIGCONT, syscall.SIGKILL:
		n.paused = false
	}
	return n.done, nil
}

// Kill sends SIGKILL and waits for the process to end.
func (n *Node) Kill() error {
	if !n.Running() {
		return nil
	}
	done, err := n.signal(syscall.SIGKILL, true)
	if done != nil {
		<-done
	}
	if err != nil && !n.Running() {
		return nil // it ended on its own meanwhile
	}
	return err
}

// Pause sends SIGSTOP.
func (n *Node) Pause() error {
	_, err := n.signal(syscall.SIGSTOP, false)
	return err
}

// Resume sends SIGCONT.
func (n *Node) Resume() error {
	_, err := n.signal(syscall.SIGCONT, false)
	return err
}

// Term sends SIGTERM (a graceful leave) and waits up to timeout for the
// process to exit. It returns the exit error (nil for exit status 0); a
// process still running after timeout is sent SIGQUIT (the Go runtime
// writes every goroutine's stack into the node's log, to show where the
// shutdown hangs), then killed, and reported.
func (n *Node) Term(timeout time.Duration) error {
	done, err := n.signal(syscall.SIGTERM, true)
	if err != nil {
		return err
	}
	select {
	case <-done:
	case <-time.After(timeout):
		if _, err := n.signal(syscall.SIGQUIT, true); err == nil {
			select {
			case <-done:
			case <-time.After(5 * time.Second):
			}
		}
		_ = n.Kill()
		return fmt.Errorf("chaos: %s still running %v after SIGTERM (stacks dumped by SIGQUIT into %s, then killed)", n.Name, timeout, n.LogPath)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.exitErr != nil {
		return fmt.Errorf("chaos: %s after SIGTERM: %w", n.Name, n.exitErr)
	}
	return nil
}

// Log returns the node's whole log file.
func (n *Node) Log() string {
	b, _ := os.ReadFile(n.LogPath)
	return string(b)
}

// Ready reports whether /readyz answers 200.
func (n *Node) Ready() bool {
	cl := http.Client{Timeout: time.Second}
	resp, err := cl.Get("http://" + n.HTTP + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Member is one entry of `regent members -o json`.
type Member struct {
	Name   string `json:"name"`
	Addr   string `json:"addr"`
	Status string `json:"status"`
	Raft   string `json:"raft"`
}

// CLI runs the regent binary with args and returns its stdout.
func (c *Cluster) CLI(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.cfg.Bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("regent %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Members returns `regent members -o json` as node n answers it.
func (n *Node) Members(ctx context.Context) ([]Member, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := n.c.CLI(ctx, "members", "--server", n.GRPC, "-o", "json", "--timeout", "3s")
	if err != nil {
		return nil, err
	}
	var ms []Member
	if err := json.Unmarshal([]byte(out), &ms); err != nil {
		return nil, fmt.Errorf("members -o json from %s: %v: %q", n.Name, err, out)
	}
	return ms, nil
}

// View is one node's answer to `members`, judged.
type View struct {
	Node    string
	Members []Member
	Err     error
}

// agreement checks that every view lists the same N names, all alive,
// with exactly one leader (the same one everywhere) and the others
// followers. It returns the leader, or a description of the disagreement.
func agreement(views []View, names []string) (leader string, problem string) {
	want := slices.Clone(names)
	slices.Sort(want)
	for _, v := range views {
		if v.Err != nil {
			return "", fmt.Sprintf("%s: %v", v.Node, v.Err)
		}
		var got []string
		leaders := 0
		l := ""
		for _, m := range v.Members {
			got = append(got, m.Name)
			if m.Status != "alive" {
				return "", fmt.Sprintf("%s sees %s %s", v.Node, m.Name, m.Status)
			}
			switch m.Raft {
			case "leader":
				leaders++
				l = m.Name
			case "follower":
			default:
				return "", fmt.Sprintf("%s sees %s with raft role %q", v.Node, m.Name, m.Raft)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			return "", fmt.Sprintf("%s sees members %v, want %v", v.Node, got, want)
		}
		if leaders != 1 {
			return "", fmt.Sprintf("%s sees %d leaders", v.Node, leaders)
		}
		if leader != "" && l != leader {
			return "", fmt.Sprintf("nodes disagree on the leader: %s and %s", leader, l)
		}
		leader = l
	}
	return leader, ""
}

// Views asks every node for its members, in parallel.
func (c *Cluster) Views(ctx context.Context) []View {
	views := make([]View, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Go(func() {
			ms, err := n.Members(ctx)
			views[i] = View{Node: n.Name, Members: ms, Err: err}
		})
	}
	wg.Wait()
	return views
}

// Formed reports whether the cluster has formed: every node running,
// /readyz 200, and every node's members show N alive servers, one Raft
// leader (the same everywhere) and N-1 followers. It returns the leader's
// name, or why it is not formed.
func (c *Cluster) Formed(ctx context.Context) (leader string, why string) {
	names := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		names[i] = n.Name
		if !n.Running() {
			return "", n.Name + " is not running"
		}
		if n.Paused() {
			return "", n.Name + " is paused"
		}
	}
	for _, n := range c.Nodes {
		if !n.Ready() {
			return "", n.Name + " is not ready"
		}
	}
	return agreement(c.Views(ctx), names)
}

// WaitFormed waits until Formed holds, for at most timeout. While it
// waits it logs each new reason the cluster is not formed yet, with its
// time, so that a slow re-formation can be read in the progress lines.
func (c *Cluster) WaitFormed(ctx context.Context, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	why := ""
	for {
		leader, w := c.Formed(ctx)
		if w == "" {
			return leader, nil
		}
		if w != why {
			c.logf("not formed: %s", w)
		}
		why = w
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", fmt.Errorf("cluster not formed after %v: %s", timeout, why)
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Leader returns the name of the Raft leader as the first answering
// running node sees it.
func (c *Cluster) Leader(ctx context.Context) (string, error) {
	var last error
	for _, n := range c.Nodes {
		if !n.Running() || n.Paused() {
			continue
		}
		ms, err := n.Members(ctx)
		if err != nil {
			last = err
			continue
		}
		for _, m := range ms {
			if m.Raft == "leader" {
				return m.Name, nil
			}
		}
		last = fmt.Errorf("%s knows no leader", n.Name)
	}
	if last == nil {
		last = errors.New("no running node")
	}
	return "", last
}

// Node returns the node with the given name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// CountInLogs counts the occurrences of s over every node's log file.
func (c *Cluster) CountInLogs(s string) int {
	total := 0
	for _, n := range c.Nodes {
		total += strings.Count(n.Log(), s)
	}
	return total
}

// GrepLogs returns the log lines of every node that contain s (at most
// max lines, each prefixed with the node's name).
func (c *Cluster) GrepLogs(s string, max int) []string {
	var out []string
	for _, n := range c.Nodes {
		for _, line := range strings.Split(n.Log(), "\n") {
			if strings.Contains(line, s) {
				out = append(out, n.Name+": "+line)
				if len(out) >= max {
					return out
				}
			}
		}
	}
	return out
}
