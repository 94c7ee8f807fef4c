package kubeletsim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
)

type podKey struct{ namespace, name string }

// Pod is a pod bound to a Kubelet's Node and reported Running. Its
// containers have no processes: each has an in-memory file system (for
// exec and cp), a Log, and the terminal size last sent by an exec or
// attach with a TTY. Safe for concurrent use.
type Pod struct {
	Namespace string
	Name      string
	UID       types.UID

	k          *Kubelet
	containers map[string]*container // fixed at creation
	names      []string

	mu    sync.Mutex
	ports map[int32]string
}

type container struct {
	name string
	fs   *memFS
	log  *Log
	term *terminal
}

// DefaultContainer is the container a Pod gets when none is named.
const DefaultContainer = "main"

// Pod creates the pod namespace/name with the given containers (default
// one, DefaultContainer) on the Kubelet's Node, reports it Running, and
// deletes it when t ends. The namespace must exist.
func (k *Kubelet) Pod(t testing.TB, namespace, name string, containers ...string) *Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := k.CreatePod(ctx, namespace, name, containers...)
	if err != nil {
		t.Fatalf("kubeletsim: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := p.Delete(ctx); err != nil {
			t.Errorf("kubeletsim: %v", err)
		}
	})
	return p
}

// CreatePod is Pod for callers without a testing.TB; they delete the pod
// with Pod.Delete (or leave it to the namespace).
func (k *Kubelet) CreatePod(ctx context.Context, namespace, name string, containers ...string) (*Pod, error) {
	if len(containers) == 0 {
		containers = []string{DefaultContainer}
	}
	p := &Pod{Namespace: namespace, Name: name, k: k, containers: map[string]*container{}, ports: map[int32]string{}}
	var specs []corev1.Container
	var statuses []corev1.ContainerStatus
	now := metav1.Now()
	for _, c := range containers {
		if _, dup := p.containers[c]; dup {
			return nil, fmt.Errorf("create pod %s/%s: container %q named twice", namespace, name, c)
		}
		p.containers[c] = &container{name: c, fs: newMemFS(), log: newLog(), term: newTerminal()}
		p.names = append(p.names, c)
		image := "kubeletsim.invalid/" + c
		// Stdin lets kubectl attach -i; no TTY, so attach without -t does
		// not switch the client to a terminal.
		specs = append(specs, corev1.Container{Name: c, Image: image, Stdin: true})
		statuses = append(statuses, corev1.ContainerStatus{
			Name: c, Image: image, ImageID: image, ContainerID: "kubeletsim://" + namespace + "/" + name + "/" + c,
			Ready: true, Started: new(true), State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	key := podKey{namespace, name}
	k.mu.Lock()
	switch {
	case k.closed:
		k.mu.Unlock()
		return nil, ErrClosed
	case k.pods[key] != nil:
		k.mu.Unlock()
		return nil, fmt.Errorf("create pod %s/%s: already on this kubelet", namespace, name)
	}
	k.pods[key] = p
	k.mu.Unlock()

	pods := k.client.CoreV1().Pods(namespace)
	created, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/managed-by": "kubeletsim"}},
		Spec: corev1.PodSpec{
			NodeName:                      k.node,
			Containers:                    specs,
			TerminationGracePeriodSeconds: new(int64(0)),
			RestartPolicy:                 corev1.RestartPolicyAlways,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		k.forget(key)
		return nil, fmt.Errorf("create pod %s/%s: %w", namespace, name, err)
	}
	p.UID = created.UID
	created.Status = corev1.PodStatus{
		Phase: corev1.PodRunning,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
		HostIP:            k.addr.IP.String(),
		StartTime:         &now,
		ContainerStatuses: statuses,
	}
	if _, err := pods.UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		k.forget(key)
		_ = pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))})
		return nil, fmt.Errorf("pod %s/%s status: %w", namespace, name, err)
	}
	return p, nil
}

func (k *Kubelet) forget(key podKey) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.pods, key)
}

func (k *Kubelet) lookup(namespace, name string) *Pod {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.pods[podKey{namespace, name}]
}

// Delete removes the pod from the API server (at once: there is no
// process to stop) and from the Kubelet, and closes its logs. Streams
// already open keep running until their clients end them.
func (p *Pod) Delete(ctx context.Context) error {
	p.k.forget(podKey{p.Namespace, p.Name})
	for _, c := range p.containers {
		_ = c.log.Close()
	}
	err := p.k.client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// Containers returns the names of the pod's containers, in order.
func (p *Pod) Containers() []string { return append([]string(nil), p.names...) }

func (p *Pod) container(name string) *container {
	c, ok := p.containers[name]
	if !ok {
		panic(fmt.Sprintf("kubeletsim: pod %s/%s has no container %q (it has %v)", p.Namespace, p.Name, name, p.names))
	}
	return c
}

// Log is the output of the named container, which kubectl logs serves.
// It panics if the pod has no such container.
func (p *Pod) Log(container string) *Log { return p.container(container).log }

// ForwardPort makes port-forwards to the pod's port connect to addr (a
// listener of the test's, such as "127.0.0.1:8080"). A later call for the
// same port replaces the address for new connections.
func (p *Pod) ForwardPort(port int32, addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ports[port] = addr
}

func (p *Pod) portAddr(port int32) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	addr, ok := p.ports[port]
	return addr, ok
}

// WriteFile puts a file in the named container's file system, creating
// its directories, for kubectl cp or exec cat to find.
func (p *Pod) WriteFile(container, path string, data []byte) error {
	return p.container(container).fs.writeFile(path, data)
}

// ReadFile reads a file from the named container's file system, such as
// one kubectl cp put there. A missing file's error wraps fs.ErrNotExist.
func (p *Pod) ReadFile(container, path string) ([]byte, error) {
	return p.container(container).fs.readFile(path)
}

// TerminalSize is a terminal's width and height in characters.
type TerminalSize struct{ Width, Height uint16 }

// WaitTerminalSize waits until the last terminal size a client sent for
// the named container (exec or attach with a TTY) is size.
func (p *Pod) WaitTerminalSize(ctx context.Context, container string, size TerminalSize) error {
	want := remotecommand.TerminalSize{Width: size.Width, Height: size.Height}
	got, err := p.container(container).term.wait(ctx, func(s remotecommand.TerminalSize) bool { return s == want })
	if err != nil {
		return errors.Join(fmt.Errorf("terminal of %s/%s/%s is %dx%d, want %dx%d", p.Namespace, p.Name, container,
			got.Width, got.Height, size.Width, size.Height), err)
	}
	return nil
}
