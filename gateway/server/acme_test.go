package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/cptest"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pebbletest"
)

// TestACMEWithPebble runs the gateway against a real ACME CA (pebble) on
// loopback, the CA's requests recorded on their way: a routed host gets a
// certificate over TLS-ALPN-01, another over HTTP-01 when TLS-ALPN-01
// cannot succeed, both are served and chain to the CA, the first is renewed
// before it expires, and made-up names (SNI or Host) are refused without a
// single order reaching the CA.
func TestACMEWithPebble(t *testing.T) {
	ca := pebbletest.New(t) // before the database: a skip costs nothing
	ctx := context.Background()
	cp := cptest.Store(t) // first: the shared server's goroutines are not this test's
	// A renewal that is polling the CA when the gateway stops sleeps out
	// its poll interval (1 s, or the CA's Retry-After) in autocert, where no
	// context reaches, and ends at its next request, which ACME.Close fails.
	testenv.LeakCheckWithin(t, 5*time.Second)

	const (
		alpnHost   = "alpn.pipeops.test"   // validated over TLS-ALPN-01
		http01Host = "http01.pipeops.test" // validated over HTTP-01
		madeUpSNI  = "madeup.pipeops.test"
		madeUpHost = "madeup-http.pipeops.test"
		// Certificates live 40 s and are renewed 30 s before they end
		// (less up to 3 s of jitter): about 10 s after they are issued.
		validity    = 40 * time.Second
		renewBefore = 30 * time.Second
	)
	// The gateway listens before pebble starts: pebble's own ports are
	// picked free, and could otherwise be one of these.
	httpAddr, httpsAddr, adminAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	// The CA's TLS-ALPN-01 handshakes go through a gate the test opens and
	// shuts, so that it can make TLS-ALPN-01 fail for the HTTP-01 case.
	gate := newTLSGate(t, httpsAddr)
	rec := newACMERecorder(t, ca)

	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app saw host=%s", r.Host)
	}))
	defer app.Close()
	appAddr := strings.TrimPrefix(app.URL, "http://")
	cluster, err := cp.DB.CreateCluster(ctx, "public")
	if err != nil {
		t.Fatal(err)
	}
	var routes []controlplane.Route
	for _, h := range []string{alpnHost, http01Host} {
		routes = append(routes, controlplane.Route{Hostname: h, Path: "/", PathType: "Prefix", Namespace: "web", ServiceName: "web", ServicePort: 80,
			PublicEndpoint: appAddr, RoutingMode: controlplane.RoutingDirect})
	}
	if err := cp.DB.SyncRoutes(ctx, controlplane.RouteSync{ClusterUUID: cluster.UUID, PublicEndpoint: appAddr,
		RoutingMode: controlplane.RoutingDirect, Routes: routes}); err != nil {
		t.Fatal(err)
	}

	// Built once: LoadConfig reads every variable, and a map made per read
	// would start servers and pick ports on every read.
	env := map[string]string{
		"DATABASE_URL": cp.DBURL, "CONTROLPLANE_URL": jwksServer(t, cp.Issuer),
		"HTTP_ADDR": httpAddr, "HTTPS_ADDR": httpsAddr, "ADMIN_ADDR": adminAddr,
		"ACME": "true", "ACME_EMAIL": "ops@pipeops.test", "ACME_CACHE_DIR": t.TempDir(),
		"ACME_DIRECTORY_URL": rec.url + "/dir", "ACME_CA_FILE": ca.ServerRootsFile,
		"ACME_RENEW_BEFORE": renewBefore.String(), "SHUTDOWN_TIMEOUT": "5s",
	}
	cfg, err := LoadConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	var logs testenv.LogBuffer
	g, err := New(ctx, cfg, logs.Logger())
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- g.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", logs.String())
		}
	}()
	hc := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	waitFor(t, "readiness", 10*time.Second, func() bool {
		if len(runErr) > 0 {
			return true // Run ended early; the deferred check reports why
		}
		resp, err := hc.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if len(runErr) > 0 {
		t.FailNow()
	}

	ca.Run(t, pebbletest.Options{HTTPPort: portOf(t, httpAddr), TLSPort: gate.port(), Validity: validity})
	rec.setTarget(t, ca.DirectoryURL)
	caRoot, caIntermediate, err := ca.Issuers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	acmeRoots := x509.NewCertPool()
	acmeRoots.AddCert(caRoot)

	// handshake returns the chain the gateway serves for sni, verified
	// against the ACME CA's root. The first handshake for a routed host
	// waits for the whole issuance.
	handshake := func(sni string) ([]*x509.Certificate, error) {
		hctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		d := &tls.Dialer{Config: &tls.Config{ServerName: sni, RootCAs: acmeRoots}}
		conn, err := d.DialContext(hctx, "tcp", httpsAddr)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		return conn.(*tls.Conn).ConnectionState().PeerCertificates, nil
	}
	// issued checks that chain is the CA's: leaf for host, signed by the
	// intermediate the management interface serves.
	issued := func(host string, chain []*x509.Certificate) *x509.Certificate {
		t.Helper()
		if len(chain) < 2 {
			t.Fatalf("%s: the gateway served %d certificates, want leaf and intermediate", host, len(chain))
		}
		leaf := chain[0]
		if !chain[1].Equal(caIntermediate) {
			t.Fatalf("%s: served intermediate %q is not the CA's %q", host, chain[1].Subject, caIntermediate.Subject)
		}
		opts := x509.VerifyOptions{DNSName: host, Roots: acmeRoots, Intermediates: x509.NewCertPool()}
		opts.Intermediates.AddCert(caIntermediate)
		if _, err := leaf.Verify(opts); err != nil {
			t.Fatalf("%s: the served certificate does not chain to the CA: %v", host, err)
		}
		return leaf
	}

	// TLS-ALPN-01: the CA's handshake reaches the gateway.
	gate.setOpen(true)
	start := time.Now()
	chain, err := handshake(alpnHost)
	if err != nil {
		t.Fatalf("handshake for routed %s: %v", alpnHost, err)
	}
	first := issued(alpnHost, chain)
	t.Logf("%s: certificate %x issued over TLS-ALPN-01 in %s", alpnHost, first.SerialNumber, time.Since(start).Round(time.Millisecond))
	if got := rec.validatedBy(alpnHost); !slices.Equal(got, []string{"tls-alpn-01"}) {
		t.Fatalf("%s validated by %v, want [tls-alpn-01]", alpnHost, got)
	}
	// And it is what HTTPS visitors get, in front of the application.
	visitor := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: acmeRoots},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", httpsAddr)
		},
	}}
	defer visitor.CloseIdleConnections()
	resp, err := visitor.Get("https://" + alpnHost + "/")
	if err != nil {
		t.Fatalf("HTTPS GET through the gateway: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "app saw host="+alpnHost {
		t.Fatalf("HTTPS GET through the gateway: %s %q", resp.Status, body)
	}

	// HTTP-01: with the TLS-ALPN-01 handshake cut, autocert's first order
	// fails and its second one is validated on the HTTP listener.
	gate.setOpen(false)
	start = time.Now()
	chain, err = handshake(http01Host)
	if err != nil {
		t.Fatalf("handshake for routed %s: %v", http01Host, err)
	}
	leaf := issued(http01Host, chain)
	t.Logf("%s: certificate %x issued over HTTP-01 in %s", http01Host, leaf.SerialNumber, time.Since(start).Round(time.Millisecond))
	if got := rec.validatedBy(http01Host); !slices.Equal(got, []string{"http-01"}) {
		t.Fatalf("%s validated by %v, want [http-01]", http01Host, got)
	}
	if got := rec.failed(http01Host); !slices.Contains(got, "tls-alpn-01") {
		t.Fatalf("%s: failed challenges %v, want the cut tls-alpn-01 among them", http01Host, got)
	}
	gate.setOpen(true)

	// Made-up names: refused, and nothing asked of the CA.
	const sniTries = 5
	for range sniTries {
		if _, err := handshake(madeUpSNI); err == nil {
			t.Fatalf("handshake with made-up SNI %s succeeded", madeUpSNI)
		}
	}
	for path, want := range map[string]int{"/": http.StatusNotFound, "/.well-known/acme-challenge/x": http.StatusForbidden} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+path, nil)
		req.Host = madeUpHost
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("GET %s with made-up Host: %s, want %d", path, resp.Status, want)
		}
	}
	rec.checkOrders(t, alpnHost, http01Host)
	// Counted each time, logged once per name.
	resp, err = hc.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("pipeops_gateway_acme_refused_total %d\n", sniTries+1); !strings.Contains(string(metrics), want) {
		t.Errorf("metrics lack %q", want)
	}
	for host, want := range map[string]int{madeUpSNI: 1, madeUpHost: 1} {
		n := 0
		for line := range strings.Lines(logs.String()) {
			if strings.Contains(line, "acme: no certificate requested") && strings.Contains(line, "host="+host+" ") {
				n++
			}
		}
		if n != want {
			t.Errorf("%d refusal log lines for %s, want %d", n, host, want)
		}
	}

	// Renewal: before the first certificate ends, a new one is served.
	deadline := time.Now().Add(validity + 20*time.Second)
	var renewed *x509.Certificate
	for renewed == nil {
		if time.Now().After(deadline) {
			t.Fatalf("%s: still serving certificate %x at %s (it ends %s)", alpnHost, first.SerialNumber,
				time.Now().Format(time.TimeOnly), first.NotAfter.Format(time.TimeOnly))
		}
		chain, err := handshake(alpnHost)
		if err != nil {
			t.Fatalf("handshake for %s while waiting for the renewal: %v", alpnHost, err)
		}
		if chain[0].SerialNumber.Cmp(first.SerialNumber) != 0 {
			renewed = issued(alpnHost, chain)
			break
		}
		time.Sleep(200 * time.Millisecond) // polling the served certificate, not synchronising
	}
	if !renewed.NotAfter.After(first.NotAfter) {
		t.Errorf("renewed certificate ends %s, not after the first (%s)", renewed.NotAfter, first.NotAfter)
	}
	t.Logf("%s: renewed, certificate %x served %s before the first one (%x) ended", alpnHost, renewed.SerialNumber,
		time.Until(first.NotAfter).Round(time.Second), first.SerialNumber)
	if n := rec.orderCount(alpnHost); n < 2 {
		t.Errorf("%d orders for %s, want at least 2 (issue and renew)", n, alpnHost)
	}
	rec.checkOrders(t, alpnHost, http01Host)
}

