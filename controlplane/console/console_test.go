package console_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/api"
	"github.com/pipeops/tunnel/controlplane/console"
	"github.com/pipeops/tunnel/controlplane/cptest"
	"github.com/pipeops/tunnel/controlplane/hostnames"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

func TestMain(m *testing.M) { testenv.Main(m, pgtest.Stop) }

// site is a control plane with its console behind a real HTTP server,
// and a browser-like client that keeps cookies by hand (so tests see
// exactly which ones are sent).
type site struct {
	t       *testing.T
	cp      *cptest.ControlPlane
	url     string
	admin   string
	cookies map[string]string
	logs    *testenv.LogBuffer // the console's and the API's
}

func newSite(t *testing.T, cfg console.Config) *site {
	t.Helper()
	cp := cptest.Store(t)
	cp.DNS = &hostnames.DNSVerifier{Store: cp.DB, Resolver: hostnames.NewResolver("127.0.0.1:9")} // no query leaves the machine
	cfg.GatewayURL = "https://gateway.example.com"
	logs := &testenv.LogBuffer{}
	ui, err := console.New(cfg, console.Deps{Clusters: cp.DB, Routes: cp.DB, Tokens: cp.DB, Issuer: cp.Issuer, Audit: cp.DB, Traffic: cp.DB,
		Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := api.New(api.Config{GatewayWSURL: "wss://gateway.example.com/ws", GatewayURL: cfg.GatewayURL},
		api.Deps{Clusters: cp.DB, Routes: cp.DB, Tokens: cp.DB, Hostnames: cp.DB, DNS: cp.DNS, Issuer: cp.Issuer, DB: cp.DB,
			Audit: cp.DB, Console: ui.Handler(), Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.Close(); srv.Close() })
	admin, _, err := cp.Issuer.Issue(context.Background(), tokens.Request{Kind: auth.KindAdmin})
	if err != nil {
		t.Fatal(err)
	}
	return &site{t: t, cp: cp, url: hs.URL, admin: admin, cookies: map[string]string{}, logs: logs}
}

type answer struct {
	status  int
	body    string
	header  http.Header
	cookies []*http.Cookie
}

// send makes one request, without following redirects, with the cookies
// kept so far, and keeps the ones it sets.
func (s *site) send(method, path string, form url.Values, header map[string]string) answer {
	s.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, s.url+path, body)
	if err != nil {
		s.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	for k, v := range s.cookies {
		req.AddCookie(&http.Cookie{Name: k, Value: v})
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	for _, c := range res.Cookies() {
		if c.MaxAge < 0 {
			delete(s.cookies, c.Name)
		} else {
			s.cookies[c.Name] = c.Value
		}
	}
	return answer{status: res.StatusCode, body: string(b), header: res.Header, cookies: res.Cookies()}
}

var csrfRE = regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)

// csrf is the anti-forgery token of the page a holds.
func csrf(t *testing.T, a answer) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(a.body)
	if m == nil {
		t.Fatalf("no anti-forgery token in the page:\n%s", a.body)
	}
	return m[1]
}

// signIn signs in with token and returns the sign-in's answer.
func (s *site) signIn(token string) answer {
	s.t.Helper()
	page := s.send("GET", "/console/signin", nil, nil)
	if page.status != http.StatusOK {
		s.t.Fatalf("sign-in page: %d", page.status)
	}
	return s.send("POST", "/console/signin", url.Values{"token": {token}, "csrf_token": {csrf(s.t, page)}, "next": {"/console/clusters"}}, nil)
}

func TestSignIn(t *testing.T) {
	s := newSite(t, console.Config{})

	// Not signed in: pages lead to the sign-in, and back after it.
	a := s.send("GET", "/console/clusters", nil, nil)
	if a.status != http.StatusSeeOther || !strings.HasPrefix(a.header.Get("Location"), "/console/signin?next=%2Fconsole%2Fclusters") {
		t.Fatalf("anonymous page: %d %q", a.status, a.header.Get("Location"))
	}
	if a := s.send("GET", "/", nil, nil); a.status != http.StatusSeeOther || a.header.Get("Location") != "/console/" {
		t.Errorf("/ leads to %d %q, want the console", a.status, a.header.Get("Location"))
	}
	if a := s.send("GET", "/console/clusters/live", nil, nil); a.status != http.StatusUnauthorized {
		t.Errorf("anonymous live part: %d, want 401", a.status)
	}

	// Wrong tokens: a user token, an agent token, garbage.
	user, _, err := s.cp.Issuer.Issue(context.Background(), tokens.Request{Kind: auth.KindUser, Subject: "alice", Clusters: []string{"*"}})
	if err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"user token": user, "garbage": "not-a-token", "empty": ""} {
		a := s.signIn(tok)
		if a.status != http.StatusUnauthorized || !strings.Contains(a.body, "not a valid admin token") {
			t.Errorf("%s: %d, want 401 saying why\n%s", name, a.status, a.body)
		}
		if _, ok := s.cookies[api.SessionCookie]; ok {
			t.Fatalf("%s: a session cookie was set", name)
		}
	}

	// The right one: a session cookie as it should be, and the page.
	a = s.signIn(s.admin)
	if a.status != http.StatusSeeOther || a.header.Get("Location") != "/console/clusters" {
		t.Fatalf("sign-in: %d %q\n%s", a.status, a.header.Get("Location"), a.body)
	}
	var session *http.Cookie
	for _, c := range a.cookies {
		if c.Name == api.SessionCookie {
			session = c
		}
	}
	// The cookie outlives its token by a minute (verifiers allow 30 s of
	// skew), so a browser coming back late is told the session ended.
	if session == nil || !session.HttpOnly || session.SameSite != http.SameSiteStrictMode || session.Path != "/" ||
		session.MaxAge != int((console.DefaultSessionTTL+time.Minute).Seconds()) {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/, Max-Age of the session and a minute", session)
	}
	if session.Value == s.admin {
		t.Fatal("the admin token itself is the session: it must be a session of its own")
	}
	a = s.send("GET", "/console/clusters", nil, nil)
	if a.status != http.StatusOK || !strings.Contains(a.body, "<h1>Clusters</h1>") {
		t.Fatalf("clusters page: %d\n%s", a.status, a.body)
	}
	for _, h := range []string{"Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options"} {
		if a.header.Get(h) == "" {
			t.Errorf("no %s header", h)
		}
	}
	// Its JSON twin answers the same session.
	if a := s.send("GET", "/api/v1/admin/clusters", nil, nil); a.status != http.StatusOK || !strings.Contains(a.body, `"clusters"`) {
		t.Errorf("JSON twin with the session: %d %s", a.status, a.body)
	}

	// Signing out ends the session: the same cookie is worth nothing.
	kept := s.cookies[api.SessionCookie]
	out := s.send("POST", "/console/signout", url.Values{"csrf_token": {csrf(t, a)}}, map[string]string{"Origin": s.url})
	if out.status != http.StatusSeeOther {
		t.Fatalf("sign-out: %d %s", out.status, out.body)
	}
	s.cookies[api.SessionCookie] = kept
	a = s.send("GET", "/console/clusters", nil, nil)
	if a.status != http.StatusSeeOther || !strings.Contains(a.header.Get("Location"), "ended=1") {
		t.Errorf("after sign-out, the old cookie: %d %q, want the sign-in saying the session ended", a.status, a.header.Get("Location"))
	}
	if a := s.send("GET", "/api/v1/admin/clusters", nil, nil); a.status != http.StatusUnauthorized {
		t.Errorf("after sign-out, the JSON API with the old cookie: %d, want 401", a.status)
	}
}

