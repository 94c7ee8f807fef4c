package stack

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// IngressStandIn plays the cluster's ingress controller: an HTTP server on
// loopback that routes requests by Host to the apps registered with Handle,
// and answers 404 for unknown hosts as ingress-nginx does. Safe for
// concurrent use.
type IngressStandIn struct {
	// Addr is host:port; Host and Port are its parts.
	Addr string
	Host string
	Port int

	srv      *http.Server
	mu       sync.RWMutex
	apps     map[string]http.Handler
	requests atomic.Int64
}

// StartIngressStandIn listens on a free loopback port and serves.
func StartIngressStandIn() (*IngressStandIn, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("ingress stand-in: %w", err)
	}
	a := l.Addr().(*net.TCPAddr)
	s := &IngressStandIn{Addr: a.String(), Host: a.IP.String(), Port: a.Port, apps: map[string]http.Handler{}}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

// Handle routes host to h (replacing any app there).
func (s *IngressStandIn) Handle(host string, h http.Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apps[strings.ToLower(host)] = h
}

// Requests is how many requests reached the stand-in.
func (s *IngressStandIn) Requests() int64 { return s.requests.Load() }

// ServeHTTP routes by Host.
func (s *IngressStandIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	host := strings.ToLower(r.Host)
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	s.mu.RLock()
	h := s.apps[host]
	s.mu.RUnlock()
	if h == nil {
		http.Error(w, "ingress stand-in: no rule for host "+host, http.StatusNotFound)
		return
	}
	h.ServeHTTP(w, r)
}

// Close stops the server and every connection.
func (s *IngressStandIn) Close() { _ = s.srv.Close() }

// Shutdown stops accepting and waits for requests in flight.
func (s *IngressStandIn) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// App is a small web application for checks and load: every endpoint a
// tunnel must carry unchanged.
//
//	GET  /              "hello from NAME" and the Host it was asked for
//	GET  /bytes?n=N     N bytes (streamed, 32 KiB writes), Content-Length set
//	POST /upload        reads the body; answers "LENGTH SHA256HEX"
//	GET  /sse?n=N&every=D  N server-sent events, one every D (flushed)
//	GET  /ws            WebSocket echo
//	GET  /slow?d=D      answers after D (or when the client goes away)
func App(name string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "hello from %s (host %s)\n", name, r.Host)
	})
	chunk := make([]byte, 32<<10)
	for i := range chunk {
		chunk[i] = byte('a' + i%26)
	}
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "n must be a byte count", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			k := min(n, int64(len(chunk)))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	mux.HandleFunc("POST /upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %s\n", n, hex.EncodeToString(h.Sum(nil)))
	})
	mux.HandleFunc("GET /sse", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		every, _ := time.ParseDuration(r.URL.Query().Get("every"))
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		fl, _ := w.(http.Flusher)
		for i := 0; i < n; i++ {
			if i > 0 && every > 0 {
				select {
				case <-time.After(every):
				case <-r.Context().Done():
					return
				}
			}
			fmt.Fprintf(w, "id: %d\ndata: event %d at %s\n\n", i, i, time.Now().Format(time.RFC3339Nano))
			if fl != nil {
				fl.Flush()
			}
		}
	})
	upgrader := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(typ, msg); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		select {
		case <-time.After(d):
			fmt.Fprintln(w, "done")
		case <-r.Context().Done():
		}
	})
	return mux
}
