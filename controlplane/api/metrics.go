package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/tunnel/shared/auth"
)

type metrics struct {
	registry  *prometheus.Registry
	requests  *prometheus.CounterVec
	durations *prometheus.HistogramVec
	agents    prometheus.Gauge
	refused   *prometheus.CounterVec
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
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pipeops_controlplane",
			Name: "tokens_refused_total", Help: "Tokens refused, by cause: invalid, wrong_kind, revoked, " +
				"not_as_recorded (signed with the real key but with claims that differ from the token's record), error."}, []string{"cause"}),
	}
	for _, c := range []string{"invalid", "wrong_kind", "revoked", "not_as_recorded", "error"} {
		m.refused.WithLabelValues(c)
	}
	reg.MustRegister(m.requests, m.durations, m.agents, m.refused)
	return m
}

func (m *metrics) tokenRefused(err error) { m.refused.WithLabelValues(auth.Cause(err)).Inc() }

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
