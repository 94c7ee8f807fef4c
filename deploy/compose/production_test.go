package compose

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/pipeops/tunnel/shared/testenv"
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
// script with sh: without a password in its secret file it exits 1 saying
// what to do; with one it hands over to Grafana's own entrypoint (absent
// here, so the exec fails with 127, not with the script's refusal).
func TestGrafanaRefusesEmptyPassword(t *testing.T) {
	p := stack(t)
	g := service(t, p, "grafana")
	if len(g.Entrypoint) != 4 || g.Entrypoint[0] != "/bin/sh" || g.Entrypoint[1] != "-c" {
		t.Fatalf("grafana entrypoint = %q, want /bin/sh -c SCRIPT NAME", g.Entrypoint)
	}
	file := hostenv(p, g)("GF_SECURITY_ADMIN_PASSWORD__FILE")
	if file != filepath.Join(user.secretsDir, "grafana_admin_password") {
		t.Fatalf("GF_SECURITY_ADMIN_PASSWORD__FILE is %q on this machine, want the grafana_admin_password secret", file)
	}
	run := func(passwordFile string) (int, string) {
		cmd := exec.Command("sh", "-c", g.Entrypoint[2], g.Entrypoint[3])
		cmd.Env = []string{"PATH=/usr/bin:/bin", "GF_SECURITY_ADMIN_PASSWORD__FILE=" + passwordFile}
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte(" \n"), 0o640); err != nil {
		t.Fatal(err)
	}
	for what, f := range map[string]string{"an empty file": empty, "no file": filepath.Join(dir, "missing")} {
		if code, out := run(f); code != 1 || !strings.Contains(out, "grafana_admin_password") {
			t.Errorf("%s: exit %d %q, want 1 naming the grafana_admin_password secret", what, code, out)
		}
	}
	if code, out := run(file); code != 127 {
		t.Fatalf("with the password init-secrets.sh made: exit %d %q, want 127 (the exec of /run.sh, which is not here)", code, out)
	}
}

// TestSecrets: no secret is in a service's environment or the compose file;
// each is a file init-secrets.sh made, mode 0640 in the user's group, which
// every service that reads one joins; and every path a service's
// environment names under /run/secrets is a secret mounted into it. The
// same holds with deploy/compose/scale.yml, whose peer_secret the gateways
// read.
func TestSecrets(t *testing.T) {
	secrets := []string{"agent_token", "grafana_admin_password", "key_encryption_key", "postgres_password"}
	readers := []string{"agent", "controlplane", "gateway", "grafana", "postgres"}
	t.Run("docker-compose.yml", func(t *testing.T) {
		checkSecrets(t, stack(t), []string{"docker-compose.yml"}, secrets, readers)
	})
	t.Run("scale.yml", func(t *testing.T) {
		checkSecrets(t, scaled(t), scaleFiles, append(slices.Clone(secrets), "peer_secret"), readers)
	})
}

// checkSecrets is TestSecrets for the project p loaded from files, which
// must declare the secrets want, read by the services readers lists.
func checkSecrets(t *testing.T, p *types.Project, files, want, readers []string) {
	t.Helper()
	root := testenv.Root(t)
	var raw []byte
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		raw = append(raw, b...)
	}
	want = slices.Sorted(slices.Values(want))
	var got []string
	for name, s := range p.Secrets {
		got = append(got, name)
		if s.File != filepath.Join(user.secretsDir, name) {
			t.Errorf("secret %s: file %s, want %s in PIPEOPS_SECRETS_DIR", name, s.File, name)
		}
		fi, err := os.Stat(s.File)
		if err != nil {
			t.Fatalf("secret %s: %v", name, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != 0o640 || !ok || strconv.FormatUint(uint64(st.Gid), 10) != user.gid {
			t.Errorf("secret %s: mode %04o, want 0640 in group %s", name, fi.Mode().Perm(), user.gid)
		}
		v := secretValue(t, name)
		if v == "" {
			t.Fatalf("secret %s is empty", name)
		}
		if strings.Contains(string(raw), v) {
			t.Errorf("%v holds the %s secret", files, name)
		}
		for _, svcName := range p.ServiceNames() {
			for k, e := range service(t, p, svcName).Environment {
				if e != nil && strings.Contains(*e, v) {
					t.Errorf("%s: %s holds the %s secret", svcName, k, name)
				}
			}
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("secrets %v, want %v", got, want)
	}
	var gotReaders []string
	for _, name := range p.ServiceNames() {
		s := service(t, p, name)
		at := secretsAt(p, s)
		for k, e := range s.Environment {
			if e != nil && strings.HasPrefix(*e, "/run/secrets/") && at[*e] == "" {
				t.Errorf("%s: %s=%s is not a secret mounted into the service", name, k, *e)
			}
		}
		if len(s.Secrets) == 0 {
			continue
		}
		gotReaders = append(gotReaders, name)
		// PostgreSQL's entrypoint reads its file as root; the others run
		// as their own users.
		if name != "postgres" && !slices.Contains(s.GroupAdd, user.gid) {
			t.Errorf("%s reads secrets but does not join their group %s (group_add %v)", name, user.gid, s.GroupAdd)
		}
	}
	slices.Sort(gotReaders)
	if !slices.Equal(gotReaders, readers) {
		t.Errorf("services reading secrets: %v, want %v", gotReaders, readers)
	}
}

// TestInitSecretsKeeps: a second run of init-secrets.sh keeps every value
// and sets PIPEOPS_SECRETS_GID once.
func TestInitSecretsKeeps(t *testing.T) {
	root := testenv.Root(t)
	dir := t.TempDir()
	env := filepath.Join(dir, "env")
	run := func() {
		cmd := exec.Command("sh", filepath.Join(root, "deploy", "compose", "init-secrets.sh"), filepath.Join(dir, "s"))
		cmd.Env = append(os.Environ(), "PIPEOPS_ENV_FILE="+env)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("init-secrets.sh: %v\n%s", err, out)
		}
	}
	run() // no env file yet: made from .env.example
	first := map[string]string{}
	for _, name := range []string{"postgres_password", "key_encryption_key", "grafana_admin_password", "peer_secret"} {
		b, err := os.ReadFile(filepath.Join(dir, "s", name))
		if err != nil || len(strings.TrimSpace(string(b))) < 32 {
			t.Fatalf("%s: %q %v, want a random value", name, b, err)
		}
		first[name] = string(b)
	}
	run()
	for name, v := range first {
		if b, _ := os.ReadFile(filepath.Join(dir, "s", name)); string(b) != v {
			t.Errorf("%s changed on the second run", name)
		}
	}
	vars := readEnvFile(t, env)
	if vars["PIPEOPS_SECRETS_GID"] != user.gid || vars["PIPEOPS_SECRETS_DIR"] != filepath.Join(dir, "s") {
		t.Errorf("env file: PIPEOPS_SECRETS_GID=%q PIPEOPS_SECRETS_DIR=%q", vars["PIPEOPS_SECRETS_GID"], vars["PIPEOPS_SECRETS_DIR"])
	}
	b, _ := os.ReadFile(env)
	if n := strings.Count(string(b), "\nPIPEOPS_SECRETS_GID="); n != 1 {
		t.Errorf("env file sets PIPEOPS_SECRETS_GID %d times", n)
	}
	if fi, err := os.Stat(env); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("env file made with mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
}
