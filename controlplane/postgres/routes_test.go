package postgres

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
)

func route(cluster, hostname, path string) controlplane.Route {
	return controlplane.Route{
		Hostname: hostname, Path: path, ClusterUUID: cluster,
		Namespace: "default", ServiceName: "web", ServicePort: 8080, IngressName: "web",
	}
}

// routeKeys lists a cluster's routes as "hostname/path" ("" for all clusters).
func routeKeys(t *testing.T, db *DB, cluster string) []string {
	t.Helper()
	routes, err := db.Routes(context.Background(), cluster)
	if err != nil {
		t.Fatalf("Routes(%q): %v", cluster, err)
	}
	var keys []string
	for _, r := range routes {
		keys = append(keys, r.Hostname+r.Path)
	}
	return keys
}

// owners maps each hostname row to its cluster.
func owners(t *testing.T, db *DB) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, row := range queryStrings(t, db, `SELECT hostname || ' ' || cluster_uuid FROM hostnames`) {
		h, c, _ := strings.Cut(row, " ")
		out[h] = c
	}
	return out
}

func TestRegisterRoute(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	db.RouteTTL = time.Hour
	a := mustCluster(t, db, "alpha")

	in := route(a.UUID, "App.Example.COM", "")
	in.Annotations = map[string]string{"k": "v"}
	in.TLS = true
	if err := db.RegisterRoute(ctx, in); err != nil {
		t.Fatalf("RegisterRoute: %v", err)
	}
	routes, err := db.Routes(ctx, a.UUID)
	if err != nil {
		t.Fatal(err)
	}
	want := controlplane.Route{
		Hostname: "app.example.com", Path: "/", PathType: controlplane.PathTypePrefix, ClusterUUID: a.UUID,
		Namespace: "default", ServiceName: "web", ServicePort: 8080, IngressName: "web", TLS: true,
		Annotations: map[string]string{"k": "v"}, RoutingMode: controlplane.RoutingTunnel,
		UpdatedAt: clk.Now(), ExpiresAt: clk.Now().Add(time.Hour),
	}
	if len(routes) != 1 || !routeEqual(routes[0], want) {
		t.Fatalf("Routes = %+v, want [%+v]", routes, want)
	}

	// Registering again updates in place and pushes the expiry out.
	clk.Add(10 * time.Minute)
	in.ServicePort = 9090
	if err := db.RegisterRoute(ctx, in); err != nil {
		t.Fatalf("RegisterRoute again: %v", err)
	}
	routes, _ = db.Routes(ctx, a.UUID)
	if len(routes) != 1 || routes[0].ServicePort != 9090 || !routes[0].ExpiresAt.Equal(clk.Now().Add(time.Hour)) {
		t.Fatalf("after re-register: %+v", routes)
	}

	// A wildcard and a second path of the same hostname.
	if err := db.RegisterRoute(ctx, route(a.UUID, "*.apps.example.com", "/")); err != nil {
		t.Fatalf("wildcard: %v", err)
	}
	if err := db.RegisterRoute(ctx, route(a.UUID, "app.example.com", "/api")); err != nil {
		t.Fatalf("second path: %v", err)
	}
	if got, want := routeKeys(t, db, a.UUID), []string{"*.apps.example.com/", "app.example.com/", "app.example.com/api"}; !slices.Equal(got, want) {
		t.Errorf("routes %v, want %v", got, want)
	}
}

func routeEqual(a, b controlplane.Route) bool {
	return a.Hostname == b.Hostname && a.Path == b.Path && a.PathType == b.PathType &&
		a.ClusterUUID == b.ClusterUUID && a.Namespace == b.Namespace && a.ServiceName == b.ServiceName &&
		a.ServicePort == b.ServicePort && a.IngressName == b.IngressName && a.TLS == b.TLS &&
		maps.Equal(a.Annotations, b.Annotations) && a.PublicEndpoint == b.PublicEndpoint &&
		a.RoutingMode == b.RoutingMode && a.DeploymentID == b.DeploymentID &&
		a.DeploymentName == b.DeploymentName && a.UpdatedAt.Equal(b.UpdatedAt) && a.ExpiresAt.Equal(b.ExpiresAt)
}

