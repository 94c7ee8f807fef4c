package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/shared/revocation"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// Registration socket timing.
const (
	registerTimeout = 15 * time.Second // for the first message
	agentIdle       = 90 * time.Second // silence after which the socket is closed
)

var upgrader = websocket.Upgrader{HandshakeTimeout: 10 * time.Second}

// registrationSocketKind is the kind under which registration sockets are
// registered with the revocation tracker (a metric label).
const registrationSocketKind = "registration_socket"

// agentWS is the PipeOps registration socket: the agent sends register and
// gets register_success (or error, when its cluster is gone or the store
// fails), with the register's request_id, which is all a PipeOps agent
// matches the answer by. The socket then stays open for pings and
// heartbeats, which are recorded and answered, until the agent closes it,
// the server shuts down, or the token it opened with is revoked or expires
// (the revocation tracker cuts it; see Run). gateway_hello_ack and other
// types are ignored.
func (s *Server) agentWS(w http.ResponseWriter, r *http.Request) {
	claims := claimsFrom(r.Context())
	cluster := claims.ClusterID
	select {
	case <-s.closing:
		writeError(w, r, controlplane.Errorf(controlplane.EUNAVAILABLE, "shutting down"), nil)
		return
	default:
	}
	s.sockets.Add(1)
	defer s.sockets.Done()
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	defer ws.Close()
	// cut receives the tracker's cause; the close handshake is made here,
	// not in the tracker's goroutine, where a slow peer would hold up
	// every other cut.
	cut := make(chan error, 1)
	conn := revocation.Conn{Kind: registrationSocketKind, TokenID: claims.ID, Cluster: cluster, Cut: func(cause error) {
		select {
		case cut <- cause:
		default:
		}
	}}
	if claims.ExpiresAt != nil {
		conn.Expires = claims.ExpiresAt.Time
	}
	defer s.conns.Register(conn)()
	done := make(chan struct{})
	var closer sync.WaitGroup
	defer closer.Wait()
	defer close(done)
	closer.Add(1)
	go func() {
		defer closer.Done()
		closeWith := func(code int, reason string) {
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
			ws.Close()
		}
		select {
		case <-s.closing:
			closeWith(websocket.CloseGoingAway, "shutting down")
		case cause := <-cut:
			// 1008: the agent must not come back with this token.
			closeWith(websocket.ClosePolicyViolation, cause.Error())
		case <-done:
		}
	}()
	ws.SetReadLimit(tunnel.MaxMessageSize)
	s.metrics.agents.Inc()
	defer s.metrics.agents.Dec()
	log := s.log.With("cluster", cluster, "remote", r.RemoteAddr)

	_ = ws.SetReadDeadline(time.Now().Add(registerTimeout))
	registered := false
	for {
		typ, data, err := ws.ReadMessage()
		if err != nil {
			if !registered {
				log.Info("agent left before registering", "err", err)
			}
			return
		}
		_ = ws.SetReadDeadline(time.Now().Add(agentIdle))
		if typ != websocket.TextMessage {
			continue
		}
		msg, err := tunnel.DecodeMessage(data)
		if err != nil {
			s.logs.Log(r.Context(), slog.LevelWarn, "malformed\x00"+cluster, "dropping malformed message from agent", "cluster", cluster, "err", err)
			continue
		}
		var reply tunnel.Message
		switch msg.Type {
		case tunnel.TypeRegister:
			reply = s.register(r.Context(), cluster, msg, log.Info)
			registered = registered || reply.Type == tunnel.TypeRegisterSuccess
		case tunnel.TypeHeartbeat:
			reply = s.heartbeat(r.Context(), cluster, msg, log.Warn)
		case tunnel.TypePing:
			reply, _ = tunnel.NewMessage(tunnel.TypePong, tunnel.Pong{})
		case tunnel.TypeGatewayHelloAck:
			// A PipeOps agent acknowledges gateway_hello on whichever
			// socket it holds; there is nothing to answer here.
			continue
		default:
			log.Debug("ignoring message", "type", msg.Type)
			continue
		}
		reply.RequestID = msg.RequestID
		b, err := reply.Encode()
		if err != nil {
			log.Error("encode reply", "err", err)
			return
		}
		_ = ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := ws.WriteMessage(websocket.TextMessage, b); err != nil {
			return
		}
	}
}

type logFunc func(msg string, args ...any)

