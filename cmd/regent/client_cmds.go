package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/regent-registry/regent/client"
	"github.com/regent-registry/regent/internal/daemon"
)

const defaultServer = "127.0.0.1:7400"

// common holds the flags every client command shares.
type common struct {
	server  string
	output  string
	timeout time.Duration
}

func (c *common) add(cmd *cobra.Command, withOutput bool) {
	def := os.Getenv("REGENT_SERVER")
	if def == "" {
		def = defaultServer
	}
	cmd.Flags().StringVar(&c.server, "server", def, "server address host:port, or a comma-separated list to fail over between (env REGENT_SERVER)")
	cmd.Flags().DurationVar(&c.timeout, "timeout", 10*time.Second, "how long to wait for a server")
	if withOutput {
		cmd.Flags().StringVarP(&c.output, "output", "o", "table", "output format: table or json")
	}
}

func (c *common) check() error {
	if c.output != "" && c.output != "table" && c.output != "json" {
		return fmt.Errorf("--output %q: want table or json", c.output)
	}
	return nil
}

// run checks the flags, connects, and calls fn with a client and a context
// bounded by --timeout.
func (c *common) run(cmd *cobra.Command, fn func(ctx context.Context, cl *client.Client) error) error {
	if err := c.check(); err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	return fn(ctx, cl)
}

func (c *common) client() (*client.Client, error) {
	var servers []string
	for _, s := range strings.Split(c.server, ",") {
		if s = strings.TrimSpace(s); s != "" {
			servers = append(servers, s)
		}
	}
	return client.New(client.Config{Servers: servers, ClientName: "regent-cli", RequestTimeout: c.timeout})
}

// selector holds the flags that name a service and an instance.
type selector struct {
	namespace, group, service, cluster, ip string
	port                                   int
}

func (s *selector) addService(cmd *cobra.Command) {
	cmd.Flags().StringVar(&s.service, "service", "", "service name (required)")
	cmd.Flags().StringVar(&s.namespace, "namespace", "", `namespace (default "public")`)
	cmd.Flags().StringVar(&s.group, "group", "", `group (default "DEFAULT_GROUP")`)
	_ = cmd.MarkFlagRequired("service")
}

func (s *selector) addInstance(cmd *cobra.Command) {
	s.addService(cmd)
	cmd.Flags().StringVar(&s.ip, "ip", "", "instance IP or host name (required)")
	cmd.Flags().IntVar(&s.port, "port", 0, "instance port (required)")
	cmd.Flags().StringVar(&s.cluster, "cluster", "", `cluster (default "DEFAULT")`)
	_ = cmd.MarkFlagRequired("ip")
	_ = cmd.MarkFlagRequired("port")
}

