// Command regent-compare measures a 3-node Regent cluster beside a
// 3-member etcd cluster (and, with -zookeeper, a 3-server ZooKeeper
// ensemble) on this machine, in one run (internal/bench/compare);
// `make bench-compare` installs etcd and ZooKeeper with apt-get and runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/regent-registry/regent/internal/bench/compare"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == compare.ChildArg {
		if err := compare.ChildMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "regent-compare child:", err)
			os.Exit(1)
		}
		return
	}
	o := compare.DefaultOptions()
	var clients, workloads, dir, regentArgs, cpuProfile string
	var keep bool
	flag.StringVar(&o.RegentBin, "regent", "bin/regent", "the regent binary")
	flag.StringVar(&o.EtcdBin, "etcd", "/usr/bin/etcd", "the etcd binary (Debian's etcd-server)")
	flag.StringVar(&o.ZooKeeperJar, "zookeeper", "", "ZooKeeper's server jar (Debian's zookeeperd: /usr/share/java/zookeeper.jar); adds ZooKeeper columns")
	flag.StringVar(&o.Java, "java", "java", "java, to run ZooKeeper")
	flag.StringVar(&clients, "clients", "1,16,64", "concurrencies, comma-separated (at most 64)")
	flag.StringVar(&workloads, "workloads", strings.Join(compare.Workloads, ","), "workloads, comma-separated")
	flag.DurationVar(&o.Duration, "duration", o.Duration, "time of each measurement")
	flag.IntVar(&o.Rounds, "rounds", o.Rounds, "rounds per workload and concurrency; the systems alternate")
	flag.Int64Var(&o.EtcdTTL, "etcd-ttl", o.EtcdTTL, "lease TTL (s) of etcd's removal workload")
	flag.BoolVar(&o.EtcdKeepHistory, "etcd-keep-history", false, "do not compact etcd's history before each etcd measurement (the default compacts it, untimed, as a maintained etcd does)")
	flag.StringVar(&dir, "dir", "", "folder for the clusters' data and logs (default: a new temporary folder)")
	flag.BoolVar(&keep, "keep", false, "keep the folder after the run")
	flag.StringVar(&o.ProfileDir, "regent-profile", "", "write a CPU profile of every Regent node over each Regent measurement to this folder")
	flag.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of this load generator over the whole run to this file")
	flag.StringVar(&regentArgs, "regent-args", "", "extra flags for every regent server, space-separated (e.g. --pprof)")
	flag.Parse()
	o.Clients = nil
	for _, c := range strings.Split(clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil {
			fail(fmt.Errorf("-clients %q: %w", clients, err))
		}
		o.Clients = append(o.Clients, n)
	}
	o.Workloads = strings.Split(workloads, ",")
	o.RegentArgs = strings.Fields(regentArgs)
	self, err := os.Executable()
	if err != nil {
		fail(err)
	}
	o.Self = self
	if o.RegentBin, err = filepath.Abs(o.RegentBin); err != nil {
		fail(err)
	}
	if dir == "" {
		if dir, err = os.MkdirTemp("", "regent-compare-"); err != nil {
			fail(err)
		}
	}
	o.Dir = dir
	o.Progress = os.Stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Minute) // every run ends by itself
	defer cancel()
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			fail(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fail(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	res, err := compare.Run(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "data and logs kept in %s\n", dir)
		fail(err)
	}
	res.Table(os.Stdout, "regent-compare "+strings.Join(os.Args[1:], " "))
	if keep {
		fmt.Fprintf(os.Stderr, "data and logs kept in %s\n", dir)
	} else {
		os.RemoveAll(dir)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "regent-compare:", err)
	os.Exit(1)
}
