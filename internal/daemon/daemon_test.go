package daemon

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func testConfig(t *testing.T) Config {
	cfg := DefaultLocalConfig("t1", t.TempDir())
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Pprof = true
	return cfg
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestOperatorEndpoints(t *testing.T) {
	d, err := Start(context.Background(), testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + d.HTTPAddr()
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Fatalf("/readyz %d", code)
	}
	code, body := get(t, base+"/metrics")
	for _, m := range []string{"regent_sessions", "regent_ephemeral_instances", "regent_pushes_total", "regent_raft_forwarded_writes_total", "regent_raft_leader_log_commits_total", "regent_raft_leader_log_entries_total", "regent_state_deferred_applies_total", "regent_state_commits_total", "regent_registry_persistent_cache_hits_total", "regent_registry_persistent_cache_misses_total", "go_goroutines"} {
		if code != 200 || !strings.Contains(body, m) {
			t.Fatalf("/metrics (%d) lacks %s", code, m)
		}
	}
	if code, _ := get(t, base+"/debug/pprof/"); code != 200 {
		t.Fatalf("pprof %d", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d.Shutdown(ctx)
	d.Shutdown(ctx) // idempotent
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Fatal("HTTP still served after Shutdown")
	}
}

func TestStartRefusesBadConfigAndLockedData(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"no name":            func(c *Config) { c.Name = "" },
		"bad grpc addr":      func(c *Config) { c.GRPCAddr = "nope" },
		"negative bootstrap": func(c *Config) { c.BootstrapExpect = -1 },
		"bad raft addr":      func(c *Config) { c.RaftAddr = "nope" },
		"bad raft timings":   func(c *Config) { c.Raft.ElectionTimeout = time.Millisecond },
		"empty join":         func(c *Config) { c.Join = []string{""} },
		"bad gossip addr":    func(c *Config) { c.GossipAddr = "nope" },
		"bad gossip profile": func(c *Config) { c.GossipProfile = "wan-ish" },
		"short gossip key":   func(c *Config) { c.GossipKey = []byte("short") },
		"bad distro":         func(c *Config) { c.Distro.VerifyInterval = 0 },
		"negative expect":    func(c *Config) { c.BootstrapExpect = -1 },
		"missing limits":     func(c *Config) { c.LimitsFile = "/nonexistent/limits.json" },
	} {
		cfg := testConfig(t)
		mutate(&cfg)
		if d, err := Start(context.Background(), cfg); err == nil {
			d.Shutdown(context.Background())
			t.Errorf("%s: started", name)
		}
	}
	// A second node on the same data dir fails fast instead of hanging.
	cfg := testConfig(t)
	d, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Shutdown(context.Background())
	if d2, err := Start(context.Background(), cfg); err == nil {
		d2.Shutdown(context.Background())
		t.Fatal("a second node opened a data dir in use")
	}
}
