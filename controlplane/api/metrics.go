package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	registry  *prometheus.Registry
	requests  *prometheus.CounterVec
	durations *prometheus.HistogramVec
	agents    prometheus.Gauge
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		registry: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pipeops_controlplane",
			Name: "http_requests_total", Help: "HTTP requests by route and status."}, []string{"route", "status"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "pipeops_controlplane",
			Name: "http_request_duration_seconds", Help: "HTTP request durations by route.", Buckets: prometheus.DefBuckets}, []string{"route"}),
		agents: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "pipeops_controlplane",
			Name: "agent_registration_sockets", Help: "Open agent registration WebSockets."}),
	}
	reg.MustRegister(m.requests, m.durations, m.agents)
	return m
}

// instrument counts requests by chi route pattern (not raw path, which
// would make one series per cluster id).
func (m *metrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		route := "unmatched"
		if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
			route = rc.RoutePattern()
		}
		status := ww.Status()
		if status == 0 {
			status = http.StatusOK
		}
		m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
		m.durations.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}
