package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/regent-registry/regent/internal/linearize"
	bolt "go.etcd.io/bbolt"
)

// ---- (a) persistent: no acknowledged write lost ----

// PersStats counts the persistent operations and what check (a) could
// judge.
type PersStats struct {
	WritesOK, WritesFailed, Reads, ReadsFailed int
	// Checked instances had an unambiguous last acknowledged write;
	// Ambiguous ones had a write of the other kind that failed (it may or
	// may not have been applied) or ran concurrently with it.
	Checked, Ambiguous int
}

// CheckDurability is check (a): for every persistent instance, take the
// acknowledged write that ended last (L). Unless a write of the other kind
// is not entirely before L (a failed one may have been applied at any time
// after it started; an acknowledged concurrent one may have been ordered
// after L), the final linearizable read on every node must list the
// instance exactly when L registered it. An instance never written, or
// whose writes all failed, is skipped (nothing was acknowledged).
func CheckDurability(ops []Op, finals map[string][]int, keys []int) (PersStats, []string) {
	var st PersStats
	byKey := map[int][]Op{}
	for _, op := range ops {
		switch op.Kind {
		case OpPRegister, OpPDeregister:
			if op.OK() {
				st.WritesOK++
			} else {
				st.WritesFailed++
			}
			byKey[op.Key] = append(byKey[op.Key], op)
		case OpPRead:
			if op.OK() {
				st.Reads++
			} else {
				st.ReadsFailed++
			}
		}
	}
	var viol []string
	nodes := make([]string, 0, len(finals))
	for n := range finals {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	for _, k := range keys {
		ws := byKey[k]
		var last *Op
		for i := range ws {
			if ws[i].OK() && (last == nil || ws[i].End > last.End) {
				last = &ws[i]
			}
		}
		if last == nil {
			continue
		}
		ambiguous := false
		for i := range ws {
			o := &ws[i]
			if o != last && o.Kind != last.Kind && o.End >= last.Start {
				ambiguous = true
				break
			}
		}
		if ambiguous {
			st.Ambiguous++
			continue
		}
		st.Checked++
		want := last.Kind == OpPRegister
		for _, n := range nodes {
			got := slices.Contains(finals[n], k)
			if got != want {
				what := "lost acknowledged register of"
				if !want {
					what = "lost acknowledged deregister of (still listed)"
				}
				viol = append(viol, fmt.Sprintf("persistent: %s %s on %s: last ack %s by %s at [%v, %v]",
					what, PersIP(k), n, last.Kind, last.ActorName, last.Start.Round(time.Millisecond), last.End.Round(time.Millisecond)))
			}
		}
	}
	return st, viol
}

// ---- (a) persistent: linearizability (porcupine) ----

// SetModel is porcupine's model of the persistent service
// (internal/linearize, shared with the Raft store's own test): each
// instance is an independent register holding "listed or not", so the
// history is partitioned by instance. A read of the whole service is one
// read per instance, with the same interval.
var SetModel = linearize.SetModel

// setKind maps a recorded operation to the model's kind.
func setKind(k OpKind) linearize.Kind {
	switch k {
	case OpPRegister:
		return linearize.Register
	case OpPDeregister:
		return linearize.Deregister
	}
	return linearize.Read
}

// PorcupineHistory turns the recorded persistent operations into
// porcupine's: an acknowledged write ends when it returned; a failed one
// may take effect at any time after its call, so it "returns" after every
// other event; failed reads are dropped (they observed nothing).
func PorcupineHistory(ops []Op, keys []int) []porcupine.Operation {
	var maxT int64
	for _, op := range ops {
		maxT = max(maxT, int64(op.End))
	}
	ids := map[int]int{}
	id := func(actor int) int {
		if v, ok := ids[actor]; ok {
			return v
		}
		ids[actor] = len(ids)
		return ids[actor]
	}
	sorted := slices.Clone(ops)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Actor < sorted[j].Actor })
	var out []porcupine.Operation
	for _, op := range sorted {
		switch op.Kind {
		case OpPRegister, OpPDeregister:
			ret := int64(op.End)
			if !op.OK() {
				ret = maxT + 1
			}
			out = append(out, porcupine.Operation{ClientId: id(op.Actor), Input: linearize.Input{Kind: setKind(op.Kind), Key: op.Key}, Call: int64(op.Start), Return: ret, Metadata: op.ActorName})
		case OpPRead:
			if !op.OK() {
				continue
			}
			for _, k := range keys {
				out = append(out, porcupine.Operation{ClientId: id(op.Actor), Input: linearize.Input{Kind: linearize.Read, Key: k}, Call: int64(op.Start),
					Output: slices.Contains(op.Listed, k), Return: int64(op.End), Metadata: op.ActorName})
			}
		}
	}
	return out
}

