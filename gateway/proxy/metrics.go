package proxy

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	fallbacks prometheus.Counter
	refused   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pipeops_gateway", Subsystem: "proxy",
			Name: "requests_total", Help: "Proxied requests by mode (tunnel, direct, direct_fallback, none) and status."}, []string{"mode", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "pipeops_gateway", Subsystem: "proxy",
			Name: "request_duration_seconds", Help: "Time to serve proxied requests, by mode.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"mode"}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "pipeops_gateway", Subsystem: "proxy",
			Name: "direct_fallbacks_total", Help: "Direct-mode requests sent through the tunnel because the load balancer was unreachable."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pipeops_gateway", Subsystem: "proxy",
			Name: "requests_refused_total", Help: "Routed requests the gateway refused or cut, by reason (body_too_large)."}, []string{"reason"}),
	}
	m.refused.WithLabelValues(reasonBodyTooLarge) // present at 0 from the start
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.fallbacks, m.refused)
	}
	return m
}
