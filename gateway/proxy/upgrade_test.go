package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/pipeops/tunnel/controlplane"
)

// upgradeUpstream is an ingress controller stand-in for protocol upgrades.
// Its /raw-* endpoints speak a made-up protocol "raw-test" on the hijacked
// connection, so that the test controls every byte and every half-close;
// what they read after the switch is sent on got.
func upgradeUpstream(t testing.TB, name string, got chan<- string) *httptest.Server {
	mux := http.NewServeMux()
	ws := websocket.Upgrader{}
	mux.HandleFunc("/ws-echo", func(w http.ResponseWriter, r *http.Request) {
		c, err := ws.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for range 1000 {
			typ, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(typ, append([]byte(name+": "), msg...)); err != nil {
				return
			}
		}
	})
	// hijack switches to raw-test, writing the 101, a header X-Seen telling
	// what the request looked like, and first, all in one write.
	hijack := func(w http.ResponseWriter, r *http.Request, first string) (net.Conn, *bufio.Reader) {
		if r.Header.Get("Upgrade") != "raw-test" {
			http.Error(w, "upgrade to raw-test only", http.StatusBadRequest)
			return nil, nil
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return nil, nil
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second)) // a failed test must not leave it behind
		seen := fmt.Sprintf("host=%s xff=%s xfh=%s xfp=%s connection=%s keep-alive=%q ua=%q",
			r.Host, r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Host"), r.Header.Get("X-Forwarded-Proto"),
			r.Header.Get("Connection"), r.Header.Get("Keep-Alive"), r.Header.Get("User-Agent"))
		head := "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: raw-test\r\nX-Seen: " + seen + "\r\n\r\n"
		if _, err := c.Write([]byte(head + first)); err != nil {
			c.Close()
			return nil, nil
		}
		return c, brw.Reader
	}
	// raw-echo: greets, echoes until the visitor half-closes, says bye and
	// closes.
	mux.HandleFunc("/raw-echo", func(w http.ResponseWriter, r *http.Request) {
		c, br := hijack(w, r, "hello from "+name+"\n")
		if c == nil {
			return
		}
		defer c.Close()
		if _, err := io.Copy(c, br); err != nil {
			got <- "copy: " + err.Error()
			return
		}
		got <- "eof"
		_, _ = c.Write([]byte("bye\n"))
	})
	// raw-closefirst: says it is closing and half-closes, then reads what
	// the visitor still sends.
	mux.HandleFunc("/raw-closefirst", func(w http.ResponseWriter, r *http.Request) {
		c, br := hijack(w, r, "closing\n")
		if c == nil {
			return
		}
		defer c.Close()
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			got <- "closewrite: " + err.Error()
			return
		}
		b, err := io.ReadAll(br)
		if err != nil {
			got <- "read: " + err.Error()
			return
		}
		got <- string(b)
	})
	mux.HandleFunc("/refuse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Why", "no upgrades here")
		w.Header().Set("Keep-Alive", "timeout=5") // hop-by-hop: must not reach the visitor
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, "refused by "+name)
	})
	mux.HandleFunc("/silent", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/wrong-protocol", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "something-else")
		w.WriteHeader(http.StatusSwitchingProtocols)
	})
	s := httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

// upgradeFixture has one cluster "c" whose agent reaches an
// upgradeUpstream, reachable by these hosts: tunnel mode, direct mode,
// direct mode with a dead load balancer (falls back to the tunnel), a
// cluster with no agent, and direct mode with neither.
func upgradeFixture(t *testing.T, headerTimeout time.Duration) (*fixture, chan string) {
	f := newFixture(t, headerTimeout)
	got := make(chan string, 16)
	up := upgradeUpstream(t, "U", got)
	f.startAgent("c", addr(up), "")
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	f.setRoutes([]controlplane.Route{
		route("tunnel.example.com", "c", "tunnel", ""),
		route("direct.example.com", "c", "direct", addr(up)),
		route("fallback.example.com", "c", "direct", deadAddr),
		route("offline.example.com", "z", "tunnel", ""),
		route("unreachable.example.com", "z", "direct", deadAddr),
	}, []*controlplane.Cluster{{UUID: "c", IngressController: ingressNginx}, {UUID: "z", IngressController: ingressNginx}})
	return f, got
}

// modes are the three ways an upgrade reaches the upstream, with the mode
// label the proxy counts it under.
var modes = []struct{ host, label string }{
	{"tunnel.example.com", "tunnel"},
	{"direct.example.com", "direct"},
	{"fallback.example.com", "direct_fallback"},
}

func (f *fixture) dialWebSocket(host, path string) (*websocket.Conn, *http.Response, error) {
	d := websocket.Dialer{
		NetDial:          func(_, _ string) (net.Conn, error) { return net.Dial("tcp", addr(f.front)) },
		HandshakeTimeout: 5 * time.Second,
	}
	return d.Dial("ws://"+host+path, nil)
}

