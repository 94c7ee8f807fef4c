package api

import (
	"context"
	"errors"
	"net/http"
	"slices"

	"github.com/go-chi/chi/v5"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/hostnames"
	"github.com/pipeops/tunnel/shared/auth"
)

// pendingView tells an agent (or an operator) how to verify a hostname:
// publish a TXT record named TXTName holding TXTValue.
type pendingView struct {
	Hostname   string `json:"hostname"`
	TXTName    string `json:"txt_name"`
	TXTValue   string `json:"txt_value"`
	CheckError string `json:"check_error,omitempty"`
}

// pendingAmong returns the cluster's unverified claims among hosts (as the
// agent wrote them; normalised here), sorted by hostname.
func (s *Server) pendingAmong(ctx context.Context, cluster string, hosts []string) ([]pendingView, error) {
	want := map[string]bool{}
	for _, h := range hosts {
		if n, err := hostnames.Normalize(h); err == nil {
			want[n] = true
		}
	}
	all, err := s.hostnames.Hostnames(ctx, cluster)
	if err != nil {
		return nil, err
	}
	out := []pendingView{}
	for _, h := range all {
		if !h.Verified && want[h.Hostname] {
			out = append(out, pendingView{Hostname: h.Hostname, TXTName: h.TXTName, TXTValue: h.TXTValue, CheckError: h.CheckError})
		}
	}
	return out, nil
}

type verifyRequest struct {
	Hostname    string `json:"hostname"`
	ClusterUUID string `json:"cluster_uuid,omitempty"`
	// Cluster is the admin's way to name the cluster (id or name).
	Cluster string `json:"cluster,omitempty"`
}

type verifyResult struct {
	Hostname string `json:"hostname"`
	Verified bool   `json:"verified"`
	// Finding says why not, when not: the TXT record is missing, holds
	// another value, or the look-up failed.
	Finding  string `json:"finding,omitempty"`
	TXTName  string `json:"txt_name,omitempty"`
	TXTValue string `json:"txt_value,omitempty"`
}

// verifyHostname checks a pending hostname's TXT record now, for the agent
// that claimed it (agent token) or for an operator (admin token, naming the
// cluster), instead of waiting for the next round of checks.
func (s *Server) verifyHostname(w http.ResponseWriter, r *http.Request) {
	var req verifyRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, err, s.log)
		return
	}
	cluster, err := s.requestCluster(r, req)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	h, err := hostnames.Normalize(req.Hostname)
	if err != nil {
		writeError(w, r, controlplane.Errorf(controlplane.EINVALID, "%s", err.Error()), nil)
		return
	}
	all, err := s.hostnames.Hostnames(r.Context(), cluster)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	i := slices.IndexFunc(all, func(c controlplane.Hostname) bool { return c.Hostname == h })
	if i < 0 {
		writeError(w, r, controlplane.Errorf(controlplane.ENOTFOUND, "this cluster has no route for %s: register one first", h), nil)
		return
	}
	claim := all[i]
	res := verifyResult{Hostname: h, Verified: claim.Verified}
	if !claim.Verified {
		err := s.dns.Check(r.Context(), claim)
		switch {
		case err == nil:
			res.Verified = true
		case errors.Is(err, hostnames.ErrNoRecord) || controlplane.ErrorCode(err) == controlplane.EINTERNAL:
			res.Finding, res.TXTName, res.TXTValue = err.Error(), claim.TXTName, claim.TXTValue
		default:
			writeError(w, r, err, s.log)
			return
		}
	}
	writeJSON(w, http.StatusOK, res)
}

// requestCluster is the cluster a verify request acts on: the agent token's
// own, or the one an admin names.
func (s *Server) requestCluster(r *http.Request, req verifyRequest) (string, error) {
	claims := claimsFrom(r.Context())
	if claims.Kind != auth.KindAdmin {
		return ownCluster(r, req.ClusterUUID)
	}
	ref := req.Cluster
	if ref == "" {
		ref = req.ClusterUUID
	}
	if ref == "" {
		return "", controlplane.Errorf(controlplane.EINVALID, "cluster is required")
	}
	c, err := s.findCluster(r.Context(), ref)
	if err != nil {
		return "", err
	}
	return c.UUID, nil
}

func (s *Server) listHostnames(w http.ResponseWriter, r *http.Request) {
	cluster, err := s.clusterQuery(r)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	hs, err := s.hostnames.Hostnames(r.Context(), cluster)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	if hs == nil {
		hs = []controlplane.Hostname{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"hostnames": hs})
}

type grantRequest struct {
	Cluster string `json:"cluster"` // id or name
	Domain  string `json:"domain"`
}

func (s *Server) grantDomain(w http.ResponseWriter, r *http.Request) {
	var req grantRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, err, s.log)
		return
	}
	if req.Cluster == "" || req.Domain == "" {
		writeError(w, r, controlplane.Errorf(controlplane.EINVALID, "cluster and domain are required"), nil)
		return
	}
	c, err := s.findCluster(r.Context(), req.Cluster)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	if err := s.hostnames.GrantDomain(r.Context(), c.UUID, req.Domain); err != nil {
		writeError(w, r, err, s.log)
		return
	}
	s.logAction(r, "domain granted", "domain", req.Domain, "cluster", c.UUID, "name", c.Name)
	writeJSON(w, http.StatusOK, map[string]any{"status": "granted", "domain": req.Domain, "cluster_uuid": c.UUID})
}

func (s *Server) listGrants(w http.ResponseWriter, r *http.Request) {
	gs, err := s.hostnames.Grants(r.Context())
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	if gs == nil {
		gs = []controlplane.DomainGrant{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"grants": gs})
}

func (s *Server) revokeGrant(w http.ResponseWriter, r *http.Request) {
	d := chi.URLParam(r, "domain")
	if err := s.hostnames.RevokeGrant(r.Context(), d); err != nil {
		writeError(w, r, err, s.log)
		return
	}
	s.logAction(r, "domain grant revoked", "domain", d)
	writeJSON(w, http.StatusOK, map[string]any{"status": "revoked", "domain": d})
}
