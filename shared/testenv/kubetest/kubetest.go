// Package kubetest runs a real Kubernetes API server (etcd + kube-apiserver)
// for tests. No kubelet or controller-manager runs, so pods never start and
// namespaces never finish terminating, but every API object, watch, RBAC rule
// and TokenRequest is real.
//
// One server is shared by the whole test binary; it starts on first use and
// is stopped by Stop (use testenv.Main in TestMain). Tests isolate themselves
// with Namespace.
//
// Binaries are found, in order, through TEST_ASSET_KUBE_APISERVER and
// TEST_ASSET_ETCD (the envtest variables), KUBEBUILDER_ASSETS, the directory
// `make testenv` builds into (.testenv/bin), and PATH. When they are missing
// the test is skipped, or fails when CI is set (see testenv.Require).
package kubetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/pipeops/tunnel/shared/testenv"
)

// Env is a running API server. Its fields are read-only.
type Env struct {
	// Config is an administrator's (system:masters) client config.
	Config *rest.Config
	// Client is a clientset built from Config.
	Client kubernetes.Interface
	// Kubeconfig is the path of a kubeconfig file for the administrator, for
	// tools such as kubectl.
	Kubeconfig string

	dir string
}

var (
	mu     sync.Mutex
	shared *Env
	sErr   error
	stopFn func()
)

// Start returns the shared API server, starting it on first use. It skips or
// fails t when the server cannot be had.
func Start(t testing.TB) *Env {
	t.Helper()
	mu.Lock()
	if shared == nil && sErr == nil {
		shared, stopFn, sErr = start()
	}
	env, err := shared, sErr
	mu.Unlock()
	testenv.Require(t, "kube-apiserver", err)
	return env
}

// Stop shuts the shared server down if one was started. Safe to call more
// than once.
func Stop() {
	mu.Lock()
	defer mu.Unlock()
	if stopFn != nil {
		stopFn()
	}
	shared, stopFn, sErr = nil, nil, nil
}

// Launch starts a new API server of its own (not the shared one), for
// programs such as the demo and for tests that need a second cluster. The
// caller must call stop.
func Launch() (env *Env, stop func(), err error) { return start() }

// Binaries returns the paths of the etcd and kube-apiserver binaries the
// package would run, or an error wrapping testenv.ErrUnavailable.
func Binaries() (etcd, apiserver string, err error) {
	etcd, errE := find("etcd", "TEST_ASSET_ETCD", "apt-get install etcd-server")
	apiserver, errA := find("kube-apiserver", "TEST_ASSET_KUBE_APISERVER", "make testenv")
	return etcd, apiserver, errors.Join(errE, errA)
}

func find(name, envVar, hint string) (string, error) {
	if p := os.Getenv(envVar); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", envVar, p, err)
		}
		return p, nil
	}
	var dirs []string
	if d := os.Getenv("KUBEBUILDER_ASSETS"); d != "" {
		dirs = append(dirs, d)
	}
	if d := testenv.ToolsDir(); d != "" {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%w: %s not found (%s, KUBEBUILDER_ASSETS, %s, PATH); run `%s`",
		testenv.ErrUnavailable, name, envVar, testenv.ToolsDir(), hint)
}

const adminToken = "kubetest-admin-token"

func start() (_ *Env, _ func(), err error) {
	etcdBin, apiBin, err := Binaries()
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "kubetest-")
	if err != nil {
		return nil, nil, err
	}
	var procs []*testenv.Process
	stop := func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].Stop(syscall.SIGTERM, 15*time.Second)
		}
		os.RemoveAll(dir)
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()

	etcdProc, etcdURL, err := startEtcd(etcdBin, dir)
	if err != nil {
		return nil, nil, err
	}
	procs = append(procs, etcdProc)

	if err := writeServiceAccountKeys(dir); err != nil {
		return nil, nil, err
	}
	tokens := fmt.Sprintf("%s,kubetest-admin,kubetest-admin,\"system:masters\"\n", adminToken)
	if err := os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(tokens), 0o600); err != nil {
		return nil, nil, err
	}

	var apiProc *testenv.Process
	var cfg *rest.Config
	for attempt := 0; ; attempt++ {
		apiProc, cfg, err = startAPIServer(apiBin, dir, etcdURL)
		if err == nil {
			break
		}
		if attempt == 2 {
			return nil, nil, err
		}
	}
	procs = append(procs, apiProc)

	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	kubeconfig := filepath.Join(dir, "admin.kubeconfig")
	if err := WriteKubeconfig(kubeconfig, cfg); err != nil {
		return nil, nil, err
	}
	return &Env{Config: cfg, Client: client, Kubeconfig: kubeconfig, dir: dir}, stop, nil
}

