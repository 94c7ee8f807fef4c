// Package relay is the load test's reference tunnel: a plain L4 relay that
// accepts TCP connections and pipes each to a new connection to one target.
// Two of them, each in a process of its own, between the load generator and
// the upstream are the cost floor of any tunnel with two processes on its
// path (a gateway and an agent): no framing, no multiplexing, no TLS, only
// the reads, writes and process hops every such tunnel pays.
//
// The copy is a plain read/write loop, on purpose not io.Copy: between two
// *net.TCPConn that uses splice(2), which moves the bytes in the kernel, and
// no real tunnel can, since it must see (frame, encrypt) what it carries.
package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// BufSize is the copy buffer of one direction of a connection.
const BufSize = 256 << 10

// dialTimeout bounds the dial of the target for one connection.
const dialTimeout = 5 * time.Second

// bufs holds the copy buffers: a direction borrows one for as long as it
// copies, so only connections in use hold one.
var bufs = sync.Pool{New: func() any { b := make([]byte, BufSize); return &b }}

// ErrNotLoopback is returned for an address that is not a loopback IP: the
// relay is for the load test on one machine and must not reach further.
var ErrNotLoopback = errors.New("relay: address is not a loopback IP and port")

// CheckLoopback returns an error unless addr is IP:port with a loopback IP
// (names are refused: they could resolve elsewhere).
func CheckLoopback(addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return fmt.Errorf("%w: %q", ErrNotLoopback, addr)
	}
	return nil
}

// Relay accepts connections on a listener and pipes each to a new
// connection to its target. Serve runs it; it owns every goroutine it starts
// and returns once all have ended.
type Relay struct {
	ln     net.Listener
	target string
	log    *slog.Logger
	dialer net.Dialer

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // open connections, both sides
	closed bool                  // set when Serve stops: no more tracking
}

// New returns a relay from ln to target. Both must be loopback addresses.
// The relay takes ownership of ln: Serve closes it.
func New(ln net.Listener, target string, log *slog.Logger) (*Relay, error) {
	if err := CheckLoopback(ln.Addr().String()); err != nil {
		return nil, fmt.Errorf("listen address: %w", err)
	}
	if err := CheckLoopback(target); err != nil {
		return nil, fmt.Errorf("target: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Relay{ln: ln, target: target, log: log, dialer: net.Dialer{Timeout: dialTimeout},
		conns: map[net.Conn]struct{}{}}, nil
}

// Addr is the address the relay accepts on.
func (r *Relay) Addr() net.Addr { return r.ln.Addr() }

// Serve accepts and relays connections until ctx ends or accepting fails.
// It then closes the listener and every open connection, waits for all the
// goroutines it started and returns: nil when ctx ended, the accept error
// otherwise. Call it once.
func (r *Relay) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		<-ctx.Done()
		r.ln.Close()
		r.closeAll()
	})
	for {
		c, err := r.ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("relay: accept: %w", err)
		}
		wg.Go(func() { r.handle(ctx, c) })
	}
}

// handle relays one accepted connection.
func (r *Relay) handle(ctx context.Context, c net.Conn) {
	if !r.track(c) {
		c.Close()
		return
	}
	defer r.untrack(c)
	up, err := r.dialer.DialContext(ctx, "tcp", r.target)
	if err != nil {
		c.Close()
		if ctx.Err() == nil {
			r.log.Warn("dial the target", "target", r.target, "err", err)
		}
		return
	}
	if !r.track(up) {
		c.Close()
		up.Close()
		return
	}
	defer r.untrack(up)
	if err := Pipe(c, up); err != nil && ctx.Err() == nil {
		// Resets and the like are the peers' business: a real tunnel
		// would pass them on the same way.
		r.log.Debug("connection ended", "peer", c.RemoteAddr(), "err", err)
	}
}

// track records an open connection so that Serve's end can close it; it
// returns false once Serve is stopping.
func (r *Relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *Relay) untrack(c net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.conns, c)
}

func (r *Relay) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
}

// closeWriter is a connection that can pass a half-close on (TCP's FIN).
type closeWriter interface{ CloseWrite() error }

// Pipe copies a to b and b to a until both directions have ended, and
// closes both. A direction ends cleanly when its source reaches EOF: the
// half-close is passed on (CloseWrite on the destination) and the other
// direction goes on. Any other error, on a read, a write or the half-close,
// closes both connections at once, which ends the other direction too;
// Pipe returns the first such error, or nil. The second direction runs in a
// goroutine Pipe waits for.
func Pipe(a, b net.Conn) error {
	var (
		once  sync.Once
		first error
	)
	fail := func(err error) {
		once.Do(func() {
			first = err
			a.Close()
			b.Close()
		})
	}
	half := func(dst, src net.Conn) {
		if err := copyConn(dst, src); err != nil {
			fail(err)
			return
		}
		cw, ok := dst.(closeWriter)
		if !ok {
			fail(fmt.Errorf("relay: %T cannot pass a half-close on", dst))
			return
		}
		if err := cw.CloseWrite(); err != nil {
			fail(fmt.Errorf("pass the half-close on: %w", err))
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() { half(b, a) })
	half(a, b)
	wg.Wait()
	a.Close()
	b.Close()
	return first
}

// copyConn copies src to dst until src's EOF (a nil error) or an error,
// with a pooled BufSize buffer: one read and one write system call per
// piece, as a tunnel's copy has at least.
func copyConn(dst, src net.Conn) error {
	bp := bufs.Get().(*[]byte)
	defer bufs.Put(bp)
	buf := *bp
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return nil
			}
			return rerr
		}
	}
}
