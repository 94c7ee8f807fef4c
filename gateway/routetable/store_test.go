package routetable

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

// changeDeadline is how soon a committed change must be visible to lookups.
const changeDeadline = time.Second

// openDB opens a DB on dbURL, closed when the test ends.
func openDB(t testing.TB, dbURL string) *postgres.DB {
	t.Helper()
	db, err := postgres.Open(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}

// newDB returns a DB on a fresh, migrated database, and the database's URL.
func newDB(t testing.TB) (*postgres.DB, string) {
	t.Helper()
	dbURL := pgtest.URL(t)
	db := openDB(t, dbURL)
	if _, err := postgres.Migrate(context.Background(), db.Pool()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	db.Ownership.TrustUnverified = true // routes here need no DNS challenge
	return db, dbURL
}

func mustCluster(t *testing.T, db *postgres.DB, name string) *controlplane.Cluster {
	t.Helper()
	c, err := db.CreateCluster(context.Background(), name)
	if err != nil {
		t.Fatalf("CreateCluster(%q): %v", name, err)
	}
	return c
}

// testLogger sends a Store's log to the test's log, shown when it fails.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// startStore runs a Store on db until the test ends, and checks then that
// Run returns nil. It does not wait for the first load.
func startStore(t *testing.T, db Source, opts Options) *Store {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	s := NewStore(db, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return within 10s of its context ending")
		}
	})
	return s
}

func waitLoaded(t *testing.T, s *Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitLoaded(ctx); err != nil {
		t.Fatalf("WaitLoaded: %v (status %+v)", err, s.Status())
	}
}

// eventually polls check until it returns nil, failing the test with its
// last error after timeout.
func eventually(t *testing.T, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// routesTo checks that a lookup finds the route of service in cluster, or
// nothing when service is "".
func routesTo(s *Store, host, path, cluster, service string) error {
	m, ok := s.Lookup(host, path)
	switch {
	case service == "" && ok:
		return fmt.Errorf("Lookup(%q, %q) found %s/%s of cluster %s, want nothing", host, path, m.Route.Namespace, m.Route.ServiceName, m.Route.ClusterUUID)
	case service == "":
		return nil
	case !ok:
		return fmt.Errorf("Lookup(%q, %q) found nothing, want service %s", host, path, service)
	case m.Route.ServiceName != service || m.Route.ClusterUUID != cluster:
		return fmt.Errorf("Lookup(%q, %q) found service %s of cluster %s, want %s of %s", host, path, m.Route.ServiceName, m.Route.ClusterUUID, service, cluster)
	}
	return nil
}

func dbRoute(cluster, host, path, service string) controlplane.Route {
	return controlplane.Route{ClusterUUID: cluster, Hostname: host, Path: path, Namespace: "default", ServiceName: service, ServicePort: 8080}
}

func TestStoreFollowsChanges(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	alpha := mustCluster(t, db, "alpha")
	bravo := mustCluster(t, db, "bravo")
	if err := db.RegisterRoute(ctx, dbRoute(alpha.UUID, "a.example.com", "/", "a-v1")); err != nil {
		t.Fatal(err)
	}

	s := startStore(t, db, Options{})
	waitLoaded(t, s)
	if err := routesTo(s, "a.example.com", "/", alpha.UUID, "a-v1"); err != nil {
		t.Fatalf("initial load: %v", err)
	}
	st := s.Status()
	if !st.Loaded || st.Routes != 1 || st.LastError != "" || st.Stale || st.LastLoad.IsZero() {
		t.Fatalf("status after the initial load: %+v", st)
	}
	eventually(t, 5*time.Second, func() error {
		if !s.Status().Listening {
			return errors.New("not listening")
		}
		return nil
	})

	traefik := &controlplane.IngressController{Name: "traefik", Namespace: "kube-system", Port: 8000, Type: "traefik"}
	steps := []struct {
		name  string
		do    func() error
		check func() error
	}{
		{"register", func() error {
			return db.RegisterRoute(ctx, dbRoute(alpha.UUID, "new.example.com", "/", "new"))
		}, func() error {
			return routesTo(s, "new.example.com", "/x", alpha.UUID, "new")
		}},
		{"change", func() error {
			return db.RegisterRoute(ctx, dbRoute(alpha.UUID, "a.example.com", "/", "a-v2"))
		}, func() error {
			return routesTo(s, "a.example.com", "/", alpha.UUID, "a-v2")
		}},
		{"add a path", func() error {
			return db.RegisterRoute(ctx, dbRoute(alpha.UUID, "a.example.com", "/api", "a-api"))
		}, func() error {
			if err := routesTo(s, "a.example.com", "/api/users", alpha.UUID, "a-api"); err != nil {
				return err
			}
			return routesTo(s, "a.example.com", "/apiv2", alpha.UUID, "a-v2")
		}},
		{"sync", func() error {
			return db.SyncRoutes(ctx, controlplane.RouteSync{ClusterUUID: bravo.UUID, IngressController: traefik, Routes: []controlplane.Route{
				dbRoute("", "b.example.com", "/", "b"),
				dbRoute("", "*.b.example.com", "/", "b-wild"),
			}})
		}, func() error {
			if err := routesTo(s, "b.example.com", "/", bravo.UUID, "b"); err != nil {
				return err
			}
			if err := routesTo(s, "x.b.example.com", "/", bravo.UUID, "b-wild"); err != nil {
				return err
			}
			if m, _ := s.Lookup("b.example.com", "/"); m.IngressController == nil || *m.IngressController != *traefik {
				return fmt.Errorf("ingress controller %+v, want %+v", m.IngressController, traefik)
			}
			return nil
		}},
		{"unregister", func() error {
			return db.UnregisterRoute(ctx, alpha.UUID, "new.example.com")
		}, func() error {
			return routesTo(s, "new.example.com", "/x", "", "")
		}},
		{"sync removing a host", func() error {
			return db.SyncRoutes(ctx, controlplane.RouteSync{ClusterUUID: bravo.UUID, IngressController: traefik, Routes: []controlplane.Route{
				dbRoute("", "b.example.com", "/", "b"),
			}})
		}, func() error {
			if err := routesTo(s, "x.b.example.com", "/", "", ""); err != nil {
				return err
			}
			return routesTo(s, "b.example.com", "/", bravo.UUID, "b")
		}},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			if err := step.do(); err != nil {
				t.Fatal(err)
			}
			eventually(t, changeDeadline, step.check)
		})
	}
	if st := s.Status(); st.Routes != 3 || !st.Listening || st.LastError != "" || st.Stale {
		t.Errorf("final status %+v, want 3 routes, listening, no error, not stale", st)
	}
}

