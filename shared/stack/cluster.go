package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
	"github.com/pipeops/tunnel/shared/testenv/netbed"
)

// Names the stack gives every cluster: the agent's namespace and
// ServiceAccount (as in deploy/rbac/agent.yaml) and the ingress controller
// Service the agent detects.
const (
	AgentNamespace   = "pipeops-system"
	AgentAccount     = "pipeops-agent"
	IngressNamespace = "ingress-nginx"
	IngressService   = "ingress-nginx-controller"
	// KubeUser is the person the stack's user kubeconfig names: the agent
	// impersonates it, and KubeAccess is granted to it.
	KubeUser = "stack-user"
)

// ClusterOptions configure AddCluster.
type ClusterOptions struct {
	// Name of the cluster in the control plane (required, unique).
	Name string
	// KubeAccess is what kubectl users reach through the tunnel: KubeUser
	// (as whom the agent runs their requests) and the agent's
	// ServiceAccount (as whom they run with AGENT_IMPERSONATE_USERS=false)
	// get "read" (get, list, watch on everything; the default) or "write"
	// (cluster-admin). The built-in view and edit
	// roles are aggregated by the controller manager, which does not run
	// here, so they would be empty.
	KubeAccess string
	// AgentEnv adds or overrides agent variables.
	AgentEnv map[string]string
	// AgentToken replaces the token the control plane issued (to try bad
	// tokens). The agent is then not waited for.
	AgentToken string
	// NoAgent leaves the agent stopped; start it with Cluster.Agent.Start.
	NoAgent bool
	// Replicas is how many agent processes to run (0: one), each its own
	// replica (POD_NAME {name}-{i}) with its own status port.
	Replicas int
	// Host, when set, is the test bed host the agent runs on (through ip
	// netns exec), reaching the control plane and the gateway over its
	// link to the stack's Options.Server (which must be set). The
	// cluster's API server and ingress controller stand-in are forwarded
	// to the host's loopback at the ports they have here, with no link in
	// between, as they would be in the agent's own cluster; so is the
	// agent's status port back to this process (AgentURL).
	Host *netbed.Host
}

// Cluster is a demo Kubernetes cluster joined to the stack: its own etcd and
// kube-apiserver, an ingress controller stand-in registered as the Service
// ingress-nginx/ingress-nginx-controller (with an FQDN EndpointSlice naming
// the stand-in's loopback address), and the agent binary running with
// exactly the documented RBAC.
type Cluster struct {
	Name string
	ID   string
	// AgentToken is the agent's token from `cluster create`.
	AgentToken string
	// Kube is the cluster's API server (admin access).
	Kube *kubetest.Env
	// Ingress is the ingress controller stand-in; register apps on it.
	Ingress *IngressStandIn
	// Agent is the agent process; AgentURL serves its /health, /ready,
	// /status and /metrics. With ClusterOptions.Replicas, Agents and
	// AgentURLs are every replica's (Agent is the first).
	Agent     *Component
	AgentURL  string
	Agents    []*Component
	AgentURLs []string
	// Kubeconfig is a user kubeconfig from `pipeops-controlplane
	// kubeconfig NAME --user KubeUser`: the cluster's API through the
	// gateway, as KubeUser.
	Kubeconfig string

	stack   *Stack
	closers []func()
}

