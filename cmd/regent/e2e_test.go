package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The end-to-end tests build the real binary and drive it as a user would:
// separate processes talking over loopback.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func regentBin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "regent-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "regent")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func freeAddr(t *testing.T) string {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if handOut(addr) {
			return addr
		}
	}
	t.Fatal("no free port on 127.0.0.1")
	return ""
}

// handedOut holds every address freeAddr and freeOn gave out: a port is
// free again once its probe closes, and the kernel did give the same one
// twice to a node's HTTP and gossip listeners (the node then failed to
// start), so none is given out twice in one test process.
var handedOut sync.Map

// handOut reports whether addr was not given out before, and records it.
func handOut(addr string) bool {
	_, dup := handedOut.LoadOrStore(addr, true)
	return !dup
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer safe for a process writing and a test reading.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(regentBin(t), args...), out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("output of %v:\n%s", args, p.out.String())
		}
	})
	return p
}

func (p *proc) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("process %v still running after %v", p.cmd.Args, timeout)
		return nil
	}
}

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(regentBin(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out) + stderr.String(), err
	}
	return string(out), nil
}

type listOut struct {
	Revision  uint64 `json:"revision"`
	Instances []struct {
		IP        string            `json:"ip"`
		Port      int               `json:"port"`
		Cluster   string            `json:"cluster"`
		Weight    float64           `json:"weight"`
		Healthy   bool              `json:"healthy"`
		Enabled   bool              `json:"enabled"`
		Ephemeral bool              `json:"ephemeral"`
		Metadata  map[string]string `json:"metadata"`
	} `json:"instances"`
}

func listJSONOf(t *testing.T, server, service string) (listOut, error) {
	t.Helper()
	out, err := runCLI(t, "list", "--server", server, "--service", service, "-o", "json")
	if err != nil {
		return listOut{}, fmt.Errorf("%v: %s", err, out)
	}
	var l listOut
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("list -o json is not JSON: %v\n%s", err, out)
	}
	return l, nil
}

func startServer(t *testing.T) (grpcAddr, httpAddr string, p *proc) {
	t.Helper()
	grpcAddr, httpAddr = freeAddr(t), freeAddr(t)
	p = startProc(t, "server", "--name", "e2e", "--data-dir", t.TempDir(), "--grpc-addr", grpcAddr, "--http-addr", httpAddr,
		"--peer-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--health-check-networks", "127.0.0.0/8")
	waitFor(t, "readyz", 20*time.Second, func() bool {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return grpcAddr, httpAddr, p
}

func TestEndToEndRegisterListKill(t *testing.T) {
	server, httpAddr, srv := startServer(t)

	reg := startProc(t, "register", "--server", server, "--service", "e2e", "--ip", "10.1.1.1", "--port", "9000", "--metadata", "zone=a", "--weight", "2.5")
	waitFor(t, "register to print that it is registered", 10*time.Second, func() bool {
		return strings.Contains(reg.out.String(), "registered 10.1.1.1:9000")
	})
	l, err := listJSONOf(t, server, "e2e")
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Instances) != 1 {
		t.Fatalf("list shows %d instances, want 1: %+v", len(l.Instances), l)
	}
	in := l.Instances[0]
	if in.IP != "10.1.1.1" || in.Port != 9000 || in.Cluster != "DEFAULT" || in.Weight != 2.5 || !in.Healthy || !in.Enabled || !in.Ephemeral || in.Metadata["zone"] != "a" {
		t.Fatalf("instance as listed: %+v", in)
	}
	if l.Revision == 0 {
		t.Fatal("revision is 0")
	}

	// A persistent registration returns once acknowledged and outlives it.
	if out, err := runCLI(t, "register", "--persistent", "--server", server, "--service", "e2e", "--ip", "10.1.1.2", "--port", "80"); err != nil {
		t.Fatalf("persistent register: %v %s", err, out)
	}

	// kill -9 of the registering process: its session dies with it, and so
	// does its instance; the persistent one stays.
	if err := reg.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the killed client's instance to disappear", 30*time.Second, func() bool {
		l, err := listJSONOf(t, server, "e2e")
		return err == nil && len(l.Instances) == 1 && l.Instances[0].IP == "10.1.1.2" && !l.Instances[0].Ephemeral
	})

	// Metrics are served and count what happened.
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(body, []byte("regent_sessions_closed_total")) || !bytes.Contains(body, []byte(`regent_rpc_duration_seconds_count{code="OK",method="GetService"}`)) {
		t.Fatalf("metrics lack session and RPC figures:\n%s", body)
	}

	// SIGTERM drains and exits 0.
	srv.cmd.Process.Signal(syscall.SIGTERM)
	if err := srv.wait(t, 20*time.Second); err != nil {
		t.Fatalf("server exit after SIGTERM: %v", err)
	}
}