func TestRegisterRouteErrors(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	a := mustCluster(t, db, "alpha")

	tests := []struct {
		name   string
		change func(*controlplane.Route)
		code   string
	}{
		{"no hostname", func(r *controlplane.Route) { r.Hostname = "" }, controlplane.EINVALID},
		{"empty label", func(r *controlplane.Route) { r.Hostname = "a..example.com" }, controlplane.EINVALID},
		{"leading hyphen", func(r *controlplane.Route) { r.Hostname = "-a.example.com" }, controlplane.EINVALID},
		{"underscore", func(r *controlplane.Route) { r.Hostname = "a_b.example.com" }, controlplane.EINVALID},
		{"port in hostname", func(r *controlplane.Route) { r.Hostname = "example.com:80" }, controlplane.EINVALID},
		{"wildcard alone", func(r *controlplane.Route) { r.Hostname = "*." }, controlplane.EINVALID},
		{"wildcard inside", func(r *controlplane.Route) { r.Hostname = "a.*.example.com" }, controlplane.EINVALID},
		{"label too long", func(r *controlplane.Route) { r.Hostname = strings.Repeat("a", 64) + ".com" }, controlplane.EINVALID},
		{"relative path", func(r *controlplane.Route) { r.Path = "api" }, controlplane.EINVALID},
		{"path type", func(r *controlplane.Route) { r.PathType = "Regex" }, controlplane.EINVALID},
		{"port too big", func(r *controlplane.Route) { r.ServicePort = 65536 }, controlplane.EINVALID},
		{"negative port", func(r *controlplane.Route) { r.ServicePort = -1 }, controlplane.EINVALID},
		{"routing mode", func(r *controlplane.Route) { r.RoutingMode = "carrier-pigeon" }, controlplane.EINVALID},
		{"no cluster", func(r *controlplane.Route) { r.ClusterUUID = "" }, controlplane.EINVALID},
		{"unknown cluster", func(r *controlplane.Route) { r.ClusterUUID = "00000000-0000-0000-0000-000000000000" }, controlplane.ENOTFOUND},
		{"malformed cluster", func(r *controlplane.Route) { r.ClusterUUID = "not-a-uuid" }, controlplane.ENOTFOUND},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := route(a.UUID, "ok.example.com", "/")
			tt.change(&r)
			wantCode(t, db.RegisterRoute(ctx, r), tt.code)
		})
	}
	if got := routeKeys(t, db, ""); len(got) != 0 {
		t.Errorf("failed registrations left routes %v", got)
	}
	if got := owners(t, db); len(got) != 0 {
		t.Errorf("failed registrations left hostnames %v", got)
	}
}

func TestRegisterRouteConflict(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	a := mustCluster(t, db, "alpha")
	b := mustCluster(t, db, "bravo")

	if err := db.RegisterRoute(ctx, route(a.UUID, "shop.example.com", "/")); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/", "/other"} {
		err := db.RegisterRoute(ctx, route(b.UUID, "SHOP.example.com", path))
		wantCode(t, err, controlplane.ECONFLICT)
		if !strings.Contains(controlplane.ErrorMessage(err), `"shop.example.com"`) {
			t.Errorf("conflict message %q does not name the hostname", controlplane.ErrorMessage(err))
		}
		if strings.Contains(controlplane.ErrorMessage(err), a.UUID) {
			t.Errorf("conflict message %q names the owning cluster to another tenant", controlplane.ErrorMessage(err))
		}
	}
	if got := routeKeys(t, db, b.UUID); len(got) != 0 {
		t.Errorf("loser has routes %v", got)
	}
	if got := routeKeys(t, db, a.UUID); !slices.Equal(got, []string{"shop.example.com/"}) {
		t.Errorf("owner's routes %v", got)
	}
	if got := owners(t, db); !maps.Equal(got, map[string]string{"shop.example.com": a.UUID}) {
		t.Errorf("hostnames %v", got)
	}
}

