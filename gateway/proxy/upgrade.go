package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// Protocol upgrades (WebSocket) of public requests take this path instead of
// ReverseProxy's: ReverseProxy keeps the visitor's handler goroutine, two
// copiers and the request and response with their buffers for the whole
// life of the upgraded connection, and a gateway holds many idle WebSockets.
// Here the handler writes the request to the upstream itself, reads the
// answer, and on a 101 hands both connections to tunnel.Join in a goroutine
// the Proxy owns (see upgrades), then returns.

// upgradeType is the protocol a request or response asks to switch to
// ("websocket"), or "" when it does not (the Connection header must name
// Upgrade), as ReverseProxy decides it, but without surrounding white space,
// which is not part of a field value: a folded header line leaves some
// ("websocket "), and a request written with it would read back without.
func upgradeType(h http.Header) string {
	if !headerHasToken(h["Connection"], "upgrade") {
		return ""
	}
	return textproto.TrimString(h.Get("Upgrade"))
}

// headerHasToken reports whether the comma-separated values hold token
// (case-insensitive).
func headerHasToken(values []string, token string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(t), token) {
				return true
			}
		}
	}
	return false
}

func isPrintableASCII(s string) bool {
	for i := range len(s) {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// hopHeaders are removed from what is forwarded (RFC 9110, 7.6.1), with the
// headers the Connection header names; ReverseProxy's list.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHopByHopHeaders(h http.Header) {
	for _, v := range h["Connection"] {
		for f := range strings.SplitSeq(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, f := range hopHeaders {
		h.Del(f)
	}
}

// Pooled buffers of the upgrade handshake, returned as soon as the
// connections are joined: an upgraded connection holds none of them.
var (
	upstreamReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	upstreamWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

// serveUpgrade proxies a request that asks for a protocol switch. On a 101 it
// starts the relay and returns at once, with rec's status set to 101; any
// other answer is forwarded as a normal response.
func (p *Proxy) serveUpgrade(rec *statusRecorder, r *http.Request, t *target, upType string) {
	if !isPrintableASCII(upType) {
		p.errorHandler(rec, r, fmt.Errorf("client tried to switch to invalid protocol %q", upType))
		return
	}
	if p.upgrades.isClosed() {
		http.Error(rec, "the gateway is shutting down", http.StatusServiceUnavailable)
		return
	}
	up, err := p.dialUpstream(r.Context(), t)
	if err != nil {
		p.errorHandler(rec, r, err)
		return
	}
	br := upstreamReaders.Get().(*bufio.Reader)
	br.Reset(up)
	defer func() {
		// Reached with up closed or joined: nothing reads br any more.
		br.Reset(nil)
		upstreamReaders.Put(br)
	}()
	// A visitor that goes away stops the exchange (stop() is false once it
	// has); a joined connection outlives the request and its context.
	stop := context.AfterFunc(r.Context(), func() { _ = up.SetDeadline(expired) })
	res, err := p.upgradeRoundTrip(rec, r, up, br, upType)
	if err != nil {
		stop()
		up.Close()
		p.errorHandler(rec, r, err)
		return
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		// Bodies have no time limit; clearing the deadline before looking
		// at the context keeps a cancellation from being lost.
		_ = up.SetDeadline(time.Time{})
		if r.Context().Err() == nil {
			p.forwardResponse(rec, r, res)
		}
		stop()
		up.Close()
		return
	}
	if !stop() {
		up.Close()
		return
	}
	if resType := upgradeType(res.Header); !strings.EqualFold(upType, resType) || !isPrintableASCII(resType) {
		up.Close()
		p.errorHandler(rec, r, fmt.Errorf("backend tried to switch protocol %q when %q was requested", resType, upType))
		return
	}
	// up's deadline, ResponseHeaderTimeout from the request, still bounds
	// the rest of the handshake.
	visitor, hijacked, err := p.switchProtocols(rec, res, up, br)
	if err != nil {
		up.Close()
		if !hijacked {
			p.errorHandler(rec, r, err)
			return
		}
		// The visitor's connection is closed: there is nobody to answer.
		rec.status = http.StatusBadGateway
		p.log.Info("proxy error after the protocol switch", "host", r.Host, "cluster", t.match.Route.ClusterUUID, "mode", t.mode, "err", err)
		return
	}
	_ = up.SetDeadline(time.Time{})
	_ = visitor.SetDeadline(time.Time{})
	if !p.upgrades.start(visitor, up) {
		p.log.Debug("upgraded connection closed: the proxy is closing", "host", r.Host)
	}
}

// expired is a deadline in the past: blocked reads and writes fail at once.
var expired = time.Unix(1, 0)

// dialUpstream connects the request's upstream: a tunnel stream, or the
// load balancer in direct mode (falling back to the tunnel as dialDirect
// does).
func (p *Proxy) dialUpstream(ctx context.Context, t *target) (net.Conn, error) {
	if t.mode == controlplane.RoutingDirect {
		return p.dialDirect(ctx, "tcp", directAddr(t.match.Route.PublicEndpoint))
	}
	return p.cfg.Tunnels.Dial(ctx, t.match.Route.ClusterUUID, tunnelHeader(t.match))
}

// upgradeRoundTrip writes the outgoing request to up and reads the answer's
// head, skipping (and forwarding) informational answers other than 101.
// Writing the request and waiting for the head are bounded by
// ResponseHeaderTimeout together.
func (p *Proxy) upgradeRoundTrip(w http.ResponseWriter, r *http.Request, up net.Conn, br *bufio.Reader, upType string) (*http.Response, error) {
	out := p.upgradeRequest(r, upType)
	_ = up.SetDeadline(time.Now().Add(p.cfg.ResponseHeaderTimeout))
	bw := upstreamWriters.Get().(*bufio.Writer)
	bw.Reset(up)
	err := out.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	upstreamWriters.Put(bw)
	if err != nil {
		return nil, fmt.Errorf("write upgrade request: %w", err)
	}
	// Informational answers (103 Early Hints) are passed on, as
	// ReverseProxy does; http.Transport allows at most 5 of them.
	for range 5 {
		res, err := http.ReadResponse(br, out)
		if err != nil {
			return nil, fmt.Errorf("read upgrade response: %w", err)
		}
		if res.StatusCode >= 200 || res.StatusCode == http.StatusSwitchingProtocols {
			return res, nil
		}
		h := w.Header()
		copyHeader(h, res.Header)
		w.WriteHeader(res.StatusCode)
		clear(h)
	}
	return nil, errors.New("read upgrade response: too many 1xx informational responses")
}

// upgradeRequest is the request ReverseProxy would send for r: its hop-by-hop
// headers removed but the upgrade pair, the visitor's forwarding headers
// replaced by ours (rewrite), no Go default User-Agent.
func (p *Proxy) upgradeRequest(r *http.Request, upType string) *http.Request {
	out := r.Clone(r.Context())
	if r.ContentLength == 0 {
		out.Body = nil
	}
	if out.Header == nil {
		out.Header = make(http.Header)
	}
	out.Close = false
	removeHopByHopHeaders(out.Header)
	if headerHasToken(r.Header["Te"], "trailers") {
		out.Header.Set("Te", "trailers")
	}
	out.Header.Set("Connection", "Upgrade")
	out.Header.Set("Upgrade", upType)
	for _, h := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		out.Header.Del(h)
	}
	if _, err := url.ParseQuery(out.URL.RawQuery); err != nil {
		// Unparsable query parameters are dropped, as ReverseProxy does.
		v, _ := url.ParseQuery(out.URL.RawQuery)
		out.URL.RawQuery = v.Encode()
	}
	p.rewrite(&httputil.ProxyRequest{In: r, Out: out})
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header.Set("User-Agent", "")
	}
	return out
}

// forwardResponse sends an upstream's refusal of the upgrade (or any other
// final answer) to the visitor as ReverseProxy would: hop-by-hop headers
// removed, the body streamed, trailers passed on.
func (p *Proxy) forwardResponse(w http.ResponseWriter, r *http.Request, res *http.Response) {
	defer res.Body.Close()
	removeHopByHopHeaders(res.Header)
	copyHeader(w.Header(), res.Header)
	if len(res.Trailer) > 0 {
		keys := make([]string, 0, len(res.Trailer))
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		w.Header().Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(res.StatusCode)
	ct, _, _ := mime.ParseMediaType(res.Header.Get("Content-Type"))
	flush := res.ContentLength == -1 || ct == "text/event-stream"
	rc := http.NewResponseController(w)
	buf := copyBuffers.Get()
	defer copyBuffers.Put(buf)
	for {
		n, rerr := res.Body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return
			}
			if flush {
				_ = rc.Flush()
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if r.Context().Err() != nil {
				return // the visitor went away
			}
			// The visitor has part of the answer: all that is left is to
			// abort its connection, so that it does not take it for whole.
			p.log.Info("upstream answer cut", "host", r.Host, "err", rerr)
			panic(http.ErrAbortHandler)
		}
	}
	res.Body.Close() // fills res.Trailer
	for k, vv := range res.Trailer {
		for _, v := range vv {
			w.Header().Add(http.TrailerPrefix+k, v)
		}
	}
}

func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}

// switchProtocols takes the visitor's connection, writes it the 101 and
// forwards what each side sent after its head that was already read into a
// buffer: the upstream's first bytes behind its 101 (br), the visitor's behind
// its request. It returns the visitor's connection, ready to be joined. On
// an error, hijacked says whether the visitor's connection was taken (and is
// now closed) or can still be answered.
func (p *Proxy) switchProtocols(rec *statusRecorder, res *http.Response, up net.Conn, br *bufio.Reader) (_ net.Conn, hijacked bool, _ error) {
	visitor, brw, err := http.NewResponseController(rec).Hijack()
	if errors.Is(err, http.ErrNotSupported) {
		return nil, false, fmt.Errorf("can't switch protocols using non-Hijacker ResponseWriter type %T", rec.ResponseWriter)
	}
	if err != nil {
		return nil, false, fmt.Errorf("hijack failed on protocol switch: %w", err)
	}
	rec.status = http.StatusSwitchingProtocols
	fail := func(err error) (net.Conn, bool, error) {
		visitor.Close()
		return nil, true, err
	}
	_ = visitor.SetWriteDeadline(time.Now().Add(p.cfg.ResponseHeaderTimeout))
	h := rec.Header()
	copyHeader(h, res.Header)
	res.Header = h
	res.Body = nil // only the head
	if err := res.Write(brw); err != nil {
		return fail(fmt.Errorf("write 101 to the visitor: %w", err))
	}
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		if _, err := brw.Write(b); err != nil {
			return fail(fmt.Errorf("write to the visitor: %w", err))
		}
	}
	if err := brw.Flush(); err != nil {
		return fail(fmt.Errorf("write 101 to the visitor: %w", err))
	}
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		if _, err := up.Write(b); err != nil {
			return fail(fmt.Errorf("write to the upstream: %w", err))
		}
	}
	return visitor, true, nil
}

