package tunnelclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/tunnel"
)

func TestNewValidates(t *testing.T) {
	dialer := DialerFunc(func(context.Context, tunnel.StreamHeader) (net.Conn, error) { return nil, ErrTargetRefused })
	const flags = "supports_binary=true&supports_response_streaming=true&supports_streaming=true&supports_websocket=true&supports_yamux=true"
	cases := []struct {
		name string
		cfg  Config
		ok   bool
		url  string
	}{
		{"ok", Config{GatewayURL: "https://gw.example.com", Token: "t", ClusterUUID: "c", Dialer: dialer}, true,
			"wss://gw.example.com/ws?agent_version=&cluster_uuid=c&supports_binary=true&supports_k8s_http=true&supports_response_streaming=true&supports_streaming=true&supports_websocket=true&supports_yamux=true"},
		{"Kubernetes API over JSON", Config{GatewayURL: "https://gw.example.com/ws?x=1", Token: "t", ClusterUUID: "c", Dialer: dialer, KubeAPIOverJSON: true}, true,
			"wss://gw.example.com/ws?agent_version=&cluster_uuid=c&" + flags + "&x=1"},
		{"no token", Config{GatewayURL: "https://gw.example.com", ClusterUUID: "c", Dialer: dialer}, false, ""},
		{"no dialer", Config{GatewayURL: "https://gw.example.com", Token: "t", ClusterUUID: "c"}, false, ""},
		{"no cluster", Config{GatewayURL: "https://gw.example.com", Token: "t", Dialer: dialer}, false, ""},
		{"bad scheme", Config{GatewayURL: "ftp://gw.example.com", Token: "t", ClusterUUID: "c", Dialer: dialer}, false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl, err := New(c.cfg)
			if (err == nil) != c.ok {
				t.Fatalf("New: err = %v, want ok=%v", err, c.ok)
			}
			if c.ok && cl.url != c.url {
				t.Fatalf("url = %s, want %s", cl.url, c.url)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	c := &Client{cfg: Config{BackoffInitial: 500 * time.Millisecond, BackoffMax: 30 * time.Second}}
	for attempt, want := range []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second} {
		for range 50 {
			got := c.backoff(attempt)
			if got < want/2 || got > want {
				t.Fatalf("attempt %d: backoff %s outside [%s, %s]", attempt, got, want/2, want)
			}
		}
	}
	seen := map[time.Duration]bool{}
	for range 50 {
		got := c.backoff(40)
		if got < 15*time.Second || got > 30*time.Second {
			t.Fatalf("capped backoff %s outside [15s, 30s]", got)
		}
		seen[got] = true
	}
	if len(seen) < 10 {
		t.Fatalf("backoff has no jitter: %d distinct values in 50", len(seen))
	}
}

func TestRetryDelayAfterLostTunnel(t *testing.T) {
	c := &Client{cfg: Config{BackoffInitial: 500 * time.Millisecond, BackoffMax: 30 * time.Second, RetryFast: time.Second, RetryFastWindow: 30 * time.Second}}
	refused := fmt.Errorf("dial: %w", errors.New("connection refused"))
	cases := []struct {
		name   string
		err    error
		lostAt time.Time
		lo, hi time.Duration
	}{
		{"never connected: plain backoff", refused, time.Time{}, 4 * time.Second, 8 * time.Second},
		{"tunnel just lost: fast", refused, time.Now(), 500 * time.Millisecond, time.Second},
		{"lost long ago: plain backoff", refused, time.Now().Add(-time.Minute), 4 * time.Second, 8 * time.Second},
		{"token refused: plain backoff", fmt.Errorf("handshake: %w", ErrUnauthorized), time.Now(), 4 * time.Second, 8 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for range 50 {
				if d := c.retryDelay(4, tc.err, tc.lostAt); d < tc.lo || d > tc.hi {
					t.Fatalf("retryDelay = %s, want within [%s, %s]", d, tc.lo, tc.hi)
				}
			}
		})
	}
}
