package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

func TestMain(m *testing.M) { testenv.Main(m, pgtest.Stop) }

func run(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Run(context.Background(), args, envOf(env), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestCommands(t *testing.T) {
	env := map[string]string{"DATABASE_URL": pgtest.URL(t), "LOG_LEVEL": "warn", "KEY_ENCRYPTION_KEY": kekValue(t)}

	if code, out, _ := run(t, env, "help"); code != 0 || !strings.Contains(out, "cluster create NAME") {
		t.Fatalf("help: %d %q", code, out)
	}
	if code, _, _ := run(t, nil, "migrate"); code != 2 {
		t.Fatalf("migrate without DATABASE_URL: exit %d, want 2", code)
	}
	if code, out, errOut := run(t, env, "migrate"); code != 0 || !strings.Contains(out, "up to date") {
		t.Fatalf("migrate: %d %q %q", code, out, errOut)
	}
	code, out, errOut := run(t, env, "cluster", "create", "prod-eu")
	if code != 0 || !strings.Contains(out, "agent token") || !strings.Contains(out, "helm upgrade --install") {
		t.Fatalf("cluster create: %d %q %q", code, out, errOut)
	}
	if code, _, errOut := run(t, env, "cluster", "create", "prod-eu"); code != 1 || !strings.Contains(errOut, "conflict") {
		t.Fatalf("duplicate cluster: %d %q", code, errOut)
	}
	code, out, errOut = run(t, env, "cluster", "create", "staging", "--json")
	var created struct {
		ID         string `json:"id"`
		AgentToken string `json:"agent_token"`
	}
	if err := json.Unmarshal([]byte(out), &created); code != 0 || err != nil || created.ID == "" || !strings.HasPrefix(created.AgentToken, "ey") {
		t.Fatalf("cluster create --json: %d %q %q (%v)", code, out, errOut, err)
	}
	if code, out, _ := run(t, env, "cluster", "list"); code != 0 || !strings.Contains(out, "prod-eu") || !strings.Contains(out, "pending") {
		t.Fatalf("cluster list: %d %q", code, out)
	}
	code, out, errOut = run(t, env, "token", "create", "--kind", "user", "--cluster", "prod-eu", "--json")
	if code != 0 || !strings.Contains(out, `"token":"ey`) {
		t.Fatalf("token create: %d %q %q", code, out, errOut)
	}
	id := out[strings.Index(out, `"id":"`)+6:]
	id = id[:strings.Index(id, `"`)]
	if code, out, errOut := run(t, env, "token", "revoke", id); code != 0 || !strings.Contains(out, "revoked") {
		t.Fatalf("token revoke: %d %q %q", code, out, errOut)
	}
	if code, _, errOut := run(t, env, "token", "revoke", "nope"); code != 1 || !strings.Contains(errOut, "not_found") {
		t.Fatalf("revoke unknown: %d %q", code, errOut)
	}
	if code, _, errOut := run(t, env, "kubeconfig", "prod-eu"); code != 1 || !strings.Contains(errOut, "GATEWAY_URL") {
		t.Fatalf("kubeconfig without GATEWAY_URL: %d %q", code, errOut)
	}
	env["GATEWAY_URL"] = "https://gw.example.com"
	if code, out, errOut := run(t, env, "kubeconfig", "prod-eu"); code != 0 || !strings.Contains(out, "server: https://gw.example.com/k8s/") {
		t.Fatalf("kubeconfig: %d %q %q", code, out, errOut)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	ca := "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIBATAKBggqhkjOPQQDAjAAMB4XDTI2MDEwMTAwMDAwMFoXDTM2\n-----END CERTIFICATE-----\n"
	if err := os.WriteFile(caFile, []byte(ca), 0o600); err != nil {
		t.Fatal(err)
	}
	env["GATEWAY_CA_FILE"] = caFile
	if code, out, errOut := run(t, env, "kubeconfig", "prod-eu"); code != 0 || !strings.Contains(out, "certificate-authority-data: "+base64.StdEncoding.EncodeToString([]byte(ca))) {
		t.Fatalf("kubeconfig with GATEWAY_CA_FILE: %d %q %q", code, out, errOut)
	}
	env["GATEWAY_CA_FILE"] = filepath.Join(t.TempDir(), "missing.pem")
	if code, _, errOut := run(t, env, "kubeconfig", "prod-eu"); code != 2 || !strings.Contains(errOut, "GATEWAY_CA_FILE") {
		t.Fatalf("kubeconfig with a missing GATEWAY_CA_FILE: %d %q", code, errOut)
	}
	delete(env, "GATEWAY_CA_FILE")
	if code, _, errOut := run(t, env, "frobnicate"); code != 2 || !strings.Contains(errOut, "unknown command") {
		t.Fatalf("unknown command: %d %q", code, errOut)
	}
}

func TestServe(t *testing.T) {
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	adminPort, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DATABASE_URL": pgtest.URL(t), "LISTEN_ADDR": fmt.Sprintf("127.0.0.1:%d", port),
		"ADMIN_ADDR": fmt.Sprintf("127.0.0.1:%d", adminPort), "LOG_LEVEL": "warn"}
	if code, _, errOut := run(t, env, "serve"); code != 1 || !strings.Contains(errOut, "GATEWAY_WS_URL") {
		t.Fatalf("serve without GATEWAY_WS_URL: %d %q", code, errOut)
	}
	env["GATEWAY_WS_URL"] = "wss://gw.example.com/ws"
	if code, _, errOut := run(t, env, "serve"); code != 1 || !strings.Contains(errOut, "KEY_ENCRYPTION_KEY_FILE") || !strings.Contains(errOut, "openssl rand -base64 32") {
		t.Fatalf("serve without a KEK: %d %q; want a refusal naming KEY_ENCRYPTION_KEY_FILE and how to make one", code, errOut)
	}
	env["KEY_ENCRYPTION_KEY_FILE"] = kekFile(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var out, errOut bytes.Buffer
	go func() { done <- Run(ctx, []string{"serve"}, envOf(env), &out, &errOut) }()
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", port)
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("serve never became ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The metrics are on the admin port, not on the API's.
	for _, c := range []struct {
		port int
		want int
	}{{adminPort, http.StatusOK}, {port, http.StatusNotFound}} {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", c.port))
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want || (c.want == http.StatusOK && !strings.Contains(string(body), "pipeops_controlplane_")) {
			cancel()
			t.Fatalf("/metrics on port %d: HTTP %d, want %d", c.port, resp.StatusCode, c.want)
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("serve exit %d: %s", code, errOut.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop after its context ended")
	}
}
