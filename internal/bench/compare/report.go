package compare

import (
	"fmt"
	"io"
	"runtime"
	"time"
)

var workloadTitles = map[string]string{
	Ephemeral:  "ephemeral registration of a new instance with its liveness binding (Regent: a new session on the client's connection, Hello with the register sent right behind it, kept open; etcd: lease grant + put with the lease + keep-alive)",
	Shared:     "one more instance on the client's one binding (Regent: register on its long-lived SDK session, which holds every instance it registered; etcd: put with its one lease); the issue sets no target for it",
	Persistent: "persistent registration (Regent: persistent register through Raft, the SDK sending it to the leader once a node has named it; etcd: put); the clients of both list every node, their own first",
	Noop:       "the cheapest round trip to a node, which bounds every request to a server (Regent: a Ping on the SDK's session, the path its lookups take; etcd: the standard gRPC health Check, a unary call as its range is); a baseline, no target",
	Lookup:     "lookup of a 10-instance service from the server (Regent: the SDK's GetService, which goes over the client's session; etcd: serializable range over the prefix)",
	Watched:    "the same lookup by a client subscribed to the service (Regent: GetService, answered by the SDK from its push-kept cache; etcd: the same serializable range, its client having no such cache)",
	Notify:     "change notification on another node (Regent: register → subscriber push; etcd: put → watch event), each client changing its own service at most every 50 ms, each round long enough for at least 100 changes (5 s at one client); before each change, untimed, the client's previous instance (etcd: key) is removed and seen gone, so the service holds one instance",
	Removal:    "removal after a client process is killed (Regent: session end; etcd: lease expiry), kill → gone for a watcher on another node",
}

