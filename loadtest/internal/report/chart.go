package report

import (
	"bufio"
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// Chart geometry, in SVG user units.
const (
	chartWidth  = 780
	panelHeight = 360
	plotLeft    = 70  // room for the latency axis labels
	plotRight   = 250 // room for the legend
	plotTop     = 40  // room for the panel title and description
	plotBottom  = 50  // room for the percentile axis labels
)

// pathColors are the lines of the chart, one per path; chosen to stay
// distinct for the common forms of colour blindness.
var pathColors = map[string]string{
	Direct:        "#0072b2",
	GatewayDirect: "#e69f00",
	Tunnel:        "#d55e00",
	Relay:         "#009e73",
}

// WriteSVG draws, for every scenario with latency distributions, one panel:
// latency (log scale) against percentile (log scale of 1/(1-p), so the tail
// from 99 % to 99.99 % gets as much room as 50 % to 99 %), one line per path.
// A report without latency gives a small SVG that says so.
func WriteSVG(w io.Writer, r *Report) error {
	var panels []*Scenario
	for _, s := range r.Scenarios {
		for _, l := range s.Latency {
			if len(l.Curve) > 0 {
				panels = append(panels, s)
				break
			}
		}
	}
	bw := bufio.NewWriter(w)
	height := max(len(panels), 1)*panelHeight + 30
	fmt.Fprintf(bw, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		chartWidth, height, chartWidth, height)
	fmt.Fprintf(bw, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(bw, `<text x="10" y="20" font-size="14" font-weight="bold">%s</text>`+"\n",
		esc(fmt.Sprintf("Latency distributions: profile %s, commit %s, %s", r.Profile, r.Commit, r.StartedAt.Format("2006-01-02 15:04"))))
	if len(panels) == 0 {
		fmt.Fprintf(bw, `<text x="10" y="50">no latency scenario in this run</text>`+"\n")
	}
	for i, s := range panels {
		writePanel(bw, s, 30+i*panelHeight)
	}
	fmt.Fprintln(bw, `</svg>`)
	return bw.Flush()
}

// xOf maps a percentile to log10(1/(1-p)): 50 -> 0.30, 99 -> 2, 99.99 -> 4.
func xOf(p float64) float64 { return -math.Log10(1 - p/100) }

const (
	xMin = 0.30103 // log10(2): the 50th percentile
	xMax = 4       // the 99.99th
)

func writePanel(w io.Writer, s *Scenario, top int) {
	left, right := float64(plotLeft), float64(chartWidth-plotRight)
	y0, y1 := float64(top+plotTop), float64(top+panelHeight-plotBottom)

	// The latency axis spans whole decades around every point drawn.
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, l := range s.Latency {
		for _, pt := range l.Curve {
			v := max(pt.Ms, 0.001)
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	dlo, dhi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if dhi <= dlo {
		dhi = dlo + 1
	}
	px := func(p float64) float64 { return left + (xOf(p)-xMin)/(xMax-xMin)*(right-left) }
	py := func(ms float64) float64 {
		return y1 - (math.Log10(max(ms, 0.001))-dlo)/(dhi-dlo)*(y1-y0)
	}

	fmt.Fprintf(w, `<g>`+"\n")
	fmt.Fprintf(w, `<text x="%d" y="%d" font-size="13" font-weight="bold">%s</text>`+"\n", plotLeft, top+16, esc(s.Name))
	fmt.Fprintf(w, `<text x="%d" y="%d" font-size="11" fill="#555">%s</text>`+"\n", plotLeft, top+31, esc(shorten(s.Description, 110)))
	fmt.Fprintf(w, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#999"/>`+"\n", left, y0, right-left, y1-y0)

	// Grid: decades and their 2x and 5x on the latency axis.
	for d := dlo; d <= dhi; d++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, d)
			if math.Log10(v) > dhi+1e-9 {
				break
			}
			y := py(v)
			stroke := "#eee"
			if m == 1 {
				stroke = "#ccc"
			}
			fmt.Fprintf(w, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n", left, y, right, y, stroke)
			fmt.Fprintf(w, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y+4, esc(msLabel(v)))
		}
	}
	for _, p := range []float64{50, 90, 99, 99.9, 99.99} {
		x := px(p)
		fmt.Fprintf(w, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ccc"/>`+"\n", x, y0, x, y1)
		fmt.Fprintf(w, `<text x="%.1f" y="%.1f" text-anchor="middle">p%s</text>`+"\n", x, y1+16, trimFloat(p))
	}
	fmt.Fprintf(w, `<text x="%.1f" y="%.1f" text-anchor="middle">percentile</text>`+"\n", (left+right)/2, y1+34)
	fmt.Fprintf(w, `<text transform="translate(%d %.1f) rotate(-90)" text-anchor="middle">latency, ms (log scale)</text>`+"\n", 16, (y0+y1)/2)

	// One line per path, and its legend entry.
	ly := y0 + 10
	for _, p := range Paths {
		l := s.Latency[p]
		if l == nil || len(l.Curve) == 0 {
			continue
		}
		pts := make([]string, 0, len(l.Curve))
		for _, pt := range l.Curve {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(pt.Percentile), py(pt.Ms)))
		}
		color := pathColors[p]
		fmt.Fprintf(w, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"><title>%s</title></polyline>`+"\n",
			color, strings.Join(pts, " "), esc(p))
		lx := right + 14
		fmt.Fprintf(w, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="3"/>`+"\n", lx, ly, lx+22, ly, color)
		fmt.Fprintf(w, `<text x="%.1f" y="%.1f" font-weight="bold">%s</text>`+"\n", lx+28, ly+4, esc(p))
		fmt.Fprintf(w, `<text x="%.1f" y="%.1f">%s</text>`+"\n", lx+28, ly+20,
			esc(fmt.Sprintf("p50 %s  p99 %s ms", Num(l.P50), Num(l.P99))))
		fmt.Fprintf(w, `<text x="%.1f" y="%.1f">%s</text>`+"\n", lx+28, ly+36,
			esc(fmt.Sprintf("p99.9 %s  max %s ms", Num(l.P999), Num(l.Max))))
		fmt.Fprintf(w, `<text x="%.1f" y="%.1f" fill="#666">%s</text>`+"\n", lx+28, ly+52,
			esc(fmt.Sprintf("%d requests, %d errors", l.Count, l.Errors)))
		ly += 66
	}
	fmt.Fprintf(w, `</g>`+"\n")
}

// shorten cuts s to at most n runes, marking the cut.
func shorten(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func msLabel(v float64) string {
	if v >= 1 {
		return trimFloat(v)
	}
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".")
}

func esc(s string) string { return html.EscapeString(s) }
