package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/regent-registry/regent/internal/daemon"
	"github.com/regent-registry/regent/internal/gcfloor"
	"github.com/regent-registry/regent/membership"
	"github.com/regent-registry/regent/persistent"
)

func newServerCmd() *cobra.Command {
	cfg := daemon.DefaultConfig()
	var (
		bind, configFile, logFormat, logLevel, gossipKey string
		healthNets                                       []string
		dev                                              bool
		gcFloorMiB                                       int
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a Regent node",
		Long: `Run a Regent node. Settings come from flags, then REGENT_* environment
variables (REGENT_DATA_DIR for --data-dir, and so on), then a JSON --config
file whose keys are the flag names, then defaults. A node started with neither
--join nor --bootstrap-expect is a cluster of one. SIGTERM or SIGINT drains the
node (clients are told to reconnect elsewhere) and exits cleanly.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnvAndFile(cmd.Flags(), configFile); err != nil {
				return err
			}
			logger, err := newLogger(logFormat, logLevel)
			if err != nil {
				return err
			}
			if bind != "" {
				explicit := map[string]*string{"grpc-addr": &cfg.GRPCAddr, "http-addr": &cfg.HTTPAddr, "peer-addr": &cfg.PeerAddr, "gossip-addr": &cfg.GossipAddr, "raft-addr": &cfg.RaftAddr}
				saved := map[string]string{}
				for name, p := range explicit {
					if cmd.Flags().Changed(name) {
						saved[name] = *p
					}
				}
				cfg.Bind(bind)
				for name, v := range saved {
					*explicit[name] = v
				}
			}
			if dev {
				dir, err := os.MkdirTemp("", "regent-dev-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(dir)
				if !cmd.Flags().Changed("data-dir") {
					cfg.DataDir = dir
				}
				cfg.NoSync = true
			}
			if gossipKey != "" {
				if cfg.GossipKey, err = membership.ParseKey(gossipKey); err != nil {
					return fmt.Errorf("--gossip-key: %w", err)
				}
			}
			for _, n := range healthNets {
				p, err := netip.ParsePrefix(n)
				if err != nil {
					return fmt.Errorf("--health-check-networks: %w", err)
				}
				cfg.HealthNetworks = append(cfg.HealthNetworks, p)
			}
			if gcFloorMiB < 0 {
				return fmt.Errorf("--gc-heap-floor-mb %d: must be 0 (off) or more", gcFloorMiB)
			}
			defer startGCFloor(uint64(gcFloorMiB)<<20, logger).Stop()
			cfg.Logger = logger
			d, err := daemon.Start(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			ops := "off (--http-addr \"\")"
			if a := d.HTTPAddr(); a != "" {
				ops = "http://" + a + "/metrics  /healthz  /readyz"
			}
			fmt.Fprintf(cmd.OutOrStdout(), `Regent node %q is serving.
  gRPC API:   %s
  operators:  %s
  data:       %s
Try, in another terminal:
  regent register --server %[2]s --service demo --ip 127.0.0.1 --port 8080
  regent list --server %[2]s --service demo
  regent watch --server %[2]s --service demo
Stop with Ctrl-C (or SIGTERM): clients are told to reconnect elsewhere.
`, cfg.Name, d.GRPCAddr(), ops, cfg.DataDir)
			<-cmd.Context().Done()
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			return stopWithin(func() { d.Shutdown(ctx) }, shutdownGrace, logger, os.Stderr)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", cfg.Name, "node name, unique in the cluster")
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "folder for the node's state")
	f.StringVar(&bind, "bind", "", "put every listener on this IP with the default ports (7400 gRPC, 7401 HTTP, 7402 peer, 7403 gossip, 7404 Raft)")
	f.StringVar(&cfg.GRPCAddr, "grpc-addr", cfg.GRPCAddr, "client gRPC API address")
	f.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, `operator HTTP address (/metrics, /healthz, /readyz); "" turns it off`)
	f.StringVar(&cfg.PeerAddr, "peer-addr", cfg.PeerAddr, "node-to-node address (cluster)")
	f.StringVar(&cfg.GossipAddr, "gossip-addr", cfg.GossipAddr, "gossip address (cluster)")
	f.StringVar(&cfg.RaftAddr, "raft-addr", cfg.RaftAddr, "Raft address (cluster)")
	f.StringSliceVar(&cfg.Join, "join", nil, "gossip seeds host:port,... of any node(s) of the cluster; retried until one answers")
	f.StringVar(&gossipKey, "gossip-key", "", "base64 key (16, 24 or 32 bytes) encrypting gossip; the same on every node")
	f.StringVar(&cfg.GossipProfile, "gossip-profile", cfg.GossipProfile, `gossip timings: "lan", or "local" for fast failure detection on one machine`)
	f.DurationVar(&cfg.Distro.SyncDelay, "distro-sync-delay", cfg.Distro.SyncDelay, "batches to each peer go at most one per this on average; changes that come faster are merged")
	f.IntVar(&cfg.Distro.SyncBurst, "distro-sync-burst", cfg.Distro.SyncBurst, "batches that may go to a peer at once after a quiet spell")
	f.DurationVar(&cfg.Distro.VerifyInterval, "distro-verify-interval", cfg.Distro.VerifyInterval, "how often each node verifies its clients with each peer")
	f.DurationVar(&cfg.Distro.Expiry, "distro-expiry", cfg.Distro.Expiry, "remove a replicated client its owner has not confirmed for this long")
	f.DurationVar(&cfg.Distro.OwnerGrace, "distro-owner-grace", cfg.Distro.OwnerGrace, "keep a dead or departed node's clients this long, for them to reconnect elsewhere")
	f.DurationVar(&cfg.Raft.StateCommitDelay, "state-commit-delay", cfg.Raft.StateCommitDelay, "applied persistent writes share one state commit for up to this long (every read commits it first); 0 commits each at once")
	f.StringVar(&cfg.Raft.LogStore, "raft-log-store", persistent.LogStoreBoltDB, `store of the Raft log: "boltdb" (raft-boltdb) or "wal" (hashicorp/raft-wal, experimental: one fsync per append instead of two); a node keeps the store it started with`)
	f.IntVar(&cfg.BootstrapExpect, "bootstrap-expect", 0, "servers to wait for before one of them bootstraps Raft with all (0: 1 without --join, else wait to be added by the leader)")
	f.StringSliceVar(&healthNets, "health-check-networks", nil, "only health-check persistent instances in these CIDRs (default: every instance)")
	f.StringVar(&cfg.LimitsFile, "limits", "", "JSON connection-limit rules, reloaded when the file changes")
	f.BoolVar(&cfg.Pprof, "pprof", false, "serve /debug/pprof on the HTTP address")
	f.IntVar(&gcFloorMiB, "gc-heap-floor-mb", 32, "keep the Go GC's heap goal at least this many MiB while the live heap is small: fewer collections, steadier latency (0: off; ignored when GOGC is set)")
	f.BoolVar(&dev, "dev", false, "throwaway node: data in a temporary folder, no fsync")
	f.StringVar(&configFile, "config", "", "JSON file of settings keyed by flag name")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.DurationVar(&cfg.RPC.Session.IdleTimeout, "session-idle-timeout", cfg.RPC.Session.IdleTimeout, "probe a session silent for this long")
	f.DurationVar(&cfg.RPC.Session.ProbeTimeout, "session-probe-timeout", cfg.RPC.Session.ProbeTimeout, "close a probed session that does not answer within this")
	f.DurationVar(&cfg.RPC.Session.CheckInterval, "session-check-interval", cfg.RPC.Session.CheckInterval, "how often sessions are checked")
	f.DurationVar(&cfg.Registry.MergeWindow, "push-merge-window", cfg.Registry.MergeWindow, "pushes of one service are paced to one per window on average; changes that wait go out as one push")
	f.IntVar(&cfg.Registry.MergeBurst, "push-merge-burst", cfg.Registry.MergeBurst, "pushes of one service that may go out back to back after a quiet spell, before the window paces them")
	return cmd
}

// startGCFloor starts the process's GC tuner (see internal/gcfloor),
// unless the operator set GOGC, which then rules alone.
func startGCFloor(floor uint64, logger *slog.Logger) *gcfloor.Tuner {
	if v := os.Getenv("GOGC"); v != "" {
		if floor > 0 {
			logger.Info("GOGC is set; the GC heap floor is off", "GOGC", v)
		}
		return nil
	}
	return gcfloor.Start(floor)
}

// shutdownGrace bounds a graceful stop: the drain's own deadline (15 s)
// plus time for the stores to close.
const shutdownGrace = 25 * time.Second

var errShutdownHung = errors.New("shutdown did not finish in time")

// stopWithin runs stop and waits for it at most grace. If it has not
// returned by then, it writes every goroutine's stack to dump (what held
// the stop up, for the report: chaos finding 7) and returns
// errShutdownHung, and the process exits anyway: every acknowledged write
// is in the fsynced Raft log and the state is rebuilt from it, so exiting
// loses nothing, and a SIGTERM must end the process.
func stopWithin(stop func(), grace time.Duration, logger *slog.Logger, dump io.Writer) error {
	done := make(chan struct{})
	go func() { stop(); close(done) }()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-done:
		return nil
	case <-timer.C:
		logger.Error("shutdown did not finish; exiting anyway, after every goroutine's stack", "after", grace)
		_ = pprof.Lookup("goroutine").WriteTo(dump, 2)
		return fmt.Errorf("%w (%v)", errShutdownHung, grace)
	}
}

// applyEnvAndFile sets every flag not given on the command line from
// REGENT_<FLAG> in the environment, or else from the config file.
func applyEnvAndFile(fs *pflag.FlagSet, file string) error {
	fileVals := map[string]any{}
	if file == "" {
		file = os.Getenv("REGENT_CONFIG")
	}
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("config file: %w", err)
		}
		if err := json.Unmarshal(data, &fileVals); err != nil {
			return fmt.Errorf("config file %s: %w", file, err)
		}
		for k := range fileVals {
			if fs.Lookup(k) == nil {
				return fmt.Errorf("config file %s: unknown setting %q", file, k)
			}
		}
	}
	var ferr error
	fs.VisitAll(func(f *pflag.Flag) {
		if ferr != nil || f.Changed || f.Name == "config" {
			return
		}
		env := "REGENT_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := fs.Set(f.Name, v); err != nil {
				ferr = fmt.Errorf("%s: %w", env, err)
			}
			return
		}
		if v, ok := fileVals[f.Name]; ok {
			var s string
			switch x := v.(type) {
			case string:
				s = x
			case float64:
				s = strconv.FormatFloat(x, 'f', -1, 64)
			case bool:
				s = strconv.FormatBool(x)
			case []any:
				parts := make([]string, len(x))
				for i, p := range x {
					parts[i] = fmt.Sprint(p)
				}
				s = strings.Join(parts, ",")
			default:
				ferr = fmt.Errorf("config file: setting %q has an unsupported type", f.Name)
				return
			}
			if err := fs.Set(f.Name, s); err != nil {
				ferr = fmt.Errorf("config file: %s: %w", f.Name, err)
			}
		}
	})
	return ferr
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}