func TestUnregisterRoute(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	a := mustCluster(t, db, "alpha")
	b := mustCluster(t, db, "bravo")
	for _, r := range []controlplane.Route{
		route(a.UUID, "app.example.com", "/"),
		route(a.UUID, "app.example.com", "/api"),
		route(a.UUID, "keep.example.com", "/"),
	} {
		if err := db.RegisterRoute(ctx, r); err != nil {
			t.Fatal(err)
		}
	}

	tests := []struct {
		name     string
		cluster  string
		hostname string
		code     string
	}{
		{"other cluster's hostname", b.UUID, "app.example.com", controlplane.ENOTFOUND},
		{"unknown cluster", "00000000-0000-0000-0000-000000000000", "app.example.com", controlplane.ENOTFOUND},
		{"malformed cluster", "nope", "app.example.com", controlplane.ENOTFOUND},
		{"owner, any case", a.UUID, "APP.example.com", ""},
		{"again", a.UUID, "app.example.com", controlplane.ENOTFOUND},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantCode(t, db.UnregisterRoute(ctx, tt.cluster, tt.hostname), tt.code)
		})
	}
	if got := routeKeys(t, db, ""); !slices.Equal(got, []string{"keep.example.com/"}) {
		t.Errorf("routes %v, want only keep.example.com/", got)
	}
	if got := owners(t, db); !maps.Equal(got, map[string]string{"keep.example.com": a.UUID}) {
		t.Errorf("hostnames %v", got)
	}
	// Released, the hostname is free for another cluster.
	if err := db.RegisterRoute(ctx, route(b.UUID, "app.example.com", "/")); err != nil {
		t.Errorf("register a released hostname: %v", err)
	}
}

func TestSyncRoutes(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	db.RouteTTL = time.Hour
	a := mustCluster(t, db, "alpha")
	b := mustCluster(t, db, "bravo")
	if err := db.RegisterRoute(ctx, route(b.UUID, "bravo.example.com", "/")); err != nil {
		t.Fatal(err)
	}

	ic := &controlplane.IngressController{Name: "ingress-nginx-controller", Namespace: "ingress-nginx", Port: 80, Type: "nginx"}
	direct := route("", "api.example.com", "/v1")
	direct.RoutingMode = controlplane.RoutingDirect
	sync := controlplane.RouteSync{
		ClusterUUID: a.UUID, PublicEndpoint: "203.0.113.7", RoutingMode: controlplane.RoutingTunnel, IngressController: ic,
		Routes: []controlplane.Route{
			route(a.UUID, "www.example.com", "/"),
			route("", "WWW.example.com", "/static"),
			direct,
			route("", "old.example.com", "/"),
		},
	}
	if err := db.SyncRoutes(ctx, sync); err != nil {
		t.Fatalf("SyncRoutes: %v", err)
	}
	if got, want := routeKeys(t, db, a.UUID), []string{"api.example.com/v1", "old.example.com/", "www.example.com/", "www.example.com/static"}; !slices.Equal(got, want) {
		t.Fatalf("routes %v, want %v", got, want)
	}
	routes, _ := db.Routes(ctx, a.UUID)
	for _, r := range routes {
		wantMode := controlplane.RoutingTunnel
		if r.Hostname == "api.example.com" {
			wantMode = controlplane.RoutingDirect
		}
		if r.RoutingMode != wantMode || r.PublicEndpoint != "203.0.113.7" || r.ClusterUUID != a.UUID || !r.ExpiresAt.Equal(clk.Now().Add(time.Hour)) {
			t.Errorf("route %+v: want mode %s, the sync's endpoint, cluster %s, expiry %v", r, wantMode, a.UUID, clk.Now().Add(time.Hour))
		}
	}
	c, err := db.Cluster(ctx, a.UUID)
	if err != nil {
		t.Fatal(err)
	}
	if c.PublicEndpoint != "203.0.113.7" || c.RoutingMode != controlplane.RoutingTunnel || c.IngressController == nil || *c.IngressController != *ic {
		t.Errorf("cluster after sync: endpoint %q mode %q ingress %+v", c.PublicEndpoint, c.RoutingMode, c.IngressController)
	}

	// The next sync drops a path and a whole hostname and adds a route.
	sync.RoutingMode = controlplane.RoutingDirect
	sync.IngressController = nil
	sync.Routes = []controlplane.Route{
		route("", "www.example.com", "/"),
		route("", "new.example.com", "/"),
		direct,
	}
	if err := db.SyncRoutes(ctx, sync); err != nil {
		t.Fatalf("second SyncRoutes: %v", err)
	}
	if got, want := routeKeys(t, db, a.UUID), []string{"api.example.com/v1", "new.example.com/", "www.example.com/"}; !slices.Equal(got, want) {
		t.Errorf("routes %v, want %v", got, want)
	}
	wantOwners := map[string]string{"api.example.com": a.UUID, "new.example.com": a.UUID, "www.example.com": a.UUID, "bravo.example.com": b.UUID}
	if got := owners(t, db); !maps.Equal(got, wantOwners) {
		t.Errorf("hostnames %v, want %v", got, wantOwners)
	}
	c, _ = db.Cluster(ctx, a.UUID)
	if c.RoutingMode != controlplane.RoutingDirect || c.IngressController != nil {
		t.Errorf("cluster after second sync: mode %q ingress %+v", c.RoutingMode, c.IngressController)
	}

	// An empty sync releases everything the cluster had, and nothing else.
	if err := db.SyncRoutes(ctx, controlplane.RouteSync{ClusterUUID: a.UUID}); err != nil {
		t.Fatalf("empty SyncRoutes: %v", err)
	}
	if got := routeKeys(t, db, a.UUID); len(got) != 0 {
		t.Errorf("routes after empty sync %v", got)
	}
	if got := owners(t, db); !maps.Equal(got, map[string]string{"bravo.example.com": b.UUID}) {
		t.Errorf("hostnames after empty sync %v", got)
	}
}

