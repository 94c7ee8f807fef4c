package compose

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"
)

func TestPrometheusScrapesEveryComponent(t *testing.T) {
	p := stack(t)
	c := loadConfigs(t, p)
	prom := service(t, p, "prometheus")
	cfgFile := bindSource(t, prom, "/etc/prometheus/prometheus.yml")

	var cfg struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			MetricsPath   string `yaml:"metrics_path"`
			Scheme        string `yaml:"scheme"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
			DNSSDConfigs []struct {
				Names []string `yaml:"names"`
				Type  string   `yaml:"type"`
				Port  int      `yaml:"port"`
			} `yaml:"dns_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	readYAML(t, cfgFile, &cfg)
	jobs := map[string][]string{}
	for _, sc := range cfg.ScrapeConfigs {
		if sc.MetricsPath != "" && sc.MetricsPath != "/metrics" || sc.Scheme != "" && sc.Scheme != "http" {
			t.Errorf("job %s scrapes %s://...%s; every component serves plain http /metrics", sc.JobName, sc.Scheme, sc.MetricsPath)
		}
		for _, s := range sc.StaticConfigs {
			jobs[sc.JobName] = append(jobs[sc.JobName], s.Targets...)
		}
		// An A lookup yields one target per address of the name: every
		// replica of that service, at the port.
		for _, d := range sc.DNSSDConfigs {
			if d.Type != "A" || d.Port == 0 {
				t.Errorf("job %s: dns_sd_configs type %q port %d, want A records and a port", sc.JobName, d.Type, d.Port)
			}
			for _, n := range d.Names {
				jobs[sc.JobName] = append(jobs[sc.JobName], n+":"+strconv.Itoa(d.Port))
			}
		}
	}
	// The agent shares the k3s container's network, so it is reached by
	// that service's name.
	want := map[string]string{
		"controlplane": "controlplane:" + portOf(t, c.cp.AdminAddr),
		"gateway":      "gateway:" + portOf(t, c.gw.AdminAddr),
		"agent":        "k3s:" + portOf(t, c.agent.ListenAddr),
	}
	for job, target := range want {
		if !slices.Equal(jobs[job], []string{target}) {
			t.Errorf("prometheus job %s scrapes %v, want [%s] (the component's metrics address)", job, jobs[job], target)
		}
	}
	if agent := service(t, p, "agent"); agent.NetworkMode != "service:k3s" {
		t.Errorf("the agent target assumes network_mode service:k3s, got %q", agent.NetworkMode)
	}
}

func TestGrafanaProvisioning(t *testing.T) {
	p := stack(t)
	g := service(t, p, "grafana")
	prov := bindSource(t, g, "/etc/grafana/provisioning")
	dashDir := bindSource(t, g, "/etc/grafana/dashboards")

	var ds struct {
		Datasources []struct {
			Name, UID, Type, URL string
		} `yaml:"datasources"`
	}
	readYAML(t, filepath.Join(prov, "datasources", "prometheus.yaml"), &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" {
		t.Fatalf("datasources %+v, want one prometheus datasource", ds.Datasources)
	}
	promUID := ds.Datasources[0].UID
	prom := service(t, p, "prometheus")
	if want := "http://prometheus:" + strconv.Itoa(int(prom.Ports[0].Target)); ds.Datasources[0].URL != want {
		t.Errorf("datasource URL %s, want %s", ds.Datasources[0].URL, want)
	}

	var providers struct {
		Providers []struct {
			Type    string
			Options struct{ Path string }
		}
	}
	readYAML(t, filepath.Join(prov, "dashboards", "pipeops.yaml"), &providers)
	if len(providers.Providers) != 1 || providers.Providers[0].Type != "file" || providers.Providers[0].Options.Path != "/etc/grafana/dashboards" {
		t.Errorf("dashboard providers %+v, want one file provider reading /etc/grafana/dashboards", providers.Providers)
	}
	home := getenv(g)("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
	if _, err := os.Stat(filepath.Join(dashDir, strings.TrimPrefix(home, "/etc/grafana/dashboards/"))); err != nil || !strings.HasPrefix(home, "/etc/grafana/dashboards/") {
		t.Errorf("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH %q is not a provisioned dashboard", home)
	}

	metrics := registeredMetrics(t)
	dashboards, _ := filepath.Glob(filepath.Join(dashDir, "*.json"))
	if len(dashboards) == 0 {
		t.Fatal("no dashboards")
	}
	for _, file := range dashboards {
		checkDashboard(t, file, promUID, metrics)
	}
}

// checkDashboard requires every query to use the provisioned datasource and
// only metrics (and labels) the components register.
func checkDashboard(t *testing.T, file, promUID string, metrics map[string][]string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID        string
		Title      string
		Templating struct {
			List []struct {
				Name, Type string
				Datasource *struct{ Type, UID string }
				Definition string
			}
		}
		Panels []struct {
			ID         int
			Type       string
			Title      string
			Datasource *struct{ Type, UID string }
			Targets    []struct {
				Expr       string
				Datasource *struct{ Type, UID string }
			}
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Errorf("%s: a provisioned dashboard needs a uid and a title", file)
	}
	ids := map[int]bool{}
	name := regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	by := regexp.MustCompile(`by \(([^)]*)\)`)
	ref := regexp.MustCompile(`\$(\w+)`)
	unregistered := func(expr string) []string {
		var out []string
		for _, tok := range name.FindAllString(expr, -1) {
			if _, ok := metrics[tok]; strings.HasPrefix(tok, "pipeops_") && !ok {
				out = append(out, tok)
			}
		}
		return out
	}

	// Template variables: query variables on the provisioned datasource,
	// over metrics that exist; every variable a query refers to is defined
	// before it is used.
	vars := map[string]bool{}
	for _, v := range dash.Templating.List {
		if v.Type != "query" || v.Datasource == nil || v.Datasource.UID != promUID || !strings.HasPrefix(v.Definition, "label_values(") {
			t.Errorf("%s: variable %s is not a label_values query on datasource %s", file, v.Name, promUID)
		}
		for _, m := range ref.FindAllStringSubmatch(v.Definition, -1) {
			if !vars[m[1]] {
				t.Errorf("%s: variable %s refers to $%s, which is not defined before it", file, v.Name, m[1])
			}
		}
		if bad := unregistered(v.Definition); len(bad) > 0 {
			t.Errorf("%s: variable %s queries %v, which no component registers", file, v.Name, bad)
		}
		vars[v.Name] = true
	}
	for _, want := range []string{"cluster", "gateway"} {
		if !vars[want] {
			t.Errorf("%s: no %s variable", file, want)
		}
	}
	queries := 0
	for _, panel := range dash.Panels {
		if ids[panel.ID] {
			t.Errorf("%s: panel id %d used twice", file, panel.ID)
		}
		ids[panel.ID] = true
		if panel.Type == "row" {
			continue
		}
		if panel.Datasource == nil || panel.Datasource.UID != promUID {
			t.Errorf("%s: panel %q does not use datasource %s", file, panel.Title, promUID)
		}
		for _, tg := range panel.Targets {
			queries++
			if tg.Datasource == nil || tg.Datasource.UID != promUID {
				t.Errorf("%s: panel %q: a query does not use datasource %s", file, panel.Title, promUID)
			}
			for _, m := range ref.FindAllStringSubmatch(tg.Expr, -1) {
				if !vars[m[1]] {
					t.Errorf("%s: panel %q uses $%s, which is not a variable of the dashboard", file, panel.Title, m[1])
				}
			}
			labels := map[string]bool{"le": true, "job": true, "instance": true}
			for _, tok := range name.FindAllString(tg.Expr, -1) {
				if !strings.HasPrefix(tok, "pipeops_") {
					continue
				}
				ls, ok := metrics[tok]
				if !ok {
					t.Errorf("%s: panel %q queries %s, which no component registers", file, panel.Title, tok)
				}
				for _, l := range ls {
					labels[l] = true
				}
			}
			for _, m := range by.FindAllStringSubmatch(tg.Expr, -1) {
				for _, l := range strings.Split(m[1], ",") {
					if l = strings.TrimSpace(l); !labels[l] {
						t.Errorf("%s: panel %q groups by %q, which its metrics do not have", file, panel.Title, l)
					}
				}
			}
		}
	}
	if queries == 0 {
		t.Errorf("%s: no queries", file)
	}
}

// registeredMetrics finds the Prometheus metrics the components define, with
// their label names, by reading their sources: every prometheus.*Opts
// literal (Namespace, Subsystem and Name as string literals or constants),
// and the label list of the New*Vec call around it, and every
// prometheus.NewDesc of a custom collector. Histograms also get their
// _bucket, _sum and _count series.
func registeredMetrics(t *testing.T) map[string][]string {
	t.Helper()
	root := testenv.Root(t)
	metrics := map[string][]string{}
	fset := token.NewFileSet()
	for _, dir := range []string{"agent", "gateway", "controlplane"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			f, err := parser.ParseFile(fset, path, nil, 0)
			if err != nil {
				return err
			}
			collectMetrics(f, metrics)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(metrics) < 10 {
		t.Fatalf("found only %d metrics in the sources; the scanner no longer understands them", len(metrics))
	}
	return metrics
}

func collectMetrics(f *ast.File, metrics map[string][]string) {
	consts := map[string]string{}
	ast.Inspect(f, func(n ast.Node) bool {
		if vs, ok := n.(*ast.ValueSpec); ok {
			for i, id := range vs.Names {
				if i < len(vs.Values) {
					if s, ok := stringLit(vs.Values[i], nil); ok {
						consts[id.Name] = s
					}
				}
			}
		}
		return true
	})
	record := func(opts *ast.CompositeLit, kind string, labels []string) {
		var ns, sub, name string
		for _, e := range opts.Elts {
			kv, ok := e.(*ast.KeyValueExpr)
			if !ok {
				continue
			}
			key, _ := kv.Key.(*ast.Ident)
			if key == nil {
				continue
			}
			v, _ := stringLit(kv.Value, consts)
			switch key.Name {
			case "Namespace":
				ns = v
			case "Subsystem":
				sub = v
			case "Name":
				name = v
			}
		}
		if name == "" {
			return
		}
		full := prometheus.BuildFQName(ns, sub, name)
		metrics[full] = labels
		if kind == "HistogramOpts" || kind == "SummaryOpts" {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				metrics[full+suffix] = labels
			}
		}
	}
	seen := map[*ast.CompositeLit]bool{}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CallExpr: // prometheus.NewXVec(prometheus.XOpts{...}, []string{...})
			if name, labels, ok := promDesc(n, consts); ok {
				metrics[name] = labels
				return true
			}
			if len(n.Args) == 2 {
				if opts, kind := promOpts(n.Args[0]); opts != nil {
					var labels []string
					if lit, ok := n.Args[1].(*ast.CompositeLit); ok {
						for _, e := range lit.Elts {
							if s, ok := stringLit(e, consts); ok {
								labels = append(labels, s)
							}
						}
					}
					record(opts, kind, labels)
					seen[opts] = true
				}
			}
		case *ast.CompositeLit:
			if opts, kind := promOpts(n); opts != nil && !seen[opts] {
				record(opts, kind, nil)
			}
		}
		return true
	})
}

