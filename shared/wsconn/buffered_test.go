package wsconn

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/gorilla/websocket"
)

// countingConn records the writes that reach the raw connection.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes []int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, len(p))
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *countingConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.writes)
}

func TestBufferedBatchesHeldWrites(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	var got bytes.Buffer
	done := make(chan struct{})
	go func() { io.Copy(&got, b); close(done) }()

	raw := &countingConn{Conn: a}
	c := Buffered(raw).(*bufferedConn)

	// Unheld writes go straight through, one each.
	c.Write([]byte("one"))
	c.Write([]byte("two"))
	if n := raw.count(); n != 2 {
		t.Fatalf("unheld writes: %d raw writes, want 2", n)
	}
	// Held writes are gathered into one, sent at release.
	c.holdWrites()
	for i := 0; i < 10; i++ {
		c.Write([]byte("-record-"))
	}
	if n := raw.count(); n != 2 {
		t.Fatalf("held writes reached the connection before release (%d raw writes)", n)
	}
	if err := c.releaseWrites(); err != nil {
		t.Fatal(err)
	}
	if n := raw.count(); n != 3 {
		t.Fatalf("after release: %d raw writes, want 3", n)
	}
	// A held write larger than the buffer is sent at once.
	c.holdWrites()
	c.Write(make([]byte, BufferSize+1))
	if n := raw.count(); n != 4 {
		t.Fatalf("oversized held write: %d raw writes, want 4", n)
	}
	c.releaseWrites()
	a.Close()
	<-done
	want := "onetwo" + strings.Repeat("-record-", 10)
	if got.Len() != len(want)+BufferSize+1 || !strings.HasPrefix(got.String(), want) {
		t.Fatalf("received %d bytes, want %d starting %q", got.Len(), len(want)+BufferSize+1, want)
	}
}

// TestBufferedUnderTLS sends large messages over a real TLS WebSocket whose
// both ends are Buffered: every byte arrives, in order, and each message
// costs a handful of system calls rather than one per TLS record.
func TestBufferedUnderTLS(t *testing.T) {
	msgs := make(chan []byte, 8)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		conn := New(ws, Options{})
		defer conn.Close()
		buf := make([]byte, 1<<20)
		for i := 0; i < 4; i++ {
			m := make([]byte, 0, 1<<20)
			for len(m) < 1<<20 {
				n, err := conn.Read(buf[:1<<20-len(m)])
				if err != nil {
					return
				}
				m = append(m, buf[:n]...)
			}
			msgs <- m
		}
	}))
	srv.Listener = BufferedListener(srv.Listener)
	srv.StartTLS()
	defer srv.Close()

	var raw *countingConn
	d := websocket.Dialer{
		TLSClientConfig: srv.Client().Transport.(*http.Transport).TLSClientConfig,
		NetDial: func(network, addr string) (net.Conn, error) {
			c, err := net.Dial(network, addr)
			if err != nil {
				return nil, err
			}
			raw = &countingConn{Conn: c}
			return Buffered(raw), nil
		},
	}
	ws, _, err := d.Dial(strings.Replace(srv.URL, "https://", "wss://", 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ws.NetConn().(*tls.Conn); !ok {
		t.Fatalf("not a TLS connection: %T", ws.NetConn())
	}
	conn := New(ws, Options{})
	defer conn.Close()
	before := raw.count()
	for i := 0; i < 4; i++ {
		msg := bytes.Repeat([]byte{byte('a' + i)}, 1<<20)
		if _, err := conn.Write(msg); err != nil {
			t.Fatal(err)
		}
		if got := <-msgs; !bytes.Equal(got, msg) {
			t.Fatalf("message %d arrived changed", i)
		}
	}
	// 4 MiB is 256 TLS records; batched, a few writes per message.
	if n := raw.count() - before; n > 4*(1<<20/BufferSize+2) {
		t.Fatalf("%d raw writes for 4 one-MiB messages: not batched", n)
	}
}

// readCounter counts the reads that reach the raw connection.
type readCounter struct {
	net.Conn
	reads int
}

func (c *readCounter) Read(p []byte) (int, error) {
	c.reads++
	return c.Conn.Read(p)
}

func TestBufferedReadsBatchWhileStreaming(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	go func() { b.Write(data); b.Close() }()

	raw := &readCounter{Conn: a}
	c := Buffered(raw).(*bufferedConn)
	var got []byte
	p := make([]byte, 16<<10+512) // what TLS asks for: about one record
	for {
		n, err := c.Read(p)
		got = append(got, p[:n]...)
		if err != nil {
			break
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, not the %d written", len(got), len(data))
	}
	if limit := 2 * (len(data)/BufferSize + 2); raw.reads > limit {
		t.Fatalf("%d raw reads for 1 MiB in %d-byte reads, want at most %d", raw.reads, len(p), limit)
	}
	if c.rbuf != nil {
		t.Fatal("a drained connection still holds a read buffer")
	}
}
