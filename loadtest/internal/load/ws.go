package load

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Sockets is a set of open WebSockets, held idle. Safe for concurrent use.
type Sockets struct {
	mu    sync.Mutex
	conns []*websocket.Conn
}

// Len is the number of sockets held.
func (s *Sockets) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// OpenSockets opens n WebSockets to url (ws://) with Host host, at most
// concurrency handshakes at a time, and returns those that opened with the
// number that failed. Opening stops at ctx's end.
func OpenSockets(ctx context.Context, url, host string, n, concurrency int) (*Sockets, *Result) {
	d := websocket.Dialer{
		NetDialContext:   (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		HandshakeTimeout: 30 * time.Second,
		// Small buffers: the load generator holds thousands of these.
		ReadBufferSize:  256,
		WriteBufferSize: 256,
	}
	h := http.Header{"Host": {host}}
	s := &Sockets{conns: make([]*websocket.Conn, 0, n)}
	var next atomic.Int64
	total := fanOut(concurrency, func(r *Result) {
		for ctx.Err() == nil && next.Add(1) <= int64(n) {
			t0 := time.Now()
			c, resp, err := d.DialContext(ctx, url, h)
			if err != nil {
				r.Errors++
				if resp != nil {
					err = fmt.Errorf("%w (HTTP %s)", err, resp.Status)
				}
				r.sample(err.Error())
				continue
			}
			r.Hist.Record(time.Since(t0))
			r.Requests++
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
		}
	})
	return s, total
}

// Echo sends a short message on every socket and checks that the same
// comes back, at most concurrency at a time: proof that every stream held
// is alive end to end.
func (s *Sockets) Echo(ctx context.Context, concurrency int, timeout time.Duration) *Result {
	s.mu.Lock()
	conns := append([]*websocket.Conn(nil), s.conns...)
	s.mu.Unlock()
	var next atomic.Int64
	return fanOut(concurrency, func(r *Result) {
		for {
			k := int(next.Add(1)) - 1
			if k >= len(conns) || ctx.Err() != nil {
				return
			}
			c := conns[k]
			msg := []byte(fmt.Sprintf("stream %d", k))
			t0 := time.Now()
			_ = c.SetWriteDeadline(t0.Add(timeout))
			_ = c.SetReadDeadline(t0.Add(timeout))
			err := c.WriteMessage(websocket.TextMessage, msg)
			var got []byte
			if err == nil {
				_, got, err = c.ReadMessage()
			}
			if err == nil && !bytes.Equal(got, msg) {
				err = fmt.Errorf("echo %q, sent %q", got, msg)
			}
			_ = c.SetWriteDeadline(time.Time{})
			_ = c.SetReadDeadline(time.Time{})
			if err != nil {
				r.Errors++
				r.sample(err.Error())
				continue
			}
			r.Hist.Record(time.Since(t0))
			r.Requests++
		}
	})
}

// Close closes every socket (without the closing handshake: the far side
// sees the connection end, as when a browser tab is killed).
func (s *Sockets) Close() {
	s.mu.Lock()
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}
