package cli

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

// decode parses out as -o json or -o yaml printed it.
func decode(t *testing.T, format, out string, v any) {
	t.Helper()
	var err error
	if format == "yaml" {
		err = yaml.Unmarshal([]byte(out), v)
	} else {
		if n := strings.Count(strings.TrimSpace(out), "\n"); n != 0 {
			t.Errorf("-o json printed %d lines, want one", n+1)
		}
		err = json.Unmarshal([]byte(out), v)
	}
	if err != nil {
		t.Fatalf("-o %s: %v\n%s", format, err, out)
	}
}

// tableRows splits a table into its rows' cells, the header first.
func tableRows(out string) [][]string {
	var rows [][]string
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		rows = append(rows, strings.Fields(l))
	}
	return rows
}

// cluster show, token list and route list, in every output format, on a
// database with two clusters, their routes (one served, one pending) and
// their tokens (one revoked).
func TestListsAndShow(t *testing.T) {
	ctx := context.Background()
	dbURL := pgtest.URL(t)
	env := map[string]string{"DATABASE_URL": dbURL, "LOG_LEVEL": "warn", "KEY_ENCRYPTION_KEY": kekValue(t)}
	var eu, us struct {
		ID         string
		AgentToken string `json:"agent_token"`
	}
	decode(t, "json", mustRun(t, env, "cluster", "create", "prod-eu", "--json"), &eu)
	decode(t, "yaml", mustRun(t, env, "cluster", "create", "prod-us", "-o", "yaml"), &us)
	if eu.ID == "" || us.ID == "" || us.AgentToken == "" {
		t.Fatalf("cluster create: %+v %+v", eu, us)
	}
	var user struct{ Token, ID string }
	decode(t, "json", mustRun(t, env, "token", "create", "--kind", "user", "--user", "alice", "--group", "dev", "--cluster", "prod-eu", "--cluster", "prod-us", "--json"), &user)
	var revoked struct{ ID string }
	decode(t, "json", mustRun(t, env, "token", "create", "--kind", "admin", "--json"), &revoked)
	mustRun(t, env, "token", "revoke", revoked.ID)
	mustRun(t, env, "domain", "grant", "prod-eu", "example.com")

	db, err := postgres.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, r := range []controlplane.Route{
		{Hostname: "app.example.com", Path: "/", PathType: "Prefix", ClusterUUID: eu.ID, Namespace: "web", ServiceName: "app", ServicePort: 80, IngressName: "app", TLS: true, RoutingMode: "tunnel"},
		{Hostname: "blog.other.org", Path: "/", PathType: "Prefix", ClusterUUID: eu.ID, Namespace: "blog", ServiceName: "blog", ServicePort: 8080, IngressName: "blog", RoutingMode: "tunnel"},
		{Hostname: "api.example.net", Path: "/v1", PathType: "Prefix", ClusterUUID: us.ID, Namespace: "api", ServiceName: "api", ServicePort: 443, IngressName: "api", RoutingMode: "direct", PublicEndpoint: "203.0.113.7"},
	} {
		if err := db.RegisterRoute(ctx, r); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("token list", func(t *testing.T) {
		out := mustRun(t, env, "token", "list")
		rows := tableRows(out)
		if !slices.Equal(rows[0], []string{"ID", "KIND", "SUBJECT", "CLUSTERS", "EXPIRES", "STATUS"}) || len(rows) != 5 {
			t.Fatalf("token list: two agent tokens, a user and an admin token:\n%s", out)
		}
		byID := map[string][]string{}
		for _, r := range rows[1:] {
			byID[r[0]] = r
		}
		if r := byID[user.ID]; len(r) != 6 || r[1] != "user" || r[2] != "alice" || r[3] != "prod-eu,prod-us" || r[5] != "active" {
			t.Errorf("user token row %q", r)
		}
		if r := byID[revoked.ID]; len(r) != 6 || r[1] != "admin" || r[3] != "-" || r[5] != "revoked" {
			t.Errorf("revoked admin token row %q", r)
		}
		if strings.Contains(out, user.Token) || strings.Contains(out, "eyJ") {
			t.Errorf("token list prints a token:\n%s", out)
		}
		wide := tableRows(mustRun(t, env, "token", "list", "-o", "wide"))
		if len(wide[0]) != 9 || wide[0][6] != "GROUPS" {
			t.Errorf("wide header %q", wide[0])
		}
		for _, r := range wide[1:] {
			if r[0] == user.ID && r[6] != "dev" {
				t.Errorf("wide user row %q", r)
			}
		}
		for _, format := range []string{"json", "yaml"} {
			var got []struct {
				ID, Kind, Subject string
				Clusters, Groups  []string
				ClusterUUID       string `json:"cluster_uuid"`
				RevokedAt         *string
			}
			decode(t, format, mustRun(t, env, "token", "list", "--cluster", "prod-us", "-o", format), &got)
			// prod-us: its agent token and the user token naming it (in
			// the order issued, which the same second leaves to the ids).
			if len(got) == 2 && got[0].Kind == "user" {
				got[0], got[1] = got[1], got[0]
			}
			if len(got) != 2 || got[0].Kind != "agent" || got[0].ClusterUUID != us.ID || got[1].ID != user.ID ||
				!slices.Equal(got[1].Clusters, []string{eu.ID, us.ID}) || !slices.Equal(got[1].Groups, []string{"dev"}) {
				t.Errorf("-o %s --cluster prod-us: %+v", format, got)
			}
		}
		if code, _, errOut := run(t, env, "token", "list", "--cluster", "nope"); code != 1 || !strings.Contains(errOut, `cluster "nope"`) {
			t.Errorf("unknown cluster: exit %d %q", code, errOut)
		}
	})

	t.Run("cluster show", func(t *testing.T) {
		for _, ref := range []string{"prod-eu", eu.ID} {
			out := mustRun(t, env, "cluster", "show", ref)
			for _, want := range []string{"Name:", "prod-eu", "ID:", eu.ID, "Status:", "pending", "Last heartbeat:", "never", "Routes:", "2 (1 pending verification)"} {
				if !strings.Contains(out, want) {
					t.Errorf("cluster show %s lacks %q:\n%s", ref, want, out)
				}
			}
			if strings.Contains(out, "app.example.com") {
				t.Errorf("cluster show lists routes without -o wide:\n%s", out)
			}
		}
		wide := mustRun(t, env, "cluster", "show", "prod-eu", "-o", "wide")
		if !strings.Contains(wide, "app.example.com") || !strings.Contains(wide, "blog.other.org") || strings.Contains(wide, "api.example.net") {
			t.Errorf("cluster show -o wide: its routes, and only its:\n%s", wide)
		}
		for _, format := range []string{"json", "yaml"} {
			var got struct {
				UUID, Name, Status string
				CreatedAt          string `json:"created_at"`
			}
			decode(t, format, mustRun(t, env, "cluster", "show", "prod-us", "-o", format), &got)
			if got.UUID != us.ID || got.Name != "prod-us" || got.Status != "pending" || got.CreatedAt == "" {
				t.Errorf("cluster show -o %s: %+v", format, got)
			}
		}
		if code, _, errOut := run(t, env, "cluster", "show", "nope"); code != 1 || !strings.Contains(errOut, `cluster "nope"`) {
			t.Errorf("unknown cluster: exit %d %q", code, errOut)
		}
	})

	t.Run("cluster list", func(t *testing.T) {
		for _, format := range []string{"json", "yaml"} {
			var got []struct{ UUID, Name string }
			decode(t, format, mustRun(t, env, "cluster", "list", "-o", format), &got)
			if len(got) != 2 || got[0].Name != "prod-eu" || got[1].UUID != us.ID {
				t.Errorf("cluster list -o %s: %+v", format, got)
			}
		}
	})

	t.Run("route list", func(t *testing.T) {
		out := mustRun(t, env, "route", "list")
		rows := tableRows(out)
		want := [][]string{
			{"HOSTNAME", "PATH", "CLUSTER", "SERVICE", "MODE", "STATE"},
			{"api.example.net", "/v1", "prod-us", "api/api:443", "direct", "pending"},
			{"app.example.com", "/", "prod-eu", "web/app:80", "tunnel", "served"},
			{"blog.other.org", "/", "prod-eu", "blog/blog:8080", "tunnel", "pending"},
		}
		if !slices.EqualFunc(rows, want, slices.Equal) {
			t.Errorf("route list:\n%s\nwant %q", out, want)
		}
		wide := tableRows(mustRun(t, env, "route", "list", "--cluster", "prod-eu", "-o", "wide"))
		if len(wide) != 3 || len(wide[1]) != 12 || wide[1][0] != "app.example.com" || wide[1][7] != "web/app" || wide[1][8] != "true" {
			t.Errorf("route list -o wide --cluster prod-eu: %q", wide)
		}
		for _, format := range []string{"json", "yaml"} {
			var got []struct {
				Hostname    string
				ClusterUUID string `json:"cluster_uuid"`
				ClusterName string `json:"cluster_name"`
				ServicePort int    `json:"service_port"`
				Pending     bool   `json:"pending_verification"`
				ExpiresAt   string `json:"expires_at"`
			}
			decode(t, format, mustRun(t, env, "route", "list", "--cluster", eu.ID, "-o", format), &got)
			if len(got) != 2 || got[0].Hostname != "app.example.com" || got[0].ClusterName != "prod-eu" || got[0].ClusterUUID != eu.ID ||
				got[0].ServicePort != 80 || got[0].Pending || !got[1].Pending || got[0].ExpiresAt == "" {
				t.Errorf("route list -o %s: %+v", format, got)
			}
		}
		if out := mustRun(t, env, "route", "list", "--json", "--cluster", "prod-us"); !strings.HasPrefix(out, `[{"hostname":"api.example.net"`) {
			t.Errorf("route list --json: %s", out)
		}
	})
}

// The install steps cluster create prints keep the token off every command
// line: it is in the output once, where it is shown, and the Helm command
// reads it from a Secret.
func TestClusterCreateInstallSteps(t *testing.T) {
	env := map[string]string{"DATABASE_URL": pgtest.URL(t), "LOG_LEVEL": "warn", "KEY_ENCRYPTION_KEY": kekValue(t), "API_URL": "https://cp.example.com"}
	out := mustRun(t, env, "cluster", "create", "edge")
	shown := strings.Index(out, "agent token (shown once; keep it secret):\n")
	install := strings.Index(out, "install the agent")
	if shown < 0 || install < shown {
		t.Fatalf("cluster create:\n%s", out)
	}
	token := strings.TrimSpace(out[shown+len("agent token (shown once; keep it secret):\n") : install])
	if !strings.HasPrefix(token, "eyJ") || strings.Count(out, token) != 1 {
		t.Fatalf("token %q appears %d times:\n%s", token, strings.Count(out, token), out)
	}
	steps := out[install:]
	for _, want := range []string{
		"read -rs PIPEOPS_TOKEN",
		`printf %s "$PIPEOPS_TOKEN" | kubectl -n pipeops-system create secret generic pipeops-agent-token --from-file=token=/dev/stdin`,
		"helm upgrade --install pipeops-agent deploy/helm/pipeops-agent --namespace pipeops-system --set agent.pipeops.apiUrl=https://cp.example.com --set agent.pipeops.existingSecret=pipeops-agent-token\n",
	} {
		if !strings.Contains(steps, want) {
			t.Errorf("install steps lack %q:\n%s", want, steps)
		}
	}
	if strings.Contains(steps, "agent.pipeops.token") {
		t.Errorf("install steps set the token on the command line:\n%s", steps)
	}
	var created struct {
		AgentToken     string `json:"agent_token"`
		InstallCommand string `json:"install_command"`
	}
	decode(t, "json", mustRun(t, env, "cluster", "create", "edge-2", "--json"), &created)
	if created.AgentToken == "" || strings.Contains(created.InstallCommand, created.AgentToken) ||
		!strings.Contains(created.InstallCommand, "agent.pipeops.existingSecret=pipeops-agent-token") {
		t.Errorf("--json install_command %q", created.InstallCommand)
	}
}
