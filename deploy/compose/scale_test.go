package compose

import (
	"bufio"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"

	cpcli "github.com/pipeops/tunnel/controlplane/cli"
	"github.com/pipeops/tunnel/gateway/server"
	"github.com/pipeops/tunnel/shared/testenv"
)

// scaleFiles is `docker compose -f docker-compose.yml -f deploy/compose/scale.yml`.
var scaleFiles = []string{"docker-compose.yml", "deploy/compose/scale.yml"}

// haproxyConfigAt is where the haproxy image reads its configuration.
const haproxyConfigAt = "/usr/local/etc/haproxy/haproxy.cfg"

// scaled is the whole stack with the scale override, every profile
// enabled, with the user's setup.
func scaled(t *testing.T) *types.Project {
	t.Helper()
	p, err := loadFiles(t, scaleFiles, []string{"*"}, user.envFile, nil)
	if err != nil {
		t.Fatalf("load %v: %v", scaleFiles, err)
	}
	return p
}

// TestScaleServices: the override adds only the balancer, and every
// service of the merged model keeps the rules of the base one (a pinned
// image or our build, rotated logs, a memory limit, an exec-form
// healthcheck, dependencies on healthy services).
func TestScaleServices(t *testing.T) {
	base, p := stack(t), scaled(t)
	want := append(base.ServiceNames(), "balancer")
	got := p.ServiceNames()
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("services %v, want those of docker-compose.yml and balancer: %v", got, want)
	}
	for _, name := range got {
		s := service(t, p, name)
		if s.Build == nil && (s.Image == "" || strings.HasSuffix(s.Image, ":latest") || !strings.Contains(s.Image, ":")) {
			t.Errorf("%s: image %q is not pinned by tag", name, s.Image)
		}
		if s.Logging == nil || s.Logging.Driver != "json-file" || s.Logging.Options["max-size"] == "" || s.Logging.Options["max-file"] == "" {
			t.Errorf("%s: logging %+v, want json-file with max-size and max-file", name, s.Logging)
		}
		if s.Deploy == nil || s.Deploy.Resources.Limits == nil || s.Deploy.Resources.Limits.MemoryBytes <= 0 {
			t.Errorf("%s: no memory limit", name)
		}
		if s.HealthCheck == nil || len(s.HealthCheck.Test) < 2 || s.HealthCheck.Test[0] != "CMD" {
			t.Errorf("%s: healthcheck %v, want the exec form [CMD, ...]", name, s.HealthCheck)
		}
		for dep, d := range s.DependsOn {
			if d.Condition != types.ServiceConditionHealthy {
				t.Errorf("%s depends on %s with condition %q, want %s", name, dep, d.Condition, types.ServiceConditionHealthy)
			}
		}
	}
	if d, ok := service(t, p, "balancer").DependsOn["gateway"]; !ok || d.Condition != types.ServiceConditionHealthy {
		t.Error("the balancer does not wait for a healthy gateway")
	}
}

// TestScaleGateway: the gateways run as replicas that publish nothing,
// tell each other apart by host name, and find each other on the peer
// listener with the shared peer_secret, as the gateway's own configuration
// code reads the merged environment.
func TestScaleGateway(t *testing.T) {
	p := scaled(t)
	gw := service(t, p, "gateway")
	if n := gw.GetScale(); n < 2 {
		t.Errorf("gateway replicas %d without --scale, want several", n)
	}
	if len(gw.Ports) != 0 {
		t.Errorf("gateway publishes %v: replicas cannot share host ports; the balancer publishes them", gw.Ports)
	}
	// Every replica must keep its own host name, which is its GATEWAY_ID
	// and, resolved by Docker's DNS, its PEER_URL.
	if gw.Hostname != "" || gw.ContainerName != "" {
		t.Errorf("gateway sets hostname %q / container_name %q: every replica would have the same", gw.Hostname, gw.ContainerName)
	}
	env := getenv(gw)
	for _, k := range []string{"GATEWAY_ID", "PEER_URL"} {
		if _, ok := gw.Environment[k]; ok {
			t.Errorf("gateway sets %s=%q: every replica would have the same; the default (the container's host name) is unique", k, env(k))
		}
	}

	c, err := server.LoadConfig(hostenv(p, gw))
	if err != nil {
		t.Fatalf("gateway: LoadConfig with the scaled compose environment: %v", err)
	}
	if c.PeerAddr == "" {
		t.Fatal("gateway has no PEER_ADDR: a gateway without the agent's tunnel could not forward to the one with it")
	}
	if f := secretsAt(p, gw)[env("PEER_SECRET_FILE")]; f != filepath.Join(user.secretsDir, "peer_secret") {
		t.Errorf("gateway PEER_SECRET_FILE %q is not the peer_secret secret mounted into it", env("PEER_SECRET_FILE"))
	}
	if c.PeerSecret != secretValue(t, "peer_secret") {
		t.Error("the gateway's peer secret is not the content of the peer_secret secret")
	}
	if want := "http://" + c.GatewayID + ":" + portOf(t, c.PeerAddr); c.PeerURL != want {
		t.Errorf("gateway PEER_URL %q, want %q (its host name and the port of PEER_ADDR)", c.PeerURL, want)
	}
	if gw.StopGracePeriod == nil || time.Duration(*gw.StopGracePeriod) <= c.ShutdownTimeout {
		t.Errorf("gateway stop_grace_period %v is not longer than its SHUTDOWN_TIMEOUT %s: Docker would kill it while it drains", gw.StopGracePeriod, c.ShutdownTimeout)
	}

	// The demo agent keeps dialing the service name, which Docker's DNS
	// answers with every replica (scale.yml says why that is enough).
	cp, err := cpcli.LoadConfig(hostenv(p, service(t, p, "controlplane")))
	if err != nil {
		t.Fatalf("controlplane: LoadConfig with the scaled compose environment: %v", err)
	}
	ws, err := url.Parse(cp.GatewayWSURL)
	if err != nil {
		t.Fatal(err)
	}
	if ws.Hostname() != "gateway" || ws.Port() != portOf(t, c.HTTPAddr) || !slices.Contains(c.GatewayHosts, "gateway") {
		t.Errorf("GATEWAY_WS_URL %q (GATEWAY_HOSTS %v) does not reach the gateway replicas' /ws", cp.GatewayWSURL, c.GatewayHosts)
	}
}

