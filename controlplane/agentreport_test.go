package controlplane_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/shared/tunnel"
	"github.com/pipeops/tunnel/shared/tunnel/pipeopsfixtures"
)

// decodeFixture decodes the payload of a PipeOps golden message into v.
func decodeFixture(t testing.TB, name string, v any) {
	t.Helper()
	m, err := tunnel.DecodeMessage(pipeopsfixtures.Load(name).JSON)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.DecodePayload(v); err != nil {
		t.Fatal(err)
	}
}

// secrets are the credentials the fixtures carry, none of which may be
// stored.
var secrets = []string{
	"k8s_service_token", "fixture-service-account-token", // register
	"password\"", "fixture-prom-password", "fixture-loki-password", "fixture-grafana-password", // heartbeat_monitoring
	"K3S_TOKEN", "fixture-k3s-join-token", "worker_join\"",
}

func encoded(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func noSecrets(t testing.TB, what string, v any) {
	t.Helper()
	s := encoded(t, v)
	for _, secret := range secrets {
		if strings.Contains(s, secret) {
			t.Errorf("%s holds %q: %s", what, secret, s)
		}
	}
}

func TestAgentReportOf(t *testing.T) {
	long := strings.Repeat("é", controlplane.MaxAgentText) // two bytes each: the cut falls inside one
	big := map[string]string{}
	for i := range 100 {
		big[fmt.Sprintf("label-%03d", i)] = strings.Repeat("x", 1000) // ~100 KB in all
	}
	tests := []struct {
		name        string
		reg         func(t *testing.T) tunnel.Register
		want        controlplane.AgentReport // compared after a JSON round trip of Info
		wantDropped []string
	}{
		{"pipeops register", func(t *testing.T) (r tunnel.Register) { decodeFixture(t, "register", &r); return r },
			controlplane.AgentReport{AgentID: "agent-5d9c2e7a1b3f4c6d", AgentVersion: "v1.12.0", K8sVersion: "v1.31.4+k3s1", Info: map[string]any{
				"name": "staging-fra", "hostname": "fra-node-1", "server_ip": "198.51.100.23", "region": "DE", "cloud_provider": "hetzner",
				"tunnel_port_config": map[string]any{"kubernetes_api": 6443.0, "kubelet": 10250.0, "agent_http": 8080.0},
				"labels":             map[string]any{"hostname": "fra-node-1", "agent.pipeops.io/version": "v1.12.0", "team": "payments"},
				"server_specs":       map[string]any{"cpu_cores": 8.0, "memory_gb": 31.0, "disk_gb": 240.0, "os": "Debian GNU/Linux 12 (bookworm)"},
				"features": map[string]any{"supports_streaming": true, "supports_binary_protocol": true, "supports_compression": true,
					"supports_websocket_proxy": true, "supports_gateway": true, "supports_response_streaming": true},
				"metadata": map[string]any{"agent_mode": "vm-agent", "registration_timestamp": "2026-12-05T09:00:00Z",
					"registration_mode": "fresh", "country_code": "DE"},
			}}, nil},
		{"ours, empty fields left out", func(*testing.T) tunnel.Register {
			return tunnel.Register{AgentID: "a-1", Name: "edge", AgentVersion: "1.0.0", K8sVersion: "v1.37.2", Labels: map[string]string{}}
		}, controlplane.AgentReport{AgentID: "a-1", AgentVersion: "1.0.0", K8sVersion: "v1.37.2", Info: map[string]any{"name": "edge"}}, nil},
		{"NUL mended", func(*testing.T) tunnel.Register {
			return tunnel.Register{AgentID: "a\x00b", Hostname: "h\x00", Labels: map[string]string{"k\x00": "v\x00"},
				Metadata: map[string]any{"nested": []any{map[string]any{"s": "x\x00"}}}}
		}, controlplane.AgentReport{AgentID: "a\uFFFDb", Info: map[string]any{"hostname": "h\uFFFD",
			"labels": map[string]any{"k\uFFFD": "v\uFFFD"}, "metadata": map[string]any{"nested": []any{map[string]any{"s": "x\uFFFD"}}}}}, nil},
		{"too large: the largest object left out", func(*testing.T) tunnel.Register {
			return tunnel.Register{AgentID: "a-1", Hostname: "h", Labels: big, Features: map[string]any{"supports_gateway": true}}
		}, controlplane.AgentReport{AgentID: "a-1", Info: map[string]any{"hostname": "h", "features": map[string]any{"supports_gateway": true},
			"dropped_fields": []any{"labels"}}}, []string{"labels"}},
		{"too large: the largest objects left out, one at a time", func(*testing.T) tunnel.Register {
			half := map[string]any{"x": strings.Repeat("y", controlplane.MaxAgentInfoSize/2)}
			return tunnel.Register{AgentID: "a-1", Metadata: half, ServerSpecs: half, TunnelPortConfig: map[string]any{"x": "y"}}
		}, controlplane.AgentReport{AgentID: "a-1", Info: map[string]any{"server_specs": map[string]any{"x": strings.Repeat("y", controlplane.MaxAgentInfoSize/2)},
			"tunnel_port_config": map[string]any{"x": "y"}, "dropped_fields": []any{"metadata"}}}, []string{"metadata"}},
		{"too large: every object left out", func(*testing.T) tunnel.Register {
			whole := map[string]any{"x": strings.Repeat("y", controlplane.MaxAgentInfoSize)} // too large alone
			return tunnel.Register{AgentID: "a-1", Region: "DE", Metadata: whole, ServerSpecs: whole, TunnelPortConfig: whole}
		}, controlplane.AgentReport{AgentID: "a-1", Info: map[string]any{"region": "DE",
			"dropped_fields": []any{"metadata", "server_specs", "tunnel_port_config"}}}, []string{"metadata", "server_specs", "tunnel_port_config"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, dropped := controlplane.AgentReportOf(tt.reg(t))
			if !slices.Equal(dropped, tt.wantDropped) {
				t.Errorf("dropped %v, want %v", dropped, tt.wantDropped)
			}
			if n := controlplane.AgentInfoSize(r.Info); n > controlplane.MaxAgentInfoSize {
				t.Errorf("info is %d bytes, limit %d", n, controlplane.MaxAgentInfoSize)
			}
			var info map[string]any
			if err := json.Unmarshal([]byte(encoded(t, r.Info)), &info); err != nil {
				t.Fatal(err)
			}
			r.Info = info
			if !reflect.DeepEqual(r, tt.want) {
				t.Errorf("report\n %#v\nwant\n %#v", r, tt.want)
			}
			noSecrets(t, "report", r)
		})
	}

	t.Run("long strings cut", func(t *testing.T) {
		r, _ := controlplane.AgentReportOf(tunnel.Register{AgentID: long, AgentVersion: "x" + long, Hostname: long, Region: "\xff" + long})
		for name, s := range map[string]string{"agent_id": r.AgentID, "agent_version": r.AgentVersion,
			"hostname": r.Info["hostname"].(string), "region": r.Info["region"].(string)} {
			if len(s) > controlplane.MaxAgentText || len(s) < controlplane.MaxAgentText-utf8.UTFMax || !utf8.ValidString(s) {
				t.Errorf("%s cut to %d bytes: %q", name, len(s), s)
			}
		}
	})
}

func TestHeartbeatRecord(t *testing.T) {
	long := strings.Repeat("é", controlplane.MaxAgentText)
	fixture := func(name string) func(*testing.T) tunnel.Heartbeat {
		return func(t *testing.T) (hb tunnel.Heartbeat) { decodeFixture(t, name, &hb); return hb }
	}
	literal := func(hb tunnel.Heartbeat) func(*testing.T) tunnel.Heartbeat {
		return func(*testing.T) tunnel.Heartbeat { return hb }
	}
	pipeopsMeta := map[string]any{
		"k8s_nodes": 3, "k8s_pods": 57, "cpu_usage": "0%", "memory_usage": "0%", "is_private": true,
		"gateway_routes": 4, "agent_version": "v1.12.0", "k8s_version": "v1.31.4+k3s1",
	}
	with := func(m map[string]any, kv ...any) map[string]any {
		out := map[string]any{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i].(string)] = kv[i+1]
		}
		return out
	}
	tests := []struct {
		name       string
		hb         func(*testing.T) tunnel.Heartbeat
		wantStatus string
		want       map[string]any // nil: not compared
	}{
		{"pipeops heartbeat", fixture("heartbeat"), controlplane.ClusterConnected, with(pipeopsMeta, "tunnel_status", "connected")},
		{"pipeops heartbeat with monitoring", fixture("heartbeat_monitoring"), controlplane.ClusterConnected,
			with(pipeopsMeta, "tunnel_status", "disconnected", "monitoring", map[string]any{
				"prometheus_url":          "http://kube-prometheus-stack-prometheus.pipeops-monitoring.svc:9090",
				"prometheus_username":     "admin",
				"prometheus_password_set": true,
				"loki_url":                "http://loki.pipeops-monitoring.svc:3100",
				"loki_username":           "admin",
				"loki_password_set":       true,
				"grafana_url":             "http://grafana.pipeops-monitoring.svc:80",
				"grafana_username":        "admin",
				"grafana_password_set":    true,
				"opencost_base_url":       "http://opencost.pipeops-monitoring.svc:9003",
				"worker_join_offered":     true,
			})},
		{"ours", literal(tunnel.Heartbeat{Status: tunnel.StatusHealthy, TunnelStatus: tunnel.StatusHealthy, Metadata: tunnel.HeartbeatMetadata{
			K8sNodes: 3, K8sPods: 5, CPUUsage: tunnel.Percent(12.5), MemoryUsage: tunnel.UsageUnavailable, GatewayRoutes: 7,
			AgentVersion: "1.2.3", K8sVersion: "v1.31.0"}}), controlplane.ClusterConnected,
			map[string]any{"k8s_nodes": 3, "k8s_pods": 5, "cpu_usage": "12.5%", "memory_usage": "unavailable", "is_private": false,
				"gateway_routes": 7, "agent_version": "1.2.3", "k8s_version": "v1.31.0", "tunnel_status": "connected"}},
		{"reconnecting", literal(tunnel.Heartbeat{Status: tunnel.StatusReconnecting}), controlplane.ClusterConnected, nil},
		{"no status", literal(tunnel.Heartbeat{}), controlplane.ClusterConnected, nil},
		{"disconnected", literal(tunnel.Heartbeat{Status: tunnel.StatusDisconnected, TunnelStatus: "Disconnected"}),
			controlplane.ClusterDisconnected, nil},
		{"free text status", literal(tunnel.Heartbeat{TunnelStatus: long}), controlplane.ClusterConnected, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hb := tt.hb(t)
			status, meta := controlplane.HeartbeatRecord(hb)
			if status != tt.wantStatus {
				t.Errorf("status %q, want %q", status, tt.wantStatus)
			}
			if tt.want != nil && !reflect.DeepEqual(meta, tt.want) {
				t.Errorf("metadata\n %v\nwant\n %v", meta, tt.want)
			}
			switch ts := meta["tunnel_status"]; ts {
			case tunnel.TunnelConnected, tunnel.TunnelDisconnected, tunnel.TunnelReconnecting, tunnel.TunnelUnknown:
			default:
				t.Errorf("tunnel_status %q is not a normal one", ts)
			}
			noSecrets(t, "metadata", meta)
		})
	}

	t.Run("long strings cut", func(t *testing.T) {
		_, meta := controlplane.HeartbeatRecord(tunnel.Heartbeat{
			Metadata:   tunnel.HeartbeatMetadata{AgentVersion: long, K8sVersion: "x" + long},
			Monitoring: tunnel.Monitoring{GrafanaURL: long, GrafanaUsername: "a\x00" + long},
		})
		mon := meta["monitoring"].(map[string]any)
		for name, v := range map[string]any{"agent_version": meta["agent_version"], "k8s_version": meta["k8s_version"],
			"grafana_url": mon["grafana_url"], "grafana_username": mon["grafana_username"]} {
			s := v.(string)
			if len(s) > controlplane.MaxAgentText || len(s) < controlplane.MaxAgentText-utf8.UTFMax || !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
				t.Errorf("%s cut to %d bytes: %q", name, len(s), s)
			}
		}
	})
}

