package compose

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	composecli "github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	agentconfig "github.com/pipeops/tunnel/agent/config"
	cpcli "github.com/pipeops/tunnel/controlplane/cli"
	"github.com/pipeops/tunnel/gateway/server"
	"github.com/pipeops/tunnel/shared/testenv"
)

// testAgentToken is what the test puts in the agent_token secret file, as a
// user does with the token `cluster create` prints.
const testAgentToken = "test-agent-token"

// user is the setup a user makes before `docker compose up`: .env copied
// from .env.example, then deploy/compose/init-secrets.sh run with a
// secrets directory of its own (made once, in TestMain).
var user struct {
	envFile    string
	secretsDir string
	gid        string
}

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "compose-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		if err := setUp(dir); err != nil {
			fmt.Fprintln(os.Stderr, "compose tests: the user's setup:", err)
			return 1
		}
		return m.Run()
	}())
}

func setUp(dir string) error {
	root, err := filepath.Abs("../..")
	if err != nil {
		return err
	}
	example, err := os.ReadFile(filepath.Join(root, ".env.example"))
	if err != nil {
		return err
	}
	user.envFile = filepath.Join(dir, "env")
	user.secretsDir = filepath.Join(dir, "secrets")
	if err := os.WriteFile(user.envFile, example, 0o600); err != nil {
		return err
	}
	cmd := exec.Command("sh", filepath.Join(root, "deploy", "compose", "init-secrets.sh"), user.secretsDir)
	cmd.Env = append(os.Environ(), "PIPEOPS_ENV_FILE="+user.envFile)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("init-secrets.sh: %v\n%s", err, out)
	}
	gid, err := exec.Command("id", "-g").Output()
	if err != nil {
		return err
	}
	user.gid = strings.TrimSpace(string(gid))
	return os.WriteFile(filepath.Join(user.secretsDir, "agent_token"), []byte(testAgentToken+"\n"), 0o640)
}

