package chaos

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

func ms(d time.Duration) string {
	if d < 0 {
		return "-"
	}
	return d.Round(10 * time.Millisecond).String()
}

// faultCounts summarises the faults that ran, by kind.
func (r *Report) faultCounts() string {
	n := map[FaultKind]int{}
	for _, ev := range r.Events {
		n[ev.Fault.Kind]++
	}
	var parts []string
	skipped := 0
	for _, ev := range r.Events {
		if strings.HasPrefix(ev.Note, "not run") {
			n[ev.Fault.Kind]--
			skipped++
		}
	}
	for _, k := range []FaultKind{FaultKill, FaultPause, FaultTerm, FaultIsolate, FaultPartition, FaultBridge, FaultBridgeFollower, FaultFarClients, FaultClientClose, FaultClientKill, FaultClientCut} {
		if n[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s×%d", k, n[k]))
		}
	}
	if skipped > 0 {
		parts = append(parts, fmt.Sprintf("(%d network faults not run)", skipped))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

func (r *Report) opCounts() (ok, failed int) {
	for _, c := range r.Ops {
		ok += c[0]
		failed += c[1]
	}
	return ok, failed
}

func (r *Report) maxRemoval() string {
	if len(r.Removals) == 0 {
		return "-"
	}
	var worst time.Duration
	for _, rm := range r.Removals {
		if !rm.Removed {
			return "never"
		}
		worst = max(worst, rm.Time)
	}
	return ms(worst)
}

// Table prints one row per report: scenario, seed, faults injected,
// operations, violations, convergence and removal times.
func Table(reps []*Report) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "scenario\tseed\tnodes\tfaults injected\tops ok/failed\tviolations\tlinearizable\tlive converged (b)\tdead removed, max (c)\tsubscribers\tre-form\tagree (d)")
	for _, r := range reps {
		ok, failed := r.opCounts()
		live := "never"
		if r.Live.Converged {
			live = fmt.Sprintf("%s (bound %s)", ms(r.Live.Time), ms(r.LiveBound))
		}
		subs := "disagree"
		if r.WatchersOK {
			subs = ms(r.Watchers)
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%s\t%d/%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Scenario, r.Seed, r.Nodes, r.faultCounts(), ok, failed,
			len(r.Violations), r.Linearizable, live, r.maxRemoval(), subs, ms(r.Reform), ms(r.Agreement))
	}
	w.Flush()
	return b.String()
}

// String is the full report of one run: the summary row, the faults as they
// ran, the operations, each dead client's removal and every violation.
func (r *Report) String() string {
	var b strings.Builder
	b.WriteString(Table([]*Report{r}))
	fmt.Fprintf(&b, "mode: %s; partitions: %s\n", r.Mode, r.Partitions)
	fmt.Fprintf(&b, "formed at +%s; heal (last fault undone) at +%s; wishes frozen at +%s; run took %s\n", ms(r.Formed), ms(r.Heal), ms(r.Freeze), ms(r.Elapsed))
	b.WriteString("faults:\n")
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  kind\ttarget\thit\trole\tat\thold\tundone\tre-formed after\tnote\terror")
	evs := append([]FaultEvent(nil), r.Events...)
	sort.Slice(evs, func(i, j int) bool { return evs[i].At < evs[j].At })
	for _, ev := range evs {
		rec := "-"
		if ev.Fault.Target != "" {
			rec = "never"
			if ev.Recovered > 0 {
				rec = ms(ev.Recovered - ev.Undone)
			}
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t+%s\t%s\t+%s\t%s\t%s\t%s\n", ev.Fault.Kind, orDash(string(ev.Fault.Target)), ev.Node, orDash(ev.Role),
			ms(ev.At), ms(ev.Fault.Hold), ms(ev.Undone), rec, orDash(ev.Note), orDash(ev.Err))
	}
	w.Flush()
	b.WriteString("operations (acknowledged/failed):")
	for k := OpPRegister; k <= OpEDeregister; k++ {
		c := r.Ops[k]
		fmt.Fprintf(&b, " %s %d/%d", k, c[0], c[1])
	}
	fmt.Fprintf(&b, "\npersistent (a): %d instances checked, %d ambiguous (a failed or concurrent write of the other kind); linearizable: %s\n",
		r.Pers.Checked, r.Pers.Ambiguous, r.Linearizable)
	if r.Live.Converged {
		fmt.Fprintf(&b, "live ephemeral (b): listed exactly on every node %s after the wishes froze (bound %s)\n", ms(r.Live.Time), ms(r.LiveBound))
	} else {
		fmt.Fprintf(&b, "live ephemeral (b): never converged (bound %s): %s\n", ms(r.LiveBound), r.Live.Why)
	}
	b.WriteString("dead clients (c):\n")
	w = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  client\tkind\tdied at\tgone from every node after\tdeadline\tlast listed (all nodes answering)")
	for _, rm := range r.Removals {
		gone := "never"
		if rm.Removed {
			gone = ms(rm.Time)
		}
		fmt.Fprintf(w, "  %s\t%s\t+%s\t%s\t+%s\t%s\n", rm.Name, rm.Kind, ms(rm.DiedAt), gone, ms(rm.Deadline), orDash(rm.LastSeen))
	}
	w.Flush()
	subs := "disagree"
	if r.WatchersOK {
		subs = "agree after " + ms(r.Watchers)
	}
	fmt.Fprintf(&b, "subscribers: %s; membership (d): agreed after %s; bootstraps logged: %d; bbolt files checked after the final SIGKILL: %d\n",
		subs, ms(r.Agreement), r.Bootstraps, r.DataFiles)
	if len(r.Violations) == 0 {
		b.WriteString("violations: none\n")
	} else {
		fmt.Fprintf(&b, "violations (%d):\n", len(r.Violations))
		for _, v := range r.Violations {
			fmt.Fprintf(&b, "  - %s\n", v)
		}
	}
	fmt.Fprintf(&b, "node logs and data: %s\n", r.Dir)
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
