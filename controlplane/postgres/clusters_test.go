package postgres

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
)

func TestCreateCluster(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)

	c, err := db.CreateCluster(ctx, "prod-eu-1")
	if err != nil {
		t.Fatalf("CreateCluster: %v", err)
	}
	if c.UUID == "" || c.Name != "prod-eu-1" || c.Status != controlplane.ClusterPending ||
		c.RoutingMode != controlplane.RoutingTunnel || !c.CreatedAt.Equal(clk.Now()) || !c.UpdatedAt.Equal(clk.Now()) ||
		!c.LastHeartbeat.IsZero() || c.IngressController != nil || len(c.Metadata) != 0 {
		t.Errorf("created %+v", c)
	}

	tests := []struct {
		name string
		code string
	}{
		{"prod-eu-1", controlplane.ECONFLICT},
		{"a", ""},
		{"0", ""},
		{strings.Repeat("a", 63), ""},
		{strings.Repeat("a", 64), controlplane.EINVALID},
		{"", controlplane.EINVALID},
		{"Prod", controlplane.EINVALID},
		{"-prod", controlplane.EINVALID},
		{"prod-", controlplane.EINVALID},
		{"prod.eu", controlplane.EINVALID},
		{"prod_eu", controlplane.EINVALID},
		{"prod eu", controlplane.EINVALID},
	}
	for _, tt := range tests {
		t.Run("name="+tt.name, func(t *testing.T) {
			_, err := db.CreateCluster(ctx, tt.name)
			wantCode(t, err, tt.code)
			if tt.code != "" && !strings.Contains(controlplane.ErrorMessage(err), tt.name) {
				t.Errorf("message %q does not name %q", controlplane.ErrorMessage(err), tt.name)
			}
		})
	}
}

func TestClusterLookups(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	b := mustCluster(t, db, "bravo")
	a := mustCluster(t, db, "alpha")

	t.Run("by uuid", func(t *testing.T) {
		got, err := db.Cluster(ctx, b.UUID)
		if err != nil || got.Name != "bravo" || got.UUID != b.UUID {
			t.Fatalf("Cluster = %+v, %v", got, err)
		}
	})
	t.Run("by name", func(t *testing.T) {
		got, err := db.ClusterByName(ctx, "alpha")
		if err != nil || got.UUID != a.UUID {
			t.Fatalf("ClusterByName = %+v, %v", got, err)
		}
	})
	t.Run("all, by name", func(t *testing.T) {
		all, err := db.Clusters(ctx)
		if err != nil || len(all) != 2 || all[0].Name != "alpha" || all[1].Name != "bravo" {
			t.Fatalf("Clusters = %+v, %v", all, err)
		}
	})

	notFound := []struct {
		name string
		err  func() error
	}{
		{"unknown uuid", func() error { _, err := db.Cluster(ctx, "00000000-0000-0000-0000-000000000000"); return err }},
		{"malformed uuid", func() error { _, err := db.Cluster(ctx, "bravo"); return err }},
		{"empty uuid", func() error { _, err := db.Cluster(ctx, ""); return err }},
		{"unknown name", func() error { _, err := db.ClusterByName(ctx, "charlie"); return err }},
		{"update agent, unknown", func() error {
			return db.UpdateAgent(ctx, "00000000-0000-0000-0000-000000000000", controlplane.AgentReport{AgentID: "agent"})
		}},
		{"update agent, malformed", func() error { return db.UpdateAgent(ctx, "x", controlplane.AgentReport{AgentID: "agent"}) }},
		{"heartbeat, unknown", func() error {
			return db.RecordHeartbeat(ctx, "00000000-0000-0000-0000-000000000000", controlplane.ClusterConnected, "gw-1", nil, time.Time{})
		}},
		{"heartbeat, malformed", func() error {
			return db.RecordHeartbeat(ctx, "x", controlplane.ClusterConnected, "gw-1", nil, time.Time{})
		}},
	}
	for _, tt := range notFound {
		t.Run(tt.name, func(t *testing.T) { wantCode(t, tt.err(), controlplane.ENOTFOUND) })
	}
}