// promDesc reads a prometheus.NewDesc("name", "help", []string{labels},
// ...) call, the way a custom collector names its metrics.
func promDesc(call *ast.CallExpr, consts map[string]string) (string, []string, bool) {
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != "NewDesc" || len(call.Args) < 3 {
		return "", nil, false
	}
	if pkg, ok := sel.X.(*ast.Ident); !ok || pkg.Name != "prometheus" {
		return "", nil, false
	}
	name, ok := stringLit(call.Args[0], consts)
	if !ok {
		return "", nil, false
	}
	var labels []string
	if lit, ok := call.Args[2].(*ast.CompositeLit); ok {
		for _, e := range lit.Elts {
			if s, ok := stringLit(e, consts); ok {
				labels = append(labels, s)
			}
		}
	}
	return name, labels, true
}

// promOpts returns e when it is a prometheus.*Opts literal, and its type name.
func promOpts(e ast.Expr) (*ast.CompositeLit, string) {
	lit, ok := e.(*ast.CompositeLit)
	if !ok {
		return nil, ""
	}
	sel, ok := lit.Type.(*ast.SelectorExpr)
	if !ok {
		return nil, ""
	}
	if pkg, ok := sel.X.(*ast.Ident); !ok || pkg.Name != "prometheus" || !strings.HasSuffix(sel.Sel.Name, "Opts") {
		return nil, ""
	}
	return lit, sel.Sel.Name
}

