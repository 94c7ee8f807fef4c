package app

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/shared/tunnel"
)

func TestCountingDialer(t *testing.T) {
	inner := tunnelclient.DialerFunc(func(_ context.Context, h tunnel.StreamHeader) (net.Conn, error) {
		switch {
		case h.IsKubernetesAPI():
			a, b := net.Pipe()
			b.Close()
			return a, nil
		case h.Service == "refused":
			return nil, tunnelclient.ErrTargetRefused
		default:
			return nil, errors.New("connection refused")
		}
	})
	d := newCountingDialer(inner, prometheus.NewRegistry())
	for _, h := range []tunnel.StreamHeader{tunnel.KubernetesAPI, tunnel.KubernetesAPI,
		{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "refused", Namespace: "x"},
		{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "web", Namespace: "x"}} {
		if c, err := d.DialStream(context.Background(), h); err == nil {
			c.Close()
		}
	}
	for labels, want := range map[[2]string]float64{
		{"kubernetes_api", "ok"}: 2, {"service", "refused"}: 1, {"service", "unreachable"}: 1, {"service", "ok"}: 0,
	} {
		if got := testutil.ToFloat64(d.streams.WithLabelValues(labels[0], labels[1])); got != want {
			t.Errorf("streams%v = %v, want %v", labels, got, want)
		}
	}
}