func TestStoreKeepsClustersApart(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	alpha := mustCluster(t, db, "alpha")
	bravo := mustCluster(t, db, "bravo")
	nginx := &controlplane.IngressController{Name: "ingress-nginx-controller", Namespace: "ingress-nginx", Port: 80, Type: "nginx"}
	traefik := &controlplane.IngressController{Name: "traefik", Namespace: "kube-system", Port: 8000, Type: "traefik"}
	for _, sync := range []controlplane.RouteSync{
		{ClusterUUID: alpha.UUID, IngressController: nginx, Routes: []controlplane.Route{
			dbRoute("", "one.alpha.test", "/", "alpha-one"),
			dbRoute("", "*.alpha.test", "/", "alpha-wild"),
			dbRoute("", "shop.test", "/", "alpha-shop"),
		}},
		{ClusterUUID: bravo.UUID, IngressController: traefik, Routes: []controlplane.Route{
			dbRoute("", "one.bravo.test", "/", "bravo-one"),
			dbRoute("", "*.bravo.test", "/", "bravo-wild"),
			// A subdomain of alpha's host is a hostname of its own.
			dbRoute("", "eu.shop.test", "/", "bravo-shop"),
		}},
	} {
		if err := db.SyncRoutes(ctx, sync); err != nil {
			t.Fatal(err)
		}
	}
	// A hostname belongs to one cluster: bravo cannot take alpha's.
	if err := db.RegisterRoute(ctx, dbRoute(bravo.UUID, "shop.test", "/admin", "bravo-admin")); controlplane.ErrorCode(err) != controlplane.ECONFLICT {
		t.Fatalf("registering alpha's hostname for bravo: %v, want ECONFLICT", err)
	}

	s := startStore(t, db, Options{})
	waitLoaded(t, s)
	tests := []struct {
		host, cluster, service string
		ingress                *controlplane.IngressController
	}{
		{"one.alpha.test", alpha.UUID, "alpha-one", nginx},
		{"two.alpha.test", alpha.UUID, "alpha-wild", nginx},
		{"shop.test", alpha.UUID, "alpha-shop", nginx},
		{"one.bravo.test", bravo.UUID, "bravo-one", traefik},
		{"two.bravo.test", bravo.UUID, "bravo-wild", traefik},
		{"eu.shop.test", bravo.UUID, "bravo-shop", traefik},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			if err := routesTo(s, tt.host, "/admin", tt.cluster, tt.service); err != nil {
				t.Fatal(err)
			}
			if m, _ := s.Lookup(tt.host, "/"); m.IngressController == nil || *m.IngressController != *tt.ingress {
				t.Errorf("ingress controller %+v, want %+v", m.IngressController, tt.ingress)
			}
		})
	}
}