// CheckLinearizable runs porcupine over the persistent history. On an
// illegal history it writes the visualization to vizPath (if not empty).
// The result is "ok", "illegal" or "unknown" (the check timed out).
func CheckLinearizable(ops []Op, keys []int, timeout time.Duration, vizPath string) (string, []string) {
	hist := PorcupineHistory(ops, keys)
	res, info := porcupine.CheckOperationsVerbose(SetModel, hist, timeout)
	switch res {
	case porcupine.Ok:
		return "ok", nil
	case porcupine.Unknown:
		return "unknown", nil
	}
	msg := "persistent: history is not linearizable (porcupine)"
	if vizPath != "" {
		if err := porcupine.VisualizePath(SetModel, info, vizPath); err == nil {
			msg += "; visualization in " + vizPath
		}
	}
	// Name the instances whose partition fails on its own.
	parts := SetModel.Partition(hist)
	var bad []string
	for _, p := range parts {
		if porcupine.CheckOperationsTimeout(SetModel, p, timeout/4+time.Second) == porcupine.Illegal {
			bad = append(bad, PersIP(p[0].Input.(linearize.Input).Key))
		}
	}
	if len(bad) > 0 {
		msg += ": instances " + strings.Join(bad, ", ")
	}
	return "illegal", []string{msg}
}

// ---- (b) live ephemeral instances on every node ----

// restrict returns the IPs of ips that are in domain.
func restrict(ips map[string]bool, domain map[string]bool) []string {
	var out []string
	for ip := range ips {
		if domain[ip] {
			out = append(out, ip)
		}
	}
	sort.Strings(out)
	return out
}

// LiveConverged is check (b)'s condition on one round: every node answered
// and lists exactly the live clients' wished instances among the live
// clients' IPs (none missing, no deregistered one left).
func LiveConverged(r Round, want []string, liveIPs map[string]bool) (bool, string) {
	for i, n := range r.Nodes {
		if !n.OK {
			return false, fmt.Sprintf("node %d: %s", i+1, n.Err)
		}
		if got := restrict(n.IPs, liveIPs); !slices.Equal(got, want) {
			return false, fmt.Sprintf("node%d lists %v of the live clients, want %v", i+1, got, want)
		}
	}
	return true, ""
}

// LiveResult is check (b)'s outcome.
type LiveResult struct {
	Converged bool
	// Time from the heal to the end of the first converged round.
	Time time.Duration
	// Why is the last reason a round was not converged.
	Why string
}

// CheckLive is check (b): the first round starting after heal in which
// every node lists exactly the live clients' instances, within bound; and
// no answered round after it disagrees (no flapping).
func CheckLive(rounds []Round, heal time.Duration, want []string, liveIPs map[string]bool, bound time.Duration) (LiveResult, []string) {
	var res LiveResult
	var viol []string
	for _, r := range rounds {
		if r.Start < heal {
			continue
		}
		ok, why := LiveConverged(r, want, liveIPs)
		if !res.Converged {
			if ok {
				res.Converged, res.Time = true, r.End-heal
			} else {
				res.Why = why
			}
			continue
		}
		if !ok && r.AllOK() {
			viol = append(viol, fmt.Sprintf("ephemeral: live instances flapped at +%v, after converging: %s", r.Start.Round(time.Millisecond), why))
			break
		}
	}
	switch {
	case !res.Converged:
		viol = append(viol, fmt.Sprintf("ephemeral: live clients' instances never listed exactly on every node after the heal (bound %v): %s", bound, res.Why))
	case res.Time > bound:
		viol = append(viol, fmt.Sprintf("ephemeral: live clients' instances listed on every node %v after the heal, past the bound %v", res.Time.Round(time.Millisecond), bound))
	}
	return res, viol
}

// ---- (c) dead clients: no zombie, no resurrection ----

// Interval is a node fault from its injection until the cluster formed
// again after it was undone.
type Interval struct{ From, To time.Duration }

// Deadline is when a dead client's instances must be gone: DiedAt + Bound,
// where a node fault that began before that moment restarts the count from
// when the cluster re-formed after it.
func (d Dead) Deadline(faults []Interval) time.Duration {
	ref := d.DiedAt
	fs := slices.Clone(faults)
	sort.Slice(fs, func(i, j int) bool { return fs[i].From < fs[j].From })
	for _, f := range fs {
		if f.From <= ref+d.Bound && f.To > ref {
			ref = f.To
		}
	}
	return ref + d.Bound
}

// Removal is check (c)'s outcome for one dead client.
type Removal struct {
	Dead
	Removed  bool
	Time     time.Duration // from DiedAt to the end of the first round it was gone from every node
	Deadline time.Duration
	// LastSeen names the node that listed it last, and when.
	LastSeen string
}

