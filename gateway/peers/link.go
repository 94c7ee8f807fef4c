package peers

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/pipeops/tunnel/gateway/session"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// The peer link: a gateway that has no tunnel to a cluster opens a TCP
// connection to the peer listener of a gateway that has, and asks with one
// HTTP/1.1 upgrade request for a stream to a target in the cluster:
//
//	GET /peer/v1/stream HTTP/1.1
//	Connection: Upgrade
//	Upgrade: pipeops-peer/1
//	Pipeops-Peer-From: <gateway id>
//	Pipeops-Peer-Cluster: <cluster uuid>
//	Pipeops-Peer-Target: <the stream header, base64url>
//	Pipeops-Peer-Time: <unix seconds>
//	Pipeops-Peer-Auth: <hex HMAC-SHA256 over the four values above, keyed with PEER_SECRET>
//
// The holder answers 101, naming in Pipeops-Peer-Session the session the
// stream is on, and from then on the connection is the stream,
// both ways, half-closes included; or 503 with Pipeops-Peer-Error
// "offline" (no session here any more) or "limit" (the session is at its
// stream limit), 401 for a bad signature, 400 for a malformed request.
const (
	streamPath     = "/peer/v1/stream"
	upgradeToken   = "pipeops-peer/1"
	headerFrom     = "Pipeops-Peer-From"
	headerCluster  = "Pipeops-Peer-Cluster"
	headerTarget   = "Pipeops-Peer-Target"
	headerTime     = "Pipeops-Peer-Time"
	headerAuth     = "Pipeops-Peer-Auth"
	headerError    = "Pipeops-Peer-Error"
	headerSession  = "Pipeops-Peer-Session"
	errOffline     = "offline"
	errLimit       = "limit"
	maxClockSkew   = 60 * time.Second
	maxHeaderBytes = 8 << 10
)

// ErrUnauthorized means a peer refused the link's signature: the two
// gateways do not share PEER_SECRET, or their clocks differ by more than a
// minute.
var ErrUnauthorized = errors.New("peer refused the link's signature (PEER_SECRET differs, or the clocks are more than a minute apart)")

// sign is the signature of one stream request.
func sign(secret []byte, from, cluster, target, ts string) string {
	m := hmac.New(sha256.New, secret)
	for _, v := range []string{"pipeops-peer-stream/1", from, cluster, target, ts} {
		m.Write([]byte(v))
		m.Write([]byte{0})
	}
	return hex.EncodeToString(m.Sum(nil))
}

// streamRequest is a decoded, verified stream request.
type streamRequest struct {
	from    string
	cluster string
	header  tunnel.StreamHeader
}

// parseStreamRequest checks a stream request's form and signature at now.
// The error is what the requester is told, with its status.
func parseStreamRequest(r *http.Request, secret []byte, now time.Time) (streamRequest, int, error) {
	if r.Method != http.MethodGet || r.URL.Path != streamPath {
		return streamRequest{}, http.StatusNotFound, errors.New("not a peer endpoint")
	}
	if r.Header.Get("Upgrade") != upgradeToken {
		return streamRequest{}, http.StatusBadRequest, fmt.Errorf("the Upgrade header must be %s", upgradeToken)
	}
	req := streamRequest{from: r.Header.Get(headerFrom), cluster: r.Header.Get(headerCluster)}
	target, ts, mac := r.Header.Get(headerTarget), r.Header.Get(headerTime), r.Header.Get(headerAuth)
	if req.from == "" || req.cluster == "" || target == "" || ts == "" || mac == "" {
		return streamRequest{}, http.StatusBadRequest, errors.New("missing peer headers")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return streamRequest{}, http.StatusBadRequest, fmt.Errorf("%s is not a unix time", headerTime)
	}
	want := sign(secret, req.from, req.cluster, target, ts)
	if !hmac.Equal([]byte(mac), []byte(want)) {
		return streamRequest{}, http.StatusUnauthorized, errors.New("bad signature")
	}
	if skew := now.Sub(time.Unix(sec, 0)); skew > maxClockSkew || skew < -maxClockSkew {
		return streamRequest{}, http.StatusUnauthorized, fmt.Errorf("signed %s away from this gateway's clock", skew.Round(time.Second))
	}
	raw, err := base64.RawURLEncoding.DecodeString(target)
	if err != nil {
		return streamRequest{}, http.StatusBadRequest, fmt.Errorf("%s is not base64url", headerTarget)
	}
	if err := req.header.UnmarshalBinary(raw); err != nil {
		return streamRequest{}, http.StatusBadRequest, fmt.Errorf("%s: %w", headerTarget, err)
	}
	return req, 0, nil
}