// AddCluster starts a cluster, registers it with the control plane and
// starts its agent (waiting until the agent is ready, unless NoAgent).
func (s *Stack) AddCluster(ctx context.Context, opts ClusterOptions) (_ *Cluster, err error) {
	if opts.Name == "" {
		return nil, errors.New("stack: ClusterOptions.Name is required")
	}
	if opts.Host != nil && s.opts.Server == nil {
		return nil, errors.New("stack: ClusterOptions.Host needs the stack's Options.Server")
	}
	c := &Cluster{Name: opts.Name, stack: s}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	dir := filepath.Join(s.opts.Dir, "cluster-"+opts.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}

	t0 := time.Now()
	env, stop, err := kubetest.Launch()
	if err != nil {
		return nil, fmt.Errorf("cluster %s: kube-apiserver: %w", opts.Name, err)
	}
	c.Kube = env
	c.closers = append(c.closers, stop)
	s.progress("cluster %-6s kube-apiserver + etcd up in %s at %s", opts.Name, since(t0), env.Config.Host)

	created, err := s.CreateCluster(ctx, opts.Name)
	if err != nil {
		return nil, err
	}
	c.ID, c.AgentToken = created.ID, created.AgentToken
	s.progress("cluster %-6s registered: `pipeops-controlplane cluster create %s` -> id %s", opts.Name, opts.Name, c.ID)

	agentKubeconfig, err := c.installAgentRBAC(ctx, dir, cmpOr(opts.KubeAccess, "read"))
	if err != nil {
		return nil, fmt.Errorf("cluster %s: agent RBAC: %w", opts.Name, err)
	}

	c.Ingress, err = StartIngressStandIn()
	if err != nil {
		return nil, err
	}
	c.closers = append(c.closers, c.Ingress.Close)
	if err := c.registerIngressController(ctx); err != nil {
		return nil, fmt.Errorf("cluster %s: ingress controller Service: %w", opts.Name, err)
	}
	s.progress("cluster %-6s ingress controller stand-in at %s (Service %s/%s, FQDN EndpointSlice)", opts.Name, c.Ingress.Addr, IngressNamespace, IngressService)

	kc, err := s.CLI(ctx, "kubeconfig", opts.Name, "--user", KubeUser)
	if err != nil {
		return nil, err
	}
	c.Kubeconfig = filepath.Join(dir, "user.kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, []byte(kc), 0o600); err != nil {
		return nil, err
	}

	replicas := max(opts.Replicas, 1)
	if replicas > 1 && opts.Host != nil {
		return nil, errors.New("stack: ClusterOptions.Replicas and Host do not go together")
	}
	for i := range replicas {
		if err := c.addAgent(opts, i, replicas, agentKubeconfig); err != nil {
			return nil, err
		}
	}
	c.Agent, c.AgentURL = c.Agents[0], c.AgentURLs[0]

	s.mu.Lock()
	s.clusters = append(s.clusters, c)
	s.mu.Unlock()
	return c, nil
}

// addAgent adds agent replica i of n (starting it unless opts.NoAgent).
func (c *Cluster) addAgent(opts ClusterOptions, i, n int, kubeconfig string) error {
	s := c.stack
	listen, err := loopbackAddr()
	if err != nil {
		return err
	}
	apiURL := s.ControlPlaneURL
	if opts.Host != nil {
		if listen, err = c.onHost(opts.Host); err != nil {
			return fmt.Errorf("cluster %s: host %s: %w", opts.Name, opts.Host.Name, err)
		}
		apiURL = s.InBed.ControlPlaneURL
	}
	agentURL := "http://" + listen
	token := c.AgentToken
	if opts.AgentToken != "" {
		token = opts.AgentToken
	}
	name := "agent-" + opts.Name
	podName := opts.Name + "-agent"
	if n > 1 {
		name += fmt.Sprintf("-%d", i)
		podName += fmt.Sprintf("-%d", i)
	}
	agentEnv := map[string]string{
		"PIPEOPS_API_URL":        apiURL,
		"PIPEOPS_TOKEN":          token,
		"PIPEOPS_CLUSTER_NAME":   opts.Name,
		"PIPEOPS_AGENT_ID":       opts.Name + "-agent",
		"POD_NAME":               podName,
		"KUBECONFIG":             kubeconfig,
		"POD_NAMESPACE":          AgentNamespace,
		"AGENT_LISTEN_ADDR":      listen,
		"SSL_CERT_FILE":          s.CAFile, // the agent verifies the gateway's certificate
		"SHUTDOWN_DRAIN_TIMEOUT": "2s",
	}
	for k, v := range opts.AgentEnv {
		agentEnv[k] = v
	}
	a := &Component{Name: name, LogPath: filepath.Join(s.opts.Dir, "logs", name+".log"),
		bin: filepath.Join(s.opts.BinDir, "pipeops-agent"), env: agentEnv, host: opts.Host, ready: httpReady(agentURL + "/ready")}
	if opts.AgentToken != "" {
		a.ready = httpReady(agentURL + "/health")
	}
	c.Agents, c.AgentURLs = append(c.Agents, a), append(c.AgentURLs, agentURL)
	c.closers = append(c.closers, func() { a.Stop(10 * time.Second) })
	if opts.NoAgent {
		return nil
	}
	t0 := time.Now()
	if err := a.Start(); err != nil {
		return err
	}
	s.progress("cluster %-6s %s up in %s (status page %s/)", opts.Name, name, since(t0), agentURL)
	return nil
}

