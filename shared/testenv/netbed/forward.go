package netbed

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
)

// Forwarder joins each connection a listener accepts to one that a dial
// function makes, copying both ways. With a listener made in one host (or
// outside the bed) and a dial made in another, it puts a server where a
// program expects it with no emulated link in between: the test's own
// process reaching a host's admin port, or an agent's host reaching the
// cluster's API server as if on its own loopback.
type Forwarder struct {
	ln     net.Listener
	dial   func(ctx context.Context) (net.Conn, error)
	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// Forward starts forwarding what ln accepts to connections dial makes. The
// forwarder owns ln; Close it to stop.
func Forward(ln net.Listener, dial func(ctx context.Context) (net.Conn, error)) *Forwarder {
	ctx, cancel := context.WithCancel(context.Background())
	f := &Forwarder{ln: ln, dial: dial, ctx: ctx, cancel: cancel, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.accept()
	return f
}

// Addr is the listener's address.
func (f *Forwarder) Addr() net.Addr { return f.ln.Addr() }

func (f *Forwarder) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		if !f.track(c) {
			c.Close()
			return
		}
		f.wg.Add(1)
		go f.serve(c)
	}
}

// track remembers c for Close; false when closing.
func (f *Forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *Forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns, c)
}

func (f *Forwarder) serve(in net.Conn) {
	defer f.wg.Done()
	defer f.untrack(in)
	defer in.Close()
	out, err := f.dial(f.ctx)
	if err != nil {
		return
	}
	if !f.track(out) {
		out.Close()
		return
	}
	defer f.untrack(out)
	defer out.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(out, in)
	}()
	copyHalf(in, out)
	<-done
}

// copyHalf copies src to dst, then passes the end of src on as a half close.
func copyHalf(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
		_ = cw.CloseWrite()
		return
	}
	// An error on one side ends both.
	dst.Close()
	src.Close()
}

// Close stops accepting, closes every forwarded connection and waits for
// the forwarder's goroutines.
func (f *Forwarder) Close() error {
	err := f.ln.Close()
	f.cancel()
	f.mu.Lock()
	conns := f.conns
	f.conns = nil
	f.mu.Unlock()
	for c := range conns {
		c.Close()
	}
	f.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