func portOf(t *testing.T, addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// acmeRecorder is a reverse proxy in front of pebble's ACME API that keeps
// what the test asserts on: the identifiers of every new order (from the
// JWS payload of the request) and the last state of every authorization
// (from the CA's answers). The gateway is given its directory URL before
// pebble runs (setTarget points it at pebble then). Pebble builds every URL
// it hands out from the request's Host, which the proxy keeps, so all later
// requests come through it too.
type acmeRecorder struct {
	url    string
	target atomic.Pointer[url.URL] // pebble, once it runs

	mu     sync.Mutex
	orders []string
	authz  map[string]wireAuthz // by authorization URL path
}

type wireAuthz struct {
	Status     string `json:"status"`
	Identifier struct {
		Value string `json:"value"`
	} `json:"identifier"`
	Challenges []struct {
		Type   string `json:"type"`
		Status string `json:"status"`
	} `json:"challenges"`
}

// Pebble's paths for new orders and authorizations.
const (
	pebbleNewOrder = "/order-plz"
	pebbleAuthz    = "/authZ/"
)

func newACMERecorder(t *testing.T, ca *pebbletest.CA) *acmeRecorder {
	r := &acmeRecorder{authz: map[string]wireAuthz{}}
	upstream := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.ServerRoots}}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(r.target.Load())
			pr.Out.Host = pr.In.Host
		},
		Transport: upstream,
		ModifyResponse: func(resp *http.Response) error {
			if !strings.HasPrefix(resp.Request.URL.Path, pebbleAuthz) {
				return nil
			}
			body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if err != nil {
				return err
			}
			resp.Body = io.NopCloser(bytes.NewReader(body))
			var z wireAuthz
			if json.Unmarshal(body, &z) == nil && z.Status != "" {
				r.mu.Lock()
				r.authz[resp.Request.URL.Path] = z
				r.mu.Unlock()
			}
			return nil
		},
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if r.target.Load() == nil {
			http.Error(w, "pebble is not running yet", http.StatusBadGateway)
			return
		}
		if req.Method == http.MethodPost && req.URL.Path == pebbleNewOrder {
			body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			req.Body = io.NopCloser(bytes.NewReader(body))
			ids, err := orderIdentifiers(body)
			if err != nil {
				t.Errorf("undecodable newOrder: %v", err)
			}
			r.mu.Lock()
			r.orders = append(r.orders, ids...)
			r.mu.Unlock()
		}
		rp.ServeHTTP(w, req)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.ServerCertificate}}
	srv.StartTLS()
	t.Cleanup(func() {
		srv.Close()
		upstream.CloseIdleConnections()
	})
	r.url = srv.URL
	return r
}

