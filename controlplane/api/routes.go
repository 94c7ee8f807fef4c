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

func (s *Server) registerRoute(w http.ResponseWriter, r *http.Request) {
	var req routeproto.RegisterRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, err, s.log)
		return
	}
	cluster, err := ownCluster(r, req.ClusterUUID)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	mode, err := routingMode(req.RoutingMode, req.PublicEndpoint)
	if err != nil {
		writeError(w, r, err, nil)
		return
	}
	route := controlplane.Route{
		Hostname: req.Hostname, Path: req.Path, PathType: req.PathType, ClusterUUID: cluster,
		Namespace: req.Namespace, ServiceName: req.ServiceName, ServicePort: req.ServicePort,
		IngressName: req.IngressName, TLS: req.TLS, Annotations: req.Annotations,
		PublicEndpoint: req.PublicEndpoint, RoutingMode: mode,
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
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, err, s.log)
		return
	}
	cluster, err := ownCluster(r, req.ClusterUUID)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	mode, err := routingMode(req.RoutingMode, req.PublicEndpoint)
	if err != nil {
		writeError(w, r, err, nil)
		return
	}
	sync := controlplane.RouteSync{ClusterUUID: cluster, PublicEndpoint: req.PublicEndpoint, RoutingMode: mode, IngressController: (*controlplane.IngressController)(req.IngressController)}
	for _, ing := range req.Ingresses {
		for _, rule := range ing.Rules {
			for _, p := range rule.Paths {
				sync.Routes = append(sync.Routes, controlplane.Route{
					Hostname: rule.Host, Path: p.Path, PathType: p.PathType, ClusterUUID: cluster,
					Namespace: ing.Namespace, ServiceName: p.ServiceName, ServicePort: p.ServicePort,
					IngressName: ing.IngressName, TLS: rule.TLS, Annotations: ing.Annotations,
					PublicEndpoint: req.PublicEndpoint, RoutingMode: mode,
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
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, err, s.log)
		return
	}
	cluster, err := ownCluster(r, req.ClusterUUID)
	if err != nil {
		writeError(w, r, err, s.log)
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

// routingMode checks the mode, defaulting it: direct when the cluster has a
// public endpoint, tunnel otherwise.
func routingMode(mode, publicEndpoint string) (string, error) {
	switch {
	case mode == controlplane.RoutingTunnel:
		return mode, nil
	case mode == controlplane.RoutingDirect && publicEndpoint == "":
		return "", controlplane.Errorf(controlplane.EINVALID, "routing_mode direct needs a public_endpoint")
	case mode == controlplane.RoutingDirect:
		return mode, nil
	case mode != "":
		return "", controlplane.Errorf(controlplane.EINVALID, "routing_mode %q is not tunnel or direct", mode)
	case publicEndpoint != "":
		return controlplane.RoutingDirect, nil
	default:
		return controlplane.RoutingTunnel, nil
	}
}