func TestUpdateAgentAndHeartbeat(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	c := mustCluster(t, db, "alpha")

	clk.Add(time.Minute)
	if err := db.UpdateAgent(ctx, c.UUID, controlplane.AgentReport{AgentID: "agent-7", AgentVersion: "v2.1.0", K8sVersion: "v1.31.2"}); err != nil {
		t.Fatalf("UpdateAgent: %v", err)
	}
	at := clk.Now().Add(-time.Second)
	meta := map[string]any{"nodes": float64(3), "region": "eu", "labels": map[string]any{"tier": "gold"}}
	if err := db.RecordHeartbeat(ctx, c.UUID, controlplane.ClusterConnected, "gw-1", meta, at); err != nil {
		t.Fatalf("RecordHeartbeat: %v", err)
	}
	got, err := db.Cluster(ctx, c.UUID)
	if err != nil {
		t.Fatal(err)
	}
	if got.AgentID != "agent-7" || got.AgentVersion != "v2.1.0" || got.K8sVersion != "v1.31.2" ||
		got.Status != controlplane.ClusterConnected || !got.LastHeartbeat.Equal(at) || !got.UpdatedAt.Equal(clk.Now()) ||
		got.Metadata["region"] != "eu" || got.Metadata["nodes"] != float64(3) ||
		got.Metadata["labels"].(map[string]any)["tier"] != "gold" || got.Gateway != "gw-1" || !got.StatusSince.Equal(clk.Now()) {
		t.Errorf("after agent update and heartbeat: %+v", got)
	}
	// A write with no gateway keeps the one stored; the same status keeps
	// its since.
	clk.Add(time.Minute)
	if err := db.RecordHeartbeat(ctx, c.UUID, controlplane.ClusterConnected, "", meta, at); err != nil {
		t.Fatal(err)
	}
	if got, err := db.Cluster(ctx, c.UUID); err != nil || got.Gateway != "gw-1" || !got.StatusSince.Equal(clk.Now().Add(-time.Minute)) {
		t.Errorf("after a write without a gateway: %+v, %v", got, err)
	}
	if err := db.RecordHeartbeat(ctx, c.UUID, controlplane.ClusterDisconnected, "gw-2", meta, at); err != nil {
		t.Fatal(err)
	}
	if got, err := db.Cluster(ctx, c.UUID); err != nil || got.Gateway != "gw-2" || !got.StatusSince.Equal(clk.Now()) {
		t.Errorf("after a status change on another gateway: %+v, %v", got, err)
	}

	wantCode(t, db.RecordHeartbeat(ctx, c.UUID, "on-fire", "gw-1", nil, at), controlplane.EINVALID)
}

// What a registering agent says of itself is read back as stored, replaced
// by its next registration, and bounded.
func TestUpdateAgentInfo(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	c := mustCluster(t, db, "alpha")
	if c.AgentInfo == nil || len(c.AgentInfo) != 0 {
		t.Fatalf("new cluster's agent info = %#v, want an empty map", c.AgentInfo)
	}
	read := func() *controlplane.Cluster {
		t.Helper()
		got, err := db.Cluster(ctx, c.UUID)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	info := map[string]any{
		"hostname": "fra-node-1", "region": "DE", "cloud_provider": "hetzner",
		"labels":       map[string]string{"team": "payments"},
		"server_specs": map[string]any{"cpu_cores": 8, "os": "Debian GNU/Linux 12 (bookworm)"},
		"features":     map[string]any{"supports_gateway": true},
	}
	tests := []struct {
		name string
		r    controlplane.AgentReport
		code string
		want map[string]any // read back from JSON; nil: as before
	}{
		{"first", controlplane.AgentReport{AgentID: "agent-1", AgentVersion: "v1.12.0", K8sVersion: "v1.31.4+k3s1", Info: info}, "",
			map[string]any{
				"hostname": "fra-node-1", "region": "DE", "cloud_provider": "hetzner",
				"labels":       map[string]any{"team": "payments"},
				"server_specs": map[string]any{"cpu_cores": float64(8), "os": "Debian GNU/Linux 12 (bookworm)"},
				"features":     map[string]any{"supports_gateway": true},
			}},
		{"replaced, not merged", controlplane.AgentReport{AgentID: "agent-1", Info: map[string]any{"region": "FR"}}, "",
			map[string]any{"region": "FR"}},
		{"too large", controlplane.AgentReport{AgentID: "agent-2", Info: map[string]any{
			"labels": map[string]string{"x": strings.Repeat("a", controlplane.MaxAgentInfoSize)}}}, controlplane.ETOOLARGE, nil},
		{"not JSON", controlplane.AgentReport{AgentID: "agent-2", Info: map[string]any{"f": func() {}}}, controlplane.ETOOLARGE, nil},
		{"none", controlplane.AgentReport{AgentID: "agent-3"}, "", map[string]any{}},
	}
	var want map[string]any
	wantAgent := ""
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantCode(t, db.UpdateAgent(ctx, c.UUID, tt.r), tt.code)
			if tt.want != nil {
				want, wantAgent = tt.want, tt.r.AgentID
			}
			got := read()
			if !reflect.DeepEqual(got.AgentInfo, want) || got.AgentID != wantAgent {
				t.Errorf("stored agent %q, info %#v; want %q, %#v", got.AgentID, got.AgentInfo, wantAgent, want)
			}
		})
	}
	// A heartbeat does not touch what the registration said.
	wantCode(t, db.UpdateAgent(ctx, c.UUID, controlplane.AgentReport{AgentID: "agent-4", Info: map[string]any{"region": "DE"}}), "")
	wantCode(t, db.RecordHeartbeat(ctx, c.UUID, controlplane.ClusterConnected, "gw-1", map[string]any{"k8s_pods": 3}, time.Time{}), "")
	if got := read(); got.AgentInfo["region"] != "DE" || got.Metadata["k8s_pods"] != float64(3) {
		t.Errorf("after a heartbeat: info %v, metadata %v", got.AgentInfo, got.Metadata)
	}
}