func TestEndToEndRegisterSIGTERMDeregistersAndExitsZero(t *testing.T) {
	server, _, _ := startServer(t)
	watch := startProc(t, "watch", "--server", server, "--service", "e2e-term", "-o", "json")
	reg := startProc(t, "register", "--server", server, "--service", "e2e-term", "--ip", "10.2.2.2", "--port", "81")
	waitFor(t, "the watcher to see the instance", 10*time.Second, func() bool {
		return strings.Contains(watch.out.String(), `"ip":"10.2.2.2"`)
	})
	reg.cmd.Process.Signal(syscall.SIGTERM)
	if err := reg.wait(t, 10*time.Second); err != nil {
		t.Fatalf("register after SIGTERM: %v\n%s", err, reg.out.String())
	}
	if !strings.Contains(reg.out.String(), "deregistered 10.2.2.2:81") {
		t.Fatalf("register did not say it deregistered:\n%s", reg.out.String())
	}
	// The watcher's last line is the list without the instance.
	waitFor(t, "the watcher to see the instance go", 10*time.Second, func() bool {
		sc := bufio.NewScanner(strings.NewReader(watch.out.String()))
		last := ""
		for sc.Scan() {
			last = sc.Text()
		}
		return strings.Contains(last, `"instances":[]`)
	})
}

func TestEndToEndBadInputExitsNonZero(t *testing.T) {
	server, _, _ := startServer(t)
	cases := [][]string{
		{"register", "--persistent", "--server", server, "--service", "bad", "--ip", "10.0.0.1", "--port", "0"},
		{"register", "--persistent", "--server", server, "--service", "bad name", "--ip", "10.0.0.1", "--port", "80"},
		{"register", "--persistent", "--server", server, "--service", "bad", "--ip", "10.0.0.1", "--port", "80", "--metadata", "novalue"},
		{"list", "--server", server, "--service", "never-registered"},
		{"list", "--server", server, "--service", "x", "-o", "yaml"},
	}
	for _, args := range cases {
		out, err := runCLI(t, args...)
		if err == nil {
			t.Errorf("%v exited 0:\n%s", args, out)
			continue
		}
		if !strings.Contains(out, "error:") {
			t.Errorf("%v: no error on stderr:\n%s", args, out)
		}
	}
	// Nothing was stored by the refused writes.
	if out, err := runCLI(t, "services", "--server", server, "-o", "json"); err != nil || strings.TrimSpace(out) != "[]" {
		t.Fatalf("services after refused writes: %v %s", err, out)
	}
}

// A node with the operator endpoint turned off says so, instead of an
// address it does not serve.
func TestServerWithoutHTTPSaysOperatorsOff(t *testing.T) {
	grpcAddr := freeAddr(t)
	p := startProc(t, "server", "--name", "nohttp", "--data-dir", t.TempDir(), "--grpc-addr", grpcAddr, "--http-addr", "",
		"--peer-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0")
	waitFor(t, "the serving banner", 20*time.Second, func() bool { return strings.Contains(p.out.String(), "is serving") })
	out := p.out.String()
	if !strings.Contains(out, "operators:  off") || strings.Contains(out, "http:///") {
		t.Fatalf("banner of a node without --http-addr:\n%s", out)
	}
	if out, err := runCLI(t, "register", "--persistent", "--server", grpcAddr, "--service", "nohttp", "--ip", "10.1.1.3", "--port", "80"); err != nil {
		t.Fatalf("persistent register on a node without HTTP: %v %s", err, out)
	}
}