// metricValue reads one sample from reg: a counter's or gauge's value, or a
// histogram's sample count. labels must match exactly.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	t.Fatalf("metric %s%v not registered", name, labels)
	return 0
}

var (
	reloadsOK    = map[string]string{"result": "ok"}
	reloadsError = map[string]string{"result": "error"}
)

// A burst of notifications, here a hundred committed together, costs one
// reload, not a hundred.
func TestStoreCoalescesBursts(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	alpha := mustCluster(t, db, "alpha")
	if err := db.RegisterRoute(ctx, dbRoute(alpha.UUID, "a.example.com", "/", "a")); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	const window = 200 * time.Millisecond // generous: the machine may be busy
	s := startStore(t, db, Options{Metrics: reg, CoalesceWindow: window})
	waitLoaded(t, s)

	if got := metricValue(t, reg, "pipeops_gateway_routes", nil); got != 1 {
		t.Errorf("routes gauge = %v, want 1", got)
	}
	eventually(t, 5*time.Second, func() error {
		if up := metricValue(t, reg, "pipeops_gateway_route_store_up", nil); up != 1 {
			return fmt.Errorf("store_up = %v, want 1", up)
		}
		return nil
	})
	before := metricValue(t, reg, "pipeops_gateway_route_reloads_total", reloadsOK)
	clustersBefore := metricValue(t, reg, "pipeops_gateway_route_cluster_reloads_total", reloadsOK)
	lagBefore := metricValue(t, reg, "pipeops_gateway_route_notify_lag_seconds", nil)

	err := pgx.BeginFunc(ctx, db.Pool(), func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO hostnames (hostname, cluster_uuid, verified_at) VALUES ('burst.example.com', $1, now())`, alpha.UUID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO routes (hostname, path, path_type, cluster_uuid, service_name, expires_at)
			VALUES ('burst.example.com', '/', 'Prefix', $1, 'burst', now() + interval '1 day')`, alpha.UUID); err != nil {
			return err
		}
		for i := range 100 {
			payload := fmt.Sprintf(`{"cluster_uuid":%q,"hostnames":["h%d.example.com"]}`, alpha.UUID, i)
			if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, controlplane.RouteNotifyChannel, payload); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, changeDeadline, func() error { return routesTo(s, "burst.example.com", "/", alpha.UUID, "burst") })
	time.Sleep(3 * window) // room for any further reload the burst might wrongly cause
	// A burst naming one cluster costs that cluster's routes, once: no
	// full reload.
	if got := metricValue(t, reg, "pipeops_gateway_route_reloads_total", reloadsOK) - before; got != 0 {
		t.Errorf("%v full reloads for one burst of notifications of one cluster, want 0", got)
	}
	if got := metricValue(t, reg, "pipeops_gateway_route_cluster_reloads_total", reloadsOK) - clustersBefore; got < 1 || got > 2 {
		t.Errorf("%v cluster reloads for one burst of 100 notifications, want 1 (2 at worst, if split by scheduling)", got)
	}
	if got := metricValue(t, reg, "pipeops_gateway_route_notify_lag_seconds", nil) - lagBefore; got < 1 {
		t.Errorf("notify lag histogram has %v new observations, want at least 1", got)
	}
	if got := metricValue(t, reg, "pipeops_gateway_routes", nil); got != 2 {
		t.Errorf("routes gauge = %v, want 2", got)
	}
	if got := metricValue(t, reg, "pipeops_gateway_route_reloads_total", reloadsError); got != 0 {
		t.Errorf("%v failed reloads, want 0", got)
	}
}