// TestScaleBalancer: the balancer publishes what the gateway published in
// docker-compose.yml, and its configuration forwards each of those ports,
// as plain TCP, to the same port of every gateway replica, checked on the
// admin port's /readyz; its own healthcheck is the configuration's
// monitor URI.
func TestScaleBalancer(t *testing.T) {
	base, p := stack(t), scaled(t)
	c := loadConfigs(t, base)
	lb := service(t, p, "balancer")
	cfg := parseHAProxy(t, bindSource(t, lb, haproxyConfigAt))
	gw := service(t, p, "gateway")
	replicas := gw.GetScale()

	basePorts := service(t, base, "gateway").Ports
	if len(lb.Ports) != len(basePorts) {
		t.Fatalf("balancer publishes %v, want the ports the gateway publishes alone: %v", lb.Ports, basePorts)
	}
	for i, gp := range basePorts {
		bp := lb.Ports[i]
		if bp.HostIP != gp.HostIP || bp.Published != gp.Published || bp.Protocol != gp.Protocol {
			t.Errorf("balancer publishes %s:%s/%s, want %s:%s/%s as the gateway alone", bp.HostIP, bp.Published, bp.Protocol, gp.HostIP, gp.Published, gp.Protocol)
		}
		fe := cfg.frontendBinding(itoa(bp.Target))
		if fe == "" {
			t.Errorf("balancer publishes %s on %d, where no frontend of haproxy.cfg listens", bp.Published, bp.Target)
			continue
		}
		be := cfg.value(fe, "default_backend")
		want := "gateway:" + itoa(gp.Target)
		tpl := cfg.directive("backend "+be, "server-template")
		if len(tpl) < 4 || tpl[3] != want {
			t.Errorf("%s forwards to backend %s with server-template %v, want replicas of %s", fe, be, tpl, want)
			continue
		}
		if slots, err := strconv.Atoi(tpl[2]); err != nil || slots < replicas {
			t.Errorf("backend %s has %s server slots, fewer than the gateway's replicas", be, tpl[2])
		}
		checkBackendHealth(t, cfg, "backend "+be, portOf(t, c.gw.AdminAddr))
	}

	// TLS passes through: nothing but the health frontend speaks HTTP,
	// nothing binds with a certificate.
	if m := cfg.value("defaults", "mode"); m != "tcp" {
		t.Errorf("haproxy.cfg defaults: mode %q, want tcp", m)
	}
	for sec, lines := range cfg {
		for _, l := range lines {
			if l[0] == "bind" && slices.Contains(l, "ssl") {
				t.Errorf("%s: %v terminates TLS; the gateways need the client's own handshake (SNI, ACME)", sec, l)
			}
			if l[0] == "mode" && l[1] != "tcp" && sec != "frontend health" {
				t.Errorf("%s: mode %s, want tcp", sec, l[1])
			}
		}
	}

	// Replicas come and go: the balancer asks Docker's DNS again.
	if ns := cfg.directive("resolvers docker", "nameserver"); len(ns) != 3 || ns[2] != "127.0.0.11:53" {
		t.Errorf("resolvers docker: nameserver %v, want Docker's embedded DNS 127.0.0.11:53", ns)
	}

	hc := lb.HealthCheck
	if hc == nil || len(hc.Test) == 0 {
		t.Fatal("balancer has no healthcheck")
	}
	u, err := url.Parse(hc.Test[len(hc.Test)-1])
	if err != nil || u.Hostname() != "127.0.0.1" {
		t.Fatalf("balancer healthcheck %v: want a URL on 127.0.0.1 last", hc.Test)
	}
	if cfg.frontendBinding(u.Port()) != "frontend health" || cfg.value("frontend health", "monitor-uri") != u.Path {
		t.Errorf("balancer healthcheck %s is not the monitor-uri of haproxy.cfg's health frontend", u)
	}
	for _, pc := range lb.Ports {
		if itoa(pc.Target) == u.Port() {
			t.Errorf("the balancer publishes its health port %d", pc.Target)
		}
	}
}

