package routetable

import (
	"fmt"
	"slices"
	"testing"

	"github.com/pipeops/tunnel/controlplane"
)

const (
	clusterA = "00000000-0000-0000-0000-00000000000a"
	clusterB = "00000000-0000-0000-0000-00000000000b"
)

// rt is a route whose ServiceName names it, so a test can say which route
// a lookup should find.
func rt(cluster, host, path, pathType, name string) controlplane.Route {
	return controlplane.Route{Hostname: host, Path: path, PathType: pathType, ClusterUUID: cluster,
		Namespace: "default", ServiceName: name, ServicePort: 80}
}

func tableRoutes() []controlplane.Route {
	const (
		prefix = controlplane.PathTypePrefix
		exact  = controlplane.PathTypeExact
		impl   = controlplane.PathTypeImplementationSpecific
	)
	return []controlplane.Route{
		rt(clusterA, "example.com", "/", prefix, "root"),
		rt(clusterA, "example.com", "/api", prefix, "api"),
		rt(clusterA, "example.com", "/api/v1", prefix, "api-v1"),
		rt(clusterA, "example.com", "/files/", prefix, "files"),
		rt(clusterA, "example.com", "/files/report", exact, "report-exact"),
		rt(clusterA, "example.com", "/files/report/", prefix, "report-prefix"),
		rt(clusterA, "api.example.com", "/v1", prefix, "api-host-v1"),
		rt(clusterA, "*.example.com", "/", prefix, "wildcard"),
		rt(clusterB, "Upper.Example.NET.", "", "", "upper"),
		rt(clusterB, "impl.test", "/static", impl, "impl"),
		rt(clusterB, "exact.test", "/only", exact, "only-exact"),
		rt(clusterB, "*.wild.test", "/a", prefix, "wild-a"),
	}
}

func tableClusters() []*controlplane.Cluster {
	return []*controlplane.Cluster{
		{UUID: clusterA, Name: "alpha", IngressController: &controlplane.IngressController{
			Name: "ingress-nginx-controller", Namespace: "ingress-nginx", Port: 80, Type: "nginx"}},
		{UUID: clusterB, Name: "bravo"}, // never synced an ingress controller
	}
}