func TestSyncRoutesErrors(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	a := mustCluster(t, db, "alpha")
	b := mustCluster(t, db, "bravo")
	if err := db.SyncRoutes(ctx, controlplane.RouteSync{ClusterUUID: a.UUID, PublicEndpoint: "before", Routes: []controlplane.Route{
		route("", "a.example.com", "/"),
	}}); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		sync controlplane.RouteSync
		code string
		msg  string // in the message
	}{
		{"duplicate route", controlplane.RouteSync{ClusterUUID: a.UUID, Routes: []controlplane.Route{
			route("", "x.example.com", "/"), route("", "X.example.com", ""),
		}}, controlplane.EINVALID, "more than once"},
		{"bad route", controlplane.RouteSync{ClusterUUID: a.UUID, Routes: []controlplane.Route{
			route("", "x.example.com", "/"), route("", "x.example.com", "nope"),
		}}, controlplane.EINVALID, "route 1"},
		{"route of another cluster", controlplane.RouteSync{ClusterUUID: a.UUID, Routes: []controlplane.Route{
			route(b.UUID, "x.example.com", "/"),
		}}, controlplane.EINVALID, b.UUID},
		{"routing mode", controlplane.RouteSync{ClusterUUID: a.UUID, RoutingMode: "smoke-signal"}, controlplane.EINVALID, "smoke-signal"},
		{"ingress port", controlplane.RouteSync{ClusterUUID: a.UUID, IngressController: &controlplane.IngressController{Port: 70000}}, controlplane.EINVALID, "70000"},
		{"no cluster", controlplane.RouteSync{}, controlplane.EINVALID, "cluster"},
		{"unknown cluster", controlplane.RouteSync{ClusterUUID: "00000000-0000-0000-0000-000000000000"}, controlplane.ENOTFOUND, "not found"},
		{"malformed cluster", controlplane.RouteSync{ClusterUUID: "zzz"}, controlplane.ENOTFOUND, "not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := db.SyncRoutes(ctx, tt.sync)
			wantCode(t, err, tt.code)
			if !strings.Contains(controlplane.ErrorMessage(err), tt.msg) {
				t.Errorf("message %q does not contain %q", controlplane.ErrorMessage(err), tt.msg)
			}
		})
	}
	if got := routeKeys(t, db, ""); !slices.Equal(got, []string{"a.example.com/"}) {
		t.Errorf("failed syncs changed routes: %v", got)
	}
	if c, _ := db.Cluster(ctx, a.UUID); c.PublicEndpoint != "before" {
		t.Errorf("failed syncs changed the cluster: endpoint %q", c.PublicEndpoint)
	}
}