// onHost forwards the cluster's API server and ingress stand-in into h at
// the ports they have here, and a loopback port here to the same port in h
// for the agent's status server, which it returns.
func (c *Cluster) onHost(h *netbed.Host) (agentListen string, err error) {
	u, err := url.Parse(c.Kube.Config.Host)
	if err != nil {
		return "", fmt.Errorf("API server URL: %w", err)
	}
	for _, target := range []string{u.Host, c.Ingress.Addr} {
		ln, err := h.Listen("tcp", target)
		if err != nil {
			return "", fmt.Errorf("forward %s into the host: %w", target, err)
		}
		var d net.Dialer
		f := netbed.Forward(ln, func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", target) })
		c.closers = append(c.closers, func() { _ = f.Close() })
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	agentListen = ln.Addr().String()
	f := netbed.Forward(ln, func(ctx context.Context) (net.Conn, error) { return h.DialContext(ctx, "tcp", agentListen) })
	c.closers = append(c.closers, func() { _ = f.Close() })
	return agentListen, nil
}

func (c *Cluster) close() {
	for i := len(c.closers) - 1; i >= 0; i-- {
		c.closers[i]()
	}
	c.closers = nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// installAgentRBAC applies deploy/rbac/agent.yaml (the documented RBAC),
// grants the account kubeAccess for the Kubernetes API target, and writes a kubeconfig
// with a TokenRequest token for the account: the agent runs with exactly
// what a real install grants it.
func (c *Cluster) installAgentRBAC(ctx context.Context, dir, kubeAccess string) (string, error) {
	root, err := testenv.ModuleRoot()
	if err != nil {
		return "", err
	}
	manifest, err := os.ReadFile(filepath.Join(root, "deploy", "rbac", "agent.yaml"))
	if err != nil {
		return "", err
	}
	cs := c.Kube.Client
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: AgentNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", err
	}
	for _, doc := range bytes.Split(manifest, []byte("\n---\n")) {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			return "", fmt.Errorf("deploy/rbac/agent.yaml: %w", err)
		}
		switch meta.Kind {
		case "ServiceAccount":
			var o corev1.ServiceAccount
			if err = yaml.Unmarshal(doc, &o); err == nil {
				_, err = cs.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
			}
		case "ClusterRole":
			var o rbacv1.ClusterRole
			if err = yaml.Unmarshal(doc, &o); err == nil {
				_, err = cs.RbacV1().ClusterRoles().Create(ctx, &o, metav1.CreateOptions{})
			}
		case "ClusterRoleBinding":
			var o rbacv1.ClusterRoleBinding
			if err = yaml.Unmarshal(doc, &o); err == nil {
				_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &o, metav1.CreateOptions{})
			}
		case "Role":
			var o rbacv1.Role
			if err = yaml.Unmarshal(doc, &o); err == nil {
				_, err = cs.RbacV1().Roles(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
			}
		case "RoleBinding":
			var o rbacv1.RoleBinding
			if err = yaml.Unmarshal(doc, &o); err == nil {
				_, err = cs.RbacV1().RoleBindings(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
			}
		case "":
			continue
		default:
			return "", fmt.Errorf("deploy/rbac/agent.yaml: unexpected kind %s", meta.Kind)
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", meta.Kind, err)
		}
	}
	role := "cluster-admin"
	switch kubeAccess {
	case "write":
	case "read":
		role = "pipeops-agent-kube-read"
		read := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: role}, Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"get", "list", "watch"}},
			{NonResourceURLs: []string{"*"}, Verbs: []string{"get"}},
		}}
		if _, err := cs.RbacV1().ClusterRoles().Create(ctx, read, metav1.CreateOptions{}); err != nil {
			return "", err
		}
	default:
		return "", fmt.Errorf("KubeAccess %q: want read or write", kubeAccess)
	}
	access := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "pipeops-agent-kube-access"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: AgentAccount, Namespace: AgentNamespace},
			{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: KubeUser}},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, access, metav1.CreateOptions{}); err != nil {
		return "", err
	}

	expiry := int64(48 * 3600)
	tr, err := cs.CoreV1().ServiceAccounts(AgentNamespace).CreateToken(ctx, AgentAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for %s/%s: %w", AgentNamespace, AgentAccount, err)
	}
	path := filepath.Join(dir, "agent.kubeconfig")
	cfg := &rest.Config{Host: c.Kube.Config.Host, BearerToken: tr.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAData: c.Kube.Config.CAData}}
	return path, kubetest.WriteKubeconfig(path, cfg)
}