// rawUpgrade sends an upgrade request to raw-test and, in the same write,
// early (bytes a client sends before it has the 101), and reads the answer's
// head.
func (f *fixture) rawUpgrade(host, path, early string) (*net.TCPConn, *bufio.Reader, *http.Response) {
	f.t.Helper()
	c, err := net.Dial("tcp", addr(f.front))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: keep-alive, Upgrade\r\nUpgrade: raw-test\r\n" +
		"Keep-Alive: timeout=5\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n" + early
	if _, err := c.Write([]byte(req)); err != nil {
		f.t.Fatal(err)
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	return c.(*net.TCPConn), br, res
}

func readLine(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("read %q: %v", line, err)
	}
	return line
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestUpgradeWebSocketEcho(t *testing.T) {
	f, _ := upgradeFixture(t, 2*time.Second)
	for _, m := range modes {
		t.Run(m.label, func(t *testing.T) {
			streams := f.streams["c"].Load()
			upgrades := counterValue(t, f.proxy.metrics.requests.WithLabelValues(m.label, "101"))
			ws, resp, err := f.dialWebSocket(m.host, "/ws-echo")
			if err != nil {
				t.Fatalf("dial: %v (%v)", err, resp)
			}
			defer ws.Close()
			for i := range 3 {
				msg := fmt.Sprintf("ping %d", i)
				if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
					t.Fatal(err)
				}
				_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, got, err := ws.ReadMessage(); err != nil || string(got) != "U: "+msg {
					t.Fatalf("echo: %q %v", got, err)
				}
			}
			// A message larger than CopyAdaptive's small buffer.
			big := strings.Repeat("x", 1<<20)
			if err := ws.WriteMessage(websocket.BinaryMessage, []byte(big)); err != nil {
				t.Fatal(err)
			}
			if _, got, err := ws.ReadMessage(); err != nil || string(got) != "U: "+big {
				t.Fatalf("large echo: %d bytes, %v", len(got), err)
			}
			if tunnelled := f.streams["c"].Load() > streams; tunnelled != (m.label != "direct") {
				t.Errorf("%s: a tunnel stream was opened: %v", m.label, tunnelled)
			}
			if n := counterValue(t, f.proxy.metrics.requests.WithLabelValues(m.label, "101")); n != upgrades+1 {
				t.Errorf("requests_total{mode=%q,status=101} went from %v to %v", m.label, upgrades, n)
			}
		})
	}
}

