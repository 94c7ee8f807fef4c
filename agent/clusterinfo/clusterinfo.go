// Package clusterinfo gathers what the agent's heartbeat reports about the
// cluster: node and pod counts, CPU and memory use, the Kubernetes version.
// Counts come from informers (pods as metadata only), so a heartbeat costs
// no list call however big the cluster; usage comes from the metrics API
// when metrics-server is installed and is reported "unavailable" otherwise,
// never as a made-up zero.
package clusterinfo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"

	"github.com/pipeops/tunnel/shared/tunnel"
)

// Collector keeps node and pod informers and answers Snapshot. Run owns the
// informers' goroutines.
type Collector struct {
	client  kubernetes.Interface
	nodes   informers.SharedInformerFactory
	pods    metadatainformer.SharedInformerFactory
	nodeInf cache.SharedIndexInformer
	podInf  cache.SharedIndexInformer

	mu      sync.Mutex
	version string
}

// New returns a Collector over client (and meta, the metadata-only client of
// the same config).
func New(client kubernetes.Interface, meta metadata.Interface) *Collector {
	c := &Collector{client: client}
	c.nodes = informers.NewSharedInformerFactory(client, 0)
	c.nodeInf = c.nodes.Core().V1().Nodes().Informer()
	c.pods = metadatainformer.NewSharedInformerFactory(meta, 0)
	c.podInf = c.pods.ForResource(schema.GroupVersionResource{Version: "v1", Resource: "pods"}).Informer()
	return c
}

// Rules is the RBAC the collector needs.
func Rules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"nodes", "pods"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"metrics.k8s.io"}, Resources: []string{"nodes"}, Verbs: []string{"get", "list"}},
	}
}

// Run starts the informers, waits for their caches, and blocks until ctx
// ends, then stops them.
func (c *Collector) Run(ctx context.Context) error {
	c.nodes.Start(ctx.Done())
	c.pods.Start(ctx.Done())
	defer c.nodes.Shutdown()
	defer c.pods.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), c.nodeInf.HasSynced, c.podInf.HasSynced) {
		return ctx.Err()
	}
	<-ctx.Done()
	return nil
}

// Synced reports whether the counts are live.
func (c *Collector) Synced() bool { return c.nodeInf.HasSynced() && c.podInf.HasSynced() }

// KubernetesVersion returns the API server's version (cached after the
// first success).
func (c *Collector) KubernetesVersion() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.version == "" {
		if v, err := c.client.Discovery().ServerVersion(); err == nil {
			c.version = v.GitVersion
		}
	}
	return c.version
}

// Snapshot fills the cluster fields of a heartbeat.
func (c *Collector) Snapshot(ctx context.Context) tunnel.HeartbeatMetadata {
	md := tunnel.HeartbeatMetadata{
		K8sNodes:    len(c.nodeInf.GetStore().ListKeys()),
		K8sPods:     len(c.podInf.GetStore().ListKeys()),
		CPUUsage:    tunnel.UsageUnavailable,
		MemoryUsage: tunnel.UsageUnavailable,
		K8sVersion:  c.KubernetesVersion(),
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if cpu, mem, err := c.usage(ctx); err == nil {
		md.CPUUsage, md.MemoryUsage = cpu, mem
	}
	return md
}

// ErrNoMetricsAPI means metrics-server is not installed.
var ErrNoMetricsAPI = errors.New("metrics API not available")

type nodeMetricsList struct {
	Items []struct {
		Usage corev1.ResourceList `json:"usage"`
	} `json:"items"`
}

// usage sums node usage from the metrics API against node allocatable.
func (c *Collector) usage(ctx context.Context) (cpu, mem tunnel.Usage, err error) {
	raw, err := c.client.Discovery().RESTClient().Get().AbsPath("/apis/metrics.k8s.io/v1beta1/nodes").DoRaw(ctx)
	if err != nil {
		if apierrors.IsNotFound(err) {
			return cpu, mem, ErrNoMetricsAPI
		}
		return cpu, mem, fmt.Errorf("read node metrics: %w", err)
	}
	var capCPU, capMem resource.Quantity
	for _, obj := range c.nodeInf.GetStore().List() {
		n := obj.(*corev1.Node)
		capCPU.Add(n.Status.Allocatable[corev1.ResourceCPU])
		capMem.Add(n.Status.Allocatable[corev1.ResourceMemory])
	}
	return nodeUsage(raw, capCPU, capMem)
}

// nodeUsage decodes a metrics API node list (raw) and returns the summed CPU
// and memory use as percentages of capCPU and capMem, the nodes'
// allocatable. A figure that cannot be a real use (negative, or not finite)
// is an error rather than a number: the heartbeat then says unavailable.
func nodeUsage(raw []byte, capCPU, capMem resource.Quantity) (cpu, mem tunnel.Usage, err error) {
	var list nodeMetricsList
	if err := json.Unmarshal(raw, &list); err != nil {
		return cpu, mem, fmt.Errorf("decode node metrics: %w", err)
	}
	var usedCPU, usedMem resource.Quantity
	for _, it := range list.Items {
		usedCPU.Add(it.Usage[corev1.ResourceCPU])
		usedMem.Add(it.Usage[corev1.ResourceMemory])
	}
	if capCPU.Sign() <= 0 || capMem.Sign() <= 0 {
		return cpu, mem, errors.New("no node allocatable to compare usage with")
	}
	// As floats, not MilliValue: a sum too big for an int64 of milli-units
	// would wrap around into a made-up figure.
	cpuPct := 100 * usedCPU.AsApproximateFloat64() / capCPU.AsApproximateFloat64()
	memPct := 100 * usedMem.AsApproximateFloat64() / capMem.AsApproximateFloat64()
	for _, p := range []float64{cpuPct, memPct} {
		if p < 0 || math.IsNaN(p) || math.IsInf(p, 0) {
			return cpu, mem, fmt.Errorf("node metrics give a usage of %v%%", p)
		}
	}
	return tunnel.Percent(cpuPct), tunnel.Percent(memPct), nil
}
