package kubeletsim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// The kubelet's own stream timeouts: a stream pair must be complete within
// streamCreationTimeout, and a session with no traffic ends after
// streamIdleTimeout.
const (
	streamCreationTimeout = remotecommand.DefaultStreamCreationTimeout
	streamIdleTimeout     = 4 * time.Hour
)

// routes serves the paths the API server proxies the pod subresources to
// (pods/exec, pods/attach, pods/log, pods/portforward).
func (k *Kubelet) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/exec/{namespace}/{pod}/{container}", k.serveExec)
	mux.HandleFunc("/attach/{namespace}/{pod}/{container}", k.serveAttach)
	mux.HandleFunc("/portForward/{namespace}/{pod}", k.servePortForward)
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", k.serveLogs)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !k.enter() {
			http.Error(w, ErrClosed.Error(), http.StatusServiceUnavailable)
			return
		}
		defer k.wg.Done()
		k.log.Debug("kubeletsim: request", "method", r.Method, "path", r.URL.Path)
		mux.ServeHTTP(w, r)
	})
}

// target finds the pod (and container, when the path names one) of r, or
// answers 404.
func (k *Kubelet) target(w http.ResponseWriter, r *http.Request) (*Pod, *container, bool) {
	p := k.lookup(r.PathValue("namespace"), r.PathValue("pod"))
	if p == nil {
		http.Error(w, fmt.Sprintf("pod %s/%s not found on node %s", r.PathValue("namespace"), r.PathValue("pod"), k.node), http.StatusNotFound)
		return nil, nil, false
	}
	name := r.PathValue("container")
	if name == "" {
		return p, nil, true
	}
	c, ok := p.containers[name]
	if !ok {
		http.Error(w, fmt.Sprintf("container %q not found in pod %s/%s", name, p.Namespace, p.Name), http.StatusNotFound)
		return nil, nil, false
	}
	return p, c, true
}

func (k *Kubelet) serveExec(w http.ResponseWriter, r *http.Request) {
	p, c, ok := k.target(w, r)
	if !ok {
		return
	}
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cmd := r.URL.Query()["command"]
	remotecommand.ServeExec(w, r, &containerRuntime{k: k, c: c}, p.Namespace+"/"+p.Name, string(p.UID), c.name, cmd, opts,
		streamIdleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (k *Kubelet) serveAttach(w http.ResponseWriter, r *http.Request) {
	p, c, ok := k.target(w, r)
	if !ok {
		return
	}
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	remotecommand.ServeAttach(w, r, &containerRuntime{k: k, c: c}, p.Namespace+"/"+p.Name, string(p.UID), c.name, opts,
		streamIdleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (k *Kubelet) servePortForward(w http.ResponseWriter, r *http.Request) {
	p, _, ok := k.target(w, r)
	if !ok {
		return
	}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(w, r, &podForwarder{k: k, p: p}, p.Namespace+"/"+p.Name, string(p.UID), opts,
		streamIdleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

func (k *Kubelet) serveLogs(w http.ResponseWriter, r *http.Request) {
	_, c, ok := k.target(w, r)
	if !ok {
		return
	}
	serveLog(w, r, c.log)
}

// containerRuntime runs exec and attach in one container.
type containerRuntime struct {
	k *Kubelet
	c *container
}

// ExecInContainer runs cmd with the in-process command set. A non-zero exit
// is returned as a utilexec.ExitError, which the streaming library turns
// into the exit code the client reports.
func (rt *containerRuntime) ExecInContainer(ctx context.Context, _, _, _ string, cmd []string, in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration) error {
	p := &proc{ctx: ctx, fs: rt.c.fs, stdin: in, stdout: writerOrDiscard(out), stderr: writerOrDiscard(errOut)}
	if p.stdin == nil {
		p.stdin = strings.NewReader("")
	}
	if tty {
		p.tty = newTerminal()
		if p.stderr == io.Discard {
			p.stderr = p.stdout // a terminal has one output
		}
	}
	rt.watchResize(resize, p.tty)
	res := p.run(cmd)
	closeWriters(out, errOut)
	if res.code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command %q exited with %d", strings.Join(cmd, " "), res.code), Code: res.code}
	}
	return nil
}

// AttachContainer stands for the container's main process: it echoes stdin
// to stdout until stdin ends. Without stdin it holds the session open until
// the Kubelet closes, as attaching to a quiet process does.
func (rt *containerRuntime) AttachContainer(ctx context.Context, _, _, _ string, in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	var session *terminal
	if tty {
		session = newTerminal()
	}
	rt.watchResize(resize, session)
	defer closeWriters(out, errOut)
	if in == nil {
		select {
		case <-ctx.Done():
		case <-rt.k.ctx.Done():
		}
		return nil
	}
	p := &proc{ctx: ctx, fs: rt.c.fs, stdin: in, stdout: writerOrDiscard(out), stderr: writerOrDiscard(errOut), tty: session}
	if res := cmdCat(p, nil); res.code != 0 {
		return fmt.Errorf("attach: echo ended with %d", res.code)
	}
	return nil
}

// watchResize records the sizes the client sends, for the session and for
// the container (Pod.WaitTerminalSize). The library closes resize once the
// request is over, which ends the goroutine.
func (rt *containerRuntime) watchResize(resize <-chan remotecommand.TerminalSize, session *terminal) {
	if resize == nil {
		return
	}
	rt.k.goOwned(func() {
		for size := range resize {
			if session != nil {
				session.set(size)
			}
			rt.c.term.set(size)
		}
	})
}

func writerOrDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// closeWriters ends the output streams as a process's exit would, so that
// the client has read everything when the status arrives.
func closeWriters(ws ...io.WriteCloser) {
	for _, w := range ws {
		if w != nil {
			_ = w.Close()
		}
	}
}

// podForwarder connects port-forward streams to the listeners the test
// registered with Pod.ForwardPort.
type podForwarder struct {
	k *Kubelet
	p *Pod
}

// PortForward copies between the stream and a fresh connection to the
// port's registered address. It returns once the target has finished
// sending (the library then closes the stream); the copy towards the
// target ends when the client closes its side, in a goroutine the Kubelet
// owns, which then closes the connection.
func (f *podForwarder) PortForward(ctx context.Context, _, _ string, port int32, stream io.ReadWriteCloser) error {
	addr, ok := f.p.portAddr(port)
	if !ok {
		return fmt.Errorf("pod %s/%s: nothing listens on port %d (register it with Pod.ForwardPort)", f.p.Namespace, f.p.Name, port)
	}
	if !f.k.enter() {
		return ErrClosed
	}
	defer f.k.wg.Done()
	var d net.Dialer
	conn, err := d.DialContext(f.k.ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("pod %s/%s port %d: %w", f.p.Namespace, f.p.Name, port, err)
	}
	stopClose := context.AfterFunc(f.k.ctx, func() { _ = conn.Close() })
	sent := make(chan struct{})
	toTarget := func() {
		_, _ = io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		<-sent
		stopClose()
		_ = conn.Close()
	}
	if !f.k.goOwned(toTarget) {
		stopClose()
		_ = conn.Close()
		return ErrClosed
	}
	_, err = io.Copy(stream, conn)
	close(sent)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("pod %s/%s port %d: %w", f.p.Namespace, f.p.Name, port, err)
	}
	return nil
}
