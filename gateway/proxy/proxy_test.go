package proxy

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/gateway/routetable"
	"github.com/pipeops/tunnel/gateway/session"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/tunneltest"
	"github.com/pipeops/tunnel/shared/tunnel"
)

func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil) }

type staticRoutes struct {
	table atomic.Pointer[routetable.Table]
}

func (s *staticRoutes) Lookup(host, path string) (routetable.Match, bool) {
	return s.table.Load().Lookup(host, path)
}

type fixture struct {
	t       testing.TB
	gw      *tunneltest.Gateway // the agent endpoint
	reg     *session.Registry   // gw's
	key     ed25519.PrivateKey  // gw's
	routes  *staticRoutes
	proxy   *Proxy
	front   *httptest.Server // the public side
	streams map[string]*atomic.Int64
}

var ingressNginx = &controlplane.IngressController{Name: "ingress-nginx-controller", Namespace: "ingress-nginx", Port: 80, Type: "nginx"}

func newFixture(t testing.TB, headerTimeout time.Duration) *fixture {
	t.Helper()
	gw := tunneltest.StartGateway(t, tunneltest.Options{})
	f := &fixture{t: t, gw: gw, reg: gw.Registry, key: gw.Key, routes: &staticRoutes{}, streams: map[string]*atomic.Int64{}}
	f.routes.table.Store(routetable.NewTable(nil, nil))
	var err error
	f.proxy, err = New(Config{Routes: f.routes, Tunnels: f.reg, ResponseHeaderTimeout: headerTimeout, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.front = httptest.NewServer(f.proxy)
	t.Cleanup(func() { // before the gateway's own
		f.front.Close()
		f.proxy.Close()
	})
	return f
}

// token signs claims with the key the gateway trusts.
func (f *fixture) token(claims *auth.Claims) string { return f.gw.Sign(claims) }

func (f *fixture) setRoutes(routes []controlplane.Route, clusters []*controlplane.Cluster) {
	f.routes.table.Store(routetable.NewTable(routes, clusters))
}

// startAgent connects an agent for cluster whose streams to the ingress
// controller (and to the Kubernetes API) go to the given addresses.
func (f *fixture) startAgent(cluster, ingressAddr, apiAddr string) {
	f.t.Helper()
	count := &atomic.Int64{}
	f.streams[cluster] = count
	f.gw.Connect(cluster, func(c *tunnelclient.Config) {
		c.Dialer = tunnelclient.DialerFunc(func(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
			count.Add(1)
			var d net.Dialer
			switch {
			case h.IsKubernetesAPI() && apiAddr != "":
				return d.DialContext(ctx, "tcp", apiAddr)
			case h.Service == ingressNginx.Name && h.Namespace == ingressNginx.Namespace:
				return d.DialContext(ctx, "tcp", ingressAddr)
			}
			return nil, tunnelclient.ErrTargetRefused
		})
		// The proxy keeps idle streams pooled until its own cleanup, which
		// runs after this one: don't wait the default 10 s for them.
		c.DrainTimeout = 100 * time.Millisecond
	})
}

// upstream is an ingress controller stand-in: it says who it is and echoes
// what the proxy sent it.
func upstream(t testing.TB, name string) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s host=%s path=%s xff=%s proto=%s xfh=%s", name, r.Host, r.URL.Path,
			r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-Host"))
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: event %d\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-time.After(300 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		var n int64
		fmt.Sscan(r.URL.Query().Get("bytes"), &n)
		w.Header().Set("Content-Length", fmt.Sprint(n))
		buf := make([]byte, 64<<10)
		for n > 0 {
			chunk := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:chunk]); err != nil {
				return
			}
			n -= chunk
		}
	})
	up := websocket.Upgrader{}
	mux.HandleFunc("/ws-echo", func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		for {
			typ, msg, err := ws.ReadMessage()
			if err != nil {
				return
			}
			if err := ws.WriteMessage(typ, append([]byte(name+": "), msg...)); err != nil {
				return
			}
		}
	})
	s := httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

func addr(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }

func route(host, cluster, mode, endpoint string) controlplane.Route {
	return controlplane.Route{Hostname: host, Path: "/", PathType: "Prefix", ClusterUUID: cluster, Namespace: "web",
		ServiceName: "web", ServicePort: 80, RoutingMode: mode, PublicEndpoint: endpoint}
}

