package register_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/agent/register"
	"github.com/pipeops/tunnel/controlplane/api"
	"github.com/pipeops/tunnel/controlplane/cptest"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// TestMain stops the shared PostgreSQL server and then checks that no
// goroutine outlived the tests: every socket Register opens must be closed
// by the time it returns.
func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil, pgtest.Stop) }

const gatewayWS = "wss://gateway.example.com/ws"

// controlPlane is a real control plane (API server + PostgreSQL) behind
// httptest.
type controlPlane struct {
	url    string
	db     *postgres.DB
	issuer *tokens.Issuer
}

func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	cp := cptest.Start(t, api.Config{GatewayWSURL: gatewayWS, GatewayURL: "https://gateway.example.com", APIURL: "https://cp.example.com"})
	return &controlPlane{url: cp.URL, db: cp.DB, issuer: cp.Issuer}
}

// cluster creates a cluster and returns its uuid and agent token.
func (cp *controlPlane) cluster(t *testing.T, name string) (uuid, token string) {
	t.Helper()
	c, err := api.CreateCluster(context.Background(), cp.db, cp.issuer, "https://cp.example.com", name)
	if err != nil {
		t.Fatal(err)
	}
	return c.Cluster.UUID, c.AgentToken
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

var agentInfo = tunnel.Register{AgentID: "agent-1", Name: "edge", K8sVersion: "v1.37.2", Hostname: "node-1", AgentVersion: "1.0.0"}

func TestRegisterRealControlPlane(t *testing.T) {
	cp := startControlPlane(t)
	uuid, token := cp.cluster(t, "edge-1")
	otherUUID, _ := cp.cluster(t, "edge-2")
	ctx := context.Background()

	newClient := func(token string) *register.Client {
		return &register.Client{APIURL: cp.url, Token: token, Timeout: 10 * time.Second, Logger: testLogger(t)}
	}
	want := register.Result{ClusterID: uuid, ClusterUUID: uuid, Name: "edge-1", Status: "pending", GatewayWSURL: gatewayWS}

	t.Run("fresh", func(t *testing.T) {
		got, err := newClient(token).Register(ctx, agentInfo, "")
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("result = %+v, want %+v", got, want)
		}
	})
	t.Run("resume", func(t *testing.T) {
		got, err := newClient(token).Register(ctx, agentInfo, uuid)
		if err != nil {
			t.Fatal(err)
		}
		w := want
		w.Resumed = true
		if got != w {
			t.Fatalf("result = %+v, want %+v", got, w)
		}
	})
	// A cached id of another cluster, or one that no longer exists, is
	// refused; the client registers afresh as the token's cluster.
	for name, stale := range map[string]string{"other cluster": otherUUID, "unknown": "0b5c5bc4-0000-0000-0000-000000000000"} {
		t.Run("stale id/"+name, func(t *testing.T) {
			got, err := newClient(token).Register(ctx, agentInfo, stale)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("result = %+v, want %+v (fresh, not resumed)", got, want)
			}
		})
	}

	revoked, rec, err := cp.issuer.Issue(ctx, tokens.Request{Kind: auth.KindAgent, ClusterUUID: uuid, Subject: "agent:edge-1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newClient(revoked).Register(ctx, agentInfo, ""); err != nil {
		t.Fatalf("token before revocation: %v", err)
	}
	if err := cp.db.RevokeToken(ctx, rec.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	admin, _, err := cp.issuer.Issue(ctx, tokens.Request{Kind: auth.KindAdmin, Subject: "test"})
	if err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{
		"garbage":     "not-a-token",
		"revoked":     revoked,
		"admin token": admin, // wrong kind for the agent socket
		"empty":       "",
	} {
		t.Run("unauthorized/"+name, func(t *testing.T) {
			_, err := newClient(tok).Register(ctx, agentInfo, uuid)
			if !errors.Is(err, register.ErrUnauthorized) {
				t.Fatalf("err = %v, want ErrUnauthorized", err)
			}
			if tok != "" && strings.Contains(err.Error(), tok) {
				t.Fatalf("error %q leaks the token", err)
			}
		})
	}
}

// fakeServer answers register with whatever script does. The handler's
// goroutines end when the test closes the server.
func fakeServer(t *testing.T, script func(ws *websocket.Conn, req tunnel.Message)) string {
	t.Helper()
	up := websocket.Upgrader{}
	var wg sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Hijacked connections are not waited for by srv.Close.
		wg.Add(1)
		defer wg.Done()
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "no", http.StatusForbidden)
			return
		}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		for {
			_, data, err := ws.ReadMessage()
			if err != nil {
				return
			}
			req, err := tunnel.DecodeMessage(data)
			if err != nil {
				t.Errorf("fake server: client sent %q: %v", data, err)
				return
			}
			script(ws, req)
		}
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		wg.Wait()
	})
	return srv.URL
}

