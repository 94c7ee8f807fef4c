package app

import (
	"context"
	"errors"
	"net"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// heartbeatMetrics count the heartbeats the agent sent and the
// acknowledgements it got: sent rising while acked stays is a gateway that
// no longer records them.
type heartbeatMetrics struct {
	sent, failed, acked prometheus.Counter
}

func newHeartbeatMetrics(reg prometheus.Registerer) *heartbeatMetrics {
	m := &heartbeatMetrics{
		sent: prometheus.NewCounter(prometheus.CounterOpts{Name: "pipeops_agent_heartbeats_sent_total",
			Help: "Heartbeats sent on the tunnel."}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{Name: "pipeops_agent_heartbeats_failed_total",
			Help: "Heartbeats that could not be sent (no tunnel, or the write failed)."}),
		acked: prometheus.NewCounter(prometheus.CounterOpts{Name: "pipeops_agent_heartbeat_acks_total",
			Help: "heartbeat_ack messages received from the gateway."}),
	}
	reg.MustRegister(m.sent, m.failed, m.acked)
	return m
}

// tunnelCollector reports the tunnel client's state and counters at each
// scrape, from the client's own atomics: nothing to keep in step.
type tunnelCollector struct {
	tc                                 *tunnelclient.Client
	up, connects, streams, active, bad *prometheus.Desc
}

func newTunnelCollector(tc *tunnelclient.Client) *tunnelCollector {
	return &tunnelCollector{tc: tc,
		up:       prometheus.NewDesc("pipeops_agent_tunnel_up", "1 while the agent holds a tunnel to the gateway, else 0.", nil, nil),
		connects: prometheus.NewDesc("pipeops_agent_tunnel_connects_total", "Tunnels established (the first and every reconnect).", nil, nil),
		streams:  prometheus.NewDesc("pipeops_agent_tunnel_streams_total", "Streams the gateway opened to the agent.", nil, nil),
		active:   prometheus.NewDesc("pipeops_agent_tunnel_streams_active", "Streams open now.", nil, nil),
		bad: prometheus.NewDesc("pipeops_agent_tunnel_stream_failures_total",
			"Streams that reached no target, by reason: refused (a target the agent does not serve), unreachable (the target did not answer), malformed (a bad stream header).",
			[]string{"reason"}, nil),
	}
}

func (c *tunnelCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.connects, c.streams, c.active, c.bad} {
		ch <- d
	}
}

func (c *tunnelCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.tc.Stats()
	up := 0.0
	if c.tc.Connected() {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(c.connects, prometheus.CounterValue, float64(s.Connects))
	ch <- prometheus.MustNewConstMetric(c.streams, prometheus.CounterValue, float64(s.StreamsTotal))
	ch <- prometheus.MustNewConstMetric(c.active, prometheus.GaugeValue, float64(s.StreamsActive))
	ch <- prometheus.MustNewConstMetric(c.bad, prometheus.CounterValue, float64(s.StreamsRefused), "refused")
	ch <- prometheus.MustNewConstMetric(c.bad, prometheus.CounterValue, float64(s.StreamsFailed), "unreachable")
	ch <- prometheus.MustNewConstMetric(c.bad, prometheus.CounterValue, float64(s.StreamsMalformed), "malformed")
}

// countingDialer counts the streams the gateway opens by the kind of target
// they name (kubernetes_api, service) and how the dial ended (ok, refused,
// unreachable).
type countingDialer struct {
	inner   tunnelclient.Dialer
	streams *prometheus.CounterVec
}

func newCountingDialer(inner tunnelclient.Dialer, reg prometheus.Registerer) *countingDialer {
	d := &countingDialer{inner: inner, streams: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pipeops_agent_stream_targets_total",
		Help: "Streams from the gateway by target kind (kubernetes_api, service) and result (ok, refused, unreachable).",
	}, []string{"kind", "result"})}
	for _, kind := range []string{"kubernetes_api", "service"} {
		for _, result := range []string{"ok", "refused", "unreachable"} {
			d.streams.WithLabelValues(kind, result)
		}
	}
	reg.MustRegister(d.streams)
	return d
}

func (d *countingDialer) DialStream(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
	kind := "service"
	if h.IsKubernetesAPI() {
		kind = "kubernetes_api"
	}
	c, err := d.inner.DialStream(ctx, h)
	result := "ok"
	switch {
	case errors.Is(err, tunnelclient.ErrTargetRefused):
		result = "refused"
	case err != nil:
		result = "unreachable"
	}
	d.streams.WithLabelValues(kind, result).Inc()
	return c, err
}