// walkStrings calls fn with every string and key in v, a value as
// AgentReportOf or HeartbeatRecord makes them.
func walkStrings(v any, fn func(string)) {
	switch v := v.(type) {
	case string:
		fn(v)
	case []string:
		for _, e := range v {
			fn(e)
		}
	case map[string]string:
		for k, e := range v {
			fn(k)
			fn(e)
		}
	case map[string]any:
		for k, e := range v {
			fn(k)
			walkStrings(e, fn)
		}
	case []any:
		for _, e := range v {
			walkStrings(e, fn)
		}
	}
}

// FuzzAgentReportOf: whatever a register carries, the report is within its
// bound, encodes, holds no NUL, and never holds the service token.
func FuzzAgentReportOf(f *testing.F) {
	for _, name := range []string{"register", "register_resume"} {
		m, err := tunnel.DecodeMessage(pipeopsfixtures.Load(name).JSON)
		if err != nil {
			f.Fatal(err)
		}
		f.Add([]byte(m.Payload))
	}
	f.Add([]byte(`{"labels":{"a":"` + strings.Repeat("b", 70000) + `"},"metadata":{"x":[[[[{"y\u0000":"\u0000"}]]]]}}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		var r tunnel.Register
		if err := (tunnel.Message{Type: tunnel.TypeRegister, Payload: payload}).DecodePayload(&r); err != nil {
			return
		}
		const token = "fuzz-service-token\x01"
		r.K8sServiceToken = token
		rep, _ := controlplane.AgentReportOf(r)
		if _, err := json.Marshal(rep); err != nil {
			t.Fatalf("report does not encode: %v", err)
		}
		if n := controlplane.AgentInfoSize(rep.Info); n > controlplane.MaxAgentInfoSize {
			t.Fatalf("info is %d bytes, limit %d", n, controlplane.MaxAgentInfoSize)
		}
		walkStrings(rep.Info, func(s string) {
			if strings.ContainsRune(s, 0) || strings.Contains(s, token) {
				t.Fatalf("info holds a NUL or the token: %q", s)
			}
		})
		for _, s := range []string{rep.AgentID, rep.AgentVersion, rep.K8sVersion} {
			if strings.ContainsRune(s, 0) || len(s) > controlplane.MaxAgentText || !utf8.ValidString(s) {
				t.Fatalf("column value %q not storable", s)
			}
		}
	})
}

// FuzzHeartbeatRecord: whatever a heartbeat carries, no password and no
// join token is kept, and every string is bounded and free of NUL.
func FuzzHeartbeatRecord(f *testing.F) {
	for _, name := range []string{"heartbeat", "heartbeat_monitoring"} {
		m, err := tunnel.DecodeMessage(pipeopsfixtures.Load(name).JSON)
		if err != nil {
			f.Fatal(err)
		}
		f.Add([]byte(m.Payload))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		var hb tunnel.Heartbeat
		if err := (tunnel.Message{Type: tunnel.TypeHeartbeat, Payload: payload}).DecodePayload(&hb); err != nil {
			return
		}
		_, meta := controlplane.HeartbeatRecord(hb)
		if _, err := json.Marshal(meta); err != nil {
			t.Fatalf("metadata does not encode: %v", err)
		}
		if mon, ok := meta["monitoring"].(map[string]any); ok {
			for k, v := range mon {
				if strings.HasSuffix(k, "_password_set") || strings.HasSuffix(k, "_ssl") || k == "worker_join_offered" {
					if v != true {
						t.Fatalf("monitoring %s = %v, want true", k, v)
					}
				} else if !strings.HasSuffix(k, "_url") && !strings.HasSuffix(k, "_username") {
					t.Fatalf("monitoring holds %s", k)
				}
			}
		} else if meta["monitoring"] != nil {
			t.Fatalf("monitoring is %T", meta["monitoring"])
		}
		walkStrings(meta, func(s string) {
			if len(s) > controlplane.MaxAgentText || strings.ContainsRune(s, 0) {
				t.Fatalf("stored string of %d bytes: %q", len(s), s)
			}
		})
	})
}

func TestResolveRoutingMode(t *testing.T) {
	cases := []struct {
		mode, endpoint, want string
		invalid              bool
	}{
		{"", "", controlplane.RoutingTunnel, false},
		{"", "203.0.113.7", controlplane.RoutingDirect, false},
		{"tunnel", "203.0.113.7", controlplane.RoutingTunnel, false},
		{"direct", "203.0.113.7", controlplane.RoutingDirect, false},
		{"direct", "", "", true},
		{"sideways", "", "", true},
		{"Tunnel", "", "", true},
	}
	for _, c := range cases {
		got, err := controlplane.ResolveRoutingMode(c.mode, c.endpoint)
		if c.invalid {
			if controlplane.ErrorCode(err) != controlplane.EINVALID {
				t.Errorf("ResolveRoutingMode(%q, %q) = %q, %v; want EINVALID", c.mode, c.endpoint, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ResolveRoutingMode(%q, %q) = %q, %v; want %q", c.mode, c.endpoint, got, err, c.want)
		}
	}
}
