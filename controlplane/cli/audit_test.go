package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

// audit list reads what the gateways recorded, filtered, newest first; it
// needs no KEK, and a caller's text reaches the terminal without control
// characters.
func TestAuditList(t *testing.T) {
	ctx := context.Background()
	url := pgtest.URL(t)
	env := map[string]string{"DATABASE_URL": url, "LOG_LEVEL": "warn"} // no KEK
	if code, out, errOut := run(t, env, "migrate"); code != 0 {
		t.Fatalf("migrate: %d %q %q", code, out, errOut)
	}
	db, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Now().UTC().Truncate(time.Millisecond)
	entries := []controlplane.AuditEntry{
		{Time: now.Add(-3 * time.Hour), ClusterUUID: "uuid-eu", ClusterName: "prod-eu", User: "alice", Groups: []string{"dev"},
			TokenID: "jti-a", Verb: "list", Method: "GET", Path: "/api/v1/namespaces/default/pods", Status: 200, BytesOut: 5 << 20, Duration: 42 * time.Millisecond},
		{Time: now.Add(-2 * time.Hour), ClusterUUID: "uuid-us", ClusterName: "prod-us", User: "bob",
			TokenID: "jti-b", Verb: "exec", Method: "POST", Path: "/api/v1/namespaces/default/pods/web/exec", Status: 101, BytesIn: 300, BytesOut: 2048, Duration: 95 * time.Second},
		{Time: now.Add(-time.Minute), ClusterUUID: "uuid-eu", ClusterName: "prod-eu", User: "alice\x1b[2J", Groups: []string{"dev"},
			TokenID: "jti-c", Verb: "delete", Method: "DELETE", Path: "/api/v1/namespaces/default/pods/web", Status: 403, Duration: 3 * time.Millisecond},
	}
	if err := db.InsertAudit(ctx, entries); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		args      []string
		want, not []string
		rows      int
	}{
		{[]string{"audit", "list"}, []string{"TIME", "CLUSTER", "USER", "VERB", "PATH", "STATUS", "BYTES IN/OUT", "DURATION",
			"prod-us", "exec", "101", "300/2.0Ki", "1m35s", "5.0Mi", "alice?[2J"}, []string{"\x1b", "jti-"}, 3},
		{[]string{"audit", "list", "--cluster", "prod-eu"}, []string{"/api/v1/namespaces/default/pods", "403"}, []string{"prod-us"}, 2},
		{[]string{"audit", "list", "--cluster", "uuid-us"}, []string{"exec"}, []string{"prod-eu"}, 1},
		{[]string{"audit", "list", "--user", "bob"}, []string{"prod-us"}, []string{"prod-eu"}, 1},
		{[]string{"audit", "list", "--since", "150m"}, []string{"exec", "delete"}, []string{" list "}, 2},
		{[]string{"audit", "list", "--limit", "1"}, []string{"delete"}, nil, 1},
		{[]string{"audit", "list", "--user", "nobody"}, []string{"TIME"}, nil, 0},
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
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines)-1 != tt.rows {
				t.Errorf("%d rows, want %d:\n%s", len(lines)-1, tt.rows, out)
			}
			for _, l := range lines[1:] {
				if n := len(strings.Fields(l)); n != 8 {
					t.Errorf("row of %d fields, want 8: %q", n, l)
				}
			}
		})
	}

	t.Run("json", func(t *testing.T) {
		code, out, errOut := run(t, env, "audit", "list", "--cluster", "prod-eu", "--json")
		if code != 0 {
			t.Fatalf("exit %d %q", code, errOut)
		}
		var got []map[string]any
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if len(got) != 2 || got[0]["verb"] != "delete" || got[1]["duration_ms"] != float64(42) ||
			got[1]["bytes_out"] != float64(5<<20) || got[1]["token_id"] != "jti-a" || got[1]["cluster_uuid"] != "uuid-eu" {
			t.Errorf("json %s", out)
		}
		if code, out, _ := run(t, env, "audit", "list", "--user", "nobody", "--json"); code != 0 || strings.TrimSpace(out) != "[]" {
			t.Errorf("no entries: %d %q, want []", code, out)
		}
	})

	for _, args := range [][]string{
		{"audit"},
		{"audit", "show"},
		{"audit", "list", "--limit", "0"},
		{"audit", "list", "--limit", "10001"},
		{"audit", "list", "--since", "-1h"},
		{"audit", "list", "--since", "yesterday"},
		{"audit", "list", "extra"},
	} {
		if code, _, errOut := run(t, env, args...); code != 2 || !strings.Contains(errOut, "pipeops-controlplane audit") {
			t.Errorf("%v: exit %d %q, want 2 with the usage", args, code, errOut)
		}
	}
}