// setTarget points the proxy at pebble, given its directory URL.
func (r *acmeRecorder) setTarget(t *testing.T, directory string) {
	u, err := url.Parse(directory)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = ""
	r.target.Store(u)
}

// orderIdentifiers decodes a newOrder request: a flattened JWS whose
// payload lists the identifiers ordered.
func orderIdentifiers(jws []byte) ([]string, error) {
	var msg struct {
		Payload string `json:"payload"`
	}
	if err := json.Unmarshal(jws, &msg); err != nil {
		return nil, err
	}
	payload, err := base64.RawURLEncoding.DecodeString(msg.Payload)
	if err != nil {
		return nil, err
	}
	var order struct {
		Identifiers []struct {
			Type  string `json:"type"`
			Value string `json:"value"`
		} `json:"identifiers"`
	}
	if err := json.Unmarshal(payload, &order); err != nil {
		return nil, err
	}
	var ids []string
	for _, id := range order.Identifiers {
		ids = append(ids, id.Value)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("no identifiers in %s", payload)
	}
	return ids, nil
}

// checkOrders fails t if any order named a host outside allowed.
func (r *acmeRecorder) checkOrders(t *testing.T, allowed ...string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range r.orders {
		if !slices.Contains(allowed, id) {
			t.Errorf("the CA was asked for %q (all orders: %v)", id, r.orders)
		}
	}
}