// register answers a register message. The token decides the cluster: a
// cached cluster_id that is not the token's (the agent kept the id of a
// cluster since deleted, or its token was replaced by another cluster's)
// is answered with register_success for the token's cluster, which the
// agent adopts. An error would not do: a PipeOps agent never delivers an
// error to its waiting register call, so it would wait for its timeout and
// exit. What the agent says of itself is stored (controlplane.AgentReportOf),
// bounded; the Kubernetes service token it may offer is discarded.
func (s *Server) register(ctx context.Context, cluster string, msg tunnel.Message, logf logFunc) tunnel.Message {
	var p tunnel.Register
	if err := msg.DecodePayload(&p); err != nil {
		return errorMessage("malformed register payload: " + err.Error())
	}
	if p.K8sServiceToken != "" {
		// Never its value, not even in part.
		s.logs.Log(ctx, slog.LevelInfo, "service_token\x00"+cluster,
			"agent offered a Kubernetes service token; discarded, never stored", "cluster", cluster)
	}
	c, err := s.clusters.Cluster(ctx, cluster)
	if err != nil {
		if controlplane.ErrorCode(err) == controlplane.ENOTFOUND {
			return errorMessage("cluster not found")
		}
		s.log.Error("register: load cluster", "cluster", cluster, "err", err)
		return errorMessage("internal error")
	}
	report, dropped := controlplane.AgentReportOf(p)
	if len(dropped) > 0 {
		s.logs.Log(ctx, slog.LevelWarn, "agent_info\x00"+cluster,
			"agent's register too large to store whole; left out its largest fields",
			"cluster", cluster, "dropped_fields", dropped, "limit_bytes", controlplane.MaxAgentInfoSize)
	}
	if err := s.clusters.UpdateAgent(ctx, cluster, report); err != nil {
		s.log.Error("register: record agent", "cluster", cluster, "err", err)
		return errorMessage("internal error")
	}
	resumed := p.ClusterID == cluster
	if p.ClusterID != "" && !resumed {
		logf("agent's cached cluster id is not its token's cluster; answered with the token's",
			"cached_cluster_id", controlplane.AgentText(p.ClusterID), "cluster_id", cluster)
	}
	logf("agent registered", "agent_id", report.AgentID, "agent_version", report.AgentVersion,
		"k8s_version", report.K8sVersion, "resumed", resumed)
	reply, _ := tunnel.NewMessage(tunnel.TypeRegisterSuccess, tunnel.RegisterSuccess{
		ClusterID: c.UUID, ClusterUUID: c.UUID, Name: c.Name, Status: c.Status, GatewayWSURL: s.cfg.GatewayWSURL,
		TunnelURL: s.tunnelURL, APIServer: s.tunnelURL + "/k8s/" + c.UUID,
	})
	return reply
}

// heartbeat records a heartbeat of an agent that has no gateway socket (a
// PipeOps agent that was given no gateway URL heartbeats here) and
// acknowledges it. It is stored as the gateway stores one
// (controlplane.HeartbeatRecord). The cluster is the token's; the
// payload's cluster_id is not trusted.
func (s *Server) heartbeat(ctx context.Context, cluster string, msg tunnel.Message, logf logFunc) tunnel.Message {
	var hb tunnel.Heartbeat
	if err := msg.DecodePayload(&hb); err != nil {
		return errorMessage("malformed heartbeat: " + err.Error())
	}
	status, meta := controlplane.HeartbeatRecord(hb)
	if err := s.clusters.RecordHeartbeat(ctx, cluster, status, "", meta, time.Now()); err != nil && !errors.Is(err, context.Canceled) {
		logf("record heartbeat", "err", err)
	}
	reply, _ := tunnel.NewMessage(tunnel.TypeHeartbeatAck, tunnel.HeartbeatAck{})
	return reply
}

// gatewayOrigin is the gateway's public origin as PipeOps agents expect it
// in register_success.tunnel_url: the gateway WebSocket URL's scheme mapped
// wss → https and ws → http (http and https kept), and its host; path,
// query and user info dropped.
func gatewayOrigin(wsURL string) (string, error) {
	u, err := url.Parse(wsURL)
	if err != nil {
		return "", err
	}
	var scheme string
	switch strings.ToLower(u.Scheme) {
	case "wss", "https":
		scheme = "https"
	case "ws", "http":
		scheme = "http"
	default:
		return "", fmt.Errorf("%q is not a ws, wss, http or https URL", wsURL)
	}
	if u.Host == "" {
		return "", fmt.Errorf("%q has no host", wsURL)
	}
	return (&url.URL{Scheme: scheme, Host: u.Host}).String(), nil
}

func errorMessage(text string) tunnel.Message {
	m, _ := tunnel.NewMessage(tunnel.TypeError, tunnel.ErrorPayload{Error: text})
	return m
}