func TestSessionExpires(t *testing.T) {
	s := newSite(t, console.Config{SessionTTL: time.Second})
	if a := s.signIn(s.admin); a.status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", a.status)
	}
	if a := s.send("GET", "/console/clusters", nil, nil); a.status != http.StatusOK {
		t.Fatalf("fresh session: %d", a.status)
	}
	// Tokens expire on whole seconds, and verifiers allow 30 s of clock
	// skew past that.
	testenv.Eventually(t, func() bool {
		a := s.send("GET", "/console/clusters", nil, nil)
		return a.status == http.StatusSeeOther && strings.Contains(a.header.Get("Location"), "ended=1")
	}, "the expired session to lead to the sign-in")
}

func TestForgedRequestsRefused(t *testing.T) {
	s := newSite(t, console.Config{})
	if a := s.signIn(s.admin); a.status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", a.status)
	}
	page := s.send("GET", "/console/clusters", nil, nil)
	token := csrf(t, page)

	for _, tc := range []struct {
		name   string
		form   url.Values
		header map[string]string
	}{
		{"no anti-forgery token", url.Values{"name": {"forged-1"}}, nil},
		{"a wrong one", url.Values{"name": {"forged-2"}, "csrf_token": {"AAAA"}}, nil},
		{"the right one from another origin", url.Values{"name": {"forged-3"}, "csrf_token": {token}}, map[string]string{"Origin": "http://evil.example"}},
	} {
		a := s.send("POST", "/console/clusters", tc.form, tc.header)
		if a.status != http.StatusForbidden {
			t.Errorf("%s: %d, want 403\n%s", tc.name, a.status, a.body)
		}
		if _, err := s.cp.DB.ClusterByName(context.Background(), tc.form.Get("name")); err == nil {
			t.Errorf("%s: the cluster was created", tc.name)
		}
	}
	// The JSON API with the cookie wants the token in a header.
	if a := s.send("POST", "/api/v1/admin/tokens", nil, nil); a.status != http.StatusForbidden {
		t.Errorf("JSON API POST with the cookie and no %s: %d, want 403", api.CSRFHeader, a.status)
	}

	// The console's own form goes through, and shows the token once.
	a := s.send("POST", "/console/clusters", url.Values{"name": {"prod-eu"}, "csrf_token": {token}}, map[string]string{"Origin": s.url})
	if a.status != http.StatusCreated || !strings.Contains(a.body, `id="agent-token"`) {
		t.Fatalf("create: %d\n%s", a.status, a.body)
	}
	c, err := s.cp.DB.ClusterByName(context.Background(), "prod-eu")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`id="agent-token"[^>]*>([^<]+)<`).FindStringSubmatch(a.body)
	if m == nil {
		t.Fatal("no token on the page")
	}
	claims, err := s.cp.Issuer.Verifier().Verify(context.Background(), strings.TrimSpace(m[1]), auth.KindAgent)
	if err != nil || claims.ClusterID != c.UUID {
		t.Fatalf("the token shown: %v, %v", claims, err)
	}
	if strings.Contains(a.body[strings.Index(a.body, `id="cmd-helm"`):], strings.TrimSpace(m[1])) {
		t.Error("an install command carries the token")
	}
	// A name taken is said so, on the form.
	a = s.send("POST", "/console/clusters", url.Values{"name": {"prod-eu"}, "csrf_token": {token}}, nil)
	if a.status != http.StatusConflict || !strings.Contains(a.body, "taken") {
		t.Errorf("taken name: %d", a.status)
	}
}