func (s *selector) svc() client.Service {
	return client.Service{Namespace: s.namespace, Group: s.group, Name: s.service}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newRegisterCmd() *cobra.Command {
	var (
		c          common
		sel        selector
		weight     float64
		metadata   []string
		persistent bool
	)
	cmd := &cobra.Command{
		Use:   "register",
		Short: "Register an instance",
		Long: `Register an instance. An ephemeral registration (the default) holds a session
open and prints that it is registered, until SIGINT or SIGTERM; then it
deregisters and exits 0. With --persistent it returns once the write is
acknowledged; the instance stays until deregistered.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			md, err := parseMetadata(metadata)
			if err != nil {
				return err
			}
			if weight < 0 {
				return fmt.Errorf("--weight %v: must not be negative", weight)
			}
			in := client.Instance{IP: sel.ip, Port: sel.port, Cluster: sel.cluster, Weight: weight, Metadata: md}
			cl, err := c.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
			defer cancel()
			out := cmd.OutOrStdout()
			if persistent {
				rev, err := cl.RegisterPersistent(ctx, sel.svc(), in)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "registered persistent %s:%d in %s (revision %d)\n", sel.ip, sel.port, sel.service, rev)
				return nil
			}
			if err := cl.Register(ctx, sel.svc(), in); err != nil {
				return err
			}
			fmt.Fprintf(out, "registered %s:%d in %s (node %s); holding the session until SIGINT/SIGTERM\n", sel.ip, sel.port, sel.service, cl.Node())
			<-cmd.Context().Done()
			dctx, dcancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer dcancel()
			if err := cl.Deregister(dctx, sel.svc(), in); err != nil {
				// Closing the session removes it anyway.
				fmt.Fprintf(cmd.ErrOrStderr(), "deregister: %v (closing the session removes it)\n", err)
			}
			fmt.Fprintf(out, "deregistered %s:%d from %s\n", sel.ip, sel.port, sel.service)
			return nil
		},
	}
	c.add(cmd, false)
	sel.addInstance(cmd)
	cmd.Flags().Float64Var(&weight, "weight", 1, "weight for weighted picks")
	cmd.Flags().StringArrayVar(&metadata, "metadata", nil, "metadata k=v (repeatable)")
	cmd.Flags().BoolVar(&persistent, "persistent", false, "register a persistent instance and return once acknowledged")
	return cmd
}

func parseMetadata(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	md := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--metadata %q: want key=value", kv)
		}
		md[k] = v
	}
	return md, nil
}

func newDeregisterCmd() *cobra.Command {
	var (
		c   common
		sel selector
	)
	cmd := &cobra.Command{
		Use:   "deregister",
		Short: "Deregister a persistent instance",
		Long: `Deregister a persistent instance. Ephemeral instances belong to the session
that registered them: they go when that process deregisters or ends.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.run(cmd, func(ctx context.Context, cl *client.Client) error {
				rev, err := cl.DeregisterPersistent(ctx, sel.svc(), client.Instance{IP: sel.ip, Port: sel.port, Cluster: sel.cluster})
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "deregistered %s:%d from %s (revision %d)\n", sel.ip, sel.port, sel.service, rev)
				return nil
			})
		},
	}
	c.add(cmd, false)
	sel.addInstance(cmd)
	return cmd
}

// listJSON is the contract shape of `list -o json`: revision and instances,
// each with ip, port, cluster, weight, healthy, enabled, ephemeral and
// metadata (client.Instance's JSON form).
type listJSON struct {
	Service             client.Service    `json:"service"`
	Revision            uint64            `json:"revision"`
	ProtectionTriggered bool              `json:"protection_triggered"`
	Instances           []client.Instance `json:"instances"`
}

func toListJSON(info client.ServiceInfo) listJSON {
	out := listJSON{Service: info.Service, Revision: info.Revision, ProtectionTriggered: info.ProtectionTriggered, Instances: make([]client.Instance, 0, len(info.Instances))}
	for _, in := range info.Instances {
		if in.Metadata == nil {
			in.Metadata = map[string]string{}
		}
		out.Instances = append(out.Instances, in)
	}
	return out
}

func printList(w io.Writer, output string, info client.ServiceInfo) error {
	if output == "json" {
		return printJSON(w, toListJSON(info))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "# %s/%s/%s revision %d", info.Service.Namespace, info.Service.Group, info.Service.Name, info.Revision)
	if info.ProtectionTriggered {
		fmt.Fprint(tw, " (protection threshold hit: unhealthy instances included)")
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "IP\tPORT\tCLUSTER\tWEIGHT\tHEALTHY\tEPHEMERAL\tMETADATA")
	for _, in := range info.Instances {
		var md []string
		for k, v := range in.Metadata {
			md = append(md, k+"="+v)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%g\t%v\t%v\t%s\n", in.IP, in.Port, in.Cluster, in.Weight, in.Healthy, in.Ephemeral, strings.Join(md, ","))
	}
	return tw.Flush()
}

func newListCmd() *cobra.Command {
	var (
		c        common
		sel      selector
		healthy  bool
		linear   bool
		clusters []string
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List a service's instances",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.run(cmd, func(ctx context.Context, cl *client.Client) error {
				info, err := cl.GetService(ctx, sel.svc(), client.Filter{HealthyOnly: healthy, Clusters: clusters, Linearizable: linear})
				if err != nil {
					return err
				}
				return printList(cmd.OutOrStdout(), c.output, info)
			})
		},
	}
	c.add(cmd, true)
	sel.addService(cmd)
	cmd.Flags().BoolVar(&healthy, "healthy", false, "only healthy instances (subject to the protection threshold)")
	cmd.Flags().StringSliceVar(&clusters, "cluster", nil, "only these clusters")
	cmd.Flags().BoolVar(&linear, "linearizable", false, "linearizable read of persistent instances (through the Raft leader; fails without a quorum)")
	return cmd
}

