// Package register is the agent's registration client for the PipeOps
// protocol: it opens the control plane's registration socket with the agent
// token, sends register and returns what register_success says (the cluster
// identity and the gateway to dial).
//
// A registration is one short exchange. The socket is closed afterwards:
// the agent's heartbeats travel over the gateway tunnel, so nothing needs
// this socket to stay open.
package register

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/shared/tunnel"
)

// DefaultTimeout bounds a whole registration when Client.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// Errors of Register. They are wrapped with details; test with errors.Is.
var (
	// ErrUnauthorized means the control plane refused the token when the
	// socket was opened (HTTP 401 or 403). Retrying with the same token will
	// not help: callers should log it loudly and back off for long.
	ErrUnauthorized = errors.New("register: control plane refused the agent token")
	// ErrRejected means the control plane answered register with an error
	// message; the server's text is included in the wrapping error.
	ErrRejected = errors.New("register: control plane rejected the registration")
	// ErrProtocol means the control plane answered something that is not a
	// valid answer to register: a malformed message, a register_success
	// without cluster_id, or a closed socket. It is wrapped together with the
	// underlying cause (for example tunnel.ErrMalformedMessage).
	ErrProtocol = errors.New("register: unexpected answer from control plane")
)

// Client registers the agent with the control plane. Set the fields before
// the first call and do not change them afterwards; Register may then be
// called from several goroutines, each call using a socket of its own.
type Client struct {
	// APIURL is the control plane's URL (PIPEOPS_API_URL, http or https);
	// the socket is tunnel.RegistrationURL(APIURL).
	APIURL string
	// Token is the agent token, sent as a Bearer header. Never logged.
	Token string
	// TLS configures the connection to an https control plane; nil uses the
	// system roots.
	TLS *tls.Config
	// Timeout bounds the whole exchange: dial, handshake and every answer.
	// Zero means DefaultTimeout.
	Timeout time.Duration
	// Logger receives progress at debug level and the outcome at info; nil
	// discards.
	Logger *slog.Logger
}

// Result is what register_success told the agent.
type Result struct {
	// ClusterID is the identity to cache and pass back to Register next time.
	ClusterID    string
	ClusterUUID  string
	Name         string
	Status       string
	GatewayWSURL string
	// Resumed is true when the cached cluster id given to Register was
	// accepted, false for a fresh registration (including one made after the
	// server refused a stale cached id).
	Resumed bool
}

// Register opens the registration socket, sends register with info (its
// ClusterID replaced by cachedClusterID) and returns the answer.
//
// When cachedClusterID is not empty and the server says the cluster is not
// registered, the cached id is stale (the token now belongs to another
// cluster, or the cluster was recreated): Register sends register again
// without a cluster id on the same socket and returns that fresh identity,
// which the caller must cache in place of the old one.
//
// Errors match ErrUnauthorized, ErrRejected or ErrProtocol as documented on
// them, tunnel.ErrInvalidURL for a bad APIURL, and context.DeadlineExceeded
// or context.Canceled when the Timeout or ctx ends the exchange.
func (c *Client) Register(ctx context.Context, info tunnel.Register, cachedClusterID string) (Result, error) {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	wsURL, err := tunnel.RegistrationURL(c.APIURL)
	if err != nil {
		return Result{}, fmt.Errorf("register: control plane URL: %w", err)
	}
	if c.Token == "" {
		return Result{}, fmt.Errorf("%w: no token configured", ErrUnauthorized)
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	dialer := websocket.Dialer{
		Proxy:            http.ProxyFromEnvironment,
		TLSClientConfig:  c.TLS,
		HandshakeTimeout: timeout,
	}
	header := http.Header{"Authorization": {"Bearer " + c.Token}}
	ws, resp, err := dialer.DialContext(ctx, wsURL, header)
	if resp != nil && resp.Body != nil {
		// The dialer leaves a refused handshake's body open; only the
		// status matters here.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
	}
	if err != nil {
		if resp != nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
			return Result{}, fmt.Errorf("%w: %s answered HTTP %d", ErrUnauthorized, wsURL, resp.StatusCode)
		}
		if resp != nil {
			return Result{}, fmt.Errorf("register: opening %s: HTTP %d: %w", wsURL, resp.StatusCode, err)
		}
		return Result{}, fmt.Errorf("register: opening %s: %w", wsURL, ctxErr(ctx, err))
	}
	// Closing the socket when ctx ends unblocks a read or write in progress,
	// so cancelling ctx stops Register promptly even without a deadline hit.
	stop := context.AfterFunc(ctx, func() { ws.Close() })
	defer func() {
		stop()
		closeSocket(ws)
	}()
	ws.SetReadLimit(tunnel.MaxMessageSize)
	if dl, ok := ctx.Deadline(); ok {
		_ = ws.SetReadDeadline(dl)
		_ = ws.SetWriteDeadline(dl)
	}

	ex := exchange{ws: ws, prefix: requestPrefix()}
	info.ClusterID = cachedClusterID
	ok, errText, err := ex.call(ctx, info)
	if err != nil {
		return Result{}, err
	}
	resumed := cachedClusterID != ""
	if errText != "" {
		if cachedClusterID == "" || !(tunnel.ErrorPayload{Error: errText}).IsClusterNotFound() {
			return Result{}, fmt.Errorf("%w: %s", ErrRejected, quote(errText))
		}
		log.Info("cached cluster id refused by the control plane; registering afresh",
			"cached_cluster_id", cachedClusterID, "server_error", truncate(errText))
		info.ClusterID = ""
		resumed = false
		ok, errText, err = ex.call(ctx, info)
		if err != nil {
			return Result{}, err
		}
		if errText != "" {
			return Result{}, fmt.Errorf("%w: %s", ErrRejected, quote(errText))
		}
	}
	if resumed && ok.ClusterID != cachedClusterID {
		// The server accepted the cached id but answered another one; the
		// answer wins, and the caller must not believe it resumed.
		log.Warn("control plane answered a different cluster id than the cached one",
			"cached_cluster_id", cachedClusterID, "cluster_id", ok.ClusterID)
		resumed = false
	}
	log.Info("registered with the control plane", "cluster_id", ok.ClusterID, "name", ok.Name,
		"status", ok.Status, "resumed", resumed)
	return Result{
		ClusterID:    ok.ClusterID,
		ClusterUUID:  ok.ClusterUUID,
		Name:         ok.Name,
		Status:       ok.Status,
		GatewayWSURL: ok.GatewayWSURL,
		Resumed:      resumed,
	}, nil
}

