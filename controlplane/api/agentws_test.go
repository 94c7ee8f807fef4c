package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/api"
	"github.com/pipeops/tunnel/controlplane/cptest"
	"github.com/pipeops/tunnel/controlplane/hostnames"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/tunnel"
	"github.com/pipeops/tunnel/shared/tunnel/pipeopsfixtures"
)

// loggedControlPlane is cptest.Start with the API's log captured.
func loggedControlPlane(t *testing.T, cfg api.Config) (*cptest.ControlPlane, *testenv.LogBuffer) {
	t.Helper()
	cp := cptest.Store(t)
	logs := &testenv.LogBuffer{}
	cp.DNS = &hostnames.DNSVerifier{Store: cp.DB, Resolver: hostnames.NewResolver("127.0.0.1:9")}
	s, err := api.New(cfg, api.Deps{Clusters: cp.DB, Routes: cp.DB, Tokens: cp.DB, Hostnames: cp.DB, DNS: cp.DNS,
		Issuer: cp.Issuer, DB: cp.DB, Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { stop(); <-done; s.Close(); srv.Close() })
	cp.API, cp.URL = s, srv.URL
	return cp, logs
}

// rawAgent writes control messages byte for byte as given.
type rawAgent struct {
	t  *testing.T
	ws *websocket.Conn
}

func (a *rawAgent) send(raw []byte) {
	a.t.Helper()
	if err := a.ws.WriteMessage(websocket.TextMessage, raw); err != nil {
		a.t.Fatal(err)
	}
}

// next reads the server's next message; every one must be a TEXT frame
// holding a valid control message.
func (a *rawAgent) next() tunnel.Message {
	a.t.Helper()
	_ = a.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, data, err := a.ws.ReadMessage()
	if err != nil {
		a.t.Fatal(err)
	}
	if typ != websocket.TextMessage {
		a.t.Fatalf("frame type %d, want TEXT", typ)
	}
	m, err := tunnel.DecodeMessage(data)
	if err != nil {
		a.t.Fatalf("reply %q: %v", data, err)
	}
	return m
}

// fixtureMsg returns a golden message and its envelope decoded.
func fixtureMsg(t *testing.T, name string) ([]byte, tunnel.Message) {
	t.Helper()
	raw := pipeopsfixtures.Load(name).JSON
	m, err := tunnel.DecodeMessage(raw)
	if err != nil {
		t.Fatal(err)
	}
	return raw, m
}

// credentials the fixtures carry; none may reach the database or the log.
var fixtureSecrets = []string{
	"fixture-service-account-token", "eyJhbGciOiJSUzI1NiJ9",
	"fixture-prom-password", "fixture-loki-password", "fixture-grafana-password", "fixture-k3s-join-token",
}

// TestPipeOpsAgentOnRegistrationSocket drives the real registration socket
// with the PipeOps agent's messages exactly as it writes them: register
// (with its service token), register with a stale cached id,
// gateway_hello_ack, and heartbeats with and without monitoring, as an
// agent that never got a gateway URL sends them on this socket. Every
// message that needs an answer gets one with its request_id; what is
// stored is checked in the database, and neither the database nor the log
// holds a credential.
func TestPipeOpsAgentOnRegistrationSocket(t *testing.T) {
	ctx := context.Background()
	cp, logs := loggedControlPlane(t, api.Config{GatewayWSURL: gatewayWS})
	created, err := api.CreateCluster(ctx, cp.DB, cp.Issuer, "", "staging-fra")
	if err != nil {
		t.Fatal(err)
	}
	uuid := created.Cluster.UUID
	admin, _, err := cp.Issuer.Issue(ctx, tokens.Request{Kind: auth.KindAdmin, Subject: "test"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, url: cp.URL, db: cp.DB, issuer: cp.Issuer, admin: admin}
	pa, _, err := f.dialAgent(created.AgentToken)
	if err != nil {
		t.Fatal(err)
	}
	a := &rawAgent{t: t, ws: pa.ws}

	// rowText is the cluster's whole row as the database renders it.
	rowText := func() string {
		t.Helper()
		var s string
		if err := cp.DB.Pool().QueryRow(ctx, `SELECT to_jsonb(c)::text FROM clusters c WHERE uuid = $1`, uuid).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	noSecretsIn := func(what, s string, extra ...string) {
		t.Helper()
		for _, secret := range append(extra, fixtureSecrets...) {
			if strings.Contains(s, secret) {
				t.Errorf("%s holds %q:\n%s", what, secret, s)
			}
		}
	}
	cluster := func() *controlplane.Cluster {
		t.Helper()
		c, err := cp.DB.Cluster(ctx, uuid)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	registered := func(t *testing.T, name string) {
		t.Helper()
		raw, req := fixtureMsg(t, name)
		status := cluster().Status // registering does not change it
		a.t = t
		a.send(raw)
		reply := a.next()
		var ok tunnel.RegisterSuccess
		if reply.Type != tunnel.TypeRegisterSuccess || reply.DecodePayload(&ok) != nil {
			t.Fatalf("answer %s %s, want register_success", reply.Type, reply.Payload)
		}
		if reply.RequestID != req.RequestID {
			t.Errorf("request_id %q, want %q", reply.RequestID, req.RequestID)
		}
		want := tunnel.RegisterSuccess{ClusterID: uuid, ClusterUUID: uuid, Name: "staging-fra", Status: status,
			GatewayWSURL: gatewayWS, TunnelURL: "https://gateway.example.com", APIServer: "https://gateway.example.com/k8s/" + uuid}
		if ok != want {
			t.Errorf("register_success\n %+v\nwant\n %+v", ok, want)
		}
		if bytes.Contains(reply.Payload, []byte("workspace_id")) {
			t.Errorf("register_success has a workspace_id: %s", reply.Payload)
		}
	}

	t.Run("register", func(t *testing.T) {
		registered(t, "register")
		c := cluster()
		if c.AgentID != "agent-5d9c2e7a1b3f4c6d" || c.AgentVersion != "v1.12.0" || c.K8sVersion != "v1.31.4+k3s1" {
			t.Errorf("agent %q %q %q", c.AgentID, c.AgentVersion, c.K8sVersion)
		}
		info := c.AgentInfo
		for k, v := range map[string]string{"name": "staging-fra", "hostname": "fra-node-1", "server_ip": "198.51.100.23",
			"region": "DE", "cloud_provider": "hetzner"} {
			if info[k] != v {
				t.Errorf("agent_info.%s = %v, want %q", k, info[k], v)
			}
		}
		labels, _ := info["labels"].(map[string]any)
		specs, _ := info["server_specs"].(map[string]any)
		ports, _ := info["tunnel_port_config"].(map[string]any)
		features, _ := info["features"].(map[string]any)
		meta, _ := info["metadata"].(map[string]any)
		if labels["team"] != "payments" || specs["cpu_cores"] != float64(8) || specs["os"] != "Debian GNU/Linux 12 (bookworm)" ||
			ports["kubelet"] != float64(10250) || features["supports_gateway"] != true || meta["registration_mode"] != "fresh" {
			t.Errorf("agent_info = %v", info)
		}
		noSecretsIn("the cluster row", rowText(), "k8s_service_token")
	})

	t.Run("register with a stale cluster id", func(t *testing.T) {
		_, req := fixtureMsg(t, "register_resume")
		var p tunnel.Register
		if err := req.DecodePayload(&p); err != nil || p.ClusterID == "" || p.ClusterID == uuid {
			t.Fatalf("the fixture's cluster_id %q must be set and not %s (%v)", p.ClusterID, uuid, err)
		}
		registered(t, "register_resume")
		// The resume's report replaces the first one.
		if ports, _ := cluster().AgentInfo["tunnel_port_config"].(map[string]any); len(ports) != 1 || ports["kubernetes_api"] != float64(6443) {
			t.Errorf("agent_info after the resume: %v", cluster().AgentInfo)
		}
		if !strings.Contains(logs.String(), "cached_cluster_id="+p.ClusterID) {
			t.Errorf("the replaced cached id is not logged:\n%s", logs)
		}
	})

	var firstBeat time.Time
	t.Run("gateway_hello_ack ignored, heartbeat acknowledged", func(t *testing.T) {
		a.t = t
		raw, _ := fixtureMsg(t, "gateway_hello_ack")
		a.send(raw)
		// Messages are answered in order: the heartbeat's ack comes first,
		// so the hello ack got no answer.
		raw, _ = fixtureMsg(t, "heartbeat")
		a.send(raw)
		if reply := a.next(); reply.Type != tunnel.TypeHeartbeatAck {
			t.Fatalf("answer %s %s, want heartbeat_ack", reply.Type, reply.Payload)
		}
		c := cluster()
		m := c.Metadata
		if c.Status != controlplane.ClusterConnected || c.LastHeartbeat.IsZero() ||
			m["cpu_usage"] != "0%" || m["memory_usage"] != "0%" || m["tunnel_status"] != "connected" ||
			m["k8s_nodes"] != float64(3) || m["k8s_pods"] != float64(57) || m["is_private"] != true || m["monitoring"] != nil {
			t.Errorf("after the heartbeat: status %q, last heartbeat %v, metadata %v", c.Status, c.LastHeartbeat, m)
		}
		firstBeat = c.LastHeartbeat
	})

	t.Run("heartbeat with monitoring", func(t *testing.T) {
		a.t = t
		raw, _ := fixtureMsg(t, "heartbeat_monitoring")
		a.send(raw)
		if reply := a.next(); reply.Type != tunnel.TypeHeartbeatAck {
			t.Fatalf("answer %s %s, want heartbeat_ack", reply.Type, reply.Payload)
		}
		c := cluster()
		mon, _ := c.Metadata["monitoring"].(map[string]any)
		want := map[string]any{
			"prometheus_url": "http://kube-prometheus-stack-prometheus.pipeops-monitoring.svc:9090", "prometheus_username": "admin",
			"prometheus_password_set": true, "loki_url": "http://loki.pipeops-monitoring.svc:3100", "loki_username": "admin",
			"loki_password_set": true, "grafana_url": "http://grafana.pipeops-monitoring.svc:80", "grafana_username": "admin",
			"grafana_password_set": true, "opencost_base_url": "http://opencost.pipeops-monitoring.svc:9003", "worker_join_offered": true,
		}
		if len(mon) != len(want) {
			t.Errorf("monitoring %v, want %v", mon, want)
		}
		for k, v := range want {
			if mon[k] != v {
				t.Errorf("monitoring.%s = %v, want %v", k, mon[k], v)
			}
		}
		if c.Metadata["tunnel_status"] != "disconnected" || c.Status != controlplane.ClusterConnected || c.LastHeartbeat.Before(firstBeat) {
			t.Errorf("after the heartbeat: status %q, last heartbeat %v (first %v), metadata %v", c.Status, c.LastHeartbeat, firstBeat, c.Metadata)
		}
		noSecretsIn("the cluster row", rowText(), "k8s_service_token", "K3S_TOKEN", "worker_join\"", "password\"")
	})

	t.Run("ping", func(t *testing.T) {
		a.t = t
		raw, req := fixtureMsg(t, "ping")
		a.send(raw)
		if reply := a.next(); reply.Type != tunnel.TypePong || reply.RequestID != req.RequestID {
			t.Fatalf("answer %s request_id %q, want pong %q", reply.Type, reply.RequestID, req.RequestID)
		}
	})

	t.Run("admin API shows what is stored", func(t *testing.T) {
		var got struct {
			AgentInfo map[string]any `json:"agent_info"`
			Metadata  map[string]any `json:"metadata"`
		}
		if code := f.do("GET", "/api/v1/admin/clusters/staging-fra", admin, nil, &got); code != http.StatusOK {
			t.Fatalf("HTTP %d", code)
		}
		mon, _ := got.Metadata["monitoring"].(map[string]any)
		if got.AgentInfo["hostname"] != "fra-node-1" || got.AgentInfo["cloud_provider"] != "hetzner" ||
			mon["grafana_url"] != "http://grafana.pipeops-monitoring.svc:80" || got.Metadata["cpu_usage"] != "0%" {
			t.Errorf("cluster as the admin API shows it: %+v", got)
		}
		b, _ := json.Marshal(got)
		noSecretsIn("the admin API's cluster", string(b), "k8s_service_token", "K3S_TOKEN", "password\"")
	})

	// The token offered again: still one line in the interval.
	registered(t, "register")
	log := logs.String()
	noSecretsIn("the log", log)
	if n := strings.Count(log, "offered a Kubernetes service token"); n != 1 {
		t.Errorf("%d lines about the offered service token, want 1:\n%s", n, log)
	}
}

// A register too large to store whole is still answered register_success
// (a PipeOps agent would otherwise wait for its timeout); its largest
// objects are left out, which the stored info and one log line say.
func TestRegisterTooLargeToStore(t *testing.T) {
	ctx := context.Background()
	cp, logs := loggedControlPlane(t, api.Config{GatewayWSURL: gatewayWS})
	created, err := api.CreateCluster(ctx, cp.DB, cp.Issuer, "", "big")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, url: cp.URL, db: cp.DB, issuer: cp.Issuer}
	a, _, err := f.dialAgent(created.AgentToken)
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{}
	for i := range 200 {
		labels[fmt.Sprintf("label-%03d", i)] = strings.Repeat("v", 1000) // 200 KB in all
	}
	reg := tunnel.Register{AgentID: "agent-1", Hostname: "node-1", Region: "DE", Labels: labels,
		Features: map[string]any{"supports_gateway": true}}
	for range 2 {
		if reply := a.call(tunnel.TypeRegister, reg); reply.Type != tunnel.TypeRegisterSuccess {
			t.Fatalf("answer %s %s, want register_success", reply.Type, reply.Payload)
		}
	}
	c, err := cp.DB.Cluster(ctx, created.Cluster.UUID)
	if err != nil {
		t.Fatal(err)
	}
	dropped, _ := c.AgentInfo["dropped_fields"].([]any)
	if c.AgentInfo["hostname"] != "node-1" || c.AgentInfo["labels"] != nil || c.AgentInfo["features"] == nil ||
		len(dropped) != 1 || dropped[0] != "labels" {
		t.Errorf("stored agent_info %v", c.AgentInfo)
	}
	if n := strings.Count(logs.String(), "too large to store whole"); n != 1 {
		t.Errorf("%d lines about the oversized register, want 1:\n%s", n, logs)
	}
}
