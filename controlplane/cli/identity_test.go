package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/pipeops/tunnel/controlplane/keyseal"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

// TestTokenIdentity issues user, kubeconfig and admin tokens through the
// command line and checks, on the verified token, the person and groups it
// names, and that its record holds the same.
func TestTokenIdentity(t *testing.T) {
	ctx := context.Background()
	dbURL := pgtest.URL(t)
	kekPath := kekFile(t)
	env := map[string]string{"DATABASE_URL": dbURL, "LOG_LEVEL": "warn", "KEY_ENCRYPTION_KEY_FILE": kekPath,
		"GATEWAY_URL": "https://gw.example.com"}
	var cluster struct{ ID string }
	if err := json.Unmarshal([]byte(mustRun(t, env, "cluster", "create", "prod-eu", "--json")), &cluster); err != nil {
		t.Fatal(err)
	}

	db, err := postgres.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	iss, err := tokens.NewIssuer(ctx, db, db, tokens.Options{KEK: keyseal.NewKeyring(kekOf(t, kekPath))})
	if err != nil {
		t.Fatal(err)
	}
	// verify checks tok the way a server holding the record would, and
	// returns its claims.
	verify := func(t *testing.T, tok string) *auth.Claims {
		t.Helper()
		claims, err := iss.Verifier().Verify(ctx, tok)
		if err != nil {
			t.Fatalf("verify: %v", err)
		}
		rec, err := db.Token(ctx, claims.ID)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Subject != claims.Subject || !slices.Equal(rec.Groups, claims.Groups) {
			t.Errorf("record names %q %q, token %q %q", rec.Subject, rec.Groups, claims.Subject, claims.Groups)
		}
		return claims
	}
	kubeconfigToken := func(t *testing.T, env map[string]string, args ...string) string {
		t.Helper()
		kc, err := clientcmd.Load([]byte(mustRun(t, env, append([]string{"kubeconfig"}, args...)...)))
		if err != nil {
			t.Fatal(err)
		}
		return kc.AuthInfos["prod-eu"].Token
	}
	createJSON := func(t *testing.T, env map[string]string, args ...string) (string, map[string]any) {
		t.Helper()
		var out map[string]any
		if err := json.Unmarshal([]byte(mustRun(t, env, append([]string{"token", "create", "--json"}, args...)...)), &out); err != nil {
			t.Fatal(err)
		}
		tok, _ := out["token"].(string)
		return tok, out
	}

	t.Run("user token with groups", func(t *testing.T) {
		tok, out := createJSON(t, env, "--kind", "user", "--user", "alice", "--group", "dev", "--group", "ops", "--cluster", "prod-eu")
		c := verify(t, tok)
		if c.Kind != auth.KindUser || c.Subject != "alice" || !slices.Equal(c.Groups, []string{"dev", "ops"}) ||
			!slices.Equal(c.Clusters, []string{cluster.ID}) || c.Issuer != auth.Issuer || c.ID != out["id"] || c.ExpiresAt == nil {
			t.Fatalf("claims %+v", c)
		}
		if user, groups := c.Identity(); user != "alice" || !slices.Equal(groups, []string{"dev", "ops"}) {
			t.Errorf("Identity() = %q, %q", user, groups)
		}
		if out["subject"] != "alice" || !slices.Equal(anyStrings(out["groups"]), []string{"dev", "ops"}) {
			t.Errorf("--json printed subject %v, groups %v", out["subject"], out["groups"])
		}
		// The raw payload uses the documented claim names.
		var raw map[string]any
		if err := json.Unmarshal(payload(t, tok), &raw); err != nil {
			t.Fatal(err)
		}
		for _, claim := range []string{"kind", "sub", "groups", "clusters", "iss", "jti", "exp", "aud"} {
			if _, ok := raw[claim]; !ok {
				t.Errorf("payload %v has no %q", raw, claim)
			}
		}
	})
	t.Run("--subject is --user", func(t *testing.T) {
		tok, _ := createJSON(t, env, "--kind", "user", "--subject", "bob", "--group", "dev", "--cluster", "prod-eu")
		if c := verify(t, tok); c.Subject != "bob" || !slices.Equal(c.Groups, []string{"dev"}) {
			t.Fatalf("claims %+v", c)
		}
	})
	t.Run("user token naming nobody", func(t *testing.T) {
		tok, out := createJSON(t, env, "--kind", "user", "--cluster", "prod-eu")
		if user, _ := verify(t, tok).Identity(); user != "" {
			t.Fatalf("Identity() = %q, want none", user)
		}
		if _, ok := out["groups"]; ok {
			t.Errorf("--json printed groups for a token without any: %v", out)
		}
	})
	t.Run("agent token with a subject label", func(t *testing.T) {
		tok, _ := createJSON(t, env, "--kind", "agent", "--subject", "agent:spare", "--cluster", "prod-eu")
		c := verify(t, tok)
		if user, _ := c.Identity(); c.Subject != "agent:spare" || user != "" {
			t.Fatalf("agent token: subject %q, identity %q", c.Subject, user)
		}
	})
	t.Run("kubeconfig --user", func(t *testing.T) {
		c := verify(t, kubeconfigToken(t, env, "prod-eu", "--user", "carol", "--group", "sre", "--group", "dev"))
		if c.Kind != auth.KindUser || c.Subject != "carol" || !slices.Equal(c.Groups, []string{"sre", "dev"}) || !slices.Equal(c.Clusters, []string{cluster.ID}) {
			t.Fatalf("claims %+v", c)
		}
		if c := verify(t, kubeconfigToken(t, env, "--user", "dave", "prod-eu")); c.Subject != "dave" || len(c.Groups) != 0 {
			t.Fatalf("flags before the cluster: claims %+v", c)
		}
	})
	t.Run("kubeconfig without --user", func(t *testing.T) {
		if c := verify(t, kubeconfigToken(t, env, "prod-eu")); c.Subject != "kubeconfig:prod-eu" || len(c.Groups) != 0 {
			t.Fatalf("claims %+v", c)
		}
	})
	t.Run("admin token, default identity", func(t *testing.T) {
		tok, out := createJSON(t, env, "--kind", "admin")
		c := verify(t, tok)
		if c.Subject != "pipeops:admin" || !slices.Equal(c.Groups, []string{"pipeops:admins"}) || out["subject"] != "pipeops:admin" {
			t.Fatalf("claims %+v, printed %v", c, out)
		}
	})
	t.Run("admin token, configured identity", func(t *testing.T) {
		custom := map[string]string{"ADMIN_IDENTITY_USER": "ops-admin", "ADMIN_IDENTITY_GROUPS": "platform, oncall"}
		for k, v := range env {
			custom[k] = v
		}
		tok, _ := createJSON(t, custom, "--kind", "admin")
		c := verify(t, tok)
		if user, groups := c.Identity(); user != "ops-admin" || !slices.Equal(groups, []string{"platform", "oncall"}) {
			t.Fatalf("Identity() = %q, %q; claims %+v", user, groups, c)
		}
	})
}

