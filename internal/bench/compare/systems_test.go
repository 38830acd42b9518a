//go:build compare

// The etcd and ZooKeeper sides of the workloads against real clusters of
// Debian's etcd-server and zookeeperd. They need those packages, so they
// build only with -tags compare: `make test-compare`, which .ci/run runs
// after installing them.

package compare

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// exerciseAll runs every workload at 2 clients for a short while and
// checks that each operation succeeded and was timed, including the
// removal of both killed client processes.
func exerciseAll(t *testing.T, sys system) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, w := range Workloads {
		s, err := sys.measure(ctx, w, 2, 0, 300*time.Millisecond)
		if err != nil {
			t.Fatalf("%s %s: %v", sys.name(), w, err)
		}
		if s.Errors != 0 || s.Ops == 0 || len(s.Latencies) != int(s.Ops) {
			t.Fatalf("%s %s: %d ops, %d errors (%s), %d latencies", sys.name(), w, s.Ops, s.Errors, s.FirstErr, len(s.Latencies))
		}
		if w == Removal && s.Ops != 2 {
			t.Fatalf("%s removal timed %d of 2 killed clients", sys.name(), s.Ops)
		}
		t.Logf("%s %s: %d ops, p50 %v p99 %v", sys.name(), w, s.Ops, s.Pct(0.5), s.Pct(0.99))
	}
}

func TestEtcdWorkloads(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ec, err := startEtcd(ctx, "/usr/bin/etcd", t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	defer ec.stop()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sys := &etcdSystem{endpoints: ec.Endpoints, self: self, ttl: 2, procs: ec.pids()}
	exerciseAll(t, sys)

	// Each measurement started on a compacted history: the revisions
	// before the last compaction are gone.
	if sys.compacted == 0 {
		t.Fatal("etcd's history was never compacted")
	}
	c, err := newEtcdClient(ec.Endpoints[:1])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	if _, err := c.Get(cctx, "/", clientv3.WithRev(sys.compacted-1)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("a read at revision %d, before the last compaction at %d: err %v, want %v", sys.compacted-1, sys.compacted, err, rpctypes.ErrCompacted)
	}
}

func TestZooKeeperWorkloads(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	zc, err := startZooKeeper(ctx, "java", "/usr/share/java/zookeeper.jar", t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	defer zc.stop()
	before, leaders, err := zc.epochs()
	if err != nil || leaders != 1 || len(before) != 3 {
		t.Fatalf("epochs %v, %d leaders, %v: want 3 servers and one leader", before, leaders, err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exerciseAll(t, &zkSystem{servers: zc.Servers, self: self, procs: zc.pids()})
}