func TestActions(t *testing.T) {
	s := newSite(t, console.Config{})
	ctx := context.Background()
	if a := s.signIn(s.admin); a.status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", a.status)
	}
	token := csrf(t, s.send("GET", "/console/clusters", nil, nil))
	post := func(path string, form url.Values) answer {
		t.Helper()
		if form == nil {
			form = url.Values{}
		}
		form.Set("csrf_token", token)
		return s.send("POST", path, form, map[string]string{"Origin": s.url})
	}
	if a := post("/console/clusters", url.Values{"name": {"edge"}}); a.status != http.StatusCreated {
		t.Fatalf("create: %d", a.status)
	}
	c, err := s.cp.DB.ClusterByName(ctx, "edge")
	if err != nil {
		t.Fatal(err)
	}
	agentTokens := func() (active, revoked int) {
		toks, err := s.cp.DB.Tokens(ctx, c.UUID)
		if err != nil {
			t.Fatal(err)
		}
		for _, tk := range toks {
			if tk.Kind != string(auth.KindAgent) {
				continue
			}
			if tk.RevokedAt.IsZero() {
				active++
			} else {
				revoked++
			}
		}
		return active, revoked
	}

	// The cluster's page, and its JSON twins.
	page := s.send("GET", "/console/clusters/edge", nil, nil)
	if page.status != http.StatusOK || !strings.Contains(page.body, c.UUID) {
		t.Fatalf("cluster page: %d", page.status)
	}
	for _, twin := range []string{"/api/v1/admin/clusters/" + c.UUID, "/api/v1/admin/routes?cluster=" + c.UUID,
		"/api/v1/admin/tokens?cluster=" + c.UUID, "/api/v1/admin/audit?cluster=" + c.UUID} {
		if !strings.Contains(page.body, `href="`+strings.ReplaceAll(twin, "&", "&amp;")+`"`) {
			t.Errorf("the page does not link its JSON twin %s", twin)
		}
		if a := s.send("GET", twin, nil, nil); a.status != http.StatusOK {
			t.Errorf("JSON twin %s: %d %s", twin, a.status, a.body)
		}
	}
	// Listings take a cluster's name as well as its id.
	if a := s.send("GET", "/api/v1/admin/tokens?cluster=edge", nil, nil); a.status != http.StatusOK || !strings.Contains(a.body, c.UUID) {
		t.Errorf("tokens of a cluster by name: %d %s", a.status, a.body)
	}
	if a := s.send("GET", "/api/v1/admin/tokens?cluster=no-such", nil, nil); a.status != http.StatusNotFound {
		t.Errorf("tokens of an unknown cluster: %d, want 404", a.status)
	}
	// A GET that mints a token does not take the cookie: another page of
	// the same site could make the browser send it.
	if a := s.send("GET", "/api/v1/admin/clusters/edge/kubeconfig", nil, nil); a.status != http.StatusForbidden {
		t.Errorf("kubeconfig GET with the session cookie: %d, want 403", a.status)
	}

	// Rotating asks first, then makes a new agent token and revokes the old.
	if a := s.send("GET", "/console/clusters/edge/rotate", nil, nil); a.status != http.StatusOK || !strings.Contains(a.body, `id="confirm"`) {
		t.Fatalf("rotate confirmation: %d", a.status)
	}
	if a := post("/console/clusters/edge/rotate", nil); a.status != http.StatusOK || !strings.Contains(a.body, `id="agent-token"`) {
		t.Fatalf("rotate: %d", a.status)
	}
	if active, revoked := agentTokens(); active != 1 || revoked != 1 {
		t.Errorf("after rotation: %d active and %d revoked agent tokens, want 1 and 1", active, revoked)
	}

	// A kubeconfig for a person: a user token naming them.
	a := post("/console/clusters/edge/kubeconfig", url.Values{"user": {"alice"}, "groups": {"dev, ops"}})
	if a.status != http.StatusOK || !strings.Contains(a.header.Get("Content-Disposition"), "edge-alice.kubeconfig") {
		t.Fatalf("kubeconfig: %d %q", a.status, a.header.Get("Content-Disposition"))
	}
	m := regexp.MustCompile(`token: (\S+)`).FindStringSubmatch(a.body)
	if m == nil {
		t.Fatalf("no token in the kubeconfig:\n%s", a.body)
	}
	claims, err := s.cp.Issuer.Verifier().Verify(ctx, m[1], auth.KindUser)
	if err != nil || claims.Subject != "alice" || strings.Join(claims.Groups, ",") != "dev,ops" || !claims.AllowsCluster(c.UUID) {
		t.Fatalf("kubeconfig token: %+v %v", claims, err)
	}
	if a := post("/console/clusters/edge/kubeconfig", url.Values{"user": {""}}); a.status != http.StatusBadRequest {
		t.Errorf("kubeconfig for nobody: %d, want 400", a.status)
	}

	// Revoking a token asks first; the answer leads back to the cluster.
	confirm := s.send("GET", "/console/tokens/"+claims.ID+"/revoke?back=/console/clusters/"+c.UUID, nil, nil)
	if confirm.status != http.StatusOK || !strings.Contains(confirm.body, "cannot be undone") {
		t.Fatalf("revoke confirmation: %d", confirm.status)
	}
	a = post("/console/tokens/"+claims.ID+"/revoke?back=/console/clusters/"+c.UUID, nil)
	if a.status != http.StatusSeeOther || !strings.HasPrefix(a.header.Get("Location"), "/console/clusters/"+c.UUID+"?revoked=") {
		t.Fatalf("revoke: %d %q", a.status, a.header.Get("Location"))
	}
	if _, err := s.cp.Issuer.Verifier().Verify(ctx, m[1], auth.KindUser); err == nil {
		t.Error("the revoked token still verifies")
	}
	// A "back" outside the console is not followed.
	if a := post("/console/tokens/"+claims.ID+"/revoke?back=//evil.example/", nil); a.header.Get("Location") != "/console/clusters?revoked="+claims.ID {
		t.Errorf("revoke with a foreign back: %q", a.header.Get("Location"))
	}

	// Deleting wants the name typed.
	if a := post("/console/clusters/edge/delete", url.Values{"confirm_name": {"edg"}}); a.status != http.StatusBadRequest {
		t.Fatalf("delete with the wrong name: %d", a.status)
	}
	if _, err := s.cp.DB.Cluster(ctx, c.UUID); err != nil {
		t.Fatalf("the cluster went with a wrong name: %v", err)
	}
	a = post("/console/clusters/edge/delete", url.Values{"confirm_name": {"edge"}})
	if a.status != http.StatusSeeOther || a.header.Get("Location") != "/console/clusters?deleted=edge" {
		t.Fatalf("delete: %d %q", a.status, a.header.Get("Location"))
	}
	if _, err := s.cp.DB.Cluster(ctx, c.UUID); err == nil {
		t.Fatal("the cluster is still there")
	}
	if a := s.send("GET", "/console/clusters?deleted=edge", nil, nil); !strings.Contains(a.body, "Cluster edge was deleted.") {
		t.Error("no word of the deletion")
	}
}

