package scale

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// series is one curve: a value per node count at one client count.
type series struct {
	label string
	style int
	color color.Color
	glyph draw.GlyphDrawer
	pts   plotter.XYs
}

// Line styles: solid, dashed, dotted, dash-dot.
var dashes = [][]vg.Length{nil, {vg.Points(6), vg.Points(3)}, {vg.Points(1.5), vg.Points(2.5)}, {vg.Points(8), vg.Points(2), vg.Points(1.5), vg.Points(2)}}

type chart struct {
	file, title, ylabel string
	logY                bool
	get                 []curve
}

// curve picks one figure of one system, drawn in one of the dashes;
// colours tell client counts apart, glyphs the systems (circles: Regent,
// triangles: Nacos).
type curve struct {
	name   string
	regent bool
	style  int
	get    func(Figures) float64
}

func clientCounts(rs []Result) []int {
	var cs []int
	for _, r := range rs {
		if !slices.Contains(cs, r.P.Clients) {
			cs = append(cs, r.P.Clients)
		}
	}
	slices.Sort(cs)
	return cs
}

func seriesFor(rs []Result, c curve, clients []int) []series {
	var out []series
	for ci, cl := range clients {
		var glyph draw.GlyphDrawer = draw.TriangleGlyph{}
		if c.regent {
			glyph = draw.CircleGlyph{}
		}
		s := series{label: fmt.Sprintf("%s, %s clients", c.name, clientsLabel(cl)), style: c.style,
			color: plotutil.Color(ci), glyph: glyph}
		for _, r := range rs {
			if r.P.Clients != cl {
				continue
			}
			f := r.Nacos
			if c.regent {
				f = r.Regent
			}
			if v := c.get(f); v > 0 {
				s.pts = append(s.pts, plotter.XY{X: float64(r.P.Nodes), Y: v})
			}
		}
		slices.SortFunc(s.pts, func(a, b plotter.XY) int {
			if a.X < b.X {
				return -1
			}
			if a.X > b.X {
				return 1
			}
			return 0
		})
		if len(s.pts) > 0 {
			out = append(out, s)
		}
	}
	return out
}

func secs(d time.Duration) float64 { return d.Seconds() }

// Charts lists the pictures WritePlots draws, by file name.
var Charts = []chart{
	{file: "bytes_per_node.svg", title: "Bytes sent per node per second, with churn", ylabel: "KiB/s per node", logY: true, get: []curve{
		{name: "Regent", regent: true, get: func(f Figures) float64 { return f.BytesPerSec / 1024 }},
		{name: "Nacos", style: 1, get: func(f Figures) float64 { return f.BytesPerSec / 1024 }},
	}},
	{file: "msgs_per_node.svg", title: "Requests sent per node per second, with churn", ylabel: "requests/s per node", logY: true, get: []curve{
		{name: "Regent", regent: true, get: func(f Figures) float64 { return f.MsgsPerSec }},
		{name: "Nacos", style: 1, get: func(f Figures) float64 { return f.MsgsPerSec }},
	}},
	{file: "verify_bytes.svg", title: "Verify bytes per node per second", ylabel: "KiB/s per node", logY: true, get: []curve{
		{name: "Regent churn", regent: true, get: func(f Figures) float64 { return f.VerifyBytesPerSec / 1024 }},
		{name: "Regent quiet", regent: true, style: 2, get: func(f Figures) float64 { return f.QuietBytesPerSec / 1024 }},
		{name: "Nacos churn", style: 1, get: func(f Figures) float64 { return f.VerifyBytesPerSec / 1024 }},
	}},
	{file: "convergence.svg", title: "Convergence of a registration", ylabel: "seconds", logY: true, get: []curve{
		{name: "Regent p50", regent: true, get: func(f Figures) float64 { return secs(f.ConvP50) }},
		{name: "Regent max", regent: true, style: 2, get: func(f Figures) float64 { return secs(f.ConvMax) }},
		{name: "Nacos p50", style: 1, get: func(f Figures) float64 { return secs(f.ConvP50) }},
		{name: "Nacos max", style: 3, get: func(f Figures) float64 { return secs(f.ConvMax) }},
	}},
	{file: "repair.svg", title: "Repair after a node dies, from its death", ylabel: "seconds", logY: true, get: []curve{
		{name: "Regent gone", regent: true, get: func(f Figures) float64 { return secs(f.Gone) }},
		{name: "Regent re-owned", regent: true, style: 2, get: func(f Figures) float64 { return secs(f.Reowned) }},
		{name: "Nacos gone", style: 1, get: func(f Figures) float64 { return secs(f.Gone) }},
		{name: "Nacos re-owned", style: 3, get: func(f Figures) float64 { return secs(f.Reowned) }},
	}},
	{file: "heap_per_node.svg", title: "Regent heap per node after the load", ylabel: "MiB per node", logY: true, get: []curve{
		{name: "Regent", regent: true, get: func(f Figures) float64 { return f.HeapPerNode / (1 << 20) }},
	}},
}

// WritePlots draws Charts into dir in a format (svg or png) and returns
// the files written.
func WritePlots(dir, format string, rs []Result) ([]string, error) {
	if format != "svg" && format != "png" {
		return nil, fmt.Errorf("scale: plot format %q: want svg or png", format)
	}
	clients := clientCounts(rs)
	var files []string
	for _, ch := range Charts {
		p := plot.New()
		p.Title.Text = ch.title
		p.X.Label.Text = "nodes"
		p.Y.Label.Text = ch.ylabel
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = nodeTicks(rs)
		if ch.logY {
			p.Y.Scale = plot.LogScale{}
			p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
		}
		p.Legend.Top = true
		p.Legend.Left = true
		p.Legend.TextStyle.Font.Size = vg.Points(9)
		p.Add(plotter.NewGrid())
		n := 0
		for _, c := range ch.get {
			for _, s := range seriesFor(rs, c, clients) {
				line, pts, err := plotter.NewLinePoints(s.pts)
				if err != nil {
					return files, fmt.Errorf("scale: plot %s: %w", ch.file, err)
				}
				line.Color, pts.Color, pts.Shape = s.color, s.color, s.glyph
				line.Width = vg.Points(1.5)
				line.Dashes = dashes[s.style]
				p.Add(line, pts)
				p.Legend.Add(s.label, line, pts)
				n++
			}
		}
		if n == 0 {
			continue
		}
		// Room above the curves for the legend.
		if ch.logY && p.Y.Min > 0 {
			decades := max(1, math.Log10(p.Y.Max/p.Y.Min))
			p.Y.Max *= math.Pow(10, decades*float64(n)/30)
			p.Y.Min /= 1.5
		}
		file := filepath.Join(dir, strings.TrimSuffix(ch.file, ".svg")+"."+format)
		if err := p.Save(9*vg.Inch, 6*vg.Inch, file); err != nil {
			return files, fmt.Errorf("scale: save %s: %w", file, err)
		}
		files = append(files, file)
	}
	return files, nil
}

// nodeTicks marks the node counts measured.
func nodeTicks(rs []Result) plot.Ticker {
	var ns []int
	for _, r := range rs {
		if !slices.Contains(ns, r.P.Nodes) {
			ns = append(ns, r.P.Nodes)
		}
	}
	slices.Sort(ns)
	var ticks plot.ConstantTicks
	for _, n := range ns {
		ticks = append(ticks, plot.Tick{Value: float64(n), Label: fmt.Sprint(n)})
	}
	return ticks
}