func TestTableLookup(t *testing.T) {
	tests := []struct {
		name, host, path string
		want             string // ServiceName of the route found; "" for a miss
	}{
		{"root", "example.com", "/", "root"},
		{"empty path is root", "example.com", "", "root"},
		{"unclaimed path falls to root", "example.com", "/index.html", "root"},
		{"prefix itself", "example.com", "/api", "api"},
		{"prefix with slash", "example.com", "/api/", "api"},
		{"below prefix", "example.com", "/api/users", "api"},
		{"longest prefix wins", "example.com", "/api/v1/users", "api-v1"},
		{"longest prefix itself", "example.com", "/api/v1", "api-v1"},
		{"prefix is element-wise", "example.com", "/apiv1", "root"},
		{"last element must match whole", "example.com", "/api/v10", "api"},
		{"route's trailing slash ignored", "example.com", "/files", "files"},
		{"exact beats prefix of same path", "example.com", "/files/report", "report-exact"},
		{"prefix below the exact path", "example.com", "/files/report/2024", "report-prefix"},
		{"exact needs identical path", "exact.test", "/only", "only-exact"},
		{"exact does not take a slash", "exact.test", "/only/", ""},
		{"exact does not take a child", "exact.test", "/only/x", ""},
		{"port stripped", "example.com:8443", "/api", "api"},
		{"case folded", "Example.COM", "/api", "api"},
		{"case folded with port", "Example.COM:8443", "/api", "api"},
		{"trailing dot", "example.com.", "/api", "api"},
		{"trailing dot and port", "EXAMPLE.com.:443", "/api", "api"},
		{"route hostname normalized", "upper.example.net", "/x", "upper"},
		{"path is case sensitive", "example.com", "/API", "root"},
		{"wildcard one label", "a.example.com", "/", "wildcard"},
		{"wildcard case folded", "A.Example.Com:80", "/x", "wildcard"},
		{"wildcard not two labels", "a.b.example.com", "/", ""},
		{"wildcard not the bare domain", "wild.test", "/a", ""},
		{"wildcard needs a first label", ".example.com", "/", ""},
		{"exact host before wildcard", "api.example.com", "/v1/items", "api-host-v1"},
		{"exact host without matching path falls to wildcard", "api.example.com", "/other", "wildcard"},
		{"wildcard paths apply", "x.wild.test", "/a/b", "wild-a"},
		{"wildcard path miss", "x.wild.test", "/b", ""},
		{"implementation specific is prefix", "impl.test", "/static/app.js", "impl"},
		{"implementation specific element-wise", "impl.test", "/staticx", ""},
		{"unknown host", "unknown.org", "/", ""},
		{"empty host", "", "/", ""},
		{"ipv6 literal", "[::1]:8080", "/", ""},
	}
	routes := tableRoutes()
	reversed := slices.Clone(routes)
	slices.Reverse(reversed)
	// The order the routes come in must not matter.
	for _, order := range []struct {
		name   string
		routes []controlplane.Route
	}{{"given", routes}, {"reversed", reversed}} {
		table := NewTable(order.routes, tableClusters())
		for _, tt := range tests {
			t.Run(order.name+"/"+tt.name, func(t *testing.T) {
				m, ok := table.Lookup(tt.host, tt.path)
				switch {
				case tt.want == "" && ok:
					t.Fatalf("Lookup(%q, %q) found %s %s (%s), want no match", tt.host, tt.path, m.Route.Hostname, m.Route.Path, m.Route.ServiceName)
				case tt.want != "" && !ok:
					t.Fatalf("Lookup(%q, %q) found nothing, want %s", tt.host, tt.path, tt.want)
				case ok && m.Route.ServiceName != tt.want:
					t.Fatalf("Lookup(%q, %q) = %s %s (%s), want %s", tt.host, tt.path, m.Route.Hostname, m.Route.Path, m.Route.ServiceName, tt.want)
				}
			})
		}
	}
}

func TestTableMatchDetails(t *testing.T) {
	table := NewTable(tableRoutes(), tableClusters())
	if got, want := table.Len(), len(tableRoutes()); got != want {
		t.Errorf("Len() = %d, want %d", got, want)
	}

	m, ok := table.Lookup("a.example.com", "/")
	if !ok {
		t.Fatal("wildcard lookup missed")
	}
	if m.Route.Hostname != "*.example.com" {
		t.Errorf("Route.Hostname = %q, want the route's own *.example.com", m.Route.Hostname)
	}
	if m.Route.ClusterUUID != clusterA {
		t.Errorf("Route.ClusterUUID = %q, want %q", m.Route.ClusterUUID, clusterA)
	}
	if m.IngressController == nil || m.IngressController.Name != "ingress-nginx-controller" || m.IngressController.Port != 80 {
		t.Errorf("IngressController = %+v, want alpha's", m.IngressController)
	}

	m, ok = table.Lookup("upper.example.net", "/")
	if !ok {
		t.Fatal("lookup missed")
	}
	if m.IngressController != nil {
		t.Errorf("IngressController = %+v for a cluster that reported none, want nil", m.IngressController)
	}
	if m.Route.Hostname != "upper.example.net" || m.Route.Path != "/" || m.Route.PathType != controlplane.PathTypePrefix {
		t.Errorf("route = %s %s %s, want upper.example.net / Prefix (normalized)", m.Route.Hostname, m.Route.Path, m.Route.PathType)
	}

	// A route of a cluster missing from the list has no ingress controller,
	// and the table does not share the caller's controller.
	clusters := tableClusters()
	table = NewTable(tableRoutes(), clusters[1:])
	if m, _ := table.Lookup("example.com", "/"); m.IngressController != nil {
		t.Errorf("IngressController = %+v for a cluster not in the list, want nil", m.IngressController)
	}
	table = NewTable(tableRoutes(), clusters)
	clusters[0].IngressController.Port = 9999
	if m, _ := table.Lookup("example.com", "/"); m.IngressController.Port != 80 {
		t.Errorf("IngressController.Port = %d after the caller changed its copy, want 80", m.IngressController.Port)
	}
}