type serviceJSON struct {
	Namespace string `json:"namespace"`
	Group     string `json:"group"`
	Service   string `json:"service"`
	Instances int    `json:"instances"`
	Healthy   int    `json:"healthy"`
}

func newServicesCmd() *cobra.Command {
	var namespace, group string
	cmd := &cobra.Command{
		Use:   "services",
		Short: "List services",
		Args:  cobra.NoArgs,
	}
	var cc common
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		var list []client.ServiceSummary
		err := cc.run(cmd, func(ctx context.Context, cl *client.Client) (err error) {
			list, err = cl.ListServices(ctx, namespace, group)
			return err
		})
		if err != nil {
			return err
		}
		out := make([]serviceJSON, 0, len(list))
		for _, s := range list {
			out = append(out, serviceJSON{Namespace: s.Service.Namespace, Group: s.Service.Group, Service: s.Service.Name, Instances: s.Instances, Healthy: s.Healthy})
		}
		if cc.output == "json" {
			return printJSON(cmd.OutOrStdout(), out)
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAMESPACE\tGROUP\tSERVICE\tINSTANCES\tHEALTHY")
		for _, s := range out {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", s.Namespace, s.Group, s.Service, s.Instances, s.Healthy)
		}
		return tw.Flush()
	}
	cc.add(cmd, true)
	cmd.Flags().StringVar(&namespace, "namespace", "", `namespace (default "public")`)
	cmd.Flags().StringVar(&group, "group", "", "only this group")
	return cmd
}

func newWatchCmd() *cobra.Command {
	var (
		c        common
		sel      selector
		healthy  bool
		clusters []string
	)
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Print a service's instance list now and on every change",
		Long: `Subscribe to a service and print each push until SIGINT/SIGTERM. With -o json
each push is one line of JSON in the shape of list -o json.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := c.check(); err != nil {
				return err
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
			w, err := cl.Watch(ctx, sel.svc(), client.Filter{HealthyOnly: healthy, Clusters: clusters})
			cancel()
			if err != nil {
				return err
			}
			defer w.Stop()
			out := cmd.OutOrStdout()
			for {
				select {
				case <-cmd.Context().Done():
					return nil
				case info := <-w.C():
					if c.output == "json" {
						b, err := json.Marshal(toListJSON(info))
						if err != nil {
							return err
						}
						fmt.Fprintln(out, string(b))
						continue
					}
					if err := printList(out, c.output, info); err != nil {
						return err
					}
					fmt.Fprintln(out)
				}
			}
		},
	}
	c.add(cmd, true)
	sel.addService(cmd)
	cmd.Flags().BoolVar(&healthy, "healthy", false, "only healthy instances")
	cmd.Flags().StringSliceVar(&clusters, "cluster", nil, "only these clusters")
	return cmd
}

func newMembersCmd() *cobra.Command {
	var c common
	cmd := &cobra.Command{
		Use:   "members",
		Short: "List the cluster's nodes as the asked node sees them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.run(cmd, func(ctx context.Context, cl *client.Client) error {
				members, err := cl.Members(ctx)
				if err != nil {
					return err
				}
				if members == nil {
					members = []client.Member{}
				}
				if c.output == "json" {
					return printJSON(cmd.OutOrStdout(), members)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tADDR\tSTATUS\tRAFT")
				for _, m := range members {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.Name, m.Addr, m.Status, m.Raft)
				}
				return tw.Flush()
			})
		},
	}
	c.add(cmd, true)
	return cmd
}

func newVersionCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := map[string]string{"version": daemon.Version, "go": runtime.Version(), "sdk": client.Version}
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "regent %s (%s)\n", v["version"], v["go"])
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}