// A sync that names another cluster's hostname is refused whole: the
// cluster's old routes, hostnames and settings stay as they were.
func TestSyncRoutesConflictAppliesNothing(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	a := mustCluster(t, db, "alpha")
	b := mustCluster(t, db, "bravo")
	if err := db.RegisterRoute(ctx, route(a.UUID, "taken.example.com", "/")); err != nil {
		t.Fatal(err)
	}
	if err := db.SyncRoutes(ctx, controlplane.RouteSync{ClusterUUID: b.UUID, PublicEndpoint: "before", RoutingMode: controlplane.RoutingTunnel, Routes: []controlplane.Route{
		route("", "b-old.example.com", "/"),
	}}); err != nil {
		t.Fatal(err)
	}
	before := owners(t, db)

	err := db.SyncRoutes(ctx, controlplane.RouteSync{ClusterUUID: b.UUID, PublicEndpoint: "after", RoutingMode: controlplane.RoutingDirect, Routes: []controlplane.Route{
		route("", "a-new.example.com", "/"), // sorts before the taken one: claimed, then rolled back
		route("", "taken.example.com", "/"),
		route("", "z-new.example.com", "/"),
	}})
	wantCode(t, err, controlplane.ECONFLICT)
	if !strings.Contains(controlplane.ErrorMessage(err), `"taken.example.com"`) {
		t.Errorf("message %q does not name the hostname", controlplane.ErrorMessage(err))
	}
	if got := routeKeys(t, db, b.UUID); !slices.Equal(got, []string{"b-old.example.com/"}) {
		t.Errorf("loser's routes %v, want its old ones", got)
	}
	if got := owners(t, db); !maps.Equal(got, before) {
		t.Errorf("hostnames %v, want %v", got, before)
	}
	c, _ := db.Cluster(ctx, b.UUID)
	if c.PublicEndpoint != "before" || c.RoutingMode != controlplane.RoutingTunnel {
		t.Errorf("loser's cluster changed: endpoint %q mode %q", c.PublicEndpoint, c.RoutingMode)
	}
}

