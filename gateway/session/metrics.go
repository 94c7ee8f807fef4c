package session

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the registry's Prometheus collectors.
type metrics struct {
	sessions        prometheus.Gauge
	sessionsTotal   prometheus.Counter
	replaced        prometheus.Counter
	draining        prometheus.Counter
	refused         *prometheus.CounterVec
	streamsOpened   prometheus.Counter
	bytesIn         prometheus.Counter
	bytesOut        prometheus.Counter
	controlMessages *prometheus.CounterVec
	controlDropped  *prometheus.CounterVec
	sessionsClosed  *prometheus.CounterVec
	violations      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, r *Registry) *metrics {
	const ns, sub = "pipeops_gateway", "tunnel"
	m := &metrics{
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "sessions", Help: "Connected agent sessions."}),
		sessionsTotal: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "sessions_total", Help: "Agent sessions accepted."}),
		replaced: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "sessions_replaced_total", Help: "Sessions closed because the same agent (cluster and instance) connected again."}),
		draining: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "sessions_draining_total", Help: "Sessions whose agent said it is going away (yamux go-away); their new streams went to other sessions."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "refused_total", Help: "Agent connections, agent-opened streams and streams over the per-session limit refused, by reason."}, []string{"reason"}),
		streamsOpened: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "streams_opened_total", Help: "Streams opened to agents."}),
		bytesIn: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "stream_received_bytes_total", Help: "Payload bytes read from agent streams."}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "stream_sent_bytes_total", Help: "Payload bytes written to agent streams."}),
		controlMessages: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "control_messages_total", Help: "Control messages received from agents, by type."}, []string{"type"}),
		controlDropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "control_dropped_total", Help: "Control messages dropped, by reason."}, []string{"reason"}),
		sessionsClosed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "sessions_closed_total", Help: "Agent sessions ended, by reason (protocol violations among them)."}, []string{"reason"}),
		violations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "protocol_violations_total", Help: "Protocol violations by agents that count against a session's budgets, by kind."}, []string{"kind"}),
	}
	if reg != nil {
		reg.MustRegister(m.sessions, m.sessionsTotal, m.replaced, m.draining, m.refused, m.streamsOpened,
			m.bytesIn, m.bytesOut, m.controlMessages, m.controlDropped, m.sessionsClosed, m.violations,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
				Name: "streams", Help: "Open streams over all sessions."}, func() float64 { return float64(r.numStreams()) }))
	}
	return m
}
