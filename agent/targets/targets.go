// Package targets decides where the agent connects a tunnel stream, and
// refuses everything it should not reach: the gateway may name the
// Kubernetes API, the ingress controller, or a Service that a synced route
// names — nothing else in the cluster. A compromised or confused gateway
// therefore cannot use the agent to reach arbitrary Services.
package targets

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// ServiceKey names a Service port that may be dialled.
type ServiceKey struct {
	Namespace, Name string
	Port            int
}

// Allowlist reports whether a Service port may be dialled. The agent's route
// syncer and cluster detection provide it (the ingress controller and every
// Service a synced route names).
type Allowlist interface {
	Allowed(k ServiceKey) bool
}

// AllowFunc adapts a function to Allowlist.
type AllowFunc func(ServiceKey) bool

// Allowed implements Allowlist.
func (f AllowFunc) Allowed(k ServiceKey) bool { return f(k) }

// Dialer is the agent's tunnelclient.Dialer. Safe for concurrent use.
type Dialer struct {
	// KubeAPI connects a stream to the agent's Kubernetes API forwarder.
	KubeAPI func(ctx context.Context) (net.Conn, error)
	Allow   Allowlist
	// Services and Slices are listers backed by informers (cheap reads).
	Services corelisters.ServiceLister
	Slices   discoverylisters.EndpointSliceLister
	// ClusterDomain for the DNS fallback (default cluster.local).
	ClusterDomain string
	// DialContext connects an address (default net.Dialer).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	Logger      *slog.Logger

	refusedOnce sync.Map // target string -> struct{}: log each refused target once
	refused     atomic.Int64
}

// Refused is the number of streams refused so far.
func (d *Dialer) Refused() int64 { return d.refused.Load() }

// DialStream implements tunnelclient.Dialer.
func (d *Dialer) DialStream(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
	if h.IsKubernetesAPI() {
		if d.KubeAPI == nil {
			return nil, d.refuse(h, "the Kubernetes API target is disabled")
		}
		return d.KubeAPI(ctx)
	}
	if h.Protocol != tunnel.ProtocolTCP {
		return nil, d.refuse(h, "only TCP targets are served")
	}
	key := ServiceKey{Namespace: h.Namespace, Name: h.Service, Port: int(h.Port)}
	if d.Allow == nil || !d.Allow.Allowed(key) {
		return nil, d.refuse(h, "not the ingress controller nor a Service of a synced route")
	}
	addrs, err := d.Resolve(key)
	if err != nil {
		return nil, err
	}
	dial := d.DialContext
	if dial == nil {
		var nd net.Dialer
		dial = nd.DialContext
	}
	var lastErr error
	for _, a := range addrs {
		c, err := dial(ctx, "tcp", a)
		if err == nil {
			return c, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("dial %s/%s:%d: %w", key.Namespace, key.Name, key.Port, lastErr)
}

// Rules is the RBAC the dialer needs: reading Services and EndpointSlices.
func Rules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
	}
}

func (d *Dialer) refuse(h tunnel.StreamHeader, why string) error {
	d.refused.Add(1)
	if _, seen := d.refusedOnce.LoadOrStore(h.String(), struct{}{}); !seen && d.Logger != nil {
		d.Logger.Warn("refusing stream target (logged once per target)", "target", h.String(), "reason", why)
	}
	return fmt.Errorf("%s: %s: %w", h, why, tunnelclient.ErrTargetRefused)
}

// Resolve returns the addresses to try for a Service port: its ready
// endpoints from EndpointSlices (IP or FQDN) in random order (spreading streams), then
// the Service's cluster DNS name as a last resort.
func (d *Dialer) Resolve(k ServiceKey) ([]string, error) {
	domain := d.ClusterDomain
	if domain == "" {
		domain = "cluster.local"
	}
	dnsName := net.JoinHostPort(k.Name+"."+k.Namespace+".svc."+domain, strconv.Itoa(k.Port))
	if d.Services == nil || d.Slices == nil {
		return []string{dnsName}, nil
	}
	svc, err := d.Services.Services(k.Namespace).Get(k.Name)
	if err != nil {
		return []string{dnsName}, nil //nolint:nilerr // not cached yet: DNS may still know it
	}
	var portName string
	var targetPort int
	found := false
	for _, p := range svc.Spec.Ports {
		if int(p.Port) == k.Port && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
			portName, found = p.Name, true
			if p.TargetPort.IntValue() > 0 {
				targetPort = p.TargetPort.IntValue()
			}
		}
	}
	if !found {
		return nil, fmt.Errorf("service %s/%s has no TCP port %d", k.Namespace, k.Name, k.Port)
	}
	slices, err := d.Slices.EndpointSlices(k.Namespace).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: k.Name}))
	if err != nil {
		return []string{dnsName}, nil //nolint:nilerr // fall back to DNS
	}
	var addrs []string
	for _, s := range slices {
		// FQDN slices name their endpoints by DNS name; they are dialled
		// by that name like the IP ones by address.
		switch s.AddressType {
		case discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN:
		default:
			continue
		}
		port := targetPort
		for _, p := range s.Ports {
			if p.Port != nil && ptrString(p.Name) == portName && (p.Protocol == nil || *p.Protocol == corev1.ProtocolTCP) {
				port = int(*p.Port)
			}
		}
		if port == 0 {
			continue
		}
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				addrs = append(addrs, net.JoinHostPort(a, strconv.Itoa(port)))
			}
		}
	}
	rand.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	return append(addrs, dnsName), nil
}

func ptrString(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

var _ tunnelclient.Dialer = (*Dialer)(nil)