// TestTrafficCharts: the gateways' figures, as the store holds them, are
// drawn per cluster and per host, busiest host first.
func TestTrafficCharts(t *testing.T) {
	s := newSite(t, console.Config{})
	ctx := context.Background()
	c, err := s.cp.DB.CreateCluster(ctx, "edge")
	if err != nil {
		t.Fatal(err)
	}
	minute := time.Now().UTC().Truncate(time.Minute)
	var slow controlplane.TrafficHistogram
	slow[len(slow)-2] = 3 // three slow requests
	deltas := []controlplane.TrafficDelta{
		{Minute: minute.Add(-10 * time.Minute), ClusterUUID: c.UUID, Hostname: "quiet.example.test",
			TrafficCounts: controlplane.TrafficCounts{Requests: 3, Errors: 3, BytesOut: 300, Latency: slow}},
		{Minute: minute, ClusterUUID: c.UUID, Hostname: "busy.example.test",
			TrafficCounts: controlplane.TrafficCounts{Requests: 120, BytesIn: 1000, BytesOut: 64 << 10}},
		// The hour is sixty minutes, this one among them: the sixty-first
		// back is not counted.
		{Minute: minute.Add(-60 * time.Minute), ClusterUUID: c.UUID, Hostname: "busy.example.test",
			TrafficCounts: controlplane.TrafficCounts{Requests: 1000}},
	}
	if err := s.cp.DB.AddTraffic(ctx, deltas); err != nil {
		t.Fatal(err)
	}
	if a := s.signIn(s.admin); a.status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", a.status)
	}
	// The page draws the charts, the traffic part redraws them; the
	// part that reloads every second has none (a dozen queries each).
	if a := s.send("GET", "/console/clusters/edge", nil, nil); !strings.Contains(a.body, `data-requests="123"`) ||
		!strings.Contains(a.body, `data-live="/console/clusters/`+c.UUID+`/traffic/live" data-refresh="10000"`) {
		t.Errorf("the page lacks the traffic part, or its refresh: %d\n%s", a.status, a.body)
	}
	if a := s.send("GET", "/console/clusters/edge/live", nil, nil); a.status != http.StatusOK || strings.Contains(a.body, "data-requests") {
		t.Errorf("the fast live part: %d, with traffic = %v", a.status, strings.Contains(a.body, "data-requests"))
	}
	a := s.send("GET", "/console/clusters/edge/traffic/live", nil, nil)
	if a.status != http.StatusOK {
		t.Fatalf("traffic part: %d", a.status)
	}
	for _, want := range []string{`data-requests="123"`, "123 in the last hour", "3, 2.4 % of requests", `id="chart-latency"`} {
		if !strings.Contains(a.body, want) {
			t.Errorf("the traffic section lacks %q", want)
		}
	}
	busy, quiet := strings.Index(a.body, `data-traffic-host="busy.example.test"`), strings.Index(a.body, `data-traffic-host="quiet.example.test"`)
	if busy < 0 || quiet < 0 || busy > quiet {
		t.Errorf("host rows at %d (busy) and %d (quiet): want both, busiest first", busy, quiet)
	}
	// Every host row has its own two charts: one line, then two.
	if n := strings.Count(a.body, `<td class="spark"><svg`); n != 4 {
		t.Errorf("%d host charts, want 4", n)
	}
	// Another cluster's page shows none of it.
	if _, err := s.cp.DB.CreateCluster(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	if a := s.send("GET", "/console/clusters/other/traffic/live", nil, nil); !strings.Contains(a.body, `data-requests="0"`) || strings.Contains(a.body, "busy.example.test") {
		t.Error("another cluster's page shows edge's traffic")
	}
}