func stringLit(e ast.Expr, consts map[string]string) (string, bool) {
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind == token.STRING {
			s, err := strconv.Unquote(e.Value)
			return s, err == nil
		}
	case *ast.Ident:
		s, ok := consts[e.Name]
		return s, ok
	}
	return "", false
}

// bindSource returns the host path bind-mounted at target in s, which must
// exist.
func bindSource(t *testing.T, s types.ServiceConfig, target string) string {
	t.Helper()
	for _, v := range s.Volumes {
		if v.Target == target {
			if v.Type != types.VolumeTypeBind || !v.ReadOnly {
				t.Errorf("%s: %s should be a read-only bind mount", s.Name, target)
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Fatalf("%s mounts %s from %s: %v", s.Name, target, v.Source, err)
			}
			return v.Source
		}
	}
	t.Fatalf("%s mounts nothing at %s", s.Name, target)
	return ""
}

func readYAML(t *testing.T, file string, v any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(false)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// promtool returns the path of promtool: the one in .testenv/bin (`make
// promtool` builds the version the rules are checked with), else one on
// PATH; without either it stops t as testenv.Require says (a skip here, a
// failure in CI).
func promtool(t testing.TB) string {
	t.Helper()
	p, err := testenv.FindTool("promtool", "promtool")
	testenv.Require(t, "promtool", err)
	return p
}

// runPromtool runs promtool with args in dir and fails t unless it exits 0.
func runPromtool(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// alertRule is a rule of a Prometheus rules file.
type alertRule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

// TestAlertRules: Prometheus loads every file of prometheus/rules (the
// mount and rule_files agree); the rules query only metrics the components
// register, group by labels those metrics have, and say how bad and what
// happened; each alert has a unit test in which it fires
// (prometheus/rules_test.yml); and promtool accepts the configuration and
// the rules, and passes the unit tests.
func TestAlertRules(t *testing.T) {
	p := stack(t)
	prom := service(t, p, "prometheus")
	cfgFile := bindSource(t, prom, "/etc/prometheus/prometheus.yml")
	const mounted = "/etc/prometheus/rules/"
	rulesDir := bindSource(t, prom, strings.TrimSuffix(mounted, "/"))

	var cfg struct {
		RuleFiles []string `yaml:"rule_files"`
	}
	readYAML(t, cfgFile, &cfg)
	var loaded []string
	for _, g := range cfg.RuleFiles {
		rel, ok := strings.CutPrefix(g, mounted)
		if !ok {
			t.Errorf("rule_files names %s, outside the mounted %s", g, mounted)
			continue
		}
		m, err := filepath.Glob(filepath.Join(rulesDir, rel))
		if err != nil {
			t.Fatal(err)
		}
		loaded = append(loaded, m...)
	}
	slices.Sort(loaded)
	present, _ := filepath.Glob(filepath.Join(rulesDir, "*"))
	if len(present) < 2 || !slices.Equal(loaded, present) {
		t.Fatalf("Prometheus loads %v of the rules files %v", loaded, present)
	}

	metrics := registeredMetrics(t)
	name := regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	grouping := regexp.MustCompile(`(?:by|without) \(([^)]*)\)`)
	alerts := map[string]bool{}
	for _, file := range loaded {
		var rf struct {
			Groups []struct {
				Name  string      `yaml:"name"`
				Rules []alertRule `yaml:"rules"`
			} `yaml:"groups"`
		}
		readYAML(t, file, &rf)
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				where := filepath.Base(file) + ": " + r.Alert
				if r.Alert == "" || alerts[r.Alert] {
					t.Errorf("%s: a rule without an alert name, or one used twice", where)
				}
				alerts[r.Alert] = true
				if s := r.Labels["severity"]; s != "warning" && s != "critical" {
					t.Errorf("%s: severity %q, want warning or critical", where, s)
				}
				if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
					t.Errorf("%s: a summary and a description are needed", where)
				}
				labels := map[string]bool{"job": true, "instance": true}
				used := 0
				for _, tok := range name.FindAllString(r.Expr, -1) {
					if !strings.HasPrefix(tok, "pipeops_") {
						continue
					}
					used++
					ls, ok := metrics[tok]
					if !ok {
						t.Errorf("%s queries %s, which no component registers", where, tok)
					}
					for _, l := range ls {
						labels[l] = true
					}
				}
				if used == 0 && !strings.HasPrefix(r.Expr, "up{") {
					t.Errorf("%s queries none of the components' metrics: %s", where, r.Expr)
				}
				for _, m := range grouping.FindAllStringSubmatch(r.Expr, -1) {
					for _, l := range strings.Split(m[1], ",") {
						if l = strings.TrimSpace(l); !labels[l] {
							t.Errorf("%s aggregates by %q, which its metrics do not have", where, l)
						}
					}
				}
			}
		}
	}

	// Every alert fires in a unit test.
	promDir := filepath.Dir(cfgFile)
	var unit struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	readYAML(t, filepath.Join(promDir, "rules_test.yml"), &unit)
	tested := map[string]bool{}
	for _, tc := range unit.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				tested[a.Alertname] = true
			}
		}
	}
	for a := range alerts {
		if !tested[a] {
			t.Errorf("alert %s never fires in prometheus/rules_test.yml", a)
		}
	}
	var unitFiles []string
	for _, f := range unit.RuleFiles {
		unitFiles = append(unitFiles, filepath.Join(promDir, f))
	}
	slices.Sort(unitFiles)
	if !slices.Equal(unitFiles, loaded) {
		t.Errorf("prometheus/rules_test.yml tests %v, want every rules file %v", unit.RuleFiles, loaded)
	}

	// promtool: the configuration as Prometheus sees it in the container
	// (rule_files rewritten to where the mount comes from), the rules, and
	// their unit tests.
	t.Run("promtool", func(t *testing.T) {
		conf := strings.ReplaceAll(readFile(t, cfgFile), mounted, rulesDir+"/")
		confFile := filepath.Join(t.TempDir(), "prometheus.yml")
		if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		out := runPromtool(t, promDir, "check", "config", confFile)
		if !strings.Contains(out, fmt.Sprintf("SUCCESS: %d rule files found", len(loaded))) {
			t.Errorf("promtool check config did not find the %d rules files:\n%s", len(loaded), out)
		}
		runPromtool(t, promDir, append([]string{"check", "rules"}, loaded...)...)
		runPromtool(t, promDir, "test", "rules", "rules_test.yml")
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
