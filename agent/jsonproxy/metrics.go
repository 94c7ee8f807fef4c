package jsonproxy

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Handler's collectors. A nil *metrics records nothing.
type metrics struct {
	requests   *prometheus.CounterVec
	websockets *prometheus.CounterVec
	inflight   *prometheus.GaugeVec
	drops      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pipeops_agent_jsonproxy_requests_total",
			Help: "proxy_request messages served, by outcome (ok, upstream_error, deadline, cancelled, refused, overloaded, bad_request, body_too_large, response_too_large).",
		}, []string{"outcome"}),
		websockets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pipeops_agent_jsonproxy_websockets_total",
			Help: "WebSocket relays (ws_start) served, by outcome (ok, dial_failed, cancelled, backpressure, refused, overloaded, bad_request).",
		}, []string{"outcome"}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pipeops_agent_jsonproxy_in_flight",
			Help: "Requests and WebSocket relays of the JSON proxy path being served, by kind (request, websocket).",
		}, []string{"kind"}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pipeops_agent_jsonproxy_dropped_total",
			Help: "JSON proxy messages dropped, by reason (no_request_id, unknown_request, unexpected_chunk, bad_payload, after_close, tcp_tunnel, udp_tunnel, reply_queue_full).",
		}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.websockets, m.inflight, m.drops} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("jsonproxy: register metrics: %w", err)
		}
	}
	// Both kinds show from the start, at 0, so a dashboard need not guess.
	m.inflight.WithLabelValues("request")
	m.inflight.WithLabelValues("websocket")
	return m, nil
}

func (m *metrics) request(outcome string) {
	if m != nil {
		m.requests.WithLabelValues(outcome).Inc()
	}
}

func (m *metrics) webSocket(outcome string) {
	if m != nil {
		m.websockets.WithLabelValues(outcome).Inc()
	}
}

func (m *metrics) inFlight(kind string, delta float64) {
	if m != nil {
		m.inflight.WithLabelValues(kind).Add(delta)
	}
}

func (m *metrics) dropped(reason string) {
	if m != nil {
		m.drops.WithLabelValues(reason).Inc()
	}
}