// TestTokenArgumentsRefused: bad names and misplaced flags are refused
// before the database is opened (DATABASE_URL here points at a closed
// port, so reaching it would fail differently), with a message naming the
// value or the flag.
func TestTokenArgumentsRefused(t *testing.T) {
	env := map[string]string{"DATABASE_URL": "postgres://u:p@127.0.0.1:1/none", "LOG_LEVEL": "warn", "GATEWAY_URL": "https://gw.example.com",
		"KEY_ENCRYPTION_KEY": testKEK}
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"reserved user", []string{"token", "create", "--kind", "user", "--user", "system:admin", "--cluster", "c"}, 1,
			`user name "system:admin" starts with "system:", which Kubernetes reserves`},
		{"reserved group", []string{"token", "create", "--kind", "user", "--user", "alice", "--group", "dev", "--group", "system:masters", "--cluster", "c"}, 1,
			`group name "system:masters" starts with "system:"`},
		{"reserved subject", []string{"token", "create", "--kind", "user", "--subject", "system:kube-proxy", "--cluster", "c"}, 1, `"system:kube-proxy"`},
		{"empty user", []string{"token", "create", "--kind", "user", "--user", "", "--cluster", "c"}, 1, "user name is empty"},
		{"unprintable group", []string{"token", "create", "--kind", "user", "--user", "alice", "--group", "dev\x07", "--cluster", "c"}, 1, `group name "dev\a" holds a character that is not printable`},
		{"overlong user", []string{"token", "create", "--kind", "user", "--user", strings.Repeat("a", 254), "--cluster", "c"}, 1, "254 bytes long, more than 253"},
		{"group without user", []string{"token", "create", "--kind", "user", "--group", "dev", "--cluster", "c"}, 2, "--group needs --user"},
		{"group on admin", []string{"token", "create", "--kind", "admin", "--group", "dev"}, 2, "admin token carries the configured admin identity"},
		{"user on admin", []string{"token", "create", "--kind", "admin", "--user", "alice"}, 2, "ADMIN_IDENTITY_USER"},
		{"subject on admin", []string{"token", "create", "--kind", "admin", "--subject", "alice"}, 2, "--user, --subject and --group are not for it"},
		{"group on agent", []string{"token", "create", "--kind", "agent", "--group", "dev", "--cluster", "c"}, 2, "an agent token names no person"},
		{"user on agent", []string{"token", "create", "--kind", "agent", "--user", "alice", "--cluster", "c"}, 2, "an agent token names no person"},
		{"user and subject", []string{"token", "create", "--kind", "user", "--user", "a", "--subject", "b", "--cluster", "c"}, 2, "--subject is the older name of --user"},
		{"unknown kind", []string{"token", "create", "--kind", "root"}, 2, `--kind "root": want agent, user or admin`},
		{"no kind", []string{"token", "create", "--user", "alice"}, 2, "want agent, user or admin"},
		{"stray argument", []string{"token", "create", "--kind", "admin", "extra"}, 2, `unexpected argument "extra"`},
		{"unknown flag", []string{"token", "create", "--kind", "user", "--users", "a"}, 2, "-users"},
		{"kubeconfig reserved user", []string{"kubeconfig", "prod-eu", "--user", "system:admin"}, 1, `kubeconfig: user name "system:admin"`},
		{"kubeconfig reserved group", []string{"kubeconfig", "--user", "alice", "--group", "system:masters", "prod-eu"}, 1, `group name "system:masters"`},
		{"kubeconfig group without user", []string{"kubeconfig", "prod-eu", "--group", "dev"}, 2, "--group needs --user"},
		{"kubeconfig without cluster", []string{"kubeconfig", "--user", "alice"}, 2, "kubeconfig takes one argument"},
		{"kubeconfig two clusters", []string{"kubeconfig", "a", "b"}, 2, "kubeconfig takes one argument"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run(t, env, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) || out != "" {
				t.Fatalf("%q: exit %d, stdout %q, stderr %q; want exit %d and %q", tc.args, code, out, errOut, tc.code, tc.want)
			}
		})
	}
	// A valid command does try the closed port, and fails naming it: the
	// refusals above came before any connection.
	if code, _, errOut := run(t, env, "token", "create", "--kind", "admin"); code != 1 || !strings.Contains(errOut, "127.0.0.1") {
		t.Fatalf("a valid command against the closed port: exit %d %q; want a connection error", code, errOut)
	}
}