// A change that was never announced (written by hand, say) still arrives
// with the periodic full reload.
func TestStoreBackstopReload(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	alpha := mustCluster(t, db, "alpha")
	s := startStore(t, db, Options{ReloadInterval: 300 * time.Millisecond})
	waitLoaded(t, s)

	for _, sql := range []string{
		`INSERT INTO hostnames (hostname, cluster_uuid, verified_at) VALUES ('quiet.example.com', $1, now())`,
		`INSERT INTO routes (hostname, path, path_type, cluster_uuid, service_name, expires_at)
			VALUES ('quiet.example.com', '/', 'Prefix', $1, 'quiet', now() + interval '1 day')`,
	} {
		if _, err := db.Pool().Exec(ctx, sql, alpha.UUID); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 5*time.Second, func() error { return routesTo(s, "quiet.example.com", "/", alpha.UUID, "quiet") })
}

// proxied starts a tcpProxy in front of the server of dbURL and returns the
// URL that goes through it.
func proxied(t *testing.T, dbURL string) (string, *tcpProxy) {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	target := u.Host
	if u.Port() == "" {
		target = net.JoinHostPort(u.Hostname(), "5432")
	}
	q := u.Query()
	if dir := q.Get("host"); strings.HasPrefix(dir, "/") {
		// The server listens on a private socket: proxy TCP to it.
		port := q.Get("port")
		if port == "" {
			port = "5432"
		}
		target = dir + "/.s.PGSQL." + port
		q.Del("host")
		q.Del("port")
		u.RawQuery = q.Encode()
	}
	p := startProxy(t, target)
	u.Host = p.Addr()
	return u.String(), p
}

