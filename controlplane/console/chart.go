package console

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pipeops/tunnel/controlplane"
)

// trafficWindow is what the cluster page charts: the last hour, a point
// a minute.
const trafficWindow = time.Hour

// Chart sizes, in the SVG's own units; CSS scales it to the card.
const (
	chartW = 240
	chartH = 48
)

// series is one line of a chart: its points attribute.
type series struct {
	Points string
	Class  string
}

// chart is a small line chart with the figure it stands for.
type chart struct {
	ID, Title, Value string
	Lines            []series
}

// trafficView is the traffic section of the cluster page.
type trafficView struct {
	Charts []chart
	Hosts  []hostRow
	// Requests is the window's total, for tests and screen readers.
	Requests int64
}

type hostRow struct {
	controlplane.TrafficHost
	ErrorRate string
	// Requests and Latency are the host's own small charts (requests/s;
	// p50 and p99), drawn for the busiest maxHostCharts hosts only.
	Requests, Latency []series
}

// maxHostCharts bounds the per-host queries one page view makes.
const maxHostCharts = 12

// line turns values into polyline points over the chart's width, scaled to
// top (the largest value of the chart, so two lines share a scale).
func line(values []float64, top float64, class string) series {
	if top <= 0 {
		top = 1
	}
	var b strings.Builder
	step := float64(chartW)
	if len(values) > 1 {
		step = float64(chartW) / float64(len(values)-1)
	}
	for i, v := range values {
		y := float64(chartH) - v/top*float64(chartH-2) - 1
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.FormatFloat(float64(i)*step, 'f', 1, 64))
		b.WriteByte(',')
		b.WriteString(strconv.FormatFloat(y, 'f', 1, 64))
	}
	return series{Points: b.String(), Class: class}
}

func maxOf(vs ...[]float64) float64 {
	m := 0.0
	for _, v := range vs {
		for _, x := range v {
			m = max(m, x)
		}
	}
	return m
}

// traffic reads a cluster's last hour and draws it.
func (c *Console) traffic(ctx context.Context, cluster string) (*trafficView, error) {
	now := time.Now()
	// Since and Until are both counted in: the last 60 minutes, the
	// current one among them.
	q := controlplane.TrafficQuery{Cluster: cluster, Since: now.Add(-trafficWindow + time.Minute), Until: now}
	points, err := c.d.Traffic.Traffic(ctx, q)
	if err != nil {
		return nil, err
	}
	hosts, err := c.d.Traffic.TrafficHosts(ctx, q)
	if err != nil {
		return nil, err
	}
	n := len(points)
	reqs, errs, bytes, p50, p99 := make([]float64, n), make([]float64, n), make([]float64, n), make([]float64, n), make([]float64, n)
	var total, failed, moved int64
	var worst50, worst99 float64
	for i, p := range points {
		reqs[i], errs[i] = float64(p.Requests)/60, float64(p.Errors)/60
		bytes[i] = float64(p.BytesIn + p.BytesOut)
		p50[i], p99[i] = p.P50Ms, p.P99Ms
		total += p.Requests
		failed += p.Errors
		moved += p.BytesIn + p.BytesOut
		worst50, worst99 = max(worst50, p.P50Ms), max(worst99, p.P99Ms)
	}
	rate := "0 %"
	if total > 0 {
		rate = fmt.Sprintf("%.2g %%", float64(failed)/float64(total)*100)
	}
	v := &trafficView{Requests: total, Charts: []chart{
		{ID: "chart-requests", Title: "Requests/s", Value: fmt.Sprintf("%d in the last hour", total),
			Lines: []series{line(reqs, maxOf(reqs), "")}},
		{ID: "chart-errors", Title: "Errors/s (5xx and failed)", Value: fmt.Sprintf("%d, %s of requests", failed, rate),
			Lines: []series{line(errs, maxOf(errs), "second")}},
		{ID: "chart-bytes", Title: "Bytes a minute, in and out", Value: humanBytes(moved) + " in the last hour",
			Lines: []series{line(bytes, maxOf(bytes), "")}},
		{ID: "chart-latency", Title: "Latency p50 and p99 (ms)", Value: fmt.Sprintf("worst minute: p50 %.0f ms, p99 %.0f ms", worst50, worst99),
			Lines: []series{line(p50, maxOf(p50, p99), ""), line(p99, maxOf(p50, p99), "second")}},
	}}
	// The busiest hosts first, so the charted ones are those that matter.
	slices.SortStableFunc(hosts, func(a, b controlplane.TrafficHost) int { return cmp.Compare(b.Requests, a.Requests) })
	for i, h := range hosts {
		r := hostRow{TrafficHost: h, ErrorRate: "0 %"}
		if h.Requests > 0 {
			r.ErrorRate = fmt.Sprintf("%.2g %%", float64(h.Errors)/float64(h.Requests)*100)
		}
		if i < maxHostCharts {
			hq := q
			hq.Host = h.Hostname
			hp, err := c.d.Traffic.Traffic(ctx, hq)
			if err != nil {
				return nil, err
			}
			hr, h50, h99 := make([]float64, len(hp)), make([]float64, len(hp)), make([]float64, len(hp))
			for j, p := range hp {
				hr[j], h50[j], h99[j] = float64(p.Requests)/60, p.P50Ms, p.P99Ms
			}
			r.Requests = []series{line(hr, maxOf(hr), "")}
			r.Latency = []series{line(h50, maxOf(h50, h99), ""), line(h99, maxOf(h50, h99), "second")}
		}
		v.Hosts = append(v.Hosts, r)
	}
	return v, nil
}
