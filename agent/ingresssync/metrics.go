package ingresssync

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Syncer's collectors. A nil *metrics records nothing.
type metrics struct {
	calls        *prometheus.CounterVec
	lastFullSync prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, routes func() int) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pipeops_agent_route_api_calls_total",
			Help: "Calls to the control plane's routes API, by call (register, unregister, sync) and result (ok, error).",
		}, []string{"call", "result"}),
		lastFullSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pipeops_agent_route_last_full_sync_timestamp_seconds",
			Help: "Unix time of the last successful full route sync.",
		}),
	}
	routeGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pipeops_agent_routes",
		Help: "Routes (hostname and path) last sent to the control plane.",
	}, func() float64 { return float64(routes()) })
	for _, c := range []prometheus.Collector{m.calls, m.lastFullSync, routeGauge} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("ingresssync: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) call(name string, err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.calls.WithLabelValues(name, result).Inc()
}

func (m *metrics) fullSynced() {
	if m != nil {
		m.lastFullSync.SetToCurrentTime()
	}
}