// TestRefusedSignInsLoggedOnce: anyone can send wrong tokens at will; the
// log gets one line for them per interval, not one each.
func TestRefusedSignInsLoggedOnce(t *testing.T) {
	var logs testenv.LogBuffer
	cp := cptest.Store(t)
	ui, err := console.New(console.Config{}, console.Deps{Clusters: cp.DB, Routes: cp.DB, Tokens: cp.DB, Issuer: cp.Issuer, Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(http.StripPrefix("/console", ui.Handler()))
	t.Cleanup(hs.Close)
	s := &site{t: t, cp: cp, url: hs.URL, cookies: map[string]string{}}
	for range 20 {
		if a := s.signIn("not-a-token"); a.status != http.StatusUnauthorized {
			t.Fatalf("wrong token: %d", a.status)
		}
	}
	if n := strings.Count(logs.String(), "console sign-in refused"); n != 1 {
		t.Errorf("%d log lines for 20 refused sign-ins, want 1:\n%s", n, logs.String())
	}
}

// TestSignInAgain: signing in over a live session ends that one, so a
// browser never leaves a valid session behind.
func TestSignInAgain(t *testing.T) {
	s := newSite(t, console.Config{})
	if a := s.signIn(s.admin); a.status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", a.status)
	}
	first := s.cookies[api.SessionCookie]
	if a := s.signIn(s.admin); a.status != http.StatusSeeOther {
		t.Fatalf("second sign-in: %d", a.status)
	}
	second := s.cookies[api.SessionCookie]
	if second == "" || second == first {
		t.Fatal("the second sign-in made no new session")
	}
	for name, session := range map[string]string{"first": first, "second": second} {
		want := http.StatusOK
		if name == "first" {
			want = http.StatusUnauthorized
		}
		s.cookies[api.SessionCookie] = session
		if a := s.send("GET", "/api/v1/admin/clusters", nil, nil); a.status != want {
			t.Errorf("%s session after the second sign-in: %d, want %d", name, a.status, want)
		}
	}
	if !strings.Contains(s.logs.String(), "console session replaced") {
		t.Errorf("the replaced session is not logged:\n%s", s.logs.String())
	}
}

// TestSecureCookie: served over TLS (here: behind a proxy that terminates
// it, as APIURL says), the session is a "__Host-" cookie, Secure, for the
// whole host; the API takes it, and sign-out removes it.
func TestSecureCookie(t *testing.T) {
	s := newSite(t, console.Config{APIURL: "https://cp.example.com"})
	a := s.signIn(s.admin)
	if a.status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", a.status)
	}
	var session *http.Cookie
	for _, c := range a.cookies {
		if c.Name == api.SecureSessionCookie {
			session = c
		}
		if c.Name == api.SessionCookie {
			t.Errorf("over TLS, the plain cookie %s was set", c.Name)
		}
	}
	if session == nil || !session.Secure || session.Path != "/" || session.Domain != "" {
		t.Fatalf("session cookie %+v: want %s, Secure, Path=/ and no Domain", session, api.SecureSessionCookie)
	}
	page := s.send("GET", "/console/clusters", nil, nil)
	if page.status != http.StatusOK {
		t.Fatalf("page with the secure cookie: %d", page.status)
	}
	if a := s.send("GET", "/api/v1/admin/clusters", nil, nil); a.status != http.StatusOK {
		t.Errorf("JSON API with the secure cookie: %d", a.status)
	}
	out := s.send("POST", "/console/signout", url.Values{"csrf_token": {csrf(t, page)}}, map[string]string{"Origin": s.url})
	if out.status != http.StatusSeeOther {
		t.Fatalf("sign-out: %d", out.status)
	}
	if _, ok := s.cookies[api.SecureSessionCookie]; ok {
		t.Error("sign-out left the secure cookie")
	}
}