// exchange sends register messages on one socket and reads their answers.
type exchange struct {
	ws     *websocket.Conn
	prefix string
	seq    int
}

// call sends one register and waits for its answer. It returns the
// register_success payload, or the text of an error answer, or an error.
func (e *exchange) call(ctx context.Context, info tunnel.Register) (tunnel.RegisterSuccess, string, error) {
	e.seq++
	msg, err := tunnel.NewMessage(tunnel.TypeRegister, info)
	if err != nil {
		return tunnel.RegisterSuccess{}, "", fmt.Errorf("register: building register: %w", err)
	}
	msg.RequestID = e.prefix + strconv.Itoa(e.seq)
	b, err := msg.Encode()
	if err != nil {
		return tunnel.RegisterSuccess{}, "", fmt.Errorf("register: encoding register: %w", err)
	}
	if err := e.ws.WriteMessage(websocket.TextMessage, b); err != nil {
		return tunnel.RegisterSuccess{}, "", fmt.Errorf("register: sending register: %w", ctxErr(ctx, err))
	}
	for {
		typ, data, err := e.ws.ReadMessage()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
				return tunnel.RegisterSuccess{}, "", fmt.Errorf("register: waiting for the answer: %w", ctxErr(ctx, err))
			}
			return tunnel.RegisterSuccess{}, "", fmt.Errorf("%w: socket closed before the answer: %w", ErrProtocol, err)
		}
		if typ != websocket.TextMessage {
			continue // control messages are TEXT; nothing else is meant for us
		}
		reply, err := tunnel.DecodeMessage(data)
		if err != nil {
			return tunnel.RegisterSuccess{}, "", fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		// An answer to an earlier request (or a message of another kind,
		// such as pong or heartbeat_ack) is not ours. An answer without a
		// request id is accepted: request ids are optional in the protocol.
		if reply.RequestID != "" && reply.RequestID != msg.RequestID {
			continue
		}
		switch reply.Type {
		case tunnel.TypeRegisterSuccess:
			var ok tunnel.RegisterSuccess
			if err := reply.DecodePayload(&ok); err != nil {
				return tunnel.RegisterSuccess{}, "", fmt.Errorf("%w: %w", ErrProtocol, err)
			}
			return ok, "", nil
		case tunnel.TypeError:
			var p tunnel.ErrorPayload
			if err := reply.DecodePayload(&p); err != nil {
				return tunnel.RegisterSuccess{}, "", fmt.Errorf("%w: %w", ErrProtocol, err)
			}
			if p.Error == "" {
				p.Error = "(no reason given)"
			}
			return tunnel.RegisterSuccess{}, p.Error, nil
		}
	}
}

// closeSocket ends the exchange with a close frame so the server logs a
// normal departure rather than a broken connection, then closes.
func closeSocket(ws *websocket.Conn) {
	_ = ws.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, "registered"),
		time.Now().Add(time.Second))
	ws.Close()
}

// ctxErr returns an error matching ctx's error when ctx has ended or err is
// a deadline expiry (the socket deadlines are ctx's deadline, and may fire a
// moment before ctx notices), keeping err's text. Otherwise it returns err.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	return err
}

// requestPrefix returns a random request id prefix so that answers meant for
// another connection or attempt can never be mistaken for ours.
func requestPrefix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "reg-" + hex.EncodeToString(b[:]) + "-"
}

// truncate bounds server text before it goes into an error or a log: it
// comes from the network and may be long.
func truncate(s string) string {
	const limit = 512
	if len(s) > limit {
		return s[:limit] + "..."
	}
	return s
}

// quote truncates and quotes server text for an error message, so control
// characters in it cannot forge log lines.
func quote(s string) string { return strconv.Quote(truncate(s)) }
