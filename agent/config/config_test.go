package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoad(t *testing.T) {
	c, err := Load(nil, env(map[string]string{"PIPEOPS_API_URL": "https://cp.example.com", "PIPEOPS_TOKEN": "t", "PIPEOPS_AGENT_ID": "a1"}))
	if err != nil {
		t.Fatal(err)
	}
	if !c.EnableIngress || c.Namespace != "pipeops-system" || c.HeartbeatMin != 5*time.Second || c.FullSync != 4*time.Hour || c.KubeAPIOverJSON {
		t.Fatalf("defaults: %+v", c)
	}
	c, err = Load(nil, env(map[string]string{"PIPEOPS_API_URL": "https://cp", "PIPEOPS_TOKEN": "t", "AGENT_K8S_API_OVER_JSON": "true"}))
	if err != nil || !c.KubeAPIOverJSON {
		t.Fatalf("AGENT_K8S_API_OVER_JSON=true: %+v %v", c, err)
	}
	// ENABLE_INGRESS_SYNC=false is honoured, and a flag beats the environment.
	c, err = Load([]string{"--cluster-name", "from-flag"}, env(map[string]string{"PIPEOPS_API_URL": "https://cp", "PIPEOPS_TOKEN": "t",
		"ENABLE_INGRESS_SYNC": "false", "PIPEOPS_CLUSTER_NAME": "from-env"}))
	if err != nil || c.EnableIngress || c.ClusterName != "from-flag" {
		t.Fatalf("override: %+v %v", c, err)
	}
	for want, e := range map[string]map[string]string{
		"PIPEOPS_API_URL (--api-url) is required": {"PIPEOPS_TOKEN": "t"},
		"PIPEOPS_TOKEN":              {"PIPEOPS_API_URL": "https://cp"},
		"PIPEOPS_API_URL=":           {"PIPEOPS_API_URL": "cp:8080", "PIPEOPS_TOKEN": "t"},
		"ENABLE_INGRESS_SYNC":        {"PIPEOPS_API_URL": "https://cp", "PIPEOPS_TOKEN": "t", "ENABLE_INGRESS_SYNC": "nah"},
		"INGRESS_CONTROLLER_SERVICE": {"PIPEOPS_API_URL": "https://cp", "PIPEOPS_TOKEN": "t", "INGRESS_CONTROLLER_SERVICE": "nginx"},
		"HEARTBEAT_MIN_INTERVAL":     {"PIPEOPS_API_URL": "https://cp", "PIPEOPS_TOKEN": "t", "HEARTBEAT_MIN_INTERVAL": "1m"},
		"AGENT_K8S_API_OVER_JSON":    {"PIPEOPS_API_URL": "https://cp", "PIPEOPS_TOKEN": "t", "AGENT_K8S_API_OVER_JSON": "maybe"},
	} {
		if _, err := Load(nil, env(e)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: err = %v, want one containing %q", e, err, want)
		}
	}
}

// TestTokenFile: the token can come from a file (a compose secret), which
// must not be readable by every user, and not together with PIPEOPS_TOKEN.
func TestTokenFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte("agent-token-from-file\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	c, err := Load(nil, env(map[string]string{"PIPEOPS_API_URL": "https://cp", "PIPEOPS_TOKEN_FILE": file}))
	if err != nil || c.Token != "agent-token-from-file" {
		t.Fatalf("token from the file: %q, %v", c.Token, err)
	}
	open := filepath.Join(dir, "open")
	if err := os.WriteFile(open, []byte("agent-token-from-file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	for want, e := range map[string]map[string]string{
		"PIPEOPS_TOKEN and PIPEOPS_TOKEN_FILE are both set": {"PIPEOPS_API_URL": "https://cp", "PIPEOPS_TOKEN": "t", "PIPEOPS_TOKEN_FILE": file},
		"PIPEOPS_TOKEN_FILE: " + open + " is readable":      {"PIPEOPS_API_URL": "https://cp", "PIPEOPS_TOKEN_FILE": open},
		"PIPEOPS_TOKEN_FILE: open ":                         {"PIPEOPS_API_URL": "https://cp", "PIPEOPS_TOKEN_FILE": filepath.Join(dir, "missing")},
	} {
		_, err := Load(nil, env(e))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: err = %v, want one containing %q", e, err, want)
		} else if strings.Contains(err.Error(), "agent-token-from-file") {
			t.Errorf("the error shows the token: %v", err)
		}
	}
}
