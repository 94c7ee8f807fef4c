package api

import (
	"net/http"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/shared/routeproto"
)

// ownCluster returns the cluster of the agent token, refusing a body that
// names another cluster (an agent acts only on its own).
func ownCluster(r *http.Request, named string) (string, error) {
	mine := claimsFrom(r.Context()).ClusterID
	if named != "" && named != mine {
		return "", controlplane.Errorf(controlplane.EFORBIDDEN, "this token belongs to cluster %s, not %s", mine, named)
	}
	return mine, nil
}

// agentRequest opens each route handler: it decodes the body into req and
// returns the cluster of the agent's token, refusing a body whose cluster
// (named, read after decoding) is another. When it returns false it has
// answered the request.
func (s *Server) agentRequest(w http.ResponseWriter, r *http.Request, req any, named func() string) (string, bool) {
	if err := decode(w, r, req); err != nil {
		writeError(w, r, err, s.log)
		return "", false
	}
	cluster, err := ownCluster(r, named())
	if err != nil {
		writeError(w, r, err, s.log)
		return "", false
	}
	return cluster, true
}

func (s *Server) registerRoute(w http.ResponseWriter, r *http.Request) {
	var req routeproto.RegisterRequest
	cluster, ok := s.agentRequest(w, r, &req, func() string { return req.ClusterUUID })
	if !ok {
		return
	}
	route := controlplane.Route{
		Hostname: req.Hostname, Path: req.Path, PathType: req.PathType, ClusterUUID: cluster,
		Namespace: req.Namespace, ServiceName: req.ServiceName, ServicePort: req.ServicePort,
		IngressName: req.IngressName, TLS: req.TLS, Annotations: req.Annotations,
		PublicEndpoint: req.PublicEndpoint, RoutingMode: req.RoutingMode,
		DeploymentID: req.DeploymentID, DeploymentName: req.DeploymentName,
	}
	if err := s.routes.RegisterRoute(r.Context(), route); err != nil {
		writeError(w, r, err, s.log)
		return
	}
	pending, err := s.pendingAmong(r.Context(), cluster, []string{req.Hostname})
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	if len(pending) > 0 {
		// Stored, not served until verified: still 200, which PipeOps
		// agents take as success; the body says what is missing.
		writeJSON(w, http.StatusOK, map[string]any{"status": "pending_verification", "hostname": req.Hostname, "verification": pending[0]})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "registered", "hostname": req.Hostname})
}

func (s *Server) syncRoutes(w http.ResponseWriter, r *http.Request) {
	var req routeproto.SyncRequest
	cluster, ok := s.agentRequest(w, r, &req, func() string { return req.ClusterUUID })
	if !ok {
		return
	}
	sync := controlplane.RouteSync{ClusterUUID: cluster, PublicEndpoint: req.PublicEndpoint, RoutingMode: req.RoutingMode, IngressController: (*controlplane.IngressController)(req.IngressController)}
	for _, ing := range req.Ingresses {
		for _, rule := range ing.Rules {
			for _, p := range rule.Paths {
				sync.Routes = append(sync.Routes, controlplane.Route{
					Hostname: rule.Host, Path: p.Path, PathType: p.PathType, ClusterUUID: cluster,
					Namespace: ing.Namespace, ServiceName: p.ServiceName, ServicePort: p.ServicePort,
					IngressName: ing.IngressName, TLS: rule.TLS, Annotations: ing.Annotations,
					PublicEndpoint: req.PublicEndpoint, RoutingMode: req.RoutingMode,
				})
			}
		}
	}
	if err := s.routes.SyncRoutes(r.Context(), sync); err != nil {
		writeError(w, r, err, s.log)
		return
	}
	hosts := make([]string, len(sync.Routes))
	for i, rt := range sync.Routes {
		hosts[i] = rt.Hostname
	}
	pending, err := s.pendingAmong(r.Context(), cluster, hosts)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "synced", "routes": len(sync.Routes), "pending_verification": pending})
}

func (s *Server) unregisterRoute(w http.ResponseWriter, r *http.Request) {
	var req routeproto.UnregisterRequest
	cluster, ok := s.agentRequest(w, r, &req, func() string { return req.ClusterUUID })
	if !ok {
		return
	}
	if req.Hostname == "" {
		writeError(w, r, controlplane.Errorf(controlplane.EINVALID, "hostname is required"), nil)
		return
	}
	if err := s.routes.UnregisterRoute(r.Context(), cluster, req.Hostname); err != nil {
		writeError(w, r, err, s.log)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "unregistered", "hostname": req.Hostname})
}