// Bytes each side sends right behind its head (the visitor behind its
// request, the upstream behind its 101, each in the same write) get through,
// the request is rewritten as ReverseProxy rewrites it, and a half-close is
// passed on in both directions.
func TestUpgradeRawBytesAndHalfClose(t *testing.T) {
	f, got := upgradeFixture(t, 2*time.Second)
	for _, m := range modes {
		t.Run(m.label+"/visitor closes first", func(t *testing.T) {
			c, br, res := f.rawUpgrade(m.host, "/raw-echo", "early from the visitor\n")
			if res.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("status %d", res.StatusCode)
			}
			want := "host=" + m.host + ` xff=127.0.0.1 xfh=` + m.host + ` xfp=http connection=Upgrade keep-alive="" ua=""`
			if seen := res.Header.Get("X-Seen"); seen != want {
				t.Errorf("the upstream saw %q\nwant            %q", seen, want)
			}
			if line := readLine(t, br); line != "hello from U\n" {
				t.Fatalf("upstream's first bytes: %q", line)
			}
			if line := readLine(t, br); line != "early from the visitor\n" {
				t.Fatalf("visitor's early bytes came back as %q", line)
			}
			for i := range 3 {
				msg := fmt.Sprintf("line %d\n", i)
				if _, err := c.Write([]byte(msg)); err != nil {
					t.Fatal(err)
				}
				if line := readLine(t, br); line != msg {
					t.Fatalf("echo: %q, want %q", line, msg)
				}
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			select {
			case s := <-got:
				if s != "eof" {
					t.Fatalf("upstream: %s", s)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the visitor's half-close did not reach the upstream")
			}
			// The other direction still works after the half-close.
			rest, err := io.ReadAll(br)
			if err != nil || string(rest) != "bye\n" {
				t.Fatalf("after the half-close: %q %v", rest, err)
			}
		})
		t.Run(m.label+"/upstream closes first", func(t *testing.T) {
			c, br, res := f.rawUpgrade(m.host, "/raw-closefirst", "")
			if res.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("status %d", res.StatusCode)
			}
			if line := readLine(t, br); line != "closing\n" {
				t.Fatalf("first bytes: %q", line)
			}
			if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
				t.Fatalf("the upstream's half-close should reach the visitor as EOF: %q %v", rest, err)
			}
			if _, err := c.Write([]byte("still here")); err != nil {
				t.Fatal(err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			select {
			case s := <-got:
				if s != "still here" {
					t.Fatalf("upstream read %q after its half-close", s)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream did not get the visitor's last bytes")
			}
		})
	}
}

func TestUpgradeErrors(t *testing.T) {
	const headerTimeout = 300 * time.Millisecond
	f, _ := upgradeFixture(t, headerTimeout)
	s, _ := f.reg.Session("c")
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	defer client.CloseIdleConnections()
	upgrade := func(t *testing.T, host, path string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", f.front.URL+path, nil)
		req.Host = host
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "raw-test")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}

	t.Run("refused upgrade", func(t *testing.T) {
		for _, m := range modes {
			resp, body := upgrade(t, m.host, "/refuse")
			if resp.StatusCode != http.StatusBadRequest || body != "refused by U" || resp.Header.Get("X-Why") != "no upgrades here" {
				t.Errorf("%s: %d %q %v, want the upstream's 400 and body", m.label, resp.StatusCode, body, resp.Header)
			}
			if resp.Header.Get("Keep-Alive") != "" {
				t.Errorf("%s: hop-by-hop header Keep-Alive reached the visitor", m.label)
			}
		}
		// The upstream connection is closed, not kept: its stream ends.
		for deadline := time.Now().Add(5 * time.Second); s.NumStreams() != 0; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d tunnel streams still open after refused upgrades", s.NumStreams())
			}
		}
	})
	for _, c := range []struct {
		name, host, path string
		want             int
	}{
		{"upstream never answers", "tunnel.example.com", "/silent", http.StatusGatewayTimeout},
		{"upstream never answers, direct", "direct.example.com", "/silent", http.StatusGatewayTimeout},
		{"agent offline", "offline.example.com", "/raw-echo", http.StatusServiceUnavailable},
		{"load balancer and agent down", "unreachable.example.com", "/raw-echo", http.StatusBadGateway},
		{"switched to another protocol", "tunnel.example.com", "/wrong-protocol", http.StatusBadGateway},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			resp, body := upgrade(t, c.host, c.path)
			took := time.Since(start)
			if resp.StatusCode != c.want {
				t.Fatalf("%d %q, want %d", resp.StatusCode, body, c.want)
			}
			if c.want == http.StatusGatewayTimeout && took < headerTimeout {
				t.Errorf("504 after %s, before the header timeout (%s)", took, headerTimeout)
			}
			if took > 3*time.Second {
				t.Errorf("took %s: errors must be fast", took)
			}
		})
	}
	if n := counterValue(t, f.proxy.metrics.requests.WithLabelValues("tunnel", "504")); n != 1 {
		t.Errorf("requests_total{mode=tunnel,status=504} = %v, want 1", n)
	}
}

// Proxy.Close ends live upgraded connections and the goroutines that relay
// them; upgrades after it are refused.
func TestUpgradeProxyClose(t *testing.T) {
	f, _ := upgradeFixture(t, 2*time.Second)
	ignore := goleak.IgnoreCurrent()
	var conns []*websocket.Conn
	for _, m := range modes {
		ws, resp, err := f.dialWebSocket(m.host, "/ws-echo")
		if err != nil {
			t.Fatalf("%s: %v (%v)", m.label, err, resp)
		}
		defer ws.Close()
		if err := ws.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ws.ReadMessage(); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, ws)
	}
	if n := f.proxy.upgrades.len(); n != len(modes) {
		t.Fatalf("%d upgraded connections tracked, want %d", n, len(modes))
	}
	// A draining gateway closes idle upstream connections over and over;
	// live upgraded ones must keep working through it.
	f.proxy.CloseIdleConnections()
	for i, ws := range conns {
		if err := ws.WriteMessage(websocket.TextMessage, []byte("still")); err != nil {
			t.Fatalf("%s: write after CloseIdleConnections: %v", modes[i].label, err)
		}
		_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, got, err := ws.ReadMessage(); err != nil || string(got) != "U: still" {
			t.Fatalf("%s: echo after CloseIdleConnections: %q %v", modes[i].label, got, err)
		}
	}
	closed := make(chan struct{})
	go func() { defer close(closed); f.proxy.Close() }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Proxy.Close did not return")
	}
	for i, ws := range conns {
		_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := ws.ReadMessage()
		if ne, ok := errors.AsType[net.Error](err); err == nil || ok && ne.Timeout() {
			t.Errorf("%s: after Proxy.Close the WebSocket is still open (%v)", modes[i].label, err)
		}
		ws.Close()
	}
	if n := f.proxy.upgrades.len(); n != 0 {
		t.Errorf("%d upgraded connections still tracked", n)
	}
	goleak.VerifyNone(t, ignore)

	if _, resp, err := f.dialWebSocket("tunnel.example.com", "/ws-echo"); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("upgrade after Close: %v %v, want 503", err, resp)
	}
}
