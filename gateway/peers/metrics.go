package peers

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	dialed      *prometheus.CounterVec
	dialSeconds prometheus.Histogram
	served      *prometheus.CounterVec
}

// newMetrics makes the collectors, registered on reg when it is set.
func newMetrics(reg prometheus.Registerer, p *Peers) *metrics {
	const ns, sub = "pipeops_gateway", "peer"
	m := &metrics{
		dialed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "streams_forwarded_total", Help: "Streams this gateway asked another gateway for, by result (ok; offline, limit: the peer had no session or no room; error: the peer could not be reached)."},
			[]string{"result"}),
		dialSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "forward_dial_duration_seconds", Help: "Time to open a stream through another gateway (peer link and stream to the agent).",
			Buckets: prometheus.ExponentialBuckets(0.0002, 3, 10)}),
		served: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "streams_served_total", Help: "Stream requests of other gateways this gateway answered, by status (101: served; 503: no session or no room; 400, 401, 404: refused)."},
			[]string{"status"}),
	}
	for _, l := range []string{"ok", "offline", "limit", "error"} {
		m.dialed.WithLabelValues(l)
	}
	for _, l := range []string{"101", "503", "400", "401", "404"} {
		m.served.WithLabelValues(l)
	}
	if reg != nil {
		reg.MustRegister(m.dialed, m.dialSeconds, m.served, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "clusters_reachable", Help: "Clusters another gateway holds a tunnel to (this one forwards their streams when it has no session of its own)."},
			func() float64 {
				p.mu.Lock()
				defer p.mu.Unlock()
				return float64(len(p.holders))
			}))
	}
	return m
}
