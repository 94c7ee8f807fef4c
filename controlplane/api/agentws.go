package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
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
// gets register_success (or error). The socket then stays open for pings
// and heartbeats, which are recorded, until the agent closes it, the server
// shuts down, or the token it opened with is revoked or expires (the
// revocation tracker cuts it; see Run).
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

// register answers a register message. The token decides the cluster; a
// cached cluster_id that is not the token's is answered "not registered", so
// the agent forgets it and registers afresh (protocol rule).
func (s *Server) register(ctx context.Context, cluster string, msg tunnel.Message, logf logFunc) tunnel.Message {
	var p tunnel.Register
	if err := msg.DecodePayload(&p); err != nil {
		return errorMessage("malformed register payload: " + err.Error())
	}
	if p.ClusterID != "" && p.ClusterID != cluster {
		return errorMessage("cluster " + p.ClusterID + " not registered")
	}
	c, err := s.clusters.Cluster(ctx, cluster)
	if err != nil {
		if controlplane.ErrorCode(err) == controlplane.ENOTFOUND {
			return errorMessage("cluster not found")
		}
		s.log.Error("register: load cluster", "cluster", cluster, "err", err)
		return errorMessage("internal error")
	}
	if err := s.clusters.UpdateAgent(ctx, cluster, p.AgentID, p.AgentVersion, p.K8sVersion); err != nil {
		s.log.Error("register: record agent", "cluster", cluster, "err", err)
		return errorMessage("internal error")
	}
	logf("agent registered", "agent_id", p.AgentID, "agent_version", p.AgentVersion, "k8s_version", p.K8sVersion, "resumed", p.ClusterID != "")
	reply, _ := tunnel.NewMessage(tunnel.TypeRegisterSuccess, tunnel.RegisterSuccess{
		ClusterID: c.UUID, ClusterUUID: c.UUID, Name: c.Name, Status: c.Status, GatewayWSURL: s.cfg.GatewayWSURL,
	})
	return reply
}

func (s *Server) heartbeat(ctx context.Context, cluster string, msg tunnel.Message, logf logFunc) tunnel.Message {
	var hb tunnel.Heartbeat
	if err := msg.DecodePayload(&hb); err != nil {
		return errorMessage("malformed heartbeat: " + err.Error())
	}
	meta := map[string]any{
		"k8s_nodes": hb.Metadata.K8sNodes, "k8s_pods": hb.Metadata.K8sPods,
		"cpu_usage": hb.Metadata.CPUUsage.String(), "memory_usage": hb.Metadata.MemoryUsage.String(),
		"is_private": hb.Metadata.IsPrivate, "gateway_routes": hb.Metadata.GatewayRoutes,
		"agent_version": hb.Metadata.AgentVersion, "k8s_version": hb.Metadata.K8sVersion,
		"tunnel_status": hb.TunnelStatus,
	}
	status := controlplane.ClusterConnected
	if hb.Status == tunnel.StatusDisconnected {
		status = controlplane.ClusterDisconnected
	}
	if err := s.clusters.RecordHeartbeat(ctx, cluster, status, meta, time.Now()); err != nil && !errors.Is(err, context.Canceled) {
		logf("record heartbeat", "err", err)
	}
	reply, _ := tunnel.NewMessage(tunnel.TypeHeartbeatAck, tunnel.HeartbeatAck{})
	return reply
}

func errorMessage(text string) tunnel.Message {
	m, _ := tunnel.NewMessage(tunnel.TypeError, tunnel.ErrorPayload{Error: text})
	return m
}
