package targets_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/pipeops/tunnel/agent/targets"
	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
	"github.com/pipeops/tunnel/shared/tunnel"
)

func TestMain(m *testing.M) { testenv.Main(m, kubetest.Stop) }

func ptr[T any](v T) *T { return &v }

// TestDialer runs against a real API server with the dialer's own RBAC:
// allowed Services are dialled at their ready EndpointSlice addresses
// (then DNS), the Kubernetes API goes to the forwarder, everything else is
// refused and counted. No traffic leaves the machine: the dial function
// records the address and hands back an in-memory connection.
func TestDialer(t *testing.T) {
	env := kubetest.Start(t)
	ns := env.Namespace(t)
	acct := env.ServiceAccount(t, ns, "agent", kubetest.Grant{Rules: targets.Rules()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}}}
	if _, err := env.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.9.8.7"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}},
			{Addresses: []string{"10.9.8.8"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)}},
		},
	}
	if _, err := env.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// An FQDN slice of another Service: its endpoints are dialled by name.
	fqdnSvc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ext", Namespace: ns}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}
	if _, err := env.Client.CoreV1().Services(ns).Create(ctx, fqdnSvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fqdn := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "ext-1", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "ext"}},
		AddressType: discoveryv1.AddressTypeFQDN,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8081)), Protocol: ptr(corev1.ProtocolTCP)}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"origin.example.internal"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}}},
	}
	if _, err := env.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, fqdn, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	factory := informers.NewSharedInformerFactory(acct.Client, 0)
	svcInf, sliceInf := factory.Core().V1().Services(), factory.Discovery().V1().EndpointSlices()
	svcInf.Informer()
	sliceInf.Informer()
	stop := make(chan struct{})
	factory.Start(stop)
	defer func() { close(stop); factory.Shutdown() }()
	if !cache.WaitForCacheSync(ctx.Done(), svcInf.Informer().HasSynced, sliceInf.Informer().HasSynced) {
		t.Fatal("informers did not sync with the agent's RBAC")
	}

	var mu sync.Mutex
	var dialled []string
	kubeCalls := 0
	d := &targets.Dialer{
		KubeAPI:  func(context.Context) (net.Conn, error) { kubeCalls++; a, _ := net.Pipe(); return a, nil },
		Allow:    targets.AllowFunc(func(k targets.ServiceKey) bool { return k == targets.ServiceKey{Namespace: ns, Name: "web", Port: 80} }),
		Services: svcInf.Lister(), Slices: sliceInf.Lister(),
		DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
			mu.Lock()
			dialled = append(dialled, addr)
			mu.Unlock()
			a, b := net.Pipe()
			b.Close()
			return a, nil
		},
	}

	addrs, err := d.Resolve(targets.ServiceKey{Namespace: ns, Name: "web", Port: 80})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.9.8.7:8080", "web." + ns + ".svc.cluster.local:80"}
	if len(addrs) != 2 || addrs[0] != want[0] || addrs[1] != want[1] {
		t.Fatalf("Resolve = %v, want %v (the not-ready endpoint left out)", addrs, want)
	}
	if !cache.WaitForCacheSync(ctx.Done(), func() bool {
		l, _ := sliceInf.Lister().EndpointSlices(ns).Get("ext-1")
		return l != nil
	}) {
		t.Fatal("the FQDN slice never reached the informer")
	}
	addrs, err = d.Resolve(targets.ServiceKey{Namespace: ns, Name: "ext", Port: 80})
	if err != nil || len(addrs) != 2 || addrs[0] != "origin.example.internal:8081" {
		t.Fatalf("Resolve(FQDN slice) = %v, %v; want the slice's name first", addrs, err)
	}
	c, err := d.DialStream(ctx, tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "web", Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if len(dialled) != 1 || dialled[0] != "10.9.8.7:8080" {
		t.Fatalf("dialled %v, want the ready endpoint", dialled)
	}
	if c, err := d.DialStream(ctx, tunnel.KubernetesAPI); err != nil || kubeCalls != 1 {
		t.Fatalf("Kubernetes API target: %v, %d calls", err, kubeCalls)
	} else {
		c.Close()
	}

	for _, h := range []tunnel.StreamHeader{
		{Protocol: tunnel.ProtocolTCP, Port: 443, Service: "web", Namespace: ns},         // not the allowed port
		{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "secret-db", Namespace: ns},    // not allowed
		{Protocol: tunnel.ProtocolUDP, Port: 80, Service: "web", Namespace: ns},          // not TCP
		{Protocol: tunnel.ProtocolTCP, Port: 443, Service: "kubernetes", Namespace: "x"}, // not the API
		{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "secret-db", Namespace: ns},    // again: counted, logged once
	} {
		if _, err := d.DialStream(ctx, h); !errors.Is(err, tunnelclient.ErrTargetRefused) {
			t.Errorf("%s: %v, want ErrTargetRefused", h, err)
		}
	}
	if d.Refused() != 5 || len(dialled) != 1 {
		t.Fatalf("refused %d (want 5), dialled %v (want nothing more)", d.Refused(), dialled)
	}
}
