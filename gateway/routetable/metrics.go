package routetable

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are a Store's Prometheus collectors. They always exist, so the
// Store updates them unconditionally; they are only registered when the
// Store was given a Registerer.
type metrics struct {
	routes  prometheus.Gauge
	reloads *prometheus.CounterVec
	// clusterReloads counts reloads of one cluster's routes.
	clusterReloads *prometheus.CounterVec
	notifyLag      prometheus.Histogram
	up             prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns = "pipeops_gateway"
	m := &metrics{
		routes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns,
			Name: "routes", Help: "Routes in the gateway's current route table."}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns,
			Name: "route_reloads_total", Help: "Full reloads of the route table from PostgreSQL, by result (ok, error)."},
			[]string{"result"}),
		clusterReloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns,
			Name: "route_cluster_reloads_total",
			Help: "Reloads of one cluster's routes after a change notification named it, by result (ok, error); a failure is retried as a full reload."},
			[]string{"result"}),
		notifyLag: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns,
			Name: "route_notify_lag_seconds",
			Help: "Time from receiving a route change notification to a route table including it being live " +
				"(one observation per reload, for the oldest notification it served).",
			// From a quiet reload (the coalescing window plus a query) to
			// one that waited out a database outage.
			Buckets: []float64{.01, .025, .05, .075, .1, .15, .25, .5, 1, 2.5, 5, 10, 30, 60}}),
		up: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns,
			Name: "route_store_up", Help: "1 while the route store listens for route changes on PostgreSQL, else 0."}),
	}
	// Both results exist from the start, so that a rate over them is
	// defined before the first error.
	m.reloads.WithLabelValues(resultOK)
	m.reloads.WithLabelValues(resultError)
	m.clusterReloads.WithLabelValues(resultOK)
	m.clusterReloads.WithLabelValues(resultError)
	if reg != nil {
		reg.MustRegister(m.routes, m.reloads, m.clusterReloads, m.notifyLag, m.up)
	}
	return m
}

const (
	resultOK    = "ok"
	resultError = "error"
)