func TestEmptyTables(t *testing.T) {
	for _, table := range []*Table{nil, {}, NewTable(nil, nil)} {
		if _, ok := table.Lookup("example.com", "/"); ok {
			t.Errorf("%#v: lookup in an empty table found something", table)
		}
		if table.Len() != 0 {
			t.Errorf("%#v: Len() = %d, want 0", table, table.Len())
		}
	}
}

// Two routes for one hostname and path cannot come from the control plane,
// but a table given them must still answer the same way every time.
func TestDuplicateRoutesFirstWins(t *testing.T) {
	table := NewTable([]controlplane.Route{
		rt(clusterA, "dup.test", "/", "", "first"),
		rt(clusterB, "dup.test", "/", "", "second"),
	}, nil)
	if m, _ := table.Lookup("dup.test", "/"); m.Route.ServiceName != "first" {
		t.Errorf("found %s, want first", m.Route.ServiceName)
	}
}

// benchTable has 10,000 hosts of four routes each and 100 wildcards.
func benchTable() *Table {
	var routes []controlplane.Route
	for i := range 10000 {
		host := fmt.Sprintf("app-%05d.example.com", i)
		cluster := fmt.Sprintf("00000000-0000-0000-0000-%012d", i%50)
		routes = append(routes,
			rt(cluster, host, "/", controlplane.PathTypePrefix, "web"),
			rt(cluster, host, "/api", controlplane.PathTypePrefix, "api"),
			rt(cluster, host, "/api/v1", controlplane.PathTypePrefix, "api-v1"),
			rt(cluster, host, "/healthz", controlplane.PathTypeExact, "health"),
		)
	}
	for i := range 100 {
		routes = append(routes, rt(clusterA, fmt.Sprintf("*.tenant-%03d.example.org", i), "/", controlplane.PathTypePrefix, "tenant"))
	}
	var clusters []*controlplane.Cluster
	for i := range 50 {
		clusters = append(clusters, &controlplane.Cluster{UUID: fmt.Sprintf("00000000-0000-0000-0000-%012d", i),
			IngressController: &controlplane.IngressController{Name: "ingress", Namespace: "ingress", Port: 80}})
	}
	return NewTable(routes, clusters)
}

var lookupCases = []struct{ name, host, path string }{
	{"exact-host", "app-04242.example.com", "/api/v1/users"},
	{"exact-path", "app-04242.example.com", "/healthz"},
	{"mixed-case-port", "App-04242.Example.com:8443", "/api"},
	{"wildcard", "acme.tenant-042.example.org", "/"},
	{"miss", "nothing.example.net", "/"},
}

// The request path must not allocate: not for a clean host, and not for
// one that needs its port stripped or its case folded either.
func TestLookupDoesNotAllocate(t *testing.T) {
	table := benchTable()
	for _, c := range lookupCases {
		allocs := testing.AllocsPerRun(100, func() { table.Lookup(c.host, c.path) })
		if allocs != 0 {
			t.Errorf("%s: Lookup(%q, %q) allocates %v times, want 0", c.name, c.host, c.path, allocs)
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	table := benchTable()
	for _, c := range lookupCases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				table.Lookup(c.host, c.path)
			}
		})
	}
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				table.Lookup("app-04242.example.com", "/api/v1/users")
			}
		})
	})
}

func BenchmarkNewTable(b *testing.B) {
	table := benchTable()
	var routes []controlplane.Route
	for _, es := range table.hosts {
		for _, e := range es {
			routes = append(routes, e.match.Route)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		NewTable(routes, nil)
	}
}
