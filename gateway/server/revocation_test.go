package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/controlplane/cptest"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/tunneltest"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// fakeKubeAPI stands in for a cluster's API server behind the agent: a
// watch on namespaces that sends one event and then stays open, and an exec
// endpoint that switches protocols and echoes. It counts the watches and
// exec streams whose gateway side went away (ended). It is stubborn: it
// never closes its own side of a watch or exec stream before the test ends,
// so the gateway must cut a stream without the agent's help.
type fakeKubeAPI struct {
	*httptest.Server
	ended   atomic.Int64
	release chan struct{} // closed by stopStalling
	once    sync.Once
}

// stopStalling lets the held handlers return: before the agent stops (it
// waits for its streams) and before the server closes (it waits for the
// handlers).
func (api *fakeKubeAPI) stopStalling() { api.once.Do(func() { close(api.release) }) }

func startFakeKubeAPI(t *testing.T) *fakeKubeAPI {
	api := &fakeKubeAPI{release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/namespaces", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Query().Get("watch") != "true" {
			fmt.Fprintln(w, `{"kind":"NamespaceList","items":[]}`)
			return
		}
		fmt.Fprintln(w, `{"type":"ADDED","object":{"kind":"Namespace","metadata":{"name":"default"}}}`)
		w.(http.Flusher).Flush()
		<-r.Context().Done() // the gateway's side went
		api.ended.Add(1)
		<-api.release
	})
	mux.HandleFunc("GET /api/v1/namespaces/slow", func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // never answers
		api.ended.Add(1)
		<-api.release
	})
	mux.HandleFunc("POST /api/v1/namespaces/default/pods/p/exec", func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n")
		if brw.Flush() != nil {
			return
		}
		_, _ = io.Copy(conn, brw) // echo until the gateway's side closes
		api.ended.Add(1)
		<-api.release
	})
	api.Server = httptest.NewServer(mux)
	t.Cleanup(api.Close)
	t.Cleanup(api.stopStalling) // first: Close waits for the handlers
	return api
}