// CheckDead is check (c): each dead client's instances are gone from every
// node (in a round every node answered) by its deadline; once gone from
// every node, none is listed again anywhere (no resurrection).
func CheckDead(rounds []Round, deads []Dead, faults []Interval) ([]Removal, []string) {
	var out []Removal
	var viol []string
	for _, d := range deads {
		rm := Removal{Dead: d, Deadline: d.Deadline(faults)}
		gone := -1
		for i, r := range rounds {
			if r.Start < d.DiedAt || !r.AllOK() {
				continue
			}
			any := false
			for ni, n := range r.Nodes {
				for _, ip := range d.IPs {
					if n.IPs[ip] {
						any = true
						rm.LastSeen = fmt.Sprintf("node%d at +%v", ni+1, r.Start.Round(time.Millisecond))
					}
				}
			}
			if !any {
				gone = i
				rm.Removed, rm.Time = true, r.End-d.DiedAt
				break
			}
		}
		switch {
		case !rm.Removed:
			viol = append(viol, fmt.Sprintf("ephemeral: zombie: %s (%s, died at +%v) still listed at the end of the run (deadline +%v)",
				d.Name, d.Kind, d.DiedAt.Round(time.Millisecond), rm.Deadline.Round(time.Millisecond)))
		case d.DiedAt+rm.Time > rm.Deadline:
			viol = append(viol, fmt.Sprintf("ephemeral: zombie: %s (%s) gone from every node only %v after it died, past its deadline +%v",
				d.Name, d.Kind, rm.Time.Round(time.Millisecond), rm.Deadline.Round(time.Millisecond)))
		}
		if gone >= 0 {
		resurrect:
			for _, r := range rounds[gone+1:] {
				for ni, n := range r.Nodes {
					for _, ip := range d.IPs {
						if n.IPs[ip] {
							viol = append(viol, fmt.Sprintf("ephemeral: resurrection: %s of dead %s listed on node%d at +%v after it was gone from every node at +%v",
								ip, d.Name, ni+1, r.Start.Round(time.Millisecond), rounds[gone].Start.Round(time.Millisecond)))
							break resurrect
						}
					}
				}
			}
		}
		out = append(out, rm)
	}
	return out, viol
}

// ---- (d) membership, Raft configuration, bootstrap ----

// CheckBootstraps counts "bootstrapped the Raft cluster" over every log.
func CheckBootstraps(c *Cluster) (int, []string) {
	n := c.CountInLogs("bootstrapped the Raft cluster")
	if n != 1 {
		return n, append([]string{fmt.Sprintf("raft: %d bootstraps logged over the run, want exactly 1", n)}, c.GrepLogs("bootstrapped the Raft cluster", 10)...)
	}
	return n, nil
}

// CheckAgreement is check (d): every node's `regent members -o json` lists
// the same N names, all alive, with exactly one Raft leader (the same
// everywhere) and the others followers (voters). It retries until timeout
// and reports the last disagreement.
func CheckAgreement(ctx context.Context, c *Cluster, timeout time.Duration) (time.Duration, []string) {
	names := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		names[i] = n.Name
	}
	start := time.Now()
	why := ""
	for time.Since(start) < timeout && ctx.Err() == nil {
		if _, w := agreement(c.Views(ctx), names); w == "" {
			return time.Since(start), nil
		} else {
			why = w
		}
		time.Sleep(200 * time.Millisecond)
	}
	return time.Since(start), []string{fmt.Sprintf("membership: nodes do not agree after %v: %s", timeout, why)}
}

// CheckDataDirs opens every bbolt file of every node read-only and runs
// bbolt's consistency check: the files of a node killed with SIGKILL must
// be whole.
func CheckDataDirs(c *Cluster) (int, []string) {
	var viol []string
	files := 0
	for _, n := range c.Nodes {
		err := filepath.WalkDir(n.DataDir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".db") {
				return err
			}
			files++
			db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
			if err != nil {
				viol = append(viol, fmt.Sprintf("data: %s: open %s: %v", n.Name, path, err))
				return nil
			}
			defer db.Close()
			err = db.View(func(tx *bolt.Tx) error {
				var errs []error
				for e := range tx.Check() { // drained: the check runs in its own goroutine
					if len(errs) < 5 {
						errs = append(errs, e)
					}
				}
				return errors.Join(errs...)
			})
			if err != nil {
				viol = append(viol, fmt.Sprintf("data: %s: %s fails bbolt's check: %v", n.Name, path, err))
			}
			return nil
		})
		if err != nil {
			viol = append(viol, fmt.Sprintf("data: %s: %v", n.Name, err))
		}
	}
	if files == 0 {
		viol = append(viol, "data: no bbolt file found in any data dir")
	}
	return files, viol
}
