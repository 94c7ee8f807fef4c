package kubeapi_test

import (
	"bufio"
	"context"
	"crypto"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/tunnel/agent/kubeapi"
	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/gateway/proxy"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
	"github.com/pipeops/tunnel/shared/testenv/tunneltest"
	"github.com/pipeops/tunnel/shared/tunnel"
)

func TestMain(m *testing.M) { testenv.Main(m, kubetest.Stop) }

// harness is a gateway (agent endpoint and Kubernetes API path, over TLS)
// with one agent connected as cluster c1, whose Kubernetes API target is a
// kubeapi.Server.
type harness struct {
	gw     *httptest.Server
	caFile string // the gateway's certificate, for kubectl
	// sign makes a token signed by the key the gateway (and the JWKS at
	// jwks) trusts.
	sign func(*auth.Claims) string
	jwks string
}

// startTunnel starts the gateway and connects the agent, whose Kubernetes
// API streams go to dial, and which announces impersonation when
// impersonates is set. Everything stops at the end of the test.
func startTunnel(t *testing.T, dial func(context.Context) (net.Conn, error), impersonates bool) *harness {
	t.Helper()
	// TLS, as in production: kubectl sends no token over plain HTTP.
	g := tunneltest.StartGateway(t, tunneltest.Options{TLS: true})
	k8s := proxy.NewK8s(proxy.K8sConfig{Verifier: g.Verifier, Tunnels: g.Registry})
	t.Cleanup(k8s.Close)
	jwks, err := auth.MarshalJWKS(map[string]crypto.PublicKey{tunneltest.KeyID: g.Key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	g.Mux.Handle(proxy.K8sPrefix, k8s)
	g.Mux.HandleFunc("/.well-known/jwks.json", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(jwks) })
	caFile := filepath.Join(t.TempDir(), "gateway-ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: g.Server.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	g.Connect("c1", func(c *tunnelclient.Config) {
		c.Dialer = tunnelclient.DialerFunc(func(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
			if h.IsKubernetesAPI() {
				return dial(ctx)
			}
			return nil, tunnelclient.ErrTargetRefused
		})
		c.Impersonates = impersonates
	})
	return &harness{gw: g.Server, caFile: caFile, sign: g.Sign, jwks: g.Server.URL + "/.well-known/jwks.json"}
}

// TestKubectlThroughTunnel runs the real kubectl against a real
// kube-apiserver through the gateway's /k8s/ path, the yamux tunnel and the
// agent's forwarder, with the agent holding only the RBAC it was granted
// and the caller holding only a gateway user token.
func TestKubectlThroughTunnel(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		testenv.Require(t, "kubectl", fmt.Errorf("%w: %v", testenv.ErrUnavailable, err))
	}
	env := kubetest.Start(t) // first: the shared server's goroutines are not this test's
	testenv.LeakCheck(t)
	ns := env.Namespace(t)
	acct := env.ServiceAccount(t, ns, "agent",
		kubetest.Grant{Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"list", "get"}}}},
		kubetest.Grant{Namespace: ns, Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "create", "patch"}},
		}})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	fwd, err := kubeapi.New(acct.Config, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fwd.Close() }) // after the agent stops

	h := startTunnel(t, fwd.Dial, false)
	gw, caFile, sign, ctx := h.gw, h.caFile, h.sign, t.Context()

	user := sign(&auth.Claims{Kind: auth.KindUser, Clusters: []string{"c1"}})
	kc := func(args ...string) *exec.Cmd {
		base := []string{"--server", gw.URL + "/k8s/c1", "--certificate-authority", caFile, "--token", user, "--request-timeout", "0"}
		cmd := exec.CommandContext(ctx, kubectl, append(base, args...)...)
		cmd.Env = []string{"HOME=" + t.TempDir(), "KUBECONFIG=/dev/null"}
		return cmd
	}

	out, err := kc("get", "namespaces", "-o", "name").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "namespace/"+ns) {
		t.Fatalf("kubectl get namespaces: %v\n%s", err, out)
	}
	// The API server saw the agent's ServiceAccount, not the caller.
	out, err = kc("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").CombinedOutput()
	if err != nil || string(out) != "system:serviceaccount:"+ns+":agent" {
		t.Fatalf("kubectl auth whoami: %v %q", err, out)
	}
	// Only what the agent was granted: no secrets.
	if out, err := kc("get", "secrets", "-n", ns).CombinedOutput(); err == nil || !strings.Contains(string(out), "Forbidden") {
		t.Fatalf("kubectl get secrets beyond the agent's RBAC: %v\n%s", err, out)
	}

	// kubectl apply through the tunnel.
	apply := kc("apply", "-n", ns, "-f", "-")
	apply.Stdin = strings.NewReader("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: through-tunnel\ndata:\n  k: v\n")
	if out, err := apply.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	cm, err := env.Client.CoreV1().ConfigMaps(ns).Get(ctx, "through-tunnel", metav1.GetOptions{})
	if err != nil || cm.Data["k"] != "v" {
		t.Fatalf("configmap applied through the tunnel: %v %+v", err, cm)
	}

	// A watch stays open and delivers events as they happen.
	watch := kc("get", "pods", "-n", ns, "--watch", "-o", "name")
	stdout, _ := watch.StdoutPipe()
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = watch.Process.Kill(); _ = watch.Wait() }()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	time.Sleep(1500 * time.Millisecond) // held open past any short client timeout, then an event
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "watched"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}}}
	if _, err := env.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("kubectl --watch ended before the event arrived")
			}
			if l == "pod/watched" {
				return
			}
		case <-timeout:
			t.Fatal("the watch did not deliver the new pod")
		}
	}
}

// An upgrade request (kubectl exec over SPDY) reaches the API server and
// gets the API server's own answer, not a 502: it travels over HTTP/1.1,
// since HTTP/2 cannot carry an Upgrade. With no kubelet here, the API
// server refuses the exec itself, which is the answer to expect.
func TestUpgradeReachesAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	testenv.LeakCheck(t)
	ns := env.Namespace(t)
	acct := env.ServiceAccount(t, ns, "agent", kubetest.Grant{Namespace: ns, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
		{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"create", "get"}},
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}}}
	if _, err := env.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fwd, err := kubeapi.New(acct.Config, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer fwd.Close()
	for _, proto := range []struct{ upgrade, extra string }{
		{"SPDY/3.1", "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n"},
		{"websocket", "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n"},
	} {
		t.Run(proto.upgrade, func(t *testing.T) {
			conn, err := fwd.Dial(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
			fmt.Fprintf(conn, "GET /api/v1/namespaces/%s/pods/p/exec?command=true&stdout=true HTTP/1.1\r\nHost: kubernetes\r\n"+
				"Connection: Upgrade\r\nUpgrade: %s\r\n%s\r\n", ns, proto.upgrade, proto.extra)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusBadGateway || !strings.Contains(string(b), `"kind":"Status"`) {
				t.Fatalf("exec upgrade answered %s: %s (want the API server's own Status)", resp.Status, b)
			}
		})
	}
}