func targetText(w string) string {
	t, ok := targets[w]
	if !ok {
		return "—"
	}
	if t.atMost {
		return fmt.Sprintf("≤ %.1f× (p99)", t.ratio)
	}
	return fmt.Sprintf("≥ %.1f×", t.ratio)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// zkTitles say how ZooKeeper does each workload, when it was measured.
var zkTitles = map[string]string{
	Ephemeral:  "a new session on the client's server and an ephemeral znode on it, kept open",
	Shared:     "an ephemeral znode on the client's one session",
	Persistent: "a persistent znode",
	Noop:       "exists on /, its cheapest request",
	Lookup:     "the service znode's children (an instance is its child's name, as in Dubbo's registry), a local read",
	Watched:    "the same children read (its client has no cache)",
	Notify:     "create → a children watch on another server fires and the re-read lists it",
	Removal:    "session expiry at its shortest timeout (2 ticks of 1 s)",
}

// measuredZK reports whether the run had a ZooKeeper column.
func (r *Result) measuredZK() bool {
	for _, row := range r.Rows {
		if row.ZooKeeper.Ops > 0 || row.ZooKeeper.Errors > 0 {
			return true
		}
	}
	return false
}

// Table writes the result as Markdown: one table, a row per workload and
// concurrency, with each side's throughput and latency and the ratio (and
// ZooKeeper's, in columns after the target, when it was measured).
func (r *Result) Table(w io.Writer, cmdline string) {
	fmt.Fprintf(w, "Command: `%s`; %s, %d CPUs, %s/%s; started %s, took %v.\n\n", cmdline, runtime.Version(), runtime.NumCPU(), runtime.GOOS, runtime.GOARCH,
		r.Started.UTC().Format("2006-01-02 15:04 UTC"), r.Elapsed.Round(time.Second))
	zk := r.measuredZK()
	head, rule := "| workload | clients | Regent ops/s | Regent p50 | Regent p99 | etcd ops/s | etcd p50 | etcd p99 | Regent/etcd | target | met |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
	if zk {
		head += " ZooKeeper ops/s | ZooKeeper p50 | ZooKeeper p99 | Regent/ZooKeeper |"
		rule += "---:|---:|---:|---:|"
	}
	fmt.Fprintln(w, head)
	fmt.Fprintln(w, rule)
	for _, row := range r.Rows {
		kind := "throughput"
		if latencyWorkload(row.Workload) {
			kind = "p99"
		}
		met := "no"
		if row.Met() {
			met = "yes"
		} else if _, ok := targets[row.Workload]; !ok {
			met = "—"
		}
		fmt.Fprintf(w, "| %s | %d | %.0f | %s | %s | %.0f | %s | %s | %.2f (%s) | %s | %s |", row.Workload, row.Clients,
			row.Regent.Rate(), ms(row.Regent.Pct(0.5)), ms(row.Regent.Pct(0.99)),
			row.Etcd.Rate(), ms(row.Etcd.Pct(0.5)), ms(row.Etcd.Pct(0.99)),
			row.Ratio(), kind, targetText(row.Workload), met)
		if zk {
			fmt.Fprintf(w, " %.0f | %s | %s | %.2f (%s) |", row.ZooKeeper.Rate(), ms(row.ZooKeeper.Pct(0.5)), ms(row.ZooKeeper.Pct(0.99)), row.ZooKeeperRatio(), kind)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	r.cpuTable(w)
	r.ceilingTable(w)
	for _, wl := range Workloads {
		fmt.Fprintf(w, "- **%s**: %s", wl, workloadTitles[wl])
		if zk {
			fmt.Fprintf(w, "; ZooKeeper: %s", zkTitles[wl])
		}
		fmt.Fprintln(w, ".")
	}
	if r.EtcdKeptHistory {
		fmt.Fprintln(w, "- etcd's history was kept for the whole run (-etcd-keep-history): each etcd workload met the revisions of those measured before it.")
	} else {
		fmt.Fprintln(w, "- etcd's history was compacted (physical, untimed) before every etcd measurement, as a maintained etcd compacts.")
	}
	fmt.Fprintf(w, "- etcd Raft term of each member before the first measurement %v, after the last %v", r.EtcdTermsBefore, r.EtcdTermsAfter)
	if fmt.Sprint(r.EtcdTermsBefore) == fmt.Sprint(r.EtcdTermsAfter) {
		fmt.Fprintln(w, " (no leader change during the run).")
	} else {
		fmt.Fprintln(w, " (etcd changed leader during the run: its figures include elections).")
	}
	if zk {
		fmt.Fprintf(w, "- ZooKeeper epoch of each server before the first measurement %v, after the last %v", r.ZooKeeperEpochsBefore, r.ZooKeeperEpochsAfter)
		if fmt.Sprint(r.ZooKeeperEpochsBefore) == fmt.Sprint(r.ZooKeeperEpochsAfter) {
			fmt.Fprintln(w, " (no leader change during the run).")
		} else {
			fmt.Fprintln(w, " (ZooKeeper changed leader during the run: its figures include elections).")
		}
	}
	mem := func(name string, m Memory) string {
		if m.Err != "" {
			return fmt.Sprintf("%s unread (%s)", name, m.Err)
		}
		return fmt.Sprintf("%s %.0f MiB peak, %.0f MiB at the end", name, float64(m.Peak)/(1<<20), float64(m.RSS)/(1<<20))
	}
	fmt.Fprintf(w, "- Resident memory of each system's three server processes together (VmHWM, VmRSS): %s; %s", mem("Regent", r.RegentMemory), mem("etcd", r.EtcdMemory))
	if zk {
		fmt.Fprintf(w, "; %s (JVMs with -Xmx1g)", mem("ZooKeeper", r.ZooKeeperMemory))
	}
	fmt.Fprintln(w, ".")
	var errs []string
	for _, row := range r.Rows {
		if row.Regent.Errors+row.Etcd.Errors+row.ZooKeeper.Errors > 0 {
			e := fmt.Sprintf("%s at %d clients: Regent %d (%s), etcd %d (%s)", row.Workload, row.Clients, row.Regent.Errors, row.Regent.FirstErr, row.Etcd.Errors, row.Etcd.FirstErr)
			if zk {
				e += fmt.Sprintf(", ZooKeeper %d (%s)", row.ZooKeeper.Errors, row.ZooKeeper.FirstErr)
			}
			errs = append(errs, e)
		}
	}
	for _, e := range errs {
		fmt.Fprintf(w, "- errors: %s\n", e)
	}
}

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond)) }

