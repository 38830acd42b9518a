package scale

import (
	"context"
	"slices"
	"time"

	"github.com/regent-registry/regent/ephemeral"
)

// Figures are one system's results of a run, per node.
type Figures struct {
	// Requests sent and bytes sent (requests and replies), per node and
	// second, mean over the nodes, in the churn window; in all, and of
	// which sync and verify.
	MsgsPerSec, BytesPerSec             float64
	SyncMsgsPerSec, SyncBytesPerSec     float64
	VerifyMsgsPerSec, VerifyBytesPerSec float64
	// The same in the quiet window, where only verify rounds run.
	QuietMsgsPerSec, QuietBytesPerSec float64
	// Convergence: from a change on its owner to every node listing it
	// (a registration: listed with its instance; a move: with its new
	// owner; a disconnect: gone). Registrations' median and maximum, and
	// the maximum over every kind.
	ConvP50, ConvMax, ConvAllMax time.Duration
	ConvN                        int
	// Repair after the failure, from the node's death: its reconnecting
	// clients listed with their new owner on every survivor (Reowned),
	// and its other clients gone from every survivor (Gone). -1: not
	// within the run.
	Reowned, Gone time.Duration
	// HeapPerNode is Regent's heap per node after the load (the growth of
	// runtime.MemStats.HeapAlloc after a GC, divided by the nodes); 0 for
	// Nacos, whose heap the model cannot see.
	HeapPerNode float64
	// PeakTasks is, for Nacos, the most delay tasks (one per client and
	// peer) queued on one node in the churn window.
	PeakTasks int
}

// Repair is the whole repair time: the later of Reowned and Gone.
func (f Figures) Repair() time.Duration {
	if f.Reowned < 0 || f.Gone < 0 {
		return -1
	}
	return max(f.Reowned, f.Gone)
}

// Result is one run of both models.
type Result struct {
	P           Params
	ChurnPerSec float64
	ChurnCounts [numKinds]int
	Lost, Moved int
	Regent      Figures
	Nacos       Figures
	// Regent's verify-list messages (sent after a digest mismatch) in the
	// quiet and churn windows.
	QuietListMsgs, ChurnListMsgs uint64
	// Unconverged counts probes whose change never showed everywhere.
	Unconverged int
	Wall        time.Duration
}

// Run plays one schedule on Regent's engine (production settings) and on
// the Nacos counting model.
func Run(ctx context.Context, p Params) (Result, error) {
	return RunConfig(ctx, p, ephemeral.DefaultConfig())
}

// RunConfig is Run with the engine's settings given.
func RunConfig(ctx context.Context, p Params, cfg ephemeral.Config) (Result, error) {
	start := time.Now()
	s, err := NewSchedule(p)
	if err != nil {
		return Result{}, err
	}
	res := Result{P: p, ChurnPerSec: s.ChurnPerSec, ChurnCounts: s.ChurnCounts, Lost: len(s.Lost), Moved: len(s.Moved)}

	nacos := newNacosModel(s).run()
	res.Nacos = figures(s, nacos.counts[phaseQuiet], nacos.counts[phaseChurn], nacos.conv)
	res.Nacos.Reowned, res.Nacos.Gone, res.Nacos.PeakTasks = nacos.reownedAt, nacos.goneAt, nacos.peakTasks

	r, err := newRegentRun(s, cfg)
	if err != nil {
		return Result{}, err
	}
	if err := r.run(ctx); err != nil {
		return Result{}, err
	}
	quiet, churn := r.meter.phaseCounts(phaseQuiet), r.meter.phaseCounts(phaseChurn)
	res.Regent = figures(s, quiet, churn, r.conv)
	res.Regent.Reowned, res.Regent.Gone, res.Regent.HeapPerNode = r.reownedAt, r.goneAt, r.heapPerNode
	for i := range quiet {
		res.QuietListMsgs += quiet[i].Msgs[msgVerifyList]
		res.ChurnListMsgs += churn[i].Msgs[msgVerifyList]
	}
	res.Unconverged = r.lostP + len(r.probes)
	res.Wall = time.Since(start)
	return res, nil
}

func figures(s *Schedule, quiet, churn []traffic, conv [numKinds][]time.Duration) Figures {
	n := float64(len(churn))
	per := func(v uint64, w time.Duration) float64 { return float64(v) / n / w.Seconds() }
	var f Figures
	for i := range churn {
		c := churn[i]
		f.MsgsPerSec += per(c.msgs(), s.P.Churn)
		f.BytesPerSec += per(c.bytes(), s.P.Churn)
		f.SyncMsgsPerSec += per(c.Msgs[msgSync], s.P.Churn)
		f.SyncBytesPerSec += per(c.Bytes[msgSync], s.P.Churn)
		f.VerifyMsgsPerSec += per(c.Msgs[msgVerify]+c.Msgs[msgVerifyList], s.P.Churn)
		f.VerifyBytesPerSec += per(c.Bytes[msgVerify]+c.Bytes[msgVerifyList], s.P.Churn)
		f.QuietMsgsPerSec += per(quiet[i].msgs(), s.P.Quiet)
		f.QuietBytesPerSec += per(quiet[i].bytes(), s.P.Quiet)
	}
	reg := slices.Clone(conv[Register])
	slices.Sort(reg)
	if len(reg) > 0 {
		f.ConvP50, f.ConvMax = reg[len(reg)/2], reg[len(reg)-1]
	}
	f.ConvN = len(reg)
	for k := range conv {
		for _, d := range conv[k] {
			f.ConvAllMax = max(f.ConvAllMax, d)
		}
	}
	return f
}