func startEtcd(bin, dir string) (*testenv.Process, string, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		clientPort, err := testenv.FreePort()
		if err != nil {
			return nil, "", err
		}
		peerPort, err := testenv.FreePort()
		if err != nil {
			return nil, "", err
		}
		clientURL := "http://127.0.0.1:" + strconv.Itoa(clientPort)
		peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
		dataDir := filepath.Join(dir, "etcd-"+strconv.Itoa(attempt))
		proc, err := testenv.StartProcess("etcd", bin, []string{
			"--name=kubetest", "--data-dir=" + dataDir,
			"--listen-client-urls=" + clientURL, "--advertise-client-urls=" + clientURL,
			"--listen-peer-urls=" + peerURL, "--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=kubetest=" + peerURL,
			"--log-level=warn",
		}, filepath.Join(dir, "etcd.log"), nil)
		if err != nil {
			return nil, "", err
		}
		lastErr = proc.WaitReady(30*time.Second, func(ctx context.Context) error {
			return httpOK(ctx, http.DefaultClient, clientURL+"/health", "")
		})
		if lastErr == nil {
			return proc, clientURL, nil
		}
		proc.Stop(syscall.SIGTERM, 5*time.Second)
	}
	return nil, "", fmt.Errorf("start etcd: %w", lastErr)
}

func startAPIServer(bin, dir, etcdURL string) (*testenv.Process, *rest.Config, error) {
	port, err := testenv.FreePort()
	if err != nil {
		return nil, nil, err
	}
	certDir := filepath.Join(dir, "certs")
	proc, err := testenv.StartProcess("kube-apiserver", bin, []string{
		"--etcd-servers=" + etcdURL,
		"--secure-port=" + strconv.Itoa(port),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// No other address exists in a sandbox, and the loopback one is refused
		// by the reconciler of the "kubernetes" Service endpoints.
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + certDir,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(dir, "sa.key"),
		"--token-auth-file=" + filepath.Join(dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--disable-admission-plugins=ServiceAccount",
		"--profiling=false",
		"--v=0",
	}, filepath.Join(dir, "kube-apiserver.log"), nil)
	if err != nil {
		return nil, nil, err
	}
	host := "https://127.0.0.1:" + strconv.Itoa(port)
	var cfg *rest.Config
	err = proc.WaitReady(90*time.Second, func(ctx context.Context) error {
		if cfg == nil {
			// The serving certificate (with the CA that signed it) appears
			// once the server has generated it.
			ca, err := os.ReadFile(filepath.Join(certDir, "apiserver.crt"))
			if err != nil {
				return err
			}
			cfg = &rest.Config{Host: host, BearerToken: adminToken, TLSClientConfig: rest.TLSClientConfig{CAData: ca}, QPS: 200, Burst: 400}
		}
		hc, err := rest.HTTPClientFor(cfg)
		if err != nil {
			return err
		}
		return httpOK(ctx, hc, host+"/readyz", adminToken)
	})
	if err != nil {
		proc.Stop(syscall.SIGTERM, 5*time.Second)
		return nil, nil, fmt.Errorf("start kube-apiserver: %w", err)
	}
	return proc, cfg, nil
}

func httpOK(ctx context.Context, hc *http.Client, url, token string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

func writeServiceAccountKeys(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	priv, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: priv}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

// WriteKubeconfig writes a kubeconfig file for cfg (server, CA and bearer
// token) to path.
func WriteKubeconfig(path string, cfg *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["user"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: "user"}
	kc.CurrentContext = "kubetest"
	return clientcmd.WriteToFile(*kc, path)
}

var nonName = regexp.MustCompile(`[^a-z0-9-]+`)

// Namespace creates a namespace of its own for t, named after the test, and
// deletes it when t ends.
func (e *Env) Namespace(t testing.TB) string {
	t.Helper()
	base := strings.Trim(nonName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(base) > 40 {
		base = base[:40]
	}
	name := strings.Trim(base, "-") + "-" + randomHex(3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := e.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("kubetest: create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// No namespace controller runs, so the namespace stays Terminating
		// with its objects; names are random, so that harms no other test.
		_ = e.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	})
	return name
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
