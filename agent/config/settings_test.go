package config

import (
	"os"
	"reflect"
	"testing"

	"github.com/pipeops/tunnel/shared/settings"
)

// loader is Load with args, as the settings checks call it.
func loader(args ...string) settings.Loader {
	return func(getenv func(string) string) (any, error) { return Load(args, getenv) }
}

var baseEnv = map[string]string{"PIPEOPS_API_URL": "https://cp.example.com", "PIPEOPS_TOKEN": "t"}

// The settings table is Load's: the variables it reads, their defaults,
// and the flags that stand for them; and docs/agent.md lists the same.
func TestSettings(t *testing.T) {
	if err := Settings.CheckReads(baseEnv, loader()); err != nil {
		t.Error(err)
	}
	if err := Settings.CheckDefaults(baseEnv, loader()); err != nil {
		t.Error(err)
	}
	doc, err := os.ReadFile("../../docs/agent.md")
	if err != nil {
		t.Fatal(err)
	}
	if err := Settings.CheckDoc(string(doc)); err != nil {
		t.Errorf("docs/agent.md, section Configuration:\n%v", err)
	}
}

// Each flag of the table sets the variable the table pairs it with: Load
// given --flag=v equals Load given the variable v, and differs from Load
// given neither.
func TestSettingsFlags(t *testing.T) {
	samples := map[string]string{
		"api-url": "https://other.example.com", "token": "t2", "cluster-name": "c1", "agent-id": "a1",
		"enable-ingress-sync": "false", "kubeconfig": "/etc/kubeconfig", "namespace": "ns1", "state-file": "/var/state",
		"ingress-controller": "ingress/nginx", "listen": ":9999",
	}
	plain, err := Load(nil, env(baseEnv))
	if err != nil {
		t.Fatal(err)
	}
	flags := 0
	for _, s := range Settings {
		if s.Flag == "" {
			continue
		}
		flags++
		v, ok := samples[s.Flag]
		if !ok {
			t.Errorf("--%s has no sample value in this test", s.Flag)
			continue
		}
		withEnv := map[string]string{s.Env: v}
		for k, val := range baseEnv {
			if k != s.Env {
				withEnv[k] = val
			}
		}
		byEnv, err := Load(nil, env(withEnv))
		if err != nil {
			t.Errorf("%s=%s: %v", s.Env, v, err)
			continue
		}
		byFlag, err := Load([]string{"--" + s.Flag + "=" + v}, env(baseEnv))
		if err != nil {
			t.Errorf("--%s=%s: %v", s.Flag, v, err)
			continue
		}
		if !reflect.DeepEqual(byFlag, byEnv) || reflect.DeepEqual(byFlag, plain) {
			t.Errorf("--%s=%s does not do what %s=%s does", s.Flag, v, s.Env, v)
		}
	}
	if flags != len(samples) {
		t.Errorf("the table has %d flags, the test samples %d", flags, len(samples))
	}
}