// A node keeps the Raft log store it started with: started again on its
// data dir with the other store, it exits non-zero and says how to go on,
// and started again with its own store it serves what it had.
func TestServerRefusesToSwitchItsRaftLogStore(t *testing.T) {
	dir := t.TempDir()
	args := func(grpcAddr string, extra ...string) []string {
		return append([]string{"server", "--name", "switch", "--data-dir", dir, "--grpc-addr", grpcAddr, "--http-addr", "",
			"--peer-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0"}, extra...)
	}
	grpcAddr := freeAddr(t)
	p := startProc(t, args(grpcAddr)...)
	waitFor(t, "the node to serve", 30*time.Second, func() bool {
		_, err := runCLI(t, "register", "--persistent", "--server", grpcAddr, "--service", "kept", "--ip", "10.0.0.1", "--port", "80")
		return err == nil
	})
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t, 30*time.Second); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, p.out.String())
	}

	refused := startProc(t, args(freeAddr(t), "--raft-log-store", "wal")...)
	if err := refused.wait(t, 30*time.Second); err == nil {
		t.Fatalf("the node started on a raft-boltdb log with --raft-log-store wal:\n%s", refused.out.String())
	}
	for _, w := range []string{`holds a "boltdb" raft log`, "--raft-log-store=boltdb"} {
		if !strings.Contains(refused.out.String(), w) {
			t.Errorf("the refusal does not say %q:\n%s", w, refused.out.String())
		}
	}

	grpcAddr = freeAddr(t)
	startProc(t, args(grpcAddr, "--raft-log-store", "boltdb")...)
	waitFor(t, "the node to serve its own data again", 30*time.Second, func() bool {
		out, err := runCLI(t, "list", "--server", grpcAddr, "--service", "kept", "-o", "json")
		return err == nil && strings.Contains(out, "10.0.0.1")
	})
}

// A node raises its GC goal to the heap floor (default 32 MiB) while its
// live heap is small, as go_gc_gogc_percent shows; GOGC set by the
// operator, or a floor of 0, leaves the runtime's own GOGC.
func TestServerGCHeapFloorUnlessGOGCIsSet(t *testing.T) {
	gogcOf := func(httpAddr string) float64 {
		resp, err := http.Get("http://" + httpAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, "go_gc_gogc_percent "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatalf("go_gc_gogc_percent %q: %v", v, err)
				}
				return f
			}
		}
		t.Fatalf("no go_gc_gogc_percent in /metrics:\n%s", body)
		return 0
	}
	for _, c := range []struct {
		name, gogc string
		args       []string
		tuned      bool
	}{
		{name: "default", tuned: true},
		{name: "GOGC set", gogc: "100"},
		{name: "floor 0", args: []string{"--gc-heap-floor-mb", "0"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("GOGC", c.gogc) // "" is the runtime's default, as unset
			grpcAddr, httpAddr := freeAddr(t), freeAddr(t)
			args := append([]string{"server", "--name", "gc", "--dev", "--grpc-addr", grpcAddr, "--http-addr", httpAddr,
				"--peer-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0"}, c.args...)
			p := startProc(t, args...)
			waitFor(t, "the serving banner", 20*time.Second, func() bool { return strings.Contains(p.out.String(), "is serving") })
			got := gogcOf(httpAddr)
			if c.tuned && got <= 100 || !c.tuned && got != 100 {
				t.Fatalf("go_gc_gogc_percent = %v (tuned: %v)", got, c.tuned)
			}
			if c.gogc != "" && !strings.Contains(p.out.String(), "GC heap floor is off") {
				t.Fatalf("no word that the floor is off under GOGC:\n%s", p.out.String())
			}
		})
	}
}
