package compose

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
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
	}
	// The agent shares the k3s container's network, so it is reached by
	// that service's name.
	want := map[string]string{
		"controlplane": "controlplane:" + portOf(t, c.cp.ListenAddr),
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
		UID    string
		Title  string
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
// and the label list of the New*Vec call around it. Histograms also get their
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
