// Package kubeapi serves the Kubernetes API target of tunnel streams: each
// stream carries plain HTTP/1.1 from the gateway, and the agent sends every
// request on to the API server with its OWN credentials, through client-go's
// transport (which follows ServiceAccount token rotation and trusts the
// cluster CA), impersonating the person who made it once it has verified
// who that is (see Identity). Credentials never leave the cluster, and none
// that arrive with a request are passed on. Watches, `logs -f` and protocol upgrades
// (exec and port-forward over SPDY or WebSocket) stream through untouched,
// with no time limit.
package kubeapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/rest"
)

// Server answers Kubernetes API requests that arrive on streams. Create it
// with New, hand it streams with Dial (it is a tunnelclient dialer for the
// Kubernetes API target), and Close it when done.
type Server struct {
	log *slog.Logger
	hs  *http.Server
	l   *pipeListener
	tr  http.RoundTripper
	// upTr carries upgrade requests, over HTTP/1.1.
	upTr http.RoundTripper

	serveDone chan struct{}
}

// New returns a Server that forwards to the API server cfg describes, with
// cfg's credentials, as the person id says (nil: as the agent).
func New(cfg *rest.Config, id *Identity, logger *slog.Logger) (*Server, error) {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	target, err := url.Parse(cfg.Host)
	if err != nil || target.Host == "" {
		// rest.Config allows a bare host:port; treat it as https.
		target, err = url.Parse("https://" + cfg.Host)
		if err != nil {
			return nil, fmt.Errorf("kubeapi: API server address %q: %w", cfg.Host, err)
		}
	}
	// The client-go transport: TLS to the API server and the agent's bearer
	// token (re-read from the projected token file as it rotates). Its
	// timeout is not used: http.Client timeouts would cut watches.
	tr, err := rest.TransportFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubeapi: transport: %w", err)
	}
	// Upgrades (exec, attach, port-forward over SPDY or WebSocket) need
	// HTTP/1.1: HTTP/2 has no Upgrade, and the transport above speaks
	// HTTP/2 to any API server that offers it. So they get a transport of
	// their own that offers only HTTP/1.1, with the same credentials.
	up := rest.CopyConfig(cfg)
	up.TLSClientConfig.NextProtos = []string{"http/1.1"}
	upTr, err := rest.TransportFor(up)
	if err != nil {
		return nil, fmt.Errorf("kubeapi: upgrade transport: %w", err)
	}
	s := &Server{log: logger, l: newPipeListener(), tr: tr, upTr: upTr, serveDone: make(chan struct{})}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = ""
			// Whatever credentials came with the request are not ours to use.
			pr.Out.Header.Del("Authorization")
			for h := range pr.Out.Header {
				if strings.HasPrefix(strings.ToLower(h), "impersonate-") {
					pr.Out.Header.Del(h)
				}
			}
		},
		Transport: id.RoundTripper(roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if r.Header.Get("Upgrade") != "" {
				return upTr.RoundTrip(r)
			}
			return tr.RoundTrip(r)
		})),
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				return
			}
			logger.Warn("kubernetes API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			http.Error(w, "the agent could not reach the Kubernetes API server", http.StatusBadGateway)
		},
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	s.hs = &http.Server{Handler: rp, ReadHeaderTimeout: 30 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelDebug)}
	go func() {
		defer close(s.serveDone)
		_ = s.hs.Serve(s.l)
	}()
	return s, nil
}

// Dial returns a connection to the in-process API forwarder: the caller
// (the tunnel client) joins the stream to it.
func (s *Server) Dial(ctx context.Context) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case s.l.conns <- server:
		return client, nil
	case <-s.l.done:
		client.Close()
		server.Close()
		return nil, errors.New("kubeapi: server closed")
	case <-ctx.Done():
		client.Close()
		server.Close()
		return nil, ctx.Err()
	}
}

// Close stops the server, ending every request in flight, and waits for it.
func (s *Server) Close() error {
	err := s.hs.Close()
	s.l.Close()
	<-s.serveDone
	// client-go wraps its transports (credentials, user agent); this
	// unwraps them to reach the pools.
	for _, tr := range []http.RoundTripper{s.tr, s.upTr} {
		if t, ok := tr.(interface{ CloseIdleConnections() }); ok {
			t.CloseIdleConnections()
		}
	}
	// The upgrade transport is the agent's own (no other client shares its
	// TLS settings); client-go wraps it, so unwrap to reach its pool.
	utilnet.CloseIdleConnectionsFor(s.upTr)
	return err
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// pipeListener hands in-memory connections to an http.Server.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "kubeapi" }
