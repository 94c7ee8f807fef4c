package compose

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLogRotationAndLimits: every service rotates its log and has a memory
// limit, so one service cannot fill the disk or the machine's memory.
func TestLogRotationAndLimits(t *testing.T) {
	p := stack(t)
	for _, name := range p.ServiceNames() {
		s := service(t, p, name)
		if s.Logging == nil || s.Logging.Driver != "json-file" || s.Logging.Options["max-size"] == "" || s.Logging.Options["max-file"] == "" {
			t.Errorf("%s: logging %+v, want json-file with max-size and max-file", name, s.Logging)
		}
		if s.Deploy == nil || s.Deploy.Resources.Limits == nil || s.Deploy.Resources.Limits.MemoryBytes <= 0 {
			t.Errorf("%s: no memory limit", name)
		}
	}
}

// TestGrafanaRefusesEmptyPassword runs the Grafana service's entrypoint
// script with sh: without a password it exits 1 saying what to set; with
// one it hands over to Grafana's own entrypoint (absent here, so the exec
// fails with 127, not with the script's refusal).
func TestGrafanaRefusesEmptyPassword(t *testing.T) {
	p := stack(t)
	g := service(t, p, "grafana")
	if len(g.Entrypoint) != 4 || g.Entrypoint[0] != "/bin/sh" || g.Entrypoint[1] != "-c" {
		t.Fatalf("grafana entrypoint = %q, want /bin/sh -c SCRIPT NAME", g.Entrypoint)
	}
	run := func(password string) (int, string) {
		cmd := exec.Command("sh", "-c", g.Entrypoint[2], g.Entrypoint[3])
		cmd.Env = []string{"PATH=/usr/bin:/bin", "GF_SECURITY_ADMIN_PASSWORD=" + password}
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := run(""); code != 1 || !strings.Contains(out, "GRAFANA_ADMIN_PASSWORD") {
		t.Fatalf("empty password: exit %d %q, want 1 naming GRAFANA_ADMIN_PASSWORD", code, out)
	}
	if code, out := run("s3cret"); code != 127 {
		t.Fatalf("with a password: exit %d %q, want 127 (the exec of /run.sh, which is not here)", code, out)
	}
}
