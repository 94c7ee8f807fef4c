package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/shared/stack"
)

// pattern is an endless deterministic byte stream.
type pattern struct{ i byte }

func (p *pattern) Read(b []byte) (int, error) {
	for k := range b {
		b[k] = 'A' + p.i%61
		p.i++
	}
	return len(b), nil
}

// exercise sends every kind of request a tunnel must carry to host through
// the gateway, and checks the gateway served them in mode.
func exercise(t *testing.T, s *stack.Stack, host, mode string, download int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	before := metric(t, s, "pipeops_gateway_proxy_requests_total", `mode="`+mode+`"`)

	t.Run("GET", func(t *testing.T) {
		code, body, err := get(ctx, s, host, "/")
		if err != nil || code != 200 || !strings.Contains(body, "hello from") {
			t.Fatalf("GET /: %d %q %v", code, body, err)
		}
	})

	t.Run("POST 100 MiB", func(t *testing.T) {
		const size = 100 << 20
		h := sha256.New()
		io.CopyN(h, &pattern{}, size)
		want := fmt.Sprintf("%d %s", size, hex.EncodeToString(h.Sum(nil)))
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.GatewayHTTP+"/upload", io.LimitReader(&pattern{}, size))
		req.Host = host
		req.ContentLength = size
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != want {
			t.Fatalf("upload: %s %q, want %q", resp.Status, body, want)
		}
	})

	t.Run("streamed download", func(t *testing.T) {
		start := time.Now()
		rate := downloadRate(ctx, t, s, host, download)
		t.Logf("%d MiB in %s (%.0f MB/s)", download>>20, time.Since(start).Round(time.Millisecond), rate)
	})

	t.Run("SSE", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.GatewayHTTP+"/sse?n=4&every=400ms", nil)
		req.Host = host
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
			t.Fatalf("Content-Type %q", ct)
		}
		sc := bufio.NewScanner(resp.Body)
		var arrivals []time.Duration
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "data: ") {
				arrivals = append(arrivals, time.Since(start))
			}
		}
		if len(arrivals) != 4 {
			t.Fatalf("%d events, want 4", len(arrivals))
		}
		// Each event must arrive when sent, not buffered to the end.
		if arrivals[0] > 600*time.Millisecond || arrivals[3]-arrivals[0] < time.Second {
			t.Fatalf("events arrived at %v: buffered, not streamed", arrivals)
		}
	})

	t.Run("WebSocket echo", func(t *testing.T) {
		d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
		conn, resp, err := d.DialContext(ctx, strings.Replace(s.GatewayHTTP, "http://", "ws://", 1)+"/ws", http.Header{"Host": {host}})
		if err != nil {
			t.Fatalf("dial: %v (%v)", err, resp)
		}
		defer conn.Close()
		big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
		for _, msg := range [][]byte{[]byte("hello"), big, []byte("bye")} {
			if err := conn.WriteMessage(websocket.BinaryMessage, msg); err != nil {
				t.Fatal(err)
			}
			_, got, err := conn.ReadMessage()
			if err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("echo of %d bytes: got %d bytes, %v", len(msg), len(got), err)
			}
		}
	})

	// A request is counted when the gateway's handler returns: for the
	// WebSocket, once both ends of the upgraded connection are closed.
	eventually(t, "the gateway to count the 5 requests in "+mode+" mode", 5*time.Second, func() (bool, string) {
		after := metric(t, s, "pipeops_gateway_proxy_requests_total", `mode="`+mode+`"`)
		return after-before >= 5, fmt.Sprintf("%v counted", after-before)
	})
}

// TestTunnelMode: GET, a 100 MiB upload, a 1 GiB streamed download, SSE and
// a WebSocket echo, through the gateway, the tunnel and the agent to the
// ingress controller.
func TestTunnelMode(t *testing.T) {
	e := newEnv(t, stack.Options{}, stack.ClusterOptions{})
	if _, err := e.c.CreateIngress(context.Background(), "shop", "web", e.host); err != nil {
		t.Fatal(err)
	}
	served(t, e.s, e.host, "hello from edge", 10*time.Second)
	exercise(t, e.s, e.host, "tunnel", 1<<30)
}

// TestDirectMode: the same requests once the ingress controller has a load
// balancer address, and a flip to direct mode and back under steady traffic
// without a failed request.
func TestDirectMode(t *testing.T) {
	e := newEnv(t, stack.Options{}, stack.ClusterOptions{})
	ctx := context.Background()
	e.route(t)

	tr := startTraffic(e.s, e.host, "hello from edge", 10*time.Millisecond)
	defer func() { tr.close() }()
	flip := func(public bool, mode string) {
		t.Helper()
		before := metric(t, e.s, "pipeops_gateway_proxy_requests_total", `mode="`+mode+`"`)
		if err := e.c.SetLoadBalancer(ctx, public); err != nil {
			t.Fatal(err)
		}
		took := eventually(t, "requests served in "+mode+" mode", 10*time.Second, func() (bool, string) {
			n := metric(t, e.s, "pipeops_gateway_proxy_requests_total", `mode="`+mode+`"`)
			return n-before >= 20, fmt.Sprintf("%v more", n-before)
		})
		ok, failures := tr.reset()
		t.Logf("flip to %s mode: %s; %d requests ok, %d failed %v", mode, took.Round(time.Millisecond), ok, len(failures), failures)
		if len(failures) > 1 {
			t.Fatalf("%d requests failed during the flip to %s mode (at most the one in flight may): %v", len(failures), mode, failures)
		}
	}
	flip(true, "direct")
	tr.close()
	exercise(t, e.s, e.host, "direct", 1<<30)

	tr = startTraffic(e.s, e.host, "hello from edge", 10*time.Millisecond)
	flip(false, "tunnel")
	flip(true, "direct")
}