func send(ws *websocket.Conn, requestID, typ string, payload any) {
	m, _ := tunnel.NewMessage(typ, payload)
	m.RequestID = requestID
	b, _ := m.Encode()
	_ = ws.WriteMessage(websocket.TextMessage, b)
}

func TestRegisterFakeServer(t *testing.T) {
	success := tunnel.RegisterSuccess{ClusterID: "c-1", ClusterUUID: "c-1", Name: "n", Status: "connected", GatewayWSURL: gatewayWS}
	cases := []struct {
		name    string
		cached  string
		script  func(ws *websocket.Conn, req tunnel.Message)
		wantErr []error // all must match; nil means success
		want    register.Result
	}{
		{
			name: "noise before the answer is skipped",
			script: func(ws *websocket.Conn, req tunnel.Message) {
				send(ws, "", tunnel.TypePong, tunnel.Pong{})
				send(ws, "", tunnel.TypeHeartbeatAck, tunnel.HeartbeatAck{})
				_ = ws.WriteMessage(websocket.BinaryMessage, []byte{1, 2, 3})
				send(ws, "someone-else", tunnel.TypeError, tunnel.ErrorPayload{Error: "not for you"})
				send(ws, req.RequestID, tunnel.TypeRegisterSuccess, success)
			},
			want: register.Result{ClusterID: "c-1", ClusterUUID: "c-1", Name: "n", Status: "connected", GatewayWSURL: gatewayWS},
		},
		{
			name:   "cached id accepted",
			cached: "c-1",
			script: func(ws *websocket.Conn, req tunnel.Message) {
				send(ws, req.RequestID, tunnel.TypeRegisterSuccess, success)
			},
			want: register.Result{ClusterID: "c-1", ClusterUUID: "c-1", Name: "n", Status: "connected", GatewayWSURL: gatewayWS, Resumed: true},
		},
		{
			name:   "cached id refused then fresh",
			cached: "old",
			script: func(ws *websocket.Conn, req tunnel.Message) {
				var p tunnel.Register
				_ = req.DecodePayload(&p)
				if p.ClusterID != "" {
					send(ws, req.RequestID, tunnel.TypeError, tunnel.ErrorPayload{Error: "cluster ID not registered"})
					return
				}
				send(ws, req.RequestID, tunnel.TypeRegisterSuccess, success)
			},
			want: register.Result{ClusterID: "c-1", ClusterUUID: "c-1", Name: "n", Status: "connected", GatewayWSURL: gatewayWS},
		},
		{
			name:   "not registered even without an id",
			cached: "old",
			script: func(ws *websocket.Conn, req tunnel.Message) {
				send(ws, req.RequestID, tunnel.TypeError, tunnel.ErrorPayload{Error: "cluster not found"})
			},
			wantErr: []error{register.ErrRejected},
		},
		{
			name: "not registered without a cached id is a rejection",
			script: func(ws *websocket.Conn, req tunnel.Message) {
				send(ws, req.RequestID, tunnel.TypeError, tunnel.ErrorPayload{Error: "cluster not found"})
			},
			wantErr: []error{register.ErrRejected},
		},
		{
			name:   "quota exceeded",
			cached: "c-1",
			script: func(ws *websocket.Conn, req tunnel.Message) {
				send(ws, req.RequestID, tunnel.TypeError, tunnel.ErrorPayload{Error: "quota exceeded"})
			},
			wantErr: []error{register.ErrRejected},
		},
		{
			name: "garbage",
			script: func(ws *websocket.Conn, req tunnel.Message) {
				_ = ws.WriteMessage(websocket.TextMessage, []byte("<html>502 Bad Gateway</html>"))
			},
			wantErr: []error{register.ErrProtocol, tunnel.ErrMalformedMessage},
		},
		{
			name: "success without cluster id",
			script: func(ws *websocket.Conn, req tunnel.Message) {
				send(ws, req.RequestID, tunnel.TypeRegisterSuccess, tunnel.RegisterSuccess{Name: "n"})
			},
			wantErr: []error{register.ErrProtocol, tunnel.ErrMissingField},
		},
		{
			name: "oversized answer",
			script: func(ws *websocket.Conn, req tunnel.Message) {
				_ = ws.WriteMessage(websocket.TextMessage, make([]byte, tunnel.MaxMessageSize+1))
			},
			wantErr: []error{register.ErrProtocol},
		},
		{
			name:    "server hangs up",
			script:  func(ws *websocket.Conn, req tunnel.Message) { ws.Close() },
			wantErr: []error{register.ErrProtocol},
		},
		{
			name:    "never answers",
			script:  func(*websocket.Conn, tunnel.Message) {},
			wantErr: []error{context.DeadlineExceeded},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			url := fakeServer(t, tc.script)
			const timeout = 500 * time.Millisecond
			c := &register.Client{APIURL: url, Token: "tok", Timeout: timeout, Logger: testLogger(t)}
			start := time.Now()
			got, err := c.Register(context.Background(), agentInfo, tc.cached)
			if d := time.Since(start); d > timeout+time.Second {
				t.Errorf("Register took %v with a %v timeout", d, timeout)
			}
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				if got != tc.want {
					t.Fatalf("result = %+v, want %+v", got, tc.want)
				}
				return
			}
			for _, want := range tc.wantErr {
				if !errors.Is(err, want) {
					t.Fatalf("err = %v, want %v", err, want)
				}
			}
			t.Logf("error (as callers see it): %v", err)
		})
	}
}

