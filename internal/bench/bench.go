// Package bench measures a Regent node from the outside, over real gRPC
// connections: ephemeral registration over sessions and service queries,
// each beside a no-op call over the same connections (a session Ping and
// the standard health Check), so the figures come with the framework's own
// ceiling measured in the same run. `regent bench` and the Go benchmarks
// both run it.
package bench

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/regent-registry/regent/internal/bench/load"
	"github.com/regent-registry/regent/internal/wire"
	regentv1 "github.com/regent-registry/regent/proto/regent/v1"
)

// Options of a run.
type Options struct {
	// Server is the node's gRPC address.
	Server string
	// Concurrency lists the numbers of concurrent clients to measure at; each
	// client has its own connection and session.
	Concurrency []int
	// Duration of each measurement.
	Duration time.Duration
	// Rounds alternates the operation and its baseline this many times, so
	// drift of a shared machine hits both alike.
	Rounds int
	// Progress receives a line per measurement; may be nil.
	Progress io.Writer
}

// Result is one operation at one concurrency.
type Result struct {
	Op          string        `json:"op"`
	Baseline    string        `json:"baseline"`
	Concurrency int           `json:"concurrency"`
	OpsPerSec   float64       `json:"ops_per_sec"`
	P50         time.Duration `json:"p50_ns"`
	P99         time.Duration `json:"p99_ns"`
	BaseOps     float64       `json:"baseline_ops_per_sec"`
	BaseP50     time.Duration `json:"baseline_p50_ns"`
	Ratio       float64       `json:"ratio"`
	Errors      int64         `json:"errors"`
}

type worker struct {
	id     int
	conn   *grpc.ClientConn
	rc     regentv1.RegistryClient
	hc     healthpb.HealthClient
	stream regentv1.Registry_SessionClient
	cancel context.CancelFunc
	reqID  uint64
	seq    int
}

func dial(ctx context.Context, server string, id int, runID int64) (*worker, error) {
	conn, err := grpc.NewClient("passthrough:///"+server, grpc.WithTransportCredentials(insecure.NewCredentials()), wire.DialOption())
	if err != nil {
		return nil, err
	}
	w := &worker{id: id, conn: conn, rc: regentv1.NewRegistryClient(conn), hc: healthpb.NewHealthClient(conn)}
	sctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	if w.stream, err = w.rc.Session(sctx); err != nil {
		w.close()
		return nil, err
	}
	hello := &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Hello{Hello: &regentv1.Hello{ClientId: fmt.Sprintf("bench-%d-%d", runID, id), ClientName: "regent-bench"}}}
	if err := w.stream.Send(hello); err != nil {
		w.close()
		return nil, err
	}
	m, err := w.stream.Recv()
	if err != nil || m.GetHelloReply() == nil {
		w.close()
		return nil, fmt.Errorf("bench: no HelloReply: %v", err)
	}
	return w, nil
}

func (w *worker) close() {
	if w.cancel != nil {
		w.cancel()
	}
	w.conn.Close()
}

// roundTrip sends one session message and waits for its ack, skipping
// pushes (there are none: the bench subscribes to nothing).
func (w *worker) roundTrip(m *regentv1.ClientMessage) error {
	w.reqID++
	m.RequestId = w.reqID
	if err := w.stream.Send(m); err != nil {
		return err
	}
	for {
		r, err := w.stream.Recv()
		if err != nil {
			return err
		}
		if a := r.GetAck(); a != nil && a.GetRequestId() == w.reqID {
			if a.GetCode() != 0 {
				return fmt.Errorf("bench: ack code %d: %s", a.GetCode(), a.GetMessage())
			}
			return nil
		}
	}
}

var ping = &regentv1.ClientMessage_Ping{Ping: &regentv1.Ping{}}

func (w *worker) op(ctx context.Context, name string) error {
	switch name {
	case "noop-session":
		return w.roundTrip(&regentv1.ClientMessage{Body: ping})
	case "register":
		w.seq++
		in := &regentv1.Instance{Ip: fmt.Sprintf("10.%d.%d.%d", w.id&255, w.seq>>8&255, w.seq&255), Port: uint32(1 + w.seq%60000)}
		return w.roundTrip(&regentv1.ClientMessage{Body: &regentv1.ClientMessage_Register{Register: &regentv1.RegisterEphemeral{
			Service: &regentv1.ServiceRef{Service: fmt.Sprintf("bench-svc-%d", w.id%16)}, Instances: []*regentv1.Instance{in},
		}}})
	case "noop-unary":
		_, err := w.hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	case "query":
		_, err := w.rc.GetService(ctx, &regentv1.GetServiceRequest{Service: &regentv1.ServiceRef{Service: "bench-query"}})
		return err
	case "query-session":
		return w.roundTrip(&regentv1.ClientMessage{Body: &regentv1.ClientMessage_GetService{GetService: &regentv1.GetServiceRequest{Service: &regentv1.ServiceRef{Service: "bench-query"}}}})
	}
	return fmt.Errorf("bench: unknown op %q", name)
}