// The Store reaches PostgreSQL through a proxy that the test cuts: lookups
// go on from the last table, Status says what is wrong, and after the
// proxy resumes the Store catches up with what changed meanwhile, though no
// notification of it ever reached the Store.
func TestStoreSurvivesOutage(t *testing.T) {
	ctx := context.Background()
	direct, dbURL := newDB(t)
	alpha := mustCluster(t, direct, "alpha")
	if err := direct.RegisterRoute(ctx, dbRoute(alpha.UUID, "a.example.com", "/", "a")); err != nil {
		t.Fatal(err)
	}
	proxyURL, proxy := proxied(t, dbURL)
	db := openDB(t, proxyURL)
	clk := testenv.NewClock()
	reg := prometheus.NewRegistry()
	s := startStore(t, db, Options{RetryInterval: 10 * time.Millisecond, ReloadInterval: time.Hour, Now: clk.Now, Metrics: reg})
	waitLoaded(t, s)
	eventually(t, 5*time.Second, func() error {
		if st := s.Status(); !st.Listening || st.LastError != "" || st.Stale {
			return fmt.Errorf("status %+v, want listening, no error, not stale", st)
		}
		return nil
	})

	proxy.Cut()
	eventually(t, 5*time.Second, func() error {
		if st := s.Status(); st.Listening || st.LastError == "" {
			return fmt.Errorf("status %+v during the outage, want not listening, an error", st)
		}
		return nil
	})
	t.Logf("status during the outage: %+v", s.Status())
	if up := metricValue(t, reg, "pipeops_gateway_route_store_up", nil); up != 0 {
		t.Errorf("store_up = %v during the outage, want 0", up)
	}

	// Changed behind the Store's back: the notifications go nowhere.
	if err := direct.RegisterRoute(ctx, dbRoute(alpha.UUID, "b.example.com", "/", "b")); err != nil {
		t.Fatal(err)
	}
	if err := direct.UnregisterRoute(ctx, alpha.UUID, "a.example.com"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := routesTo(s, "a.example.com", "/", alpha.UUID, "a"); err != nil {
		t.Errorf("the last table should keep serving during the outage: %v", err)
	}
	if err := routesTo(s, "b.example.com", "/", "", ""); err != nil {
		t.Errorf("nothing should load during the outage: %v", err)
	}
	if st := s.Status(); !st.Loaded || st.Stale || st.Routes != 1 {
		t.Errorf("status %+v a moment into the outage, want loaded, 1 route, not yet stale", st)
	}
	clk.Add(2 * time.Hour)
	if st := s.Status(); !st.Stale {
		t.Errorf("status %+v with the last load older than ReloadInterval while not listening, want stale", st)
	}

	proxy.Resume()
	eventually(t, 10*time.Second, func() error {
		if st := s.Status(); !st.Listening || st.LastError != "" || st.Stale || st.Routes != 1 || !st.LastLoad.Equal(clk.Now()) {
			return fmt.Errorf("status %+v after the outage, want listening, no error, not stale, 1 route loaded now", st)
		}
		if err := routesTo(s, "b.example.com", "/", alpha.UUID, "b"); err != nil {
			return err
		}
		return routesTo(s, "a.example.com", "/", "", "")
	})
	if up := metricValue(t, reg, "pipeops_gateway_route_store_up", nil); up != 1 {
		t.Errorf("store_up = %v after the outage, want 1", up)
	}

	// And it follows changes again.
	if err := direct.RegisterRoute(ctx, dbRoute(alpha.UUID, "c.example.com", "/", "c")); err != nil {
		t.Fatal(err)
	}
	eventually(t, changeDeadline, func() error { return routesTo(s, "c.example.com", "/", alpha.UUID, "c") })
}

// A Store that never reaches its database: it says so, stays empty, retries,
// and lets go of waiters when it stops.
func TestStoreWithoutDatabase(t *testing.T) {
	if err := NewStore(nil, Options{}).Run(context.Background()); !errors.Is(err, ErrNoSource) {
		t.Errorf("Run without a source: %v, want ErrNoSource", err)
	}

	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@"+addr+"/nothing?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	reg := prometheus.NewRegistry()
	s := NewStore(postgres.New(pool), Options{RetryInterval: 10 * time.Millisecond, Logger: testLogger(t), Metrics: reg})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(cancel)

	eventually(t, 5*time.Second, func() error {
		if got := metricValue(t, reg, "pipeops_gateway_route_reloads_total", reloadsError); got < 2 {
			return fmt.Errorf("%v failed reloads, want retries", got)
		}
		return nil
	})
	st := s.Status()
	if st.Loaded || st.Listening || !st.Stale || st.LastError == "" || st.Routes != 0 || !st.LastLoad.IsZero() {
		t.Errorf("status %+v, want not loaded, not listening, stale, an error", st)
	}
	if _, ok := s.Lookup("a.example.com", "/"); ok || s.Table().Len() != 0 {
		t.Error("a store that never loaded should have an empty table")
	}
	if err := s.Run(ctx); !errors.Is(err, ErrAlreadyStarted) {
		t.Errorf("second Run: %v, want ErrAlreadyStarted", err)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer wcancel()
	if err := s.WaitLoaded(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitLoaded with a short deadline: %v, want context.DeadlineExceeded", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of its context ending")
	}
	if err := s.WaitLoaded(context.Background()); !errors.Is(err, ErrStopped) {
		t.Errorf("WaitLoaded after Run returned without a load: %v, want ErrStopped", err)
	}
}

// A network that silently drops everything leaves the listener waiting for
// notifications that cannot come, none the wiser. The next reload times out,
// and since the server never answered, the Store reconnects its listener
// too, which then shows in Status; once the network is back it catches up.
func TestStoreNoticesSilentOutage(t *testing.T) {
	ctx := context.Background()
	direct, dbURL := newDB(t)
	alpha := mustCluster(t, direct, "alpha")
	if err := direct.RegisterRoute(ctx, dbRoute(alpha.UUID, "a.example.com", "/", "a")); err != nil {
		t.Fatal(err)
	}
	proxyURL, proxy := proxied(t, dbURL)
	db := openDB(t, proxyURL)
	s := startStore(t, db, Options{ReloadInterval: 300 * time.Millisecond, LoadTimeout: 200 * time.Millisecond, RetryInterval: 10 * time.Millisecond})
	waitLoaded(t, s)
	eventually(t, 5*time.Second, func() error {
		if st := s.Status(); !st.Listening || st.LastError != "" {
			return fmt.Errorf("status %+v, want listening, no error", st)
		}
		return nil
	})

	proxy.Freeze()
	eventually(t, 5*time.Second, func() error {
		if st := s.Status(); st.Listening || st.LastError == "" {
			return fmt.Errorf("status %+v with the network silent, want not listening, an error", st)
		}
		return nil
	})
	t.Logf("status with the network silent: %+v", s.Status())
	if err := routesTo(s, "a.example.com", "/", alpha.UUID, "a"); err != nil {
		t.Errorf("the last table should keep serving: %v", err)
	}
	if err := direct.RegisterRoute(ctx, dbRoute(alpha.UUID, "b.example.com", "/", "b")); err != nil {
		t.Fatal(err)
	}

	proxy.Thaw()
	eventually(t, 10*time.Second, func() error {
		if st := s.Status(); !st.Listening || st.LastError != "" || st.Routes != 2 {
			return fmt.Errorf("status %+v after the network is back, want listening, no error, 2 routes", st)
		}
		return routesTo(s, "b.example.com", "/", alpha.UUID, "b")
	})
}
