package routetable

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// tcpProxy forwards TCP connections from a local port to target and can
// simulate two kinds of outage of whatever is behind it, which the server
// itself never notices, so a test can cut one client off a shared server:
//
//   - Cut closes every connection and turns new ones away (accepted, then
//     closed at once, which clients see as the server going away
//     mid-handshake) until Resume: a server that went down.
//   - Freeze holds every byte in either direction, on old connections and
//     new ones, until Thaw: a network that silently drops packets, which
//     clients notice only by their own timeouts.
type tcpProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup // the accept loop and one per forwarded connection

	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{} // both ends of every forwarded connection
	thawed chan struct{}         // closed unless frozen
}

// startProxy listens on 127.0.0.1:0 and forwards to target until the test
// ends.
func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: make(map[net.Conn]struct{}), thawed: make(chan struct{})}
	close(p.thawed)
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

// Addr is the host:port to connect to instead of target.
func (p *tcpProxy) Addr() string { return p.ln.Addr().String() }

// Cut closes all connections and refuses new ones until Resume.
func (p *tcpProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
}

// Resume lets new connections through again.
func (p *tcpProxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

// Freeze stops all traffic, without closing anything, until Thaw.
func (p *tcpProxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.thawed:
		p.thawed = make(chan struct{})
	default: // frozen already
	}
}

// Thaw delivers what Freeze held and lets traffic flow again.
func (p *tcpProxy) Thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.thawed:
	default:
		close(p.thawed)
	}
}

func (p *tcpProxy) close() {
	p.ln.Close()
	p.Thaw()
	p.Cut()
	p.wg.Wait()
}

// waitThawed blocks while the proxy is frozen.
func (p *tcpProxy) waitThawed() {
	p.mu.Lock()
	thawed := p.thawed
	p.mu.Unlock()
	<-thawed
}

func (p *tcpProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		if !p.track(c) {
			c.Close()
			continue
		}
		p.wg.Go(func() { p.forward(c) })
	}
}

// track records c so that Cut can close it; false when cut.
func (p *tcpProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *tcpProxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	c.Close()
}

func (p *tcpProxy) forward(client net.Conn) {
	defer p.untrack(client)
	network := "tcp"
	if strings.HasPrefix(p.target, "/") {
		network = "unix" // a PostgreSQL socket path
	}
	server, err := net.DialTimeout(network, p.target, 5*time.Second)
	if err != nil {
		return
	}
	// A Cut between the accept and now must still end this connection.
	if !p.track(server) {
		server.Close()
		return
	}
	defer p.untrack(server)
	// PostgreSQL has no use for half-closed connections: when either
	// direction ends, end both.
	var wg sync.WaitGroup
	wg.Go(func() {
		p.pipe(server, client)
		server.Close()
		client.Close()
	})
	p.pipe(client, server)
	server.Close()
	client.Close()
	wg.Wait()
}

// pipe copies from src to dst until either fails, holding what it read
// while the proxy is frozen.
func (p *tcpProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.waitThawed()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