// TestKubernetesStreamsCut: a watch, an exec stream and a request still
// waiting for its answer, held open through the gateway's /k8s path, are cut
// within REVOCATION_CHECK_INTERVAL when the user token they were opened with
// is revoked (the waiting one is answered 401), and a watch is cut when its
// token expires; the stream to the cluster's API server ends with them, even
// though the API server stand-in never closes its side. The real gateway,
// database and agent tunnel; only the API server is a stand-in (the real
// one is in e2e/revocation_test.go).
func TestKubernetesStreamsCut(t *testing.T) {
	const interval = 200 * time.Millisecond
	ctx := context.Background()
	cp := cptest.Store(t) // first: the shared server's goroutines are not this test's
	testenv.LeakCheck(t)
	db, iss := cp.DB, cp.Issuer
	cluster, err := db.CreateCluster(ctx, "edge")
	if err != nil {
		t.Fatal(err)
	}
	api := startFakeKubeAPI(t)

	// Built once: LoadConfig reads every variable, and a map made per read
	// would start servers and pick ports on every read.
	env := map[string]string{
		"DATABASE_URL": cp.DBURL, "CONTROLPLANE_URL": jwksServer(t, iss),
		"HTTP_ADDR": freeAddr(t), "ADMIN_ADDR": freeAddr(t), "GATEWAY_HOSTS": "gw.local,127.0.0.1",
		"REVOCATION_CHECK_INTERVAL": interval.String(), "SHUTDOWN_TIMEOUT": "2s",
		"K8S_ALLOW_PLAIN_HTTP": "true", // revocation, not transport, is under test
	}
	cfg, err := LoadConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- g.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	agentTok, _, err := iss.Issue(ctx, tokens.Request{Kind: auth.KindAgent, ClusterUUID: cluster.UUID})
	if err != nil {
		t.Fatal(err)
	}
	agent := tunneltest.StartAgent(t, tunnelclient.Config{
		GatewayURL: "http://" + cfg.HTTPAddr, Token: agentTok, ClusterUUID: cluster.UUID, AgentVersion: "test",
		Dialer: tunnelclient.DialerFunc(func(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
			if !h.IsKubernetesAPI() {
				return nil, tunnelclient.ErrTargetRefused
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", strings.TrimPrefix(api.URL, "http://"))
		}),
		DrainTimeout: 100 * time.Millisecond,
	})
	// Before the gateway stops, and after the stand-in lets its streams go.
	defer agent.Stop()
	defer api.stopStalling()
	waitFor(t, "the agent's session", 10*time.Second, func() bool { _, ok := g.sessions.Session(cluster.UUID); return ok })

	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	userToken := func(ttl time.Duration) (string, string, time.Time) {
		tok, rec, err := iss.Issue(ctx, tokens.Request{Kind: auth.KindUser, Clusters: []string{cluster.UUID}, TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		return tok, rec.ID, rec.ExpiresAt
	}
	k8sURL := "http://" + cfg.HTTPAddr + "/k8s/" + cluster.UUID

	// watch opens a namespace watch, reads its first event, and returns a
	// channel that receives how the watch's body ended.
	watch := func(t *testing.T, token string) <-chan error {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second) // the test's own bound, never the cut
		t.Cleanup(cancel)
		req, _ := http.NewRequestWithContext(rctx, "GET", k8sURL+"/api/v1/namespaces?watch=true", nil)
		req.Host = "gw.local"
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(resp.Body)
		if line, err := br.ReadString('\n'); resp.StatusCode != 200 || err != nil || !strings.Contains(line, `"ADDED"`) {
			t.Fatalf("watch: %d, first event %q, %v", resp.StatusCode, line, err)
		}
		ended := make(chan error, 1)
		go func() {
			defer resp.Body.Close()
			_, err := io.Copy(io.Discard, br)
			if err == nil {
				err = io.EOF // a clean end: the watch was not cut
			}
			ended <- err
		}()
		return ended
	}
	// cutWithin waits for a held stream to end and fails unless it was cut
	// (not timed out by the test's own bound) within d.
	cutWithin := func(t *testing.T, ended <-chan error, d time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		select {
		case err := <-ended:
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.EOF) {
				t.Fatalf("the stream ended with %v, not cut", err)
			}
			return time.Since(start)
		case <-time.After(d):
			t.Fatalf("the stream is still open %s later", d)
			return 0
		}
	}
	upstreamEnded := func(t *testing.T, n int64) {
		t.Helper()
		waitFor(t, "the stream to the API server to end", 5*time.Second, func() bool { return api.ended.Load() >= n })
	}

	t.Run("watch revoked", func(t *testing.T) {
		tok, id, _ := userToken(0)
		ended := watch(t, tok)
		held := watch(t, func() string { tok, _, _ := userToken(0); return tok }()) // another token: kept
		if err := db.RevokeToken(ctx, id, time.Now()); err != nil {
			t.Fatal(err)
		}
		took := cutWithin(t, ended, interval+3*time.Second)
		t.Logf("watch cut %s after the revocation (interval %s)", took.Round(time.Millisecond), interval)
		upstreamEnded(t, 1)
		select {
		case err := <-held:
			t.Fatalf("the watch of a token not revoked ended too: %v", err)
		default:
		}
		// The revoked token opens nothing new.
		req, _ := http.NewRequest("GET", k8sURL+"/api/v1/namespaces", nil)
		req.Host = "gw.local"
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("the revoked token afterwards: %d, want 401", resp.StatusCode)
		}
	})

	t.Run("revoked before the answer", func(t *testing.T) {
		tok, id, _ := userToken(0)
		before := api.ended.Load()
		answered := make(chan *http.Response, 1)
		go func() {
			rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(rctx, "GET", k8sURL+"/api/v1/namespaces/slow", nil)
			req.Host = "gw.local"
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := hc.Do(req)
			if err != nil {
				answered <- nil
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			answered <- resp
		}()
		// This token's own entry: the total moves as the connections of
		// the subtests before end, so a count of all could miss it.
		waitFor(t, "the request to reach the tracker", 5*time.Second, func() bool { return g.conns.Tracked(id) > 0 })
		if err := db.RevokeToken(ctx, id, time.Now()); err != nil {
			t.Fatal(err)
		}
		select {
		case resp := <-answered:
			if resp == nil || resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("a request cut before its answer: %v, want 401", resp)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("no answer 15 s after the revocation")
		}
		upstreamEnded(t, before+1)
	})

	t.Run("exec revoked", func(t *testing.T) {
		tok, id, _ := userToken(0)
		before := api.ended.Load()
		conn, err := net.Dial("tcp", cfg.HTTPAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "POST /k8s/%s/api/v1/namespaces/default/pods/p/exec?command=sh&stdin=true HTTP/1.1\r\n"+
			"Host: gw.local\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n\r\n",
			cluster.UUID, tok)
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("exec upgrade: %v %v", resp, err)
		}
		if _, err := conn.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		echo := make([]byte, 4)
		if _, err := io.ReadFull(br, echo); err != nil || string(echo) != "ping" {
			t.Fatalf("echo through the upgraded stream: %q %v", echo, err)
		}
		ended := make(chan error, 1)
		go func() {
			_, err := br.ReadByte()
			if err == nil {
				err = errors.New("unexpected data")
			}
			ended <- err
		}()
		if err := db.RevokeToken(ctx, id, time.Now()); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		select {
		case err := <-ended:
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the exec stream was not cut: %v", err)
			}
			t.Logf("exec stream cut %s after the revocation (%v)", time.Since(start).Round(time.Millisecond), err)
		case <-time.After(15 * time.Second):
			t.Fatal("the exec stream is still open")
		}
		upstreamEnded(t, before+1)
	})

	t.Run("watch expired", func(t *testing.T) {
		tok, _, expires := userToken(2 * time.Second)
		before := api.ended.Load()
		ended := watch(t, tok)
		cutWithin(t, ended, time.Until(expires)+3*time.Second)
		late := time.Since(expires)
		t.Logf("watch cut %s after the token's expiry", late.Round(time.Millisecond))
		if late < -50*time.Millisecond {
			t.Fatalf("cut %s before the token's expiry", -late)
		}
		upstreamEnded(t, before+1)
	})

	resp, err := hc.Get("http://" + cfg.AdminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{
		`pipeops_gateway_authn_connections_cut_total{kind="k8s",reason="revoked"} 3`,
		`pipeops_gateway_authn_connections_cut_total{kind="k8s",reason="expired"} 1`,
		`pipeops_gateway_authn_connections_cut_total{kind="agent_session",reason="revoked"} 0`,
		`pipeops_gateway_authn_live_connections{kind="agent_session"} 1`,
	} {
		if !strings.Contains(string(b), m) {
			t.Errorf("metrics lack %q", m)
		}
	}
}