func (f *fixture) get(host, path string) (int, string) {
	f.t.Helper()
	req, _ := http.NewRequest("GET", f.front.URL+path, nil)
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestTunnelDirectAndFallback(t *testing.T) {
	f := newFixture(t, 300*time.Millisecond)
	upA, upB := upstream(t, "A"), upstream(t, "B")
	f.startAgent("cluster-a", addr(upA), "")
	f.startAgent("cluster-b", addr(upB), "")
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close() // nothing listens there now

	clusters := []*controlplane.Cluster{{UUID: "cluster-a", IngressController: ingressNginx}, {UUID: "cluster-b", IngressController: ingressNginx}}
	f.setRoutes([]controlplane.Route{
		route("a.example.com", "cluster-a", "tunnel", ""),
		route("b.example.com", "cluster-b", "tunnel", ""),
		route("direct.example.com", "cluster-a", "direct", addr(upB)), // B answers: proves no tunnel was used
		route("fallback.example.com", "cluster-a", "direct", deadAddr),
		route("offline.example.com", "cluster-z", "tunnel", ""),
		route("refused.example.com", "cluster-b", "tunnel", ""),
	}, append(clusters, &controlplane.Cluster{UUID: "cluster-z", IngressController: ingressNginx}))

	code, body := f.get("a.example.com", "/hello")
	if code != 200 || !strings.HasPrefix(body, "A host=a.example.com path=/hello xff=127.0.0.1 proto=http xfh=a.example.com") {
		t.Fatalf("tunnel mode: %d %q", code, body)
	}
	// Each cluster's hosts reach only that cluster.
	if code, body := f.get("b.example.com", "/"); code != 200 || !strings.HasPrefix(body, "B ") {
		t.Fatalf("cluster b: %d %q", code, body)
	}
	before := f.streams["cluster-a"].Load()
	if code, body := f.get("direct.example.com", "/x"); code != 200 || !strings.HasPrefix(body, "B host=direct.example.com") {
		t.Fatalf("direct mode: %d %q", code, body)
	}
	if f.streams["cluster-a"].Load() != before {
		t.Fatal("direct mode opened a tunnel stream")
	}
	if code, body := f.get("fallback.example.com", "/y"); code != 200 || !strings.HasPrefix(body, "A host=fallback.example.com") {
		t.Fatalf("direct with a dead load balancer should fall back to the tunnel: %d %q", code, body)
	}

	for _, c := range []struct {
		host, path string
		want       int
	}{
		{"unknown.example.com", "/", 404},
		{"offline.example.com", "/", 503},
		{"a.example.com", "/slow", 504},
	} {
		start := time.Now()
		if code, body := f.get(c.host, c.path); code != c.want {
			t.Errorf("%s%s: %d %q, want %d", c.host, c.path, code, body, c.want)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("%s%s took %s: errors must be fast", c.host, c.path, took)
		}
	}
	// An agent that refuses the target: the stream closes, 502.
	f.setRoutes([]controlplane.Route{route("refused.example.com", "cluster-b", "tunnel", "")},
		[]*controlplane.Cluster{{UUID: "cluster-b", IngressController: &controlplane.IngressController{Name: "nope", Namespace: "x", Port: 80}}})
	if code, _ := f.get("refused.example.com", "/"); code != 502 {
		t.Errorf("refused target: %d, want 502", code)
	}
}

func TestStreamingThroughTunnel(t *testing.T) {
	f := newFixture(t, 0)
	up := upstream(t, "A")
	f.startAgent("c", addr(up), "")
	f.setRoutes([]controlplane.Route{route("app.example.com", "c", "tunnel", "")}, []*controlplane.Cluster{{UUID: "c", IngressController: ingressNginx}})

	t.Run("sse", func(t *testing.T) {
		req, _ := http.NewRequest("GET", f.front.URL+"/events", nil)
		req.Host = "app.example.com"
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil || line != "data: event 0\n" {
			t.Fatalf("first event: %q %v", line, err)
		}
		if took := time.Since(start); took > 250*time.Millisecond {
			t.Fatalf("first event took %s: the proxy buffered the stream", took)
		}
	})
	t.Run("websocket", func(t *testing.T) {
		h := http.Header{"Host": {"app.example.com"}}
		d := websocket.Dialer{NetDial: func(_, _ string) (net.Conn, error) { return net.Dial("tcp", addr(f.front)) }}
		ws, resp, err := d.Dial("ws://app.example.com/ws-echo", h)
		if err != nil {
			t.Fatalf("websocket through the tunnel: %v (%v)", err, resp)
		}
		defer ws.Close()
		for i := range 3 {
			msg := fmt.Sprintf("ping %d", i)
			if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			_, got, err := ws.ReadMessage()
			if err != nil || string(got) != "A: "+msg {
				t.Fatalf("echo: %q %v", got, err)
			}
		}
	})
	t.Run("1GiB download", func(t *testing.T) {
		const size = 1 << 30
		req, _ := http.NewRequest("GET", f.front.URL+fmt.Sprintf("/big?bytes=%d", size), nil)
		req.Host = "app.example.com"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil || n != size {
			t.Fatalf("downloaded %d bytes, err %v; want %d", n, err, size)
		}
	})
}

func TestKubernetesAPIAccess(t *testing.T) {
	f := newFixture(t, 0)
	var sawAuth, sawImpersonate atomic.Value
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sawAuth.Store(r.Header.Get("Authorization"))
		sawImpersonate.Store(r.Header.Get("Impersonate-User"))
		fmt.Fprintf(w, `{"kind":"NamespaceList","path":%q}`, r.URL.Path)
	}))
	defer api.Close()
	f.startAgent("c1", "", addr(api))
	k8s := NewK8s(K8sConfig{Verifier: f.gw.Verifier, Tunnels: f.reg})
	defer k8s.Close()
	srv := httptest.NewServer(k8s)
	defer srv.Close()

	user := f.token(&auth.Claims{Kind: auth.KindUser, Clusters: []string{"c1"}})
	other := f.token(&auth.Claims{Kind: auth.KindUser, Clusters: []string{"c2"}})
	agent := f.token(&auth.Claims{Kind: auth.KindAgent, ClusterID: "c1"})
	impersonate := false
	call := func(path, token string) (int, string) {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if impersonate {
			req.Header.Set("Impersonate-User", "system:admin")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for name, c := range map[string]struct {
		path, token string
		want        int
	}{
		"no token":      {"/k8s/c1/api/v1/namespaces", "", 401},
		"garbage":       {"/k8s/c1/api/v1/namespaces", "x.y.z", 401},
		"agent token":   {"/k8s/c1/api/v1/namespaces", agent, 401},
		"other cluster": {"/k8s/c1/api/v1/namespaces", other, 403},
		"no cluster":    {"/k8s/", user, 404},
		"offline":       {"/k8s/c2/api", other, 503},
	} {
		if code, body := call(c.path, c.token); code != c.want || !strings.Contains(body, `"kind":"Status"`) {
			t.Errorf("%s: %d %q, want %d with a Status body", name, code, body, c.want)
		}
	}
	// A caller's own impersonation is refused, saying why, never dropped.
	impersonate = true
	if code, body := call("/k8s/c1/api/v1/namespaces", user); code != 403 || !strings.Contains(body, "--as") {
		t.Fatalf("impersonating call: %d %q, want 403 naming --as", code, body)
	}
	impersonate = false
	code, body := call("/k8s/c1/api/v1/namespaces", user)
	if code != 200 || !strings.Contains(body, `"path":"/api/v1/namespaces"`) {
		t.Fatalf("allowed call: %d %q", code, body)
	}
	if sawAuth.Load() != "" || sawImpersonate.Load() != "" {
		t.Fatalf("caller credentials reached the cluster: Authorization=%q Impersonate-User=%q", sawAuth.Load(), sawImpersonate.Load())
	}
}

func TestDirectAddr(t *testing.T) {
	for in, want := range map[string]string{
		"203.0.113.7":            "203.0.113.7:80",
		"lb.example.com":         "lb.example.com:80",
		"lb.example.com:8080":    "lb.example.com:8080",
		"http://lb.example.com":  "lb.example.com:80",
		"http://10.1.2.3:31000/": "10.1.2.3:31000",
		"2001:db8::1":            "[2001:db8::1]:80",
	} {
		if got := directAddr(in); got != want {
			t.Errorf("directAddr(%q) = %q, want %q", in, got, want)
		}
	}
}