// Two agents syncing overlapping hostnames, and a third registering one of
// them, all at once: every request is applied whole or refused whole, and
// every hostname ends with one owner.
func TestConcurrentClaims(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	clusters := []*controlplane.Cluster{mustCluster(t, db, "alpha"), mustCluster(t, db, "bravo"), mustCluster(t, db, "charlie")}

	for round := range 20 {
		host := func(name string) string { return fmt.Sprintf("%s-%d.example.com", name, round) }
		// Own hostnames sort between the shared ones, so each sync holds
		// claims of its own while it waits for a shared one.
		sets := [][]string{
			{host("s1"), host("s2"), host("s3"), host("sa"), host("s4")},
			{host("s4"), host("s3"), host("sb"), host("s2"), host("s1")},
			{host("s3")},
		}
		errs := make([]error, 3)
		var wg sync.WaitGroup
		for i := range 2 {
			wg.Go(func() {
				s := controlplane.RouteSync{ClusterUUID: clusters[i].UUID}
				for _, h := range sets[i] {
					s.Routes = append(s.Routes, route("", h, "/"), route("", h, "/x"))
				}
				errs[i] = db.SyncRoutes(ctx, s)
			})
		}
		wg.Go(func() { errs[2] = db.RegisterRoute(ctx, route(clusters[2].UUID, sets[2][0], "/")) })
		wg.Wait()

		own := owners(t, db)
		won := 0
		for i, err := range errs {
			code := controlplane.ErrorCode(err)
			if code != "" && code != controlplane.ECONFLICT {
				t.Fatalf("round %d: request %d: %v (want success or ECONFLICT)", round, i, err)
			}
			got := routeKeys(t, db, clusters[i].UUID)
			var want []string
			if err == nil {
				won++
				for _, h := range sets[i] {
					if own[h] != clusters[i].UUID {
						t.Errorf("round %d: request %d succeeded but %s is owned by %q", round, i, h, own[h])
					}
				}
				if i == 2 {
					want = []string{sets[2][0] + "/"}
				} else {
					for _, h := range slices.Sorted(slices.Values(sets[i])) {
						want = append(want, h+"/", h+"/x")
					}
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("round %d: request %d (err %v): routes %v, want %v", round, i, err, got, want)
			}
		}
		if won == 0 {
			t.Errorf("round %d: every request lost: %v", round, errs)
		}
		// No hostname without routes: a refused claim leaves no row behind.
		if orphans := queryStrings(t, db, `SELECT hostname FROM hostnames h WHERE NOT EXISTS (SELECT 1 FROM routes r WHERE r.hostname = h.hostname)`); len(orphans) != 0 {
			t.Errorf("round %d: hostnames without routes: %v", round, orphans)
		}
		for _, c := range clusters {
			if err := db.SyncRoutes(ctx, controlplane.RouteSync{ClusterUUID: c.UUID}); err != nil {
				t.Fatalf("reset: %v", err)
			}
		}
	}
}

func TestDeleteExpiredRoutes(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	db.RouteTTL = time.Hour
	a := mustCluster(t, db, "alpha")
	b := mustCluster(t, db, "bravo")
	start := clk.Now()

	syncA := controlplane.RouteSync{ClusterUUID: a.UUID, Routes: []controlplane.Route{
		route("", "a1.example.com", "/"), route("", "a2.example.com", "/"),
	}}
	if err := db.SyncRoutes(ctx, syncA); err != nil {
		t.Fatal(err)
	}
	if err := db.RegisterRoute(ctx, route(b.UUID, "b.example.com", "/old")); err != nil {
		t.Fatal(err)
	}

	// 50 minutes on, A re-syncs and b.example.com gains a path; /old does not
	// get registered again.
	clk.Add(50 * time.Minute)
	if err := db.SyncRoutes(ctx, syncA); err != nil {
		t.Fatal(err)
	}
	if err := db.RegisterRoute(ctx, route(b.UUID, "b.example.com", "/new")); err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		at      time.Duration // since start
		deleted int
		routes  []string
		owners  map[string]string
	}{
		{59 * time.Minute, 0, []string{"a1.example.com/", "a2.example.com/", "b.example.com/new", "b.example.com/old"},
			map[string]string{"a1.example.com": a.UUID, "a2.example.com": a.UUID, "b.example.com": b.UUID}},
		// /old is past its hour; A's routes were refreshed; b.example.com
		// still has /new, so it stays B's.
		{70 * time.Minute, 1, []string{"a1.example.com/", "a2.example.com/", "b.example.com/new"},
			map[string]string{"a1.example.com": a.UUID, "a2.example.com": a.UUID, "b.example.com": b.UUID}},
		{111 * time.Minute, 3, nil, map[string]string{}},
		{200 * time.Minute, 0, nil, map[string]string{}},
	}
	for _, st := range steps {
		t.Run(st.at.String(), func(t *testing.T) {
			n, err := db.DeleteExpiredRoutes(ctx, start.Add(st.at))
			if err != nil {
				t.Fatalf("DeleteExpiredRoutes: %v", err)
			}
			if n != st.deleted {
				t.Errorf("deleted %d, want %d", n, st.deleted)
			}
			if got := routeKeys(t, db, ""); !slices.Equal(got, st.routes) {
				t.Errorf("routes %v, want %v", got, st.routes)
			}
			if got := owners(t, db); !maps.Equal(got, st.owners) {
				t.Errorf("hostnames %v, want %v", got, st.owners)
			}
		})
	}
}

func TestRoutesFilter(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	a := mustCluster(t, db, "alpha")
	b := mustCluster(t, db, "bravo")
	for _, r := range []controlplane.Route{
		route(b.UUID, "b.example.com", "/"), route(a.UUID, "a.example.com", "/z"), route(a.UUID, "a.example.com", "/a"),
	} {
		if err := db.RegisterRoute(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		cluster string
		want    []string
	}{
		{"", []string{"a.example.com/a", "a.example.com/z", "b.example.com/"}},
		{a.UUID, []string{"a.example.com/a", "a.example.com/z"}},
		{"00000000-0000-0000-0000-000000000000", nil},
		{"malformed", nil},
	}
	for _, tt := range tests {
		t.Run("cluster="+tt.cluster, func(t *testing.T) {
			if got := routeKeys(t, db, tt.cluster); !slices.Equal(got, tt.want) {
				t.Errorf("routes %v, want %v", got, tt.want)
			}
		})
	}
}

func TestReaperStopsWithContext(t *testing.T) {
	db, _ := newDB(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		db.RunReaper(ctx, time.Millisecond, nil)
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("RunReaper did not return after its context ended")
	}
}