func TestRegisterQuotaErrorText(t *testing.T) {
	url := fakeServer(t, func(ws *websocket.Conn, req tunnel.Message) {
		send(ws, req.RequestID, tunnel.TypeError, tunnel.ErrorPayload{Error: "quota exceeded"})
	})
	c := &register.Client{APIURL: url, Token: "tok", Timeout: 2 * time.Second}
	_, err := c.Register(context.Background(), agentInfo, "")
	if !errors.Is(err, register.ErrRejected) || !strings.Contains(err.Error(), "quota exceeded") {
		t.Fatalf("err = %v, want ErrRejected carrying the server's text", err)
	}
}

func TestRegisterCancel(t *testing.T) {
	url := fakeServer(t, func(*websocket.Conn, tunnel.Message) {})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	c := &register.Client{APIURL: url, Token: "tok", Timeout: time.Minute}
	start := time.Now()
	_, err := c.Register(ctx, agentInfo, "")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Register returned %v after cancel", d)
	}
}

func TestRegisterRefusals(t *testing.T) {
	url := fakeServer(t, func(*websocket.Conn, tunnel.Message) {})
	notFound := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(notFound.Close)
	cases := []struct {
		name, apiURL, token string
		want                error
	}{
		{"wrong token", url, "other", register.ErrUnauthorized},
		{"bad URL", "ftp://cp.example.com", "tok", tunnel.ErrInvalidURL},
		{"no host", "https://", "tok", tunnel.ErrInvalidURL},
		{"not a websocket", notFound.URL, "tok", websocket.ErrBadHandshake},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &register.Client{APIURL: tc.apiURL, Token: tc.token, Timeout: 2 * time.Second}
			if _, err := c.Register(context.Background(), agentInfo, ""); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}