// upgrades owns the goroutines that relay upgraded connections: each joined
// pair is tracked until its relay ends, and close ends them all and waits.
// The zero value is ready to use.
type upgrades struct {
	mu     sync.Mutex
	conns  map[net.Conn]net.Conn // visitor -> upstream
	closed bool
	wg     sync.WaitGroup
}

// start joins visitor and up in a goroutine of its own. After close it
// closes both instead and returns false.
func (u *upgrades) start(visitor, up net.Conn) bool {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		visitor.Close()
		up.Close()
		return false
	}
	if u.conns == nil {
		u.conns = make(map[net.Conn]net.Conn)
	}
	u.conns[visitor] = up
	u.wg.Add(1)
	u.mu.Unlock()
	go func() {
		defer u.wg.Done()
		tunnel.Join(visitor, up)
		u.mu.Lock()
		delete(u.conns, visitor)
		u.mu.Unlock()
	}()
	return true
}

func (u *upgrades) isClosed() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.closed
}

// len is the number of upgraded connections being relayed.
func (u *upgrades) len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.conns)
}

// close aborts every relay (as tunnel.Join documents: deadlines in the past,
// then Close) and waits for their goroutines. Idempotent.
func (u *upgrades) close() {
	u.mu.Lock()
	u.closed = true
	for visitor, up := range u.conns {
		for _, c := range []net.Conn{visitor, up} {
			_ = c.SetDeadline(expired)
			_ = c.Close()
		}
	}
	u.mu.Unlock()
	u.wg.Wait()
}
