package chaos

import (
	"context"
	"os"
	"testing"
	"time"
)

// runKept runs sc in a fresh folder, logs the report, and keeps the folder
// (node logs, data dirs, porcupine's visualization) when the run fails or
// CHAOS_KEEP is set.
func runKept(t *testing.T, sc Scenario) *Report {
	t.Helper()
	dir, err := os.MkdirTemp("", "regent-chaos-"+sc.Name+"-")
	if err != nil {
		t.Fatal(err)
	}
	sc.Dir = dir
	sc.Logf = t.Logf
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	rep, err := Run(ctx, sc)
	if rep != nil {
		t.Logf("report:\n%s", rep)
	}
	failed := err != nil || rep.Failed()
	if failed || os.Getenv("CHAOS_KEEP") != "" {
		t.Logf("node logs and data kept in %s", dir)
	} else {
		os.RemoveAll(dir)
	}
	if err != nil {
		t.Fatalf("seed %d: harness: %v", sc.Seed, err)
	}
	for _, v := range rep.Violations {
		t.Errorf("seed %d: %s", sc.Seed, v)
	}
	return rep
}

func TestChaosShort(t *testing.T) {
	runKept(t, ShortScenario(20260517))
}

// TestChaosPartitions runs the network faults in network namespaces; where
// they cannot be made (not root), it runs the other faults on loopback and
// its report says the partitions were not run.
func TestChaosPartitions(t *testing.T) {
	rep := runKept(t, PartitionScenario(20260518))
	t.Logf("partitions: %s", rep.Partitions)
}