func (r *acmeRecorder) orderCount(host string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, id := range r.orders {
		if id == host {
			n++
		}
	}
	return n
}

// validatedBy lists the challenge types that made host's authorizations
// valid; failed those that made them invalid. Sorted, without repeats.
func (r *acmeRecorder) validatedBy(host string) []string { return r.challenges(host, "valid") }
func (r *acmeRecorder) failed(host string) []string      { return r.challenges(host, "invalid") }

func (r *acmeRecorder) challenges(host, status string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var types []string
	for _, z := range r.authz {
		if z.Identifier.Value != host || z.Status != status {
			continue
		}
		for _, c := range z.Challenges {
			if c.Status == status && !slices.Contains(types, c.Type) {
				types = append(types, c.Type)
			}
		}
	}
	slices.Sort(types)
	return types
}

// tlsGate stands where the CA makes its TLS-ALPN-01 handshakes: open, it
// passes connections to the gateway's HTTPS listener; shut, it closes them
// at once, and the challenge fails as it would behind a firewall.
type tlsGate struct {
	l      net.Listener
	target string
	open   atomic.Bool

	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func newTLSGate(t *testing.T, target string) *tlsGate {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &tlsGate{l: l, target: target, conns: map[net.Conn]struct{}{}}
	g.wg.Add(1)
	go g.acceptLoop()
	t.Cleanup(func() {
		l.Close()
		g.mu.Lock()
		for c := range g.conns {
			c.Close()
		}
		g.conns = nil
		g.mu.Unlock()
		g.wg.Wait()
	})
	return g
}

func (g *tlsGate) port() int       { return g.l.Addr().(*net.TCPAddr).Port }
func (g *tlsGate) setOpen(on bool) { g.open.Store(on) }

func (g *tlsGate) acceptLoop() {
	defer g.wg.Done()
	for {
		c, err := g.l.Accept()
		if err != nil {
			return
		}
		if !g.open.Load() {
			c.Close()
			continue
		}
		g.wg.Add(1)
		go g.forward(c)
	}
}

func (g *tlsGate) forward(c net.Conn) {
	defer g.wg.Done()
	up, err := net.DialTimeout("tcp", g.target, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	if !g.track(c, up) {
		return
	}
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			c.Close()
			up.Close()
			g.mu.Lock()
			delete(g.conns, c) // a no-op once Cleanup set conns to nil
			delete(g.conns, up)
			g.mu.Unlock()
		})
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		io.Copy(up, c)
		closeBoth()
	}()
	io.Copy(c, up)
	closeBoth()
}

// track registers a forwarded pair for Cleanup to close, unless the gate
// is already closing (then it closes them itself).
func (g *tlsGate) track(c, up net.Conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conns == nil {
		c.Close()
		up.Close()
		return false
	}
	g.conns[c], g.conns[up] = struct{}{}, struct{}{}
	return true
}