// checkBackendHealth requires the servers of backend to be found through
// the docker resolvers and checked with GET /readyz on adminPort.
func checkBackendHealth(t *testing.T, cfg haproxyConfig, backend, adminPort string) {
	t.Helper()
	if !slices.ContainsFunc(cfg[backend], func(l []string) bool { return slices.Equal(l, []string{"option", "httpchk"}) }) {
		t.Errorf("%s: no option httpchk: replicas are not checked over HTTP", backend)
	}
	send := cfg.directive(backend, "http-check")
	if !slices.Equal(send, []string{"http-check", "send", "meth", "GET", "uri", "/readyz"}) {
		t.Errorf("%s: %v, want http-check send meth GET uri /readyz", backend, send)
	}
	// The server options are the defaults' default-server and the
	// server-template's own.
	opts := append(slices.Clone(cfg.directive("defaults", "default-server")), cfg.directive(backend, "server-template")...)
	after := func(k string) string {
		if i := slices.Index(opts, k); i >= 0 && i+1 < len(opts) {
			return opts[i+1]
		}
		return ""
	}
	if !slices.Contains(opts, "check") || after("port") != adminPort {
		t.Errorf("%s: server options %v, want check port %s (the gateway's ADMIN_ADDR)", backend, opts, adminPort)
	}
	if after("resolvers") != "docker" || after("init-addr") != "none" {
		t.Errorf("%s: server options %v, want resolvers docker and init-addr none", backend, opts)
	}
}

// haproxyConfig is haproxy.cfg as sections ("global", "defaults",
// "frontend http", ...) of directives split into words.
type haproxyConfig map[string][][]string

func parseHAProxy(t *testing.T, file string) haproxyConfig {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg := haproxyConfig{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		words := strings.Fields(line)
		if len(words) == 0 {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			section = strings.Join(words, " ")
			if _, dup := cfg[section]; dup {
				t.Errorf("%s: section %q twice", file, section)
			}
			cfg[section] = nil
			continue
		}
		if section == "" {
			t.Fatalf("%s: %q outside any section", file, line)
		}
		cfg[section] = append(cfg[section], words)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// directive is the first directive named name in section, nil when none.
func (c haproxyConfig) directive(section, name string) []string {
	for _, l := range c[section] {
		if l[0] == name {
			return l
		}
	}
	return nil
}

// value is the first argument of directive name in section.
func (c haproxyConfig) value(section, name string) string {
	if d := c.directive(section, name); len(d) > 1 {
		return d[1]
	}
	return ""
}

// frontendBinding is the frontend that binds port on every address.
func (c haproxyConfig) frontendBinding(port string) string {
	for sec := range c {
		if !strings.HasPrefix(sec, "frontend ") {
			continue
		}
		for _, l := range c[sec] {
			if l[0] == "bind" && len(l) > 1 && (l[1] == ":"+port || l[1] == "*:"+port) {
				return sec
			}
		}
	}
	return ""
}

// TestScaleHAProxyAccepts runs `haproxy -c` on the balancer's
// configuration, warnings counting as errors (-dW). The Debian package may
// be older than the image's HAProxy; the configuration keeps to what both
// accept. Missing haproxy skips the test, except in CI.
func TestScaleHAProxyAccepts(t *testing.T) {
	p := scaled(t)
	cfg := bindSource(t, service(t, p, "balancer"), haproxyConfigAt)
	bin, err := findHAProxy()
	testenv.Require(t, "haproxy", err)
	out, err := exec.Command(bin, "-dW", "-c", "-f", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c -f %s: %v\n%s", cfg, err, out)
	}
}

func findHAProxy() (string, error) {
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p, nil
	}
	// Debian installs it in /usr/sbin, which a user's PATH may lack.
	if _, err := os.Stat("/usr/sbin/haproxy"); err == nil {
		return "/usr/sbin/haproxy", nil
	}
	return "", fmt.Errorf("%w: haproxy is not installed; run `make deps` (shared/testenv/install-deps.sh)", testenv.ErrUnavailable)
}

// TestScaleEnvDocumented: scale.yml uses only variables .env.example
// documents (TestEnvExample holds docker-compose.yml to the same).
func TestScaleEnvDocumented(t *testing.T) {
	root := testenv.Root(t)
	example := readEnvFile(t, filepath.Join(root, ".env.example"))
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "compose", "scale.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`\$\{([A-Z0-9_]+)`).FindAllStringSubmatch(string(raw), -1) {
		if _, ok := example[m[1]]; !ok {
			t.Errorf("scale.yml uses ${%s}, which .env.example does not document", m[1])
		}
	}
}