// dialFunc connects to a peer (net.Dialer.DialContext).
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// dialPeer asks the gateway at peerURL, connected with dial, for a stream
// to h in cluster and returns the connection that is that stream.
func dialPeer(ctx context.Context, dial dialFunc, peerURL *url.URL, from string, secret []byte, cluster string, h tunnel.StreamHeader, now time.Time) (net.Conn, error) {
	raw, err := h.MarshalBinary()
	if err != nil {
		return nil, err
	}
	conn, err := dial(ctx, "tcp", peerURL.Host)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	target := base64.RawURLEncoding.EncodeToString(raw)
	ts := strconv.FormatInt(now.Unix(), 10)
	req := "GET " + streamPath + " HTTP/1.1\r\nHost: " + peerURL.Host + "\r\nConnection: Upgrade\r\nUpgrade: " + upgradeToken +
		"\r\n" + headerFrom + ": " + from + "\r\n" + headerCluster + ": " + cluster + "\r\n" + headerTarget + ": " + target +
		"\r\n" + headerTime + ": " + ts + "\r\n" + headerAuth + ": " + sign(secret, from, cluster, target, ts) + "\r\n\r\n"
	br := bufio.NewReaderSize(conn, 4096)
	var resp *http.Response
	if _, err = io.WriteString(conn, req); err == nil {
		resp, err = http.ReadResponse(br, nil)
	}
	if !stop() || ctx.Err() != nil {
		conn.Close()
		return nil, fmt.Errorf("peer %s: %w", peerURL.Host, context.Cause(ctx))
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("peer %s: %w", peerURL.Host, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		switch {
		case resp.StatusCode == http.StatusUnauthorized:
			return nil, fmt.Errorf("peer %s: %w", peerURL.Host, ErrUnauthorized)
		case resp.Header.Get(headerError) == errOffline:
			return nil, fmt.Errorf("peer %s: %w", peerURL.Host, session.ErrAgentOffline)
		case resp.Header.Get(headerError) == errLimit:
			return nil, fmt.Errorf("peer %s: %w", peerURL.Host, session.ErrTooManyStreams)
		}
		return nil, fmt.Errorf("peer %s answered %s", peerURL.Host, resp.Status)
	}
	_ = conn.SetDeadline(time.Time{})
	lc := &linkConn{Conn: conn, r: br, session: resp.Header.Get(headerSession)}
	lc.pool = session.NewPoolState(lc.Close)
	return lc, nil
}

// linkConn is a peer link after the upgrade: reads drain what the response
// reader buffered first.
type linkConn struct {
	net.Conn
	r       *bufio.Reader
	pool    *session.PoolState
	onClose func(*linkConn) // set before the conn is handed out
	key     linkKey
	session string // the holder's session the stream is on ("": not said)
	once    sync.Once
}

func (c *linkConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// PoolState is the link's state in a Transport's pool: the link is retired
// when the gateway it goes to no longer holds the cluster.
func (c *linkConn) PoolState() *session.PoolState { return c.pool }

func (c *linkConn) Close() error {
	c.once.Do(func() {
		if c.onClose != nil {
			c.onClose(c)
		}
	})
	return c.Conn.Close()
}

// CloseWrite half-closes the link, as a tunnel stream's CloseWrite does.
func (c *linkConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
