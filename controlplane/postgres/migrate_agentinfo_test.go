package postgres

import (
	"context"
	"io/fs"
	"slices"
	"testing"
	"testing/fstest"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/migrations"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

// migrationsBefore returns the embedded migrations named before name, as a
// database of an older release has them applied.
func migrationsBefore(t *testing.T, name string) fstest.MapFS {
	t.Helper()
	out := fstest.MapFS{}
	for _, n := range allMigrations(t) {
		if n >= name {
			break
		}
		body, err := fs.ReadFile(migrations.FS, n)
		if err != nil {
			t.Fatal(err)
		}
		out[n] = &fstest.MapFile{Data: body}
	}
	return out
}

// 0004 adds clusters.agent_info to a database that has clusters already:
// they keep everything they had and get an empty object, which their
// agent's next registration fills in.
func TestMigration0004AgentInfo(t *testing.T) {
	const name = "0004_agent_info.sql"
	ctx := context.Background()
	pool := pgtest.Pool(t)
	old := migrationsBefore(t, name)
	if len(old) != 3 {
		t.Fatalf("migrations before %s: %d, want 3", name, len(old))
	}
	if _, err := migrate(ctx, pool, old); err != nil {
		t.Fatalf("migrate to before %s: %v", name, err)
	}
	db := New(pool)
	var registered, pending string
	if err := pool.QueryRow(ctx, `
		INSERT INTO clusters (name, status, agent_id, agent_version, k8s_version, last_heartbeat, metadata)
		VALUES ('old-1', 'connected', 'agent-1', 'v1.0.0', 'v1.30.0', now(), '{"k8s_pods": 7}')
		RETURNING uuid::text`).Scan(&registered); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `INSERT INTO clusters (name) VALUES ('old-2') RETURNING uuid::text`).Scan(&pending); err != nil {
		t.Fatal(err)
	}

	applied, err := Migrate(ctx, pool)
	if err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if len(applied) == 0 || applied[0] != name {
		t.Fatalf("Migrate applied %v, want %s first", applied, name)
	}
	if got := queryStrings(t, db, `SELECT agent_info::text FROM clusters ORDER BY name`); !slices.Equal(got, []string{"{}", "{}"}) {
		t.Errorf("agent_info of the existing rows = %v, want {} each", got)
	}
	c, err := db.Cluster(ctx, registered)
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "old-1" || c.Status != controlplane.ClusterConnected || c.AgentID != "agent-1" || c.AgentVersion != "v1.0.0" ||
		c.Metadata["k8s_pods"] != float64(7) || c.LastHeartbeat.IsZero() || c.AgentInfo == nil || len(c.AgentInfo) != 0 {
		t.Errorf("existing cluster after 0004: %+v", c)
	}
	if err := db.UpdateAgent(ctx, pending, controlplane.AgentReport{AgentID: "agent-2", Info: map[string]any{"hostname": "node-2"}}); err != nil {
		t.Fatalf("UpdateAgent on an existing cluster: %v", err)
	}
	if c, err := db.Cluster(ctx, pending); err != nil || c.AgentInfo["hostname"] != "node-2" {
		t.Errorf("existing cluster after its agent registered: %+v, %v", c, err)
	}
	// NOT NULL: readers never meet a NULL, however old the cluster.
	if _, err := pool.Exec(ctx, `UPDATE clusters SET agent_info = NULL WHERE uuid = $1`, pending); err == nil {
		t.Error("agent_info took NULL; want NOT NULL")
	}
}
