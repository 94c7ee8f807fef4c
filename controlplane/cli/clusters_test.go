package cli

import (
	"context"
	"strings"
	"testing"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

// cluster list --wide adds where each agent runs, as it said when it
// registered; the agent's text reaches the terminal without control
// characters.
func TestClusterListWide(t *testing.T) {
	ctx := context.Background()
	url := pgtest.URL(t)
	env := map[string]string{"DATABASE_URL": url, "LOG_LEVEL": "warn", "KEY_ENCRYPTION_KEY": kekValue(t)}
	for _, name := range []string{"prod-eu", "staging"} {
		if code, out, errOut := run(t, env, "cluster", "create", name); code != 0 {
			t.Fatalf("cluster create %s: %d %q %q", name, code, out, errOut)
		}
	}
	db, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c, err := db.ClusterByName(ctx, "prod-eu")
	if err != nil {
		t.Fatal(err)
	}
	info := map[string]any{"hostname": "fra-node-1\x1b[2J", "region": "DE", "cloud_provider": "hetzner"}
	if err := db.UpdateAgent(ctx, c.UUID, controlplane.AgentReport{AgentID: "a-1", Info: info}); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		args       []string
		want, not  []string
		wantFields int // of the prod-eu line
	}{
		{[]string{"cluster", "list"}, []string{"LAST HEARTBEAT", "prod-eu", "staging"}, []string{"HOSTNAME", "fra-node-1", "hetzner"}, 4},
		{[]string{"cluster", "list", "--wide"}, []string{"HOSTNAME", "REGION", "PROVIDER", "fra-node-1?[2J", "hetzner"}, []string{"\x1b"}, 7},
		{[]string{"cluster", "list", "-o", "wide"}, []string{"HOSTNAME", "REGION", "PROVIDER", "fra-node-1?[2J", "hetzner"}, []string{"\x1b"}, 7},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errOut := run(t, env, tt.args...)
			if code != 0 {
				t.Fatalf("exit %d %q", code, errOut)
			}
			for _, s := range tt.want {
				if !strings.Contains(out, s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
			for _, s := range tt.not {
				if strings.Contains(out, s) {
					t.Errorf("output has %q:\n%s", s, out)
				}
			}
			for _, line := range strings.Split(out, "\n") {
				if strings.Contains(line, "prod-eu") {
					if n := len(strings.Fields(line)); n != tt.wantFields {
						t.Errorf("prod-eu line has %d fields, want %d: %q", n, tt.wantFields, line)
					}
				}
			}
			if tt.wantFields == 7 && !strings.Contains(out, "staging") {
				t.Errorf("a cluster without agent info is not listed:\n%s", out)
			}
		})
	}
}
