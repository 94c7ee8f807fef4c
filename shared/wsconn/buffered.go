package wsconn

import (
	"crypto/tls"
	"net"
	"sync"

	"github.com/gorilla/websocket"
)

// BufferSize is the most a batched read fetches, and a held write gathers,
// on a connection from Buffered.
const BufferSize = 256 << 10

// Buffered wraps c, the raw connection under a TLS connection, so that
//
//   - reads are batched: TLS reads one record (at most 16 KiB) per Read, so
//     without batching every record is a system call. After a Read fills
//     the caller's buffer (data is streaming), the next reads fetch up to
//     BufferSize at once into a pooled buffer, given back once drained;
//   - writes made between Hold and Release (Conn does this around each
//     WebSocket message) are gathered and sent together, instead of one
//     system call per TLS record.
//
// An idle connection holds no buffer: a Read that waits for data waits in
// the caller's buffer. Writes outside Hold and Release go straight through,
// so a write path that does not know about batching (control frames, the
// TLS handshake) behaves as before. That matters most where system calls
// are dear (sandboxed kernels such as gVisor).
func Buffered(c net.Conn) net.Conn { return &bufferedConn{Conn: c} }

var bufferPool = sync.Pool{New: func() any { b := make([]byte, BufferSize); return &b }}

type bufferedConn struct {
	net.Conn

	// Read side, owned by the reader (TLS serialises reads).
	rbuf       *[]byte // pooled, while streaming
	rpos, rend int
	streaming  bool // the last direct read filled the caller's buffer

	mu   sync.Mutex
	hold int
	wbuf *[]byte // pooled, while held writes are gathered
	wlen int
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	if c.rbuf != nil {
		n := copy(p, (*c.rbuf)[c.rpos:c.rend])
		c.rpos += n
		if c.rpos == c.rend {
			bufferPool.Put(c.rbuf)
			c.rbuf = nil
		}
		return n, nil
	}
	if !c.streaming || len(p) >= BufferSize {
		n, err := c.Conn.Read(p)
		c.streaming = n == len(p)
		return n, err
	}
	buf := bufferPool.Get().(*[]byte)
	m, err := c.Conn.Read(*buf)
	c.streaming = m == len(*buf)
	n := copy(p, (*buf)[:m])
	if n < m {
		c.rbuf, c.rpos, c.rend = buf, n, m
	} else {
		bufferPool.Put(buf)
	}
	if err != nil && c.rbuf != nil {
		err = nil // deliver the buffered bytes first; the error comes again
	}
	return n, err
}

func (c *bufferedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(p)
	if c.hold == 0 {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		return c.Conn.Write(p)
	}
	for len(p) > 0 {
		if c.wbuf == nil {
			c.wbuf = bufferPool.Get().(*[]byte)
		}
		k := copy((*c.wbuf)[c.wlen:], p)
		c.wlen += k
		p = p[k:]
		if c.wlen == len(*c.wbuf) {
			if err := c.flushLocked(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (c *bufferedConn) flushLocked() error {
	if c.wbuf == nil {
		return nil
	}
	_, err := c.Conn.Write((*c.wbuf)[:c.wlen])
	bufferPool.Put(c.wbuf)
	c.wbuf, c.wlen = nil, 0
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

// WriteBufferPool lends gorilla/websocket its write buffers only while a
// message is written, so an idle connection holds none.
var WriteBufferPool websocket.BufferPool = &sync.Pool{}