// secretValue is the content of one of the user's secret files.
func secretValue(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(user.secretsDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

var (
	core       = []string{"controlplane", "gateway", "postgres"}
	demo       = []string{"agent", "k3s"}
	monitoring = []string{"grafana", "prometheus"}
)

// binaries maps the services built from deploy/images/Dockerfile to the
// binary their image runs.
var binaries = map[string]string{
	"controlplane": "pipeops-controlplane",
	"gateway":      "pipeops-gateway",
	"agent":        "pipeops-agent",
}

// load reads docker-compose.yml as `docker compose --profile ... up` would,
// with envFile as the .env file and extra (which wins over it, as the
// shell does) and nothing from this process's environment.
func load(t *testing.T, profiles []string, envFile string, extra map[string]string) (*types.Project, error) {
	t.Helper()
	return loadFiles(t, []string{"docker-compose.yml"}, profiles, envFile, extra)
}

// loadFiles is load of several compose files (paths from the repository
// root), each overriding the ones before it, as `docker compose -f A -f B`.
func loadFiles(t *testing.T, files, profiles []string, envFile string, extra map[string]string) (*types.Project, error) {
	t.Helper()
	root := testenv.Root(t)
	var env []string
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	var paths []string
	for _, f := range files {
		paths = append(paths, filepath.Join(root, f))
	}
	opts, err := composecli.NewProjectOptions(paths,
		composecli.WithWorkingDirectory(root),
		composecli.WithEnv(env),
		composecli.WithEnvFiles(envFile),
		composecli.WithDotEnv,
		composecli.WithProfiles(profiles),
	)
	if err != nil {
		t.Fatal(err)
	}
	return opts.LoadProject(context.Background())
}

// stack is the whole stack, every profile enabled, with the user's setup.
func stack(t *testing.T) *types.Project {
	t.Helper()
	p, err := load(t, []string{"*"}, user.envFile, nil)
	if err != nil {
		t.Fatalf("load docker-compose.yml: %v", err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, err := p.GetService(name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// getenv is the service's environment as its process sees it.
func getenv(s types.ServiceConfig) func(string) string {
	return func(k string) string {
		if v, ok := s.Environment[k]; ok && v != nil {
			return *v
		}
		return ""
	}
}

// secretsAt maps the paths where s sees its secrets to the files on this
// machine they are mounted from.
func secretsAt(p *types.Project, s types.ServiceConfig) map[string]string {
	m := map[string]string{}
	for _, ref := range s.Secrets {
		target := ref.Target
		if target == "" {
			target = ref.Source
		}
		if !path.IsAbs(target) {
			target = "/run/secrets/" + target
		}
		m[target] = p.Secrets[ref.Source].File
	}
	return m
}

// hostenv is getenv with the service's secret paths turned into the files
// they are mounted from, so that the components' own loaders read the
// secret files as they would inside the container.
func hostenv(p *types.Project, s types.ServiceConfig) func(string) string {
	at := secretsAt(p, s)
	return func(k string) string {
		v := getenv(s)(k)
		if f, ok := at[v]; ok {
			return f
		}
		return v
	}
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return p
}

// configs are the three components' configurations, loaded by their own
// code from the environment the compose file gives them.
type configs struct {
	cp    cpcli.Config
	gw    server.Config
	agent agentconfig.Config
}

func loadConfigs(t *testing.T, p *types.Project) configs {
	t.Helper()
	var c configs
	var err error
	cpSvc := service(t, p, "controlplane")
	if c.cp, err = cpcli.LoadConfig(hostenv(p, cpSvc)); err != nil {
		t.Fatalf("controlplane: LoadConfig with the compose environment: %v", err)
	}
	if !slices.Equal(cpSvc.Command, []string{"serve"}) {
		t.Errorf("controlplane command %q, want [serve]", cpSvc.Command)
	}
	if err := c.cp.ValidateServe(); err != nil {
		t.Errorf("controlplane serve: %v", err)
	}
	if c.cp.KEK == nil {
		t.Error("controlplane: no key-encryption key from the compose environment")
	}
	if c.gw, err = server.LoadConfig(hostenv(p, service(t, p, "gateway"))); err != nil {
		t.Fatalf("gateway: LoadConfig with the compose environment: %v", err)
	}
	agentSvc := service(t, p, "agent")
	if c.agent, err = agentconfig.Load(agentSvc.Command, hostenv(p, agentSvc)); err != nil {
		t.Fatalf("agent: config.Load with the compose environment: %v", err)
	}
	return c
}

func TestEnvExampleAloneIsRefused(t *testing.T) {
	root := testenv.Root(t)
	_, err := load(t, nil, filepath.Join(root, ".env.example"), nil)
	if err == nil || !strings.Contains(err.Error(), "PIPEOPS_SECRETS_GID") || !strings.Contains(err.Error(), "init-secrets.sh") {
		t.Fatalf("docker compose with .env.example unchanged: err = %v, want a refusal naming PIPEOPS_SECRETS_GID and init-secrets.sh", err)
	}
}

func TestEnvExample(t *testing.T) {
	root := testenv.Root(t)
	example := readEnvFile(t, filepath.Join(root, ".env.example"))
	if v, ok := example["PIPEOPS_SECRETS_GID"]; !ok || v != "" {
		t.Errorf(".env.example: PIPEOPS_SECRETS_GID=%q (documented %v); want it there and empty, for init-secrets.sh to set", v, ok)
	}
	// No secret is a variable: a name that sounds like one is a mistake.
	secretish := regexp.MustCompile(`PASSWORD|TOKEN|_KEY$|SECRET`)
	for name := range example {
		if secretish.MatchString(name) && !strings.HasPrefix(name, "PIPEOPS_SECRETS_") {
			t.Errorf(".env.example has %s: secrets are files (docker-compose.yml secrets:), not variables", name)
		}
	}

	raw, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, m := range regexp.MustCompile(`\$\{([A-Z0-9_]+)`).FindAllStringSubmatch(string(raw), -1) {
		used[m[1]] = true
	}
	for name := range used {
		if _, ok := example[name]; !ok {
			t.Errorf("docker-compose.yml uses ${%s}, which .env.example does not document", name)
		}
	}
	for name := range example {
		if !used[name] {
			t.Errorf(".env.example documents %s, which docker-compose.yml does not use", name)
		}
	}

	gi, err := os.ReadFile(filepath.Join(root, ".gitignore"))
	if err != nil {
		t.Fatal(err)
	}
	for _, entry := range []string{".env", "/secrets/"} {
		if !slices.Contains(strings.Split(string(gi), "\n"), entry) {
			t.Errorf(".gitignore does not list %s: it could be committed", entry)
		}
	}
	if v := example["PIPEOPS_SECRETS_DIR"]; v != "./secrets" {
		t.Errorf(".env.example: PIPEOPS_SECRETS_DIR=%q, want ./secrets (what .gitignore lists)", v)
	}
}

func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vars := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("%s: %q is not NAME=value", path, line)
			continue
		}
		vars[k] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return vars
}

func TestProfiles(t *testing.T) {
	for _, tc := range []struct {
		profiles []string
		want     []string
	}{
		{nil, core},
		{[]string{"demo"}, append(slices.Clone(core), demo...)},
		{[]string{"monitoring"}, append(slices.Clone(core), monitoring...)},
		{[]string{"*"}, append(append(slices.Clone(core), demo...), monitoring...)},
	} {
		p, err := load(t, tc.profiles, user.envFile, nil)
		if err != nil {
			t.Fatalf("profiles %v: %v", tc.profiles, err)
		}
		got := p.ServiceNames()
		slices.Sort(got)
		slices.Sort(tc.want)
		if !slices.Equal(got, tc.want) {
			t.Errorf("profiles %v: services %v, want %v", tc.profiles, got, tc.want)
		}
	}
	p := stack(t)
	for names, profile := range map[*[]string]string{&demo: "demo", &monitoring: "monitoring"} {
		for _, n := range *names {
			if s := service(t, p, n); !slices.Equal(s.Profiles, []string{profile}) {
				t.Errorf("%s: profiles %v, want [%s]", n, s.Profiles, profile)
			}
		}
	}
}

func TestDependsOn(t *testing.T) {
	p := stack(t)
	want := map[string][]string{
		"controlplane": {"postgres"},
		"gateway":      {"controlplane"},
		"agent":        {"controlplane", "gateway", "k3s"},
		"grafana":      {"prometheus"},
	}
	for _, name := range p.ServiceNames() {
		s := service(t, p, name)
		var got []string
		for dep, d := range s.DependsOn {
			got = append(got, dep)
			if d.Condition != types.ServiceConditionHealthy {
				t.Errorf("%s depends on %s with condition %q, want %s", name, dep, d.Condition, types.ServiceConditionHealthy)
			}
			if ds := service(t, p, dep); ds.HealthCheck == nil {
				t.Errorf("%s waits for %s to be healthy, which has no healthcheck", name, dep)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, want[name]) {
			t.Errorf("%s depends on %v, want %v", name, got, want[name])
		}
	}
}

func TestHealthchecks(t *testing.T) {
	p := stack(t)
	c := loadConfigs(t, p)
	// The distroless images have no shell, curl or wget: the binaries check
	// their own endpoints ("healthcheck URL", exit 0 on a 2xx answer).
	wantURL := map[string]string{
		"controlplane": "http://127.0.0.1:" + portOf(t, c.cp.ListenAddr) + "/readyz",
		"gateway":      "http://127.0.0.1:" + portOf(t, c.gw.AdminAddr) + "/readyz",
		"agent":        "http://127.0.0.1:" + portOf(t, c.agent.ListenAddr) + "/ready",
	}
	for _, name := range p.ServiceNames() {
		s := service(t, p, name)
		if s.HealthCheck == nil || len(s.HealthCheck.Test) < 2 {
			t.Errorf("%s has no healthcheck", name)
			continue
		}
		test := s.HealthCheck.Test
		if test[0] != "CMD" {
			t.Errorf("%s healthcheck %q: want the exec form [CMD, ...]", name, test)
		}
		bin, ours := binaries[name]
		if !ours {
			continue
		}
		want := []string{"CMD", "/usr/local/bin/" + bin, "healthcheck", wantURL[name]}
		if !slices.Equal(test, want) {
			t.Errorf("%s healthcheck %q, want %q", name, test, want)
		}
	}
}

func TestBuilds(t *testing.T) {
	p := stack(t)
	root := testenv.Root(t)
	df, err := os.ReadFile(filepath.Join(root, "deploy", "images", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for name := range binaries {
		s := service(t, p, name)
		if s.Build == nil {
			t.Errorf("%s is not built from the repository", name)
			continue
		}
		if s.Build.Context != root || s.Build.Dockerfile != "deploy/images/Dockerfile" || s.Build.Target != name {
			t.Errorf("%s build: context %q dockerfile %q target %q; want the repository root, deploy/images/Dockerfile, %s",
				name, s.Build.Context, s.Build.Dockerfile, s.Build.Target, name)
		}
		if !regexp.MustCompile(`(?m)^FROM \S+ AS ` + name + `$`).Match(df) {
			t.Errorf("deploy/images/Dockerfile has no target %s", name)
		}
		for _, arg := range []string{"VERSION", "COMMIT"} {
			if v := s.Build.Args[arg]; v == nil || *v == "" {
				t.Errorf("%s build does not pass %s", name, arg)
			}
		}
	}
}

func TestComponentConfigs(t *testing.T) {
	p := stack(t)
	c := loadConfigs(t, p)
	pg := service(t, p, "postgres")
	pgEnv := getenv(pg)

	// Both servers use the postgres service's database with its credentials.
	for name, dsn := range map[string]string{"controlplane": c.cp.DatabaseURL, "gateway": c.gw.DatabaseURL} {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatalf("%s DATABASE_URL: %v", name, err)
		}
		pw, _ := u.User.Password()
		if u.Hostname() != "postgres" || u.Port() != "5432" || u.User.Username() != pgEnv("POSTGRES_USER") ||
			pw != secretValue(t, "postgres_password") || strings.TrimPrefix(u.Path, "/") != pgEnv("POSTGRES_DB") {
			t.Errorf("%s database URL (password from DATABASE_PASSWORD_FILE) does not match the postgres service (user %s, db %s, the postgres_password secret)",
				name, pgEnv("POSTGRES_USER"), pgEnv("POSTGRES_DB"))
		}
	}
	if f := secretsAt(p, pg)[pgEnv("POSTGRES_PASSWORD_FILE")]; f == "" || f != filepath.Join(user.secretsDir, "postgres_password") {
		t.Errorf("the postgres service's POSTGRES_PASSWORD_FILE %q is not the postgres_password secret", pgEnv("POSTGRES_PASSWORD_FILE"))
	}

	// The gateway finds the control plane's JWKS; the agent finds its API.
	cpURL := "http://controlplane:" + portOf(t, c.cp.ListenAddr)
	if c.gw.ControlPlaneURL != cpURL {
		t.Errorf("gateway CONTROLPLANE_URL %q, want %q", c.gw.ControlPlaneURL, cpURL)
	}
	if c.agent.APIURL != cpURL {
		t.Errorf("agent PIPEOPS_API_URL %q, want %q", c.agent.APIURL, cpURL)
	}

	// Agents are told a /ws URL that reaches the gateway's listener and is
	// served there (GATEWAY_HOSTS).
	ws, err := url.Parse(c.cp.GatewayWSURL)
	if err != nil {
		t.Fatal(err)
	}
	if ws.Scheme != "ws" || ws.Hostname() != "gateway" || ws.Port() != portOf(t, c.gw.HTTPAddr) || ws.Path != "/ws" {
		t.Errorf("GATEWAY_WS_URL %q does not reach the gateway's HTTP listener %s from the compose network", c.cp.GatewayWSURL, c.gw.HTTPAddr)
	}
	if !slices.Contains(c.gw.GatewayHosts, "gateway") {
		t.Errorf("GATEWAY_HOSTS %v lacks gateway: /ws would not be served to the demo agent", c.gw.GatewayHosts)
	}

	// Prometheus must reach the gateway's admin listener from another container.
	if h, _, _ := net.SplitHostPort(c.gw.AdminAddr); h != "" && h != "0.0.0.0" && h != "::" {
		t.Errorf("gateway ADMIN_ADDR %s listens on %s only", c.gw.AdminAddr, h)
	}
	if c.gw.HTTPSAddr == "" {
		t.Error("gateway has no HTTPS listener")
	}

	// State that must survive a restart lives on volumes.
	gw := service(t, p, "gateway")
	if !onVolume(gw, c.gw.ACMECacheDir) {
		t.Errorf("gateway ACME_CACHE_DIR %s is not on a volume", c.gw.ACMECacheDir)
	}
	agent := service(t, p, "agent")
	if !onVolume(agent, c.agent.StateFile) {
		t.Errorf("agent AGENT_STATE_FILE %q is not on a volume", c.agent.StateFile)
	}
	if !onVolume(pg, "/var/lib/postgresql/data/PG_VERSION") {
		t.Error("postgres data is not on a volume")
	}

	// The agent reads the kubeconfig k3s writes, through a shared volume,
	// and shares k3s's network so that the kubeconfig's 127.0.0.1:6443 is
	// the API server.
	k3s := service(t, p, "k3s")
	out := getenv(k3s)("K3S_KUBECONFIG_OUTPUT")
	kv, kOK := volumeAt(k3s, out)
	av, aOK := volumeAt(agent, c.agent.Kubeconfig)
	if !kOK || !aOK || kv.Source != av.Source || path.Base(out) != path.Base(c.agent.Kubeconfig) {
		t.Errorf("agent KUBECONFIG %q is not the file k3s writes (K3S_KUBECONFIG_OUTPUT %q) on a shared volume", c.agent.Kubeconfig, out)
	}
	if !av.ReadOnly {
		t.Error("the agent mounts the k3s kubeconfig writable")
	}
	if agent.NetworkMode != "service:k3s" {
		t.Errorf("agent network_mode %q, want service:k3s", agent.NetworkMode)
	}
	if hc := k3s.HealthCheck; hc == nil || !slices.Contains(hc.Test, "--kubeconfig="+out) {
		t.Errorf("k3s healthcheck %v: kubectl must read the kubeconfig k3s writes to %s", hc, out)
	}
	if !k3s.Privileged {
		t.Error("k3s must run privileged")
	}
	if c.agent.Token != testAgentToken {
		t.Error("the agent does not take its token from the agent_token secret")
	}
}

// volumeAt returns the volume or bind mount that holds file in s.
func volumeAt(s types.ServiceConfig, file string) (types.ServiceVolumeConfig, bool) {
	if file == "" {
		return types.ServiceVolumeConfig{}, false
	}
	for _, v := range s.Volumes {
		if file == v.Target || strings.HasPrefix(file, strings.TrimSuffix(v.Target, "/")+"/") {
			return v, true
		}
	}
	return types.ServiceVolumeConfig{}, false
}

func onVolume(s types.ServiceConfig, file string) bool {
	v, ok := volumeAt(s, file)
	return ok && v.Type == types.VolumeTypeVolume && !v.ReadOnly
}

func TestPorts(t *testing.T) {
	p := stack(t)
	c := loadConfigs(t, p)
	type port struct{ hostIP, published, target string }
	want := map[string][]port{
		"postgres":     {{"127.0.0.1", "5432", "5432"}},
		"controlplane": {{"127.0.0.1", "8080", portOf(t, c.cp.ListenAddr)}},
		"gateway":      {{"", "80", portOf(t, c.gw.HTTPAddr)}, {"", "443", portOf(t, c.gw.HTTPSAddr)}},
		"k3s":          {{"127.0.0.1", "6443", "6443"}},
		"prometheus":   {{"127.0.0.1", "9090", "9090"}},
		"grafana":      {{"127.0.0.1", "3000", "3000"}},
	}
	for _, name := range p.ServiceNames() {
		s := service(t, p, name)
		var got []port
		for _, pc := range s.Ports {
			got = append(got, port{pc.HostIP, pc.Published, itoa(pc.Target)})
		}
		if !slices.Equal(got, want[name]) {
			t.Errorf("%s publishes %v, want %v", name, got, want[name])
		}
	}
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }
