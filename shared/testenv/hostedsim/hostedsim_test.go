package hostedsim

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/tunnel"
	"github.com/pipeops/tunnel/shared/tunnel/pipeopsfixtures"
	"github.com/pipeops/tunnel/shared/wsconn"
)

func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, url, token string) (*websocket.Conn, int) {
	t.Helper()
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	ws, resp, err := websocket.DefaultDialer.Dial(url, h)
	status := 0
	if resp != nil {
		status = resp.StatusCode
		resp.Body.Close()
	}
	if err != nil {
		return nil, status
	}
	return ws, status
}

func readMsg(t *testing.T, ws *websocket.Conn) tunnel.Message {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := ws.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	m, err := tunnel.DecodeMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestRegistration: the registration socket checks the token and answers
// register with register_success of hosted PipeOps' shape, same request id.
func TestRegistration(t *testing.T) {
	s := Start(t, Options{})
	wsURL := "ws" + strings.TrimPrefix(s.URL, "http") + tunnel.RegistrationPath
	if _, status := dial(t, wsURL, "wrong"); status != http.StatusUnauthorized {
		t.Fatalf("wrong token: HTTP %d, want 401", status)
	}
	ws, _ := dial(t, wsURL, s.Token)
	defer ws.Close()
	if err := ws.WriteMessage(websocket.TextMessage, pipeopsfixtures.Load("register").JSON); err != nil {
		t.Fatal(err)
	}
	reply := readMsg(t, ws)
	want, _ := tunnel.DecodeMessage(pipeopsfixtures.Load("register").JSON)
	if reply.Type != tunnel.TypeRegisterSuccess || reply.RequestID != want.RequestID {
		t.Fatalf("reply %s, want register_success for %q", reply.String(), want.RequestID)
	}
	var fields map[string]any
	if err := reply.DecodePayload(&fields); err != nil {
		t.Fatal(err)
	}
	if _, ok := fields["workspace_id"].(float64); !ok {
		t.Errorf("workspace_id %T, want a number", fields["workspace_id"])
	}
	for _, k := range []string{"cluster_id", "cluster_uuid", "gateway_ws_url", "tunnel_url", "api_server", "name", "status"} {
		if v, ok := fields[k].(string); !ok || v == "" {
			t.Errorf("register_success %s = %v", k, fields[k])
		}
	}
	var rs tunnel.RegisterSuccess
	if err := reply.DecodePayload(&rs); err != nil || !strings.HasPrefix(rs.GatewayWSURL, "ws://127.0.0.1:") {
		t.Fatalf("register_success %+v %v", rs, err)
	}
	regs := s.Registrations()
	if len(regs) != 1 || regs[0].Register.AgentID == "" || regs[0].Fields["k8s_service_token"] == nil {
		t.Fatalf("recorded %+v", regs)
	}
}

// TestGatewaySocket: gateway_hello, a yamux server, heartbeat_ack, pong,
// answers routed by request id, and the routes API.
func TestGatewaySocket(t *testing.T) {
	s := Start(t, Options{})
	ctx := ctxT(t)
	base := "ws" + strings.TrimPrefix(s.URL, "http") + tunnel.GatewayPath
	if _, status := dial(t, base+"?cluster_uuid=other", s.Token); status != http.StatusNotFound {
		t.Fatalf("unknown cluster: HTTP %d", status)
	}
	ws, _ := dial(t, base+"?cluster_uuid="+s.ClusterUUID+"&supports_yamux=true", s.Token)
	hello := readMsg(t, ws)
	var gh tunnel.GatewayHello
	if err := hello.DecodePayload(&gh); err != nil || hello.Type != tunnel.TypeGatewayHello || !gh.UseYamux || gh.YamuxConfig.MaxStreamWindowSize != 262144 {
		t.Fatalf("hello %s %+v %v", hello.String(), gh, err)
	}
	texts := make(chan tunnel.Message, 16)
	conn := wsconn.New(ws, wsconn.Options{OnText: func(b []byte) {
		if m, err := tunnel.DecodeMessage(b); err == nil {
			texts <- m
		}
	}})
	cfg, _ := tunnel.MuxConfig(gh.YamuxConfig, nil)
	mux, err := yamux.Client(tunnel.CoalesceFrames(conn), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer mux.Close()
	if err := s.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	if q := s.GatewayURLs()[0].Query(); q.Get("supports_yamux") != "true" {
		t.Fatalf("query %v", q)
	}

	send := func(name string) {
		if err := conn.WriteText(pipeopsfixtures.Load(name).JSON); err != nil {
			t.Fatal(err)
		}
	}
	send("heartbeat")
	if m := <-texts; m.Type != tunnel.TypeHeartbeatAck {
		t.Fatalf("heartbeat answered %s", m.String())
	}
	if _, err := s.WaitHeartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	ping, _ := tunnel.NewMessage(tunnel.TypePing, tunnel.Empty{})
	ping.RequestID = "p-1"
	b, _ := ping.Encode()
	_ = conn.WriteText(b)
	if m := <-texts; m.Type != tunnel.TypePong || m.RequestID != "p-1" {
		t.Fatalf("ping answered %s", m.String())
	}

	// A proxy_request goes out; the answers come back to its Replies.
	replies, err := s.ProxyRequest("pr-1", tunnel.ProxyRequest{Method: "GET", Path: "/version", ResponseStreaming: true})
	if err != nil {
		t.Fatal(err)
	}
	if m := <-texts; m.Type != tunnel.TypeProxyRequest || m.RequestID != "pr-1" {
		t.Fatalf("agent got %s", m.String())
	}
	for _, name := range []string{"proxy_response_header", "proxy_response_chunk", "proxy_response_end"} {
		m, _ := tunnel.DecodeMessage(pipeopsfixtures.Load(name).JSON)
		m.RequestID = "pr-1"
		b, _ := m.Encode()
		_ = conn.WriteText(b)
	}
	got, err := replies.Until(ctx, ProxyDone)
	if err != nil || len(got) != 3 || got[2].Type != tunnel.TypeProxyResponseEnd {
		t.Fatalf("replies %v %v", got, err)
	}
	// Relay messages are routed by stream id when the envelope has none.
	r2 := s.Expect("ex-9")
	_ = conn.WriteText([]byte(`{"type":"proxy_websocket_close","payload":{"stream_id":"ex-9"}}`))
	if m, err := r2.Next(ctx); err != nil || m.Type != tunnel.TypeWSCloseAlias {
		t.Fatalf("relay close %v %v", m, err)
	}

	// Routes API.
	req, _ := http.NewRequest(http.MethodPost, s.URL+"/api/v1/gateway/routes/sync", bytes.NewReader([]byte(`{"cluster_uuid":"x"}`)))
	req.Header.Set("Authorization", "Bearer "+s.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("routes sync: %v %v", resp, err)
	}
	resp.Body.Close()
	if rc := s.RouteCalls(); len(rc) != 1 || rc[0].Path != "sync" || string(rc[0].Body) != `{"cluster_uuid":"x"}` {
		t.Fatalf("route calls %+v", rc)
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	s.Close()
	http.DefaultClient.CloseIdleConnections()
}
