// Package kubeletsim is a kubelet stand-in for tests, so that kubectl exec,
// attach, logs, port-forward and cp work against the real test
// kube-apiserver (shared/testenv/kubetest), which has no kubelet.
//
// A Kubelet registers a Node whose kubelet endpoint is its own HTTPS server
// on 127.0.0.1 and serves what the API server proxies pods/exec,
// pods/attach, pods/log and pods/portforward to: /exec, /attach,
// /containerLogs and /portForward. The streaming protocols (SPDY and
// WebSocket, the terminal resize stream, exit codes) are the kubelet's own
// library, k8s.io/cri-streaming; behind it sits a fake runtime:
//
//   - exec runs a small set of in-process commands (see Commands) over an
//     in-memory file system per container, enough for kubectl cp;
//   - attach echoes stdin to stdout;
//   - logs serve a Log the test writes to, followed as it grows;
//   - port-forward to pod port P dials the address the test registered
//     for P with Pod.ForwardPort.
//
// Pods made with Kubelet.Pod are bound to the Node and reported Running, so
// kubectl accepts them. The API server does not verify the stand-in's
// self-signed certificate (kubetest gives it no --kubelet-certificate-
// authority), and the stand-in does not authenticate the API server: it
// listens on loopback only and is for tests.
package kubeletsim

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// ErrClosed is returned for work asked of a Kubelet that is closed.
var ErrClosed = errors.New("kubeletsim: closed")

// Kubelet is a running stand-in: a Node in the API server and the HTTPS
// server behind it. Close stops it and waits for everything it started.
// Its methods are safe for concurrent use.
type Kubelet struct {
	client kubernetes.Interface
	log    *slog.Logger
	node   string
	addr   *net.TCPAddr
	srv    *http.Server

	// ctx is the base of every request's context; Close cancels it so that
	// followers and commands stop.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{} // raw connections, hijacked ones included
	pods   map[podKey]*Pod
	wg     sync.WaitGroup // the serve loop, requests, and goroutines they leave
}

// Start starts a Kubelet against the API server cfg (an administrator's
// config, such as kubetest's Env.Config) and closes it when t ends.
func Start(t testing.TB, cfg *rest.Config) *Kubelet {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("kubeletsim: %v", err)
	}
	t.Cleanup(func() {
		if err := k.Close(); err != nil {
			t.Errorf("kubeletsim: close: %v", err)
		}
	})
	return k
}

// New starts a Kubelet: it listens on 127.0.0.1 and registers its Node
// with the API server cfg. The caller must Close it.
func New(ctx context.Context, cfg *rest.Config) (*Kubelet, error) {
	// A name of its own, so that two Kubelets can share an API server.
	nodeName := "kubeletsim-" + randomHex(4)
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubeletsim: client: %w", err)
	}
	cert, err := selfSignedCert()
	if err != nil {
		return nil, fmt.Errorf("kubeletsim: serving certificate: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("kubeletsim: listen: %w", err)
	}
	baseCtx, cancel := context.WithCancel(context.Background())
	k := &Kubelet{
		client: client,
		log:    slog.New(slog.DiscardHandler),
		node:   nodeName,
		addr:   ln.Addr().(*net.TCPAddr),
		ctx:    baseCtx,
		cancel: cancel,
		conns:  map[net.Conn]struct{}{},
		pods:   map[podKey]*Pod{},
	}
	k.srv = &http.Server{
		Handler:           k.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		ErrorLog:          slog.NewLogLogger(k.log.Handler(), slog.LevelDebug),
	}
	tl := tls.NewListener(&trackingListener{Listener: ln, k: k}, &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"http/1.1"}, // upgrades (SPDY, WebSocket) need HTTP/1.1
		MinVersion:   tls.VersionTLS12,
	})
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		if err := k.srv.Serve(tl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			k.log.Error("kubeletsim: serve", "err", err)
		}
	}()
	if err := k.registerNode(ctx); err != nil {
		return nil, errors.Join(err, k.Close())
	}
	return k, nil
}

// NodeName is the name of the Kubelet's Node.
func (k *Kubelet) NodeName() string { return k.node }

// Addr is the address the Kubelet serves on (127.0.0.1 and a free port).
func (k *Kubelet) Addr() string { return k.addr.String() }

// Close deletes the Node, stops the server, tears down every open stream
// (exec, attach, port-forward, log follower) and waits for all of it.
// Closing twice is harmless.
func (k *Kubelet) Close() error {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return nil
	}
	k.closed = true
	conns := k.conns
	k.conns = nil
	k.mu.Unlock()

	k.cancel()
	err := k.srv.Close()
	for c := range conns {
		_ = c.Close()
	}
	k.wg.Wait()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if derr := k.client.CoreV1().Nodes().Delete(ctx, k.node, metav1.DeleteOptions{}); derr != nil && !apierrors.IsNotFound(derr) {
		err = errors.Join(err, fmt.Errorf("delete node %s: %w", k.node, derr))
	}
	return err
}

// enter counts one more piece of work for Close to wait for, or reports
// that the Kubelet is closed. The caller calls k.wg.Done when done.
func (k *Kubelet) enter() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return false
	}
	k.wg.Add(1)
	return true
}

// goOwned runs f in a goroutine Close waits for, unless closed.
func (k *Kubelet) goOwned(f func()) bool {
	if !k.enter() {
		return false
	}
	go func() {
		defer k.wg.Done()
		f()
	}()
	return true
}

// trackingListener records every accepted connection so that Close can
// cut the hijacked ones, which http.Server no longer tracks.
type trackingListener struct {
	net.Listener
	k *Kubelet
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.k.mu.Lock()
	defer l.k.mu.Unlock()
	if l.k.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	l.k.conns[c] = struct{}{}
	return &trackedConn{Conn: c, k: l.k}, nil
}

type trackedConn struct {
	net.Conn
	k    *Kubelet
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.k.mu.Lock()
		delete(c.k.conns, c.Conn)
		c.k.mu.Unlock()
	})
	return c.Conn.Close()
}

func (k *Kubelet) registerNode(ctx context.Context) error {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:   k.node,
		Labels: map[string]string{"kubernetes.io/hostname": k.node, "kubernetes.io/os": runtime.GOOS, "kubernetes.io/arch": runtime.GOARCH},
	}}
	created, err := k.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("kubeletsim: create node %s: %w", k.node, err)
	}
	now := metav1.Now()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("4"),
		corev1.ResourceMemory: resource.MustParse("8Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	created.Status = corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Phase:       corev1.NodeRunning,
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "kubeletsim is serving", LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		// Only an InternalIP: the API server's default address preference
		// (Hostname first) would otherwise pick a name that does not resolve.
		Addresses:       []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: k.addr.IP.String()}},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(k.addr.Port)}},
		NodeInfo: corev1.NodeSystemInfo{
			KubeletVersion: "v0.0.0-kubeletsim", OperatingSystem: runtime.GOOS, Architecture: runtime.GOARCH,
			ContainerRuntimeVersion: "kubeletsim://0",
		},
	}
	if _, err := k.client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		_ = k.client.CoreV1().Nodes().Delete(ctx, k.node, metav1.DeleteOptions{})
		return fmt.Errorf("kubeletsim: node %s status: %w", k.node, err)
	}
	return nil
}

// selfSignedCert makes the serving certificate. The API server does not
// verify it unless given --kubelet-certificate-authority.
func selfSignedCert() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "kubeletsim"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
