package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/pipeops/tunnel/shared/stack"
	"github.com/pipeops/tunnel/shared/testenv/browsertest"
)

// TestConsole drives the web console in a real browser (Debian's chromium,
// headless) against the whole stack: the built control plane, gateway and
// agent, PostgreSQL and a real kube-apiserver. Screenshots go to the
// test's log directory, and to CONSOLE_SCREENSHOTS when it names one
// (`make console-screenshots` refreshes the README's).
func TestConsole(t *testing.T) {
	t.Parallel()
	fast := map[string]string{"REVOCATION_CHECK_INTERVAL": "1s"}
	e := newEnv(t, stack.Options{GatewayEnv: fast, ControlPlaneEnv: fast}, stack.ClusterOptions{Name: "edge", NoAgent: true})
	ctx := context.Background()
	admin, _, err := e.s.Token(ctx, "admin", 0)
	if err != nil {
		t.Fatal(err)
	}
	b := browsertest.Start(t, browsertest.Options{Width: 1200, Height: 720})
	shots := screenshotDir(t)
	console := e.s.ControlPlaneURL + "/console"
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		ctx, cancel := context.WithTimeout(b, browserStep)
		defer cancel()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v (page: %s)", what, err, pageText(b))
		}
	}
	// text reads an element's text in one script step: the live parts of
	// a page are replaced every second, and a node looked up first and
	// read after may be gone in between.
	text := func(what string, id chromedp.ID) string {
		t.Helper()
		return strings.TrimSpace(read(t, b, what, chromedp.Evaluate[string](fmt.Sprintf(`(document.getElementById(%q)||{}).textContent||""`, string(id)))))
	}

	// A wrong admin token is refused, on the sign-in page, with the reason.
	do("wrong token", chromedp.Navigate(console+"/clusters"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SetValue(chromedp.ID("token"), "eyJhbGciOiJFZERTQSJ9.e30.bm90LWEtc2lnbmF0dXJl"),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("signin-message")))
	if msg := text("sign-in message", "signin-message"); !strings.Contains(msg, "not a valid admin token") {
		t.Fatalf("wrong token: %q", msg)
	}

	// The right one leads to the clusters, where edge waits for its agent.
	do("sign in", chromedp.SetValue(chromedp.ID("token"), admin),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-cluster="edge"]`)))
	state := func() string {
		return strings.TrimSpace(read(t, b, "edge's state",
			chromedp.Evaluate[string](`(document.querySelector('tr[data-cluster="edge"] [data-state]')||{}).textContent||""`)))
	}
	if s := state(); s == "connected" {
		t.Fatalf("edge is %q before its agent runs", s)
	}
	// Nothing until the cross-site post reloads the page: the marker
	// would be lost.
	do("mark the page", chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Evaluate[bool](`window.__kept = true`)(ctx, tg)
		return err
	}))

	// The agent connects: the row says so without a reload, within 2 s.
	if err := e.c.Agent.Start(); err != nil {
		t.Fatal(err)
	}
	up := waitFor(t, "edge shown connected", 2*time.Second, func() bool { return state() == "connected" })
	t.Logf("edge shown connected %s after its agent was ready", up)
	if !read(t, b, "marker", chromedp.Evaluate[bool](`window.__kept === true`)) {
		t.Fatal("the page was reloaded to show the change")
	}
	screenshot(t, b, shots, "console-clusters.png")

	// The agent stops: the row says so, again without a reload; it comes
	// back when the agent does.
	e.c.Agent.Stop(5 * time.Second)
	down := waitFor(t, "edge shown disconnected after its agent stopped", 5*time.Second, func() bool { return state() == "disconnected" })
	t.Logf("edge shown disconnected %s after its agent stopped", down)
	if err := e.c.Agent.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "edge shown connected again", 5*time.Second, func() bool { return state() == "connected" })
	if !read(t, b, "marker", chromedp.Evaluate[bool](`window.__kept === true`)) {
		t.Fatal("the page was reloaded to show the agent stop")
	}

	// A managed Ingress: its route shows on the cluster's page.
	do("open edge", chromedp.Click(chromedp.CSS(`tr[data-cluster="edge"] a`)), chromedp.WaitVisible(chromedp.ID("routes")))
	if _, err := e.c.CreateIngress(ctx, "default", "web", e.host); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the route shown", 30*time.Second, func() bool {
		return read(t, b, "routes", chromedp.Evaluate[int](fmt.Sprintf(`document.querySelectorAll('#routes tr[data-host=%q]').length`, e.host))) == 1
	})
	// Requests through the gateway move the traffic chart (the gateways'
	// figures reach the database every 10 s).
	const requests = 25
	for i := range requests {
		if code, body, err := get(ctx, e.s, e.host, fmt.Sprintf("/?n=%d", i)); err != nil || code != http.StatusOK {
			t.Fatalf("request %d through the gateway: %d %v %.200s", i, code, err, body)
		}
	}
	waitFor(t, "the traffic chart to count the requests", 45*time.Second, func() bool {
		return read(t, b, "traffic", chromedp.Evaluate[string](`(document.getElementById("traffic")||{dataset:{}}).dataset.requests||""`)) == fmt.Sprint(requests)
	})
	if n := read(t, b, "host row", chromedp.Evaluate[int](fmt.Sprintf(`document.querySelectorAll('#traffic-hosts tr[data-traffic-host=%q]').length`, e.host))); n != 1 {
		t.Errorf("%d traffic rows for %s, want 1", n, e.host)
	}
	screenshot(t, b, shots, "console-cluster.png")

	// Revoking the agent's token (with its confirmation) closes its session.
	do("revoke the agent token",
		chromedp.Click(chromedp.CSS(`#tokens tr[data-kind="agent"] a[aria-label^="Revoke token"]`)),
		chromedp.WaitVisible(chromedp.ID("confirm")),
		chromedp.Click(chromedp.ID("confirm")),
		chromedp.WaitVisible(chromedp.ID("flash")))
	if gw := text("gateway", "cluster-gateway"); gw == "" {
		t.Error("the cluster page names no gateway")
	}
	waitFor(t, "edge shown disconnected after its token was revoked", 30*time.Second, func() bool {
		return text("cluster state", "cluster-state") == "disconnected"
	})
	e.c.Agent.Stop(5 * time.Second)

	// Create a cluster: its token shows once, with the install steps.
	do("create a cluster", chromedp.Navigate(console+"/clusters"),
		chromedp.WaitVisible(chromedp.ID("name")),
		chromedp.SetValue(chromedp.ID("name"), "staging"),
		chromedp.Click(chromedp.ID("create")),
		chromedp.WaitVisible(chromedp.ID("agent-token")))
	token := read(t, b, "token", chromedp.Value(chromedp.ID("agent-token")))
	helm := text("helm steps", "cmd-helm")
	if strings.Count(token, ".") != 2 || strings.Contains(helm, token) || !strings.Contains(helm, "existingSecret") {
		t.Fatalf("created cluster: token %q, helm steps %q", token, helm)
	}
	if out, err := e.s.CLI(ctx, "token", "list", "--cluster", "staging", "-o", "json"); err != nil || !strings.Contains(out, "agent") {
		t.Fatalf("staging's tokens: %v\n%s", err, out)
	}

	// The clusters page at phone size: nothing wider than the screen.
	do("phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile), chromedp.Navigate(console+"/clusters"),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-cluster="staging"]`)))
	if read(t, b, "width", chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`)) {
		t.Error("the clusters page is wider than a phone's screen")
	}
	screenshot(t, b, shots, "console-clusters-phone.png")

	// A form posted by another site's page is refused, with the session's
	// cookie and all.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<form id="f" method="post" action="%s/clusters"><input name="name" value="forged"></form>
<script>document.getElementById("f").submit()</script>`, console)
	}))
	defer evil.Close()
	do("cross-site post", chromedp.Navigate(evil.URL), chromedp.WaitVisible(chromedp.ID("error-message")))
	if body := text("error", "error-message"); !strings.Contains(body, "refused") {
		t.Errorf("cross-site post answered %q", body)
	}
	if out, err := e.s.CLI(ctx, "cluster", "show", "forged"); err == nil {
		t.Fatalf("a cross-site post created a cluster:\n%s", out)
	}

	// An expired session leads back to the sign-in, saying so.
	short, _, err := e.s.Token(ctx, "admin", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	do("an expiring session", chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, network.SetCookie, network.SetCookieParams{Name: "pipeops_session", Value: short,
			URL: e.s.ControlPlaneURL + "/", Path: "/", HTTPOnly: new(true)}) // host-only, like the console's: it replaces that one
		return err
	}))
	tries := 0
	// Verifiers allow 30 s of clock skew past a token's expiry.
	waitFor(t, "the short session to expire and lead to the sign-in", 60*time.Second, func() bool {
		// A new address each time: the browser may answer the same one
		// from the page it shows.
		tries++
		do("reload", chromedp.Navigate(fmt.Sprintf("%s/clusters?try=%d", console, tries)))
		return strings.Contains(read(t, b, "location", chromedp.Location()), "/console/signin")
	})
	if msg := text("sign-in message", "signin-message"); !strings.Contains(msg, "session has ended") {
		t.Errorf("expired session: sign-in page says %q", msg)
	}
}

// read runs one action that answers a value.
func read[T any](t *testing.T, b context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b, browserStep)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v (page: %s)", what, err, pageText(b))
	}
	return v
}

// browserStep bounds one step in the browser: a page that never shows what
// a step waits for fails the test with the page's text, not a hang.
const browserStep = time.Minute

// pageText is the visible text of the page, for failure messages.
func pageText(b context.Context) string {
	ctx, cancel := context.WithTimeout(b, 5*time.Second)
	defer cancel()
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	txt, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText.slice(0, 2000) : ""`))
	if err != nil {
		return loc + ": " + err.Error()
	}
	return loc + ":\n" + txt
}

// waitFor polls cond until it holds or timeout passes, and returns how
// long that took.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// screenshotDir is where the console's screenshots go: CONSOLE_SCREENSHOTS
// when set (the README's images), else the test's temporary directory.
func screenshotDir(t *testing.T) string {
	if d := os.Getenv("CONSOLE_SCREENSHOTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

func screenshot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(png))
}