// TestOversizedForm: a form past the limit is refused as too large, and
// nothing is created.
func TestOversizedForm(t *testing.T) {
	s := newSite(t, console.Config{})
	if a := s.signIn(s.admin); a.status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", a.status)
	}
	token := csrf(t, s.send("GET", "/console/clusters", nil, nil))
	form := url.Values{"name": {"big"}, "csrf_token": {token}, "pad": {strings.Repeat("x", 100<<10)}}
	if a := s.send("POST", "/console/clusters", form, map[string]string{"Origin": s.url}); a.status != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized form: %d, want 413\n%s", a.status, a.body)
	}
	if _, err := s.cp.DB.ClusterByName(context.Background(), "big"); err == nil {
		t.Error("the oversized form created its cluster")
	}
	s.cookies = map[string]string{}
	page := s.send("GET", "/console/signin", nil, nil)
	big := url.Values{"token": {strings.Repeat("x", 100<<10)}, "csrf_token": {csrf(t, page)}}
	if a := s.send("POST", "/console/signin", big, nil); a.status != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized sign-in: %d, want 413", a.status)
	}
}

// TestBanners: the word after a deletion or a revocation is shown only
// for what it can be: anyone can link to a page with any query.
func TestBanners(t *testing.T) {
	s := newSite(t, console.Config{})
	ctx := context.Background()
	c, err := s.cp.DB.CreateCluster(ctx, "edge")
	if err != nil {
		t.Fatal(err)
	}
	_, live, err := s.cp.Issuer.Issue(ctx, tokens.Request{Kind: auth.KindAgent, ClusterUUID: c.UUID})
	if err != nil {
		t.Fatal(err)
	}
	if a := s.signIn(s.admin); a.status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", a.status)
	}
	for _, tc := range []struct {
		path, text string
		shown      bool
	}{
		{"/console/clusters?deleted=gone-one", "Cluster gone-one was deleted.", true},
		{"/console/clusters?deleted=" + url.QueryEscape("Your account is locked: call +1 555"), "account is locked", false},
		{"/console/clusters/edge?revoked=" + live.ID, "was revoked", false}, // not revoked
		{"/console/clusters/edge?revoked=" + url.QueryEscape("deadbeef, and call us"), "call us", false},
	} {
		a := s.send("GET", tc.path, nil, nil)
		if a.status != http.StatusOK {
			t.Fatalf("%s: %d", tc.path, a.status)
		}
		if got := strings.Contains(a.body, tc.text); got != tc.shown {
			t.Errorf("%s: %q shown = %v, want %v", tc.path, tc.text, got, tc.shown)
		}
	}
	if err := s.cp.DB.RevokeToken(ctx, live.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	if a := s.send("GET", "/console/clusters/edge?revoked="+live.ID, nil, nil); !strings.Contains(a.body, "Token "+live.ID+" was revoked") {
		t.Error("no word of a real revocation")
	}
}

// TestActionsLogged: every change says who made it, by token or session
// id, from the console and from the API.
func TestActionsLogged(t *testing.T) {
	s := newSite(t, console.Config{})
	ctx := context.Background()
	if a := s.signIn(s.admin); a.status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", a.status)
	}
	session, err := s.cp.Issuer.Verifier().Verify(ctx, s.cookies[api.SessionCookie], auth.KindAdmin)
	if err != nil {
		t.Fatal(err)
	}
	token := csrf(t, s.send("GET", "/console/clusters", nil, nil))
	post := func(path string, form url.Values) {
		t.Helper()
		form.Set("csrf_token", token)
		if a := s.send("POST", path, form, map[string]string{"Origin": s.url}); a.status >= 400 {
			t.Fatalf("%s: %d", path, a.status)
		}
	}
	post("/console/clusters", url.Values{"name": {"edge"}})
	post("/console/clusters/edge/rotate", url.Values{})
	post("/console/clusters/edge/kubeconfig", url.Values{"user": {"alice"}})

	// The API, with a Bearer admin token of its own.
	admin, err := s.cp.Issuer.Verifier().Verify(ctx, s.admin, auth.KindAdmin)
	if err != nil {
		t.Fatal(err)
	}
	bearer := map[string]string{"Authorization": "Bearer " + s.admin}
	s.cookies = map[string]string{}
	if a := s.send("GET", "/api/v1/admin/clusters/edge/kubeconfig", nil, bearer); a.status != http.StatusOK {
		t.Fatalf("API kubeconfig: %d", a.status)
	}
	if a := s.send("DELETE", "/api/v1/admin/clusters/edge", nil, bearer); a.status != http.StatusOK {
		t.Fatalf("API delete: %d", a.status)
	}

	lines := strings.Split(s.logs.String(), "\n")
	for _, tc := range []struct{ msg, by string }{
		{"console: cluster created", "by_session=" + session.ID},
		{"console: agent token rotated", "by_session=" + session.ID},
		{"console: kubeconfig issued", "by_session=" + session.ID},
		{"kubeconfig issued", "by_token=" + admin.ID},
		{"cluster deleted", "by_token=" + admin.ID},
	} {
		found := false
		for _, l := range lines {
			if strings.Contains(l, `msg="`+tc.msg+`"`) && strings.Contains(l, tc.by) {
				found = true
			}
		}
		if !found {
			t.Errorf("no %q line with %s in:\n%s", tc.msg, tc.by, s.logs.String())
		}
	}
	if strings.Contains(s.logs.String(), s.admin) {
		t.Error("a token itself reached the log")
	}
}