func TestAdminIdentityConfig(t *testing.T) {
	cases := []struct {
		name         string
		user, groups string
		wantUser     string
		wantGroups   []string
		wantErr      string
	}{
		{"defaults", "", "", "pipeops:admin", []string{"pipeops:admins"}, ""},
		{"user", "root-ops", "", "root-ops", []string{"pipeops:admins"}, ""},
		{"groups", "", "a, b ,c", "pipeops:admin", []string{"a", "b", "c"}, ""},
		{"reserved user", "system:admin", "", "", nil, `ADMIN_IDENTITY_USER: user name "system:admin" starts with "system:"`},
		{"reserved group", "", "admins,system:masters", "", nil, `ADMIN_IDENTITY_GROUPS: group name "system:masters" starts with "system:"`},
		{"empty group", "", "admins,,ops", "", nil, "ADMIN_IDENTITY_GROUPS: group name is empty"},
		{"overlong user", strings.Repeat("x", 300), "", "", nil, "ADMIN_IDENTITY_USER: user name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := LoadConfig(envOf(map[string]string{"DATABASE_URL": "postgres://u:p@db:5432/x",
				"ADMIN_IDENTITY_USER": tc.user, "ADMIN_IDENTITY_GROUPS": tc.groups}))
			switch {
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("LoadConfig = %v, want an error containing %s", err, tc.wantErr)
			case tc.wantErr == "" && (err != nil || c.AdminUser != tc.wantUser || !slices.Equal(c.AdminGroups, tc.wantGroups)):
				t.Fatalf("LoadConfig = %q %q, %v; want %q %q", c.AdminUser, c.AdminGroups, err, tc.wantUser, tc.wantGroups)
			}
		})
	}
}

// payload returns the decoded payload (claims) of a JWT, unverified.
func payload(t *testing.T, tok string) []byte {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", tok)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func anyStrings(v any) []string {
	list, _ := v.([]any)
	out := make([]string, 0, len(list))
	for _, x := range list {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}
