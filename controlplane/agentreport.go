package controlplane

import (
	"encoding/json"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/pipeops/tunnel/shared/tunnel"
)

// MaxAgentInfoSize bounds the JSON encoding of a cluster's AgentInfo, in
// bytes. A register message may be up to tunnel.MaxMessageSize; the store
// keeps at most this much of it, so that an agent cannot fill the cluster
// row (and every listing that reads it) with a megabyte of labels.
const MaxAgentInfoSize = 64 << 10

// MaxAgentText bounds each string of an agent's report (register or
// heartbeat) that is stored: versions, names and URLs are short, and an
// agent that sends more gets it cut on a character boundary.
const MaxAgentText = 256

// AgentReport is what a registering agent said about itself, as stored.
type AgentReport struct {
	AgentID      string
	AgentVersion string
	K8sVersion   string
	// Info is the rest of the register payload worth keeping (see
	// AgentReportOf); its JSON encoding is at most MaxAgentInfoSize.
	Info map[string]any
}

// agentInfoMaps are the free-form objects of a register, in the order
// they are given up when the report is too large: the largest goes first,
// and of equal sizes the one listed first.
var agentInfoMaps = []string{"metadata", "labels", "server_specs", "tunnel_port_config", "features"}

// AgentReportOf returns what the store keeps of a register payload: the
// agent's id and versions, and in Info its name, hostname, server_ip,
// region and cloud_provider (each cut to MaxAgentText bytes, left out when
// empty) and its labels, metadata, features, tunnel_port_config and
// server_specs as sent (left out when empty).
//
// When Info would encode to more than MaxAgentInfoSize, whole free-form
// objects are left out, largest first, until it fits; their names are
// returned in dropped and recorded in Info under "dropped_fields", so the
// operator sees that something was not kept. The agent stays registered:
// refusing would leave a PipeOps agent waiting for an answer it never gets.
//
// The Kubernetes service token a PipeOps agent offers is never part of the
// report: the agent reaches its API with its own credentials, and a store
// that holds no token cannot leak one.
func AgentReportOf(p tunnel.Register) (r AgentReport, dropped []string) {
	r = AgentReport{
		AgentID:      AgentText(p.AgentID),
		AgentVersion: AgentText(p.AgentVersion),
		K8sVersion:   AgentText(p.K8sVersion),
		Info:         map[string]any{},
	}
	for _, f := range []struct{ key, value string }{
		{"name", p.Name}, {"hostname", p.Hostname}, {"server_ip", p.ServerIP},
		{"region", p.Region}, {"cloud_provider", p.CloudProvider},
	} {
		if f.value != "" {
			r.Info[f.key] = AgentText(f.value)
		}
	}
	objects := map[string]any{}
	if len(p.Labels) > 0 {
		objects["labels"] = storable(p.Labels, 0)
	}
	for key, m := range map[string]map[string]any{
		"metadata": p.Metadata, "features": p.Features,
		"tunnel_port_config": p.TunnelPortConfig, "server_specs": p.ServerSpecs,
	} {
		if len(m) > 0 {
			objects[key] = storable(m, 0)
		}
	}
	sizes := map[string]int{}
	for key, v := range objects {
		sizes[key] = encodedSize(v)
		r.Info[key] = v
	}
	// Room for "dropped_fields" and the names in it.
	const droppedOverhead = 128
	for encodedSize(r.Info) > MaxAgentInfoSize-droppedOverhead {
		key := ""
		for _, k := range agentInfoMaps {
			if _, ok := r.Info[k]; ok && (key == "" || sizes[k] > sizes[key]) {
				key = k
			}
		}
		if key == "" {
			break // only the short strings are left, which always fit
		}
		delete(r.Info, key)
		dropped = append(dropped, key)
	}
	if len(dropped) > 0 {
		slices.Sort(dropped)
		r.Info["dropped_fields"] = dropped
	}
	return r, dropped
}

// AgentInfoSize is the size of info's JSON encoding, which the store
// bounds by MaxAgentInfoSize. A value JSON cannot encode counts as too
// large.
func AgentInfoSize(info map[string]any) int { return encodedSize(info) }

func encodedSize(v any) int {
	b, err := json.Marshal(v)
	if err != nil {
		return MaxAgentInfoSize + 1
	}
	return len(b)
}

// HeartbeatRecord is what the store keeps of a heartbeat: the cluster's
// status (disconnected when the agent says so, else connected) and the
// metadata map. The control plane's registration socket and the gateway
// both store heartbeats through it, so that a cluster looks the same
// whichever of the two its agent last spoke to.
//
// The metadata holds the heartbeat's counts and usages (a usage as its
// string, "12.5%" or "unavailable"), its strings cut to MaxAgentText
// bytes, tunnel_status normalised (tunnel.NormalTunnelStatus) so that no
// free text of the agent's is kept there, and, when the agent reported its
// monitoring stack, "monitoring": its URLs, user names and TLS flags
// (tunnel.Monitoring.Public). Monitoring passwords and the k3s join token
// are never stored; only that a password was sent is.
func HeartbeatRecord(hb tunnel.Heartbeat) (status string, meta map[string]any) {
	status = ClusterConnected
	if hb.Status == tunnel.StatusDisconnected {
		status = ClusterDisconnected
	}
	m := hb.Metadata
	meta = map[string]any{
		"k8s_nodes":      m.K8sNodes,
		"k8s_pods":       m.K8sPods,
		"cpu_usage":      m.CPUUsage.String(),
		"memory_usage":   m.MemoryUsage.String(),
		"is_private":     m.IsPrivate,
		"gateway_routes": m.GatewayRoutes,
		"agent_version":  AgentText(m.AgentVersion),
		"k8s_version":    AgentText(m.K8sVersion),
		"tunnel_status":  tunnel.NormalTunnelStatus(hb.TunnelStatus),
	}
	if mon := hb.Monitoring.Public(); len(mon) > 0 {
		for k, v := range mon {
			if s, ok := v.(string); ok {
				mon[k] = AgentText(s)
			}
		}
		meta["monitoring"] = mon
	}
	return status, meta
}

// AgentText is the form in which a string an agent sent is stored: NUL
// characters and invalid UTF-8, which PostgreSQL's text and jsonb refuse,
// replaced by U+FFFD, and the result cut to at most MaxAgentText bytes on a
// character boundary.
func AgentText(s string) string {
	s = strings.ToValidUTF8(noNUL(s), "\uFFFD")
	if len(s) <= MaxAgentText {
		return s
	}
	n := MaxAgentText
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func noNUL(s string) string {
	if strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

// storable returns a copy of v, a value decoded from JSON, with noNUL
// applied to every string and key in it (JSON encoding mends invalid
// UTF-8 itself). What is nested deeper than maxJSONDepth is left out: the
// JSON decoder allows 10000 levels, no agent report needs more than a few.
func storable(v any, depth int) any {
	if depth > maxJSONDepth {
		return nil
	}
	switch v := v.(type) {
	case string:
		return noNUL(v)
	case map[string]string:
		out := make(map[string]string, len(v))
		for k, s := range v {
			out[noNUL(k)] = noNUL(s)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[noNUL(k)] = storable(e, depth+1)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = storable(e, depth+1)
		}
		return out
	}
	return v
}

// maxJSONDepth is how deep storable follows a free-form object.
const maxJSONDepth = 32