func measure(ctx context.Context, ws []*worker, op string, d time.Duration) load.Sample {
	return load.Run(ctx, len(ws), d, func(ctx context.Context, w, _ int) error { return ws[w].op(ctx, op) })
}

func pct(l []time.Duration, p float64) time.Duration {
	slices.Sort(l)
	return load.Pct(l, p)
}

// Pairs of operation and its no-op baseline over the same connections.
// query is the unary lookup, query-session the same over the session (as
// the SDK sends it).
var pairs = [][2]string{{"register", "noop-session"}, {"query", "noop-unary"}, {"query-session", "noop-session"}}

// Run measures every pair at every concurrency.
func Run(ctx context.Context, o Options) ([]Result, error) {
	if o.Duration <= 0 {
		o.Duration = 2 * time.Second
	}
	if o.Rounds <= 0 {
		o.Rounds = 2
	}
	runID := time.Now().UnixNano()
	// The queried service holds 10 instances, a typical size.
	seed, err := dial(ctx, o.Server, 1_000_000, runID)
	if err != nil {
		return nil, err
	}
	defer seed.close()
	for i := 0; i < 10; i++ {
		m := &regentv1.ClientMessage{Body: &regentv1.ClientMessage_Register{Register: &regentv1.RegisterEphemeral{
			Service: &regentv1.ServiceRef{Service: "bench-query"}, Instances: []*regentv1.Instance{{Ip: "10.200.0.1", Port: uint32(8000 + i), Metadata: map[string]string{"version": "1.0"}}},
		}}}
		if err := seed.roundTrip(m); err != nil {
			return nil, err
		}
	}
	var results []Result
	for _, c := range o.Concurrency {
		ws := make([]*worker, 0, c)
		for i := 0; i < c; i++ {
			w, err := dial(ctx, o.Server, i, runID)
			if err != nil {
				for _, w := range ws {
					w.close()
				}
				return nil, err
			}
			ws = append(ws, w)
		}
		for _, p := range pairs {
			var opS, baseS load.Sample
			for r := 0; r < o.Rounds; r++ {
				if ctx.Err() != nil {
					break
				}
				b := measure(ctx, ws, p[1], o.Duration/time.Duration(o.Rounds))
				s := measure(ctx, ws, p[0], o.Duration/time.Duration(o.Rounds))
				for _, x := range []load.Sample{b, s} {
					if x.FirstErr != "" && o.Progress != nil {
						fmt.Fprintf(o.Progress, "  errors (%d), first: %s\n", x.Errors, x.FirstErr)
					}
				}
				baseS.Add(b)
				opS.Add(s)
			}
			res := Result{
				Op: p[0], Baseline: p[1], Concurrency: c,
				OpsPerSec: opS.Rate(), P50: opS.Pct(0.5), P99: opS.Pct(0.99),
				BaseOps: baseS.Rate(), BaseP50: baseS.Pct(0.5),
				Errors: opS.Errors + baseS.Errors,
			}
			if res.BaseOps > 0 {
				res.Ratio = res.OpsPerSec / res.BaseOps
			}
			results = append(results, res)
			if o.Progress != nil {
				fmt.Fprintf(o.Progress, "  %-13s c=%-3d %9.0f ops/s (p50 %v, p99 %v)  baseline %-12s %9.0f ops/s  ratio %.2f\n",
					res.Op, c, res.OpsPerSec, res.P50.Round(time.Microsecond), res.P99.Round(time.Microsecond), res.Baseline, res.BaseOps, res.Ratio)
			}
		}
		for _, w := range ws {
			w.close()
		}
	}
	return results, ctx.Err()
}

// Table renders results as a Markdown table.
func Table(w io.Writer, rs []Result) {
	fmt.Fprintln(w, "| op | clients | ops/s | p50 | p99 | baseline | baseline ops/s | ratio |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---|---:|---:|")
	for _, r := range rs {
		fmt.Fprintf(w, "| %s | %d | %.0f | %v | %v | %s | %.0f | %.2f |\n", r.Op, r.Concurrency, r.OpsPerSec,
			r.P50.Round(time.Microsecond), r.P99.Round(time.Microsecond), r.Baseline, r.BaseOps, r.Ratio)
	}
}
