package wsconn

import (
	"bufio"
	"crypto/tls"
	"net"
	"sync"

	"github.com/gorilla/websocket"
)

// BufferSize is the read buffer, and the most a held write gathers, of a
// connection from Buffered.
const BufferSize = 256 << 10

// Buffered wraps c, the raw connection under a TLS connection, so that
//
//   - reads go through a BufferSize buffer: TLS reads one record (at most
//     16 KiB) per Read, so without it every record is a system call; with it
//     one call fetches whatever has arrived;
//   - writes made between Hold and Release (Conn does this around each
//     WebSocket message) are gathered and sent together, instead of one
//     system call per TLS record.
//
// Writes outside Hold and Release go straight through, so a write path that
// does not know about batching (control frames, the TLS handshake) behaves
// as before. That matters most where system calls are dear (sandboxed
// kernels such as gVisor).
func Buffered(c net.Conn) net.Conn {
	return &bufferedConn{Conn: c, r: bufio.NewReaderSize(c, BufferSize)}
}

type bufferedConn struct {
	net.Conn
	r *bufio.Reader

	mu   sync.Mutex
	hold int
	wbuf []byte
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *bufferedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hold == 0 {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		return c.Conn.Write(p)
	}
	c.wbuf = append(c.wbuf, p...)
	if len(c.wbuf) >= BufferSize {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (c *bufferedConn) flushLocked() error {
	if len(c.wbuf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.wbuf)
	c.wbuf = c.wbuf[:0]
	return err
}

// hold starts gathering writes.
func (c *bufferedConn) holdWrites() {
	c.mu.Lock()
	c.hold++
	c.mu.Unlock()
}

// release sends what was gathered once the last holder releases.
func (c *bufferedConn) releaseWrites() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hold--
	if c.hold > 0 {
		return nil
	}
	return c.flushLocked()
}

// batcherOf finds the Buffered connection under ws (directly, or under its
// TLS connection), or nil.
func batcherOf(ws *websocket.Conn) *bufferedConn {
	nc := ws.NetConn()
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	b, _ := nc.(*bufferedConn)
	return b
}

// BufferedListener wraps l so every accepted connection is Buffered (for a
// TLS listener on top of it).
func BufferedListener(l net.Listener) net.Listener { return bufferedListener{l} }

type bufferedListener struct{ net.Listener }

func (l bufferedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Buffered(c), nil
}
