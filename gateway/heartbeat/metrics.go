package heartbeat

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the Prometheus collectors of a Recorder. Make them with
// NewMetrics and set Recorder.Metrics. A nil *Metrics counts nothing. Safe
// for concurrent use.
type Metrics struct {
	heartbeats   *prometheus.CounterVec
	writes       *prometheus.CounterVec
	flushSeconds prometheus.Histogram
	pending      prometheus.Gauge
}

// NewMetrics returns the collectors, registered on reg. With a nil reg they
// count but are exposed nowhere. It panics, like prometheus.MustRegister,
// when reg already has collectors of the same names: that is a wiring
// mistake, found at start-up.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "pipeops_gateway", "heartbeat"
	m := &Metrics{
		heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "received_total", Help: "Heartbeats received from agents, by result (ok, malformed)."}, []string{"result"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "writes_total", Help: "Cluster state writes to the store, by result (ok, not_found, error)."}, []string{"result"}),
		flushSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "flush_duration_seconds", Help: "Time to write one batch of cluster states.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8)}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "pending_clusters", Help: "Clusters whose state waits for the next flush."}),
	}
	// Create the series up front so that dashboards see zeros, not gaps.
	for _, l := range []string{"ok", "malformed"} {
		m.heartbeats.WithLabelValues(l)
	}
	for _, l := range []string{"ok", "not_found", "error"} {
		m.writes.WithLabelValues(l)
	}
	if reg != nil {
		reg.MustRegister(m.heartbeats, m.writes, m.flushSeconds, m.pending)
	}
	return m
}

func (m *Metrics) heartbeat(result string) {
	if m != nil {
		m.heartbeats.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) write(result string) {
	if m != nil {
		m.writes.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) flushed(d time.Duration) {
	if m != nil {
		m.flushSeconds.Observe(d.Seconds())
	}
}

func (m *Metrics) setPending(n int) {
	if m != nil {
		m.pending.Set(float64(n))
	}
}
