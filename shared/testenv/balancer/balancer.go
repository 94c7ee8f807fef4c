// Package balancer is a TCP load balancer on loopback for tests and the
// local stack: the stand-in for the one users put in front of several
// gateways.
package balancer

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Balancer spreads TCP connections over backends: each connection goes to the next backend in
// turn, or to the one after when that refuses it (a gateway that is
// stopping has closed its listeners), and bytes pass untouched (TLS ends at
// the gateways). A backend's close is passed on to the client.
type Balancer struct {
	Addr string

	l        net.Listener
	backends []string
	next     atomic.Uint64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	closed   bool
}

// Start listens on addr and spreads connections over backends.
func Start(addr string, backends []string) (*Balancer, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	b := &Balancer{Addr: l.Addr().String(), l: l, backends: backends, conns: map[net.Conn]struct{}{}}
	b.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if !b.track(c, true) {
				c.Close()
				return
			}
			b.wg.Go(func() { b.serve(c) })
		}
	})
	return b, nil
}

// track adds or removes a connection; false once the balancer is closed.
func (b *Balancer) track(c net.Conn, on bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !on {
		delete(b.conns, c)
		return true
	}
	if b.closed {
		return false
	}
	b.conns[c] = struct{}{}
	return true
}

func (b *Balancer) serve(c net.Conn) {
	defer b.track(c, false)
	defer c.Close()
	var up net.Conn
	for range b.backends {
		addr := b.backends[b.next.Add(1)%uint64(len(b.backends))]
		var err error
		if up, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
			break
		}
	}
	if up == nil || !b.track(up, true) {
		if up != nil {
			up.Close()
		}
		return
	}
	defer b.track(up, false)
	defer up.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(up, c)
		_ = up.(*net.TCPConn).CloseWrite()
	}()
	_, _ = io.Copy(c, up)
	c.Close() // the backend is done with it: so is the client
	up.Close()
	<-done
}

// Close stops accepting, cuts every connection and waits.
func (b *Balancer) Close() {
	b.mu.Lock()
	b.closed = true
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.l.Close()
	b.wg.Wait()
}