// cpuTable writes the CPU each system's three server processes used per
// operation over the timed windows, and the load generator's, which the
// two systems share with the servers on the same cores: a throughput
// ratio can be no larger than the ratio of the whole CPU per operation,
// servers and generator together.
func (r *Result) cpuTable(w io.Writer) {
	var rows []Row
	for _, row := range r.Rows {
		if rs, _ := row.RegentCPU.PerOp(); rs > 0 {
			if es, _ := row.EtcdCPU.PerOp(); es > 0 {
				rows = append(rows, row)
			}
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w, "CPU per operation over the timed windows (user+system, from /proc): the three server processes of each system, and the load generator while it drove each:")
	fmt.Fprintln(w)
	zk := r.measuredZK()
	head, rule := "| workload | clients | Regent servers | etcd servers | etcd/Regent (servers) | generator, Regent | generator, etcd | etcd/Regent (all) |", "|---|---:|---:|---:|---:|---:|---:|---:|"
	if zk {
		head += " ZooKeeper servers | generator, ZooKeeper | ZooKeeper/Regent (all) |"
		rule += "---:|---:|---:|"
	}
	fmt.Fprintln(w, head)
	fmt.Fprintln(w, rule)
	for _, row := range rows {
		rs, rg := row.RegentCPU.PerOp()
		es, eg := row.EtcdCPU.PerOp()
		fmt.Fprintf(w, "| %s | %d | %s | %s | %.2f | %s | %s | %.2f |", row.Workload, row.Clients, us(rs), us(es), float64(es)/float64(rs),
			us(rg), us(eg), float64(es+eg)/float64(rs+rg))
		if zk {
			if zs, zg := row.ZooKeeperCPU.PerOp(); zs > 0 {
				fmt.Fprintf(w, " %s | %s | %.2f |", us(zs), us(zg), float64(zs+zg)/float64(rs+rg))
			} else {
				fmt.Fprint(w, " — | — | — |")
			}
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
}

// ceilingTable writes, per concurrency measured with both noop and lookup,
// each system's lookup as a share of its own no-op round trip, and the
// highest lookup ratio Regent could reach in this run: its no-op rate
// over etcd's lookup rate (a lookup that cost Regent nothing still takes
// a round trip).
func (r *Result) ceilingTable(w io.Writer) {
	type pair struct{ noop, lookup *Row }
	var order []int
	pairs := map[int]*pair{}
	for i := range r.Rows {
		row := &r.Rows[i]
		if row.Workload != Noop && row.Workload != Lookup {
			continue
		}
		p := pairs[row.Clients]
		if p == nil {
			p = &pair{}
			pairs[row.Clients] = p
			order = append(order, row.Clients)
		}
		if row.Workload == Noop {
			p.noop = row
		} else {
			p.lookup = row
		}
	}
	var lines []string
	for _, c := range order {
		p := pairs[c]
		if p.noop == nil || p.lookup == nil || p.noop.Regent.Rate() == 0 || p.noop.Etcd.Rate() == 0 || p.lookup.Etcd.Rate() == 0 {
			continue
		}
		lines = append(lines, fmt.Sprintf("| %d | %.0f | %.2f | %.0f | %.2f | %.2f | %.2f |", c,
			p.noop.Regent.Rate(), p.lookup.Regent.Rate()/p.noop.Regent.Rate(),
			p.noop.Etcd.Rate(), p.lookup.Etcd.Rate()/p.noop.Etcd.Rate(),
			p.noop.Regent.Rate()/p.lookup.Etcd.Rate(), p.lookup.Ratio()))
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintln(w, "Lookup beside each system's no-op round trip: the lookup's share of its own no-op rate, and the highest lookup ratio a Regent lookup costing nothing would reach (Regent no-op ops/s over etcd lookup ops/s):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| clients | Regent no-op ops/s | Regent lookup/no-op | etcd no-op ops/s | etcd lookup/no-op | ceiling of Regent/etcd lookup | Regent/etcd lookup |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|")
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
	fmt.Fprintln(w)
}