// registerIngressController creates the ingress controller's Service and an
// EndpointSlice for it. Kubernetes refuses loopback IPs in IP slices, so the
// slice is of type FQDN and names the stand-in's loopback address.
func (c *Cluster) registerIngressController(ctx context.Context) error {
	cs := c.Kube.Client
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: IngressNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	port := int32(c.Ingress.Port)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: IngressService, Namespace: IngressNamespace,
			Labels: map[string]string{"app.kubernetes.io/name": "ingress-nginx"}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: port, TargetPort: intstr.FromInt32(port), Protocol: corev1.ProtocolTCP}}},
	}
	if _, err := cs.CoreV1().Services(IngressNamespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return err
	}
	ready, name, proto := true, "http", corev1.ProtocolTCP
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: IngressService + "-standin", Namespace: IngressNamespace, Labels: map[string]string{discoveryv1.LabelServiceName: IngressService}},
		AddressType: discoveryv1.AddressTypeFQDN,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{c.Ingress.Host}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
	}
	// FQDN slices are deprecated (but served); keep the warning out of
	// the demo's output.
	quiet := rest.CopyConfig(c.Kube.Config)
	quiet.WarningHandler = rest.NoWarnings{}
	qc, err := kubernetes.NewForConfig(quiet)
	if err != nil {
		return err
	}
	_, err = qc.DiscoveryV1().EndpointSlices(IngressNamespace).Create(ctx, slice, metav1.CreateOptions{})
	return err
}

// SetLoadBalancer gives the ingress controller Service a LoadBalancer
// address (the stand-in's loopback address), which makes the agent report
// the cluster as public: its routes switch to direct mode. With public
// false, the address is withdrawn and routes go back to tunnel mode.
func (c *Cluster) SetLoadBalancer(ctx context.Context, public bool) error {
	svcs := c.Kube.Client.CoreV1().Services(IngressNamespace)
	svc, err := svcs.Get(ctx, IngressService, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		svc.Spec.Type = corev1.ServiceTypeLoadBalancer
		if svc, err = svcs.Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	svc.Status.LoadBalancer.Ingress = nil
	if public {
		vip := corev1.LoadBalancerIPModeVIP
		svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: c.Ingress.Host, IPMode: &vip}}
	}
	_, err = svcs.UpdateStatus(ctx, svc, metav1.UpdateOptions{})
	return err
}

// ManagedIngress returns a PipeOps-managed Ingress for host in namespace,
// with a backend Service named after it on port 80.
func ManagedIngress(namespace, name, host string) *networkingv1.Ingress {
	prefix := networkingv1.PathTypePrefix
	return &networkingv1.Ingress{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{"pipeops.io/managed": "true"}},
		Spec: networkingv1.IngressSpec{Rules: []networkingv1.IngressRule{{
			Host: host,
			IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{Paths: []networkingv1.HTTPIngressPath{{
				Path: "/", PathType: &prefix,
				Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: name, Port: networkingv1.ServiceBackendPort{Number: 80}}},
			}}}},
		}}},
	}
}

// CreateIngress creates namespace (if missing) and a managed Ingress for
// host in it. Test hosts have no DNS to publish a challenge in, so the host
// is first granted to the cluster as an operator would (GrantDomain),
// unless another cluster holds it: then the grant is skipped and the
// cluster's claim is refused as it should be.
func (c *Cluster) CreateIngress(ctx context.Context, namespace, name, host string) (*networkingv1.Ingress, error) {
	if err := c.GrantDomain(ctx, strings.TrimPrefix(host, "*.")); err != nil && !strings.Contains(err.Error(), "another cluster") {
		return nil, err
	}
	if _, err := c.Kube.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	return c.Kube.Client.NetworkingV1().Ingresses(namespace).Create(ctx, ManagedIngress(namespace, name, host), metav1.CreateOptions{})
}

// GrantDomain lets the cluster route domain and every name below it without
// a DNS challenge (`pipeops-controlplane domain grant`).
func (c *Cluster) GrantDomain(ctx context.Context, domain string) error {
	_, err := c.stack.CLI(ctx, "domain", "grant", c.ID, domain)
	return err
}
