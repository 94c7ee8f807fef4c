package tunnel

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// RegistrationPath is the path of the registration socket, relative to the
// control plane's API URL.
const RegistrationPath = "/api/v1/clusters/agent/ws"

// GatewayPath is the gateway socket's path when gateway_ws_url has none.
const GatewayPath = "/ws"

// ErrInvalidURL means a URL handed to RegistrationURL or GatewayURL cannot
// be turned into a WebSocket URL.
var ErrInvalidURL = errors.New("tunnel: invalid URL")

// RegistrationURL returns the registration socket URL for the control plane
// at apiURL: the scheme becomes ws or wss (from http or https) and
// RegistrationPath is appended to any path apiURL already has.
func RegistrationURL(apiURL string) (string, error) {
	u, err := websocketURL(apiURL)
	if err != nil {
		return "", err
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + RegistrationPath
	u.RawPath = ""
	return u.String(), nil
}

// CapabilityK8sHTTP is the gateway socket query flag with which our agent
// says it serves plain HTTP/1.1 on Kubernetes API streams and sends each
// request on with its own credentials. PipeOps agents do not send it: they
// relay those streams as raw TCP to the API server's TLS port and reach the
// API with their own credentials only through proxy_request messages, which
// is how a gateway must reach the API of a cluster whose agent lacks it.
// Hosted PipeOps ignores query parameters it does not know.
const CapabilityK8sHTTP = "supports_k8s_http"

// CapabilityImpersonation is the gateway socket query flag with which our
// agent says it runs each Kubernetes API request as the person who makes
// it: the gateway must then send the caller's token, as it verified it, in
// IdentityHeader, and the agent verifies that token again against the
// control plane's keys before it impersonates the person the token names.
// Without the flag the gateway sends no token: the agent acts as itself.
const CapabilityImpersonation = "impersonates_users"

// AgentInstanceParam is the gateway socket query parameter with which our
// agent names its replica (its pod). A gateway keeps one session per
// cluster and instance: a reconnect of the same replica replaces its old
// session, while replicas of one cluster are held side by side and share
// its streams. PipeOps agents do not send it and get one session per
// cluster, as before. Hosted PipeOps ignores it.
const AgentInstanceParam = "agent_instance"

// MaxAgentInstanceLen bounds AgentInstanceParam (a pod name is at most 253
// bytes).
const MaxAgentInstanceLen = 253

// IdentityHeader is the request header in which the gateway hands the agent
// the caller's token on a Kubernetes API request, when the agent announced
// CapabilityImpersonation. The gateway removes it from every request that
// arrives from outside before it sets it; the agent removes it from every
// request before anything goes on to the API server.
const IdentityHeader = "Pipeops-Identity-Token"

// GatewayURL returns the gateway socket URL built from the gateway_ws_url of
// a register_success: http and https become ws and wss, an empty path
// becomes GatewayPath, and the query carries the cluster UUID, the agent
// version and the capability flags: the PipeOps ones and
// CapabilityK8sHTTP. Query parameters already in gatewayWSURL are kept
// unless they collide with those.
func GatewayURL(gatewayWSURL, clusterUUID, agentVersion string) (string, error) {
	if clusterUUID == "" {
		return "", fmt.Errorf("%w: empty cluster uuid", ErrInvalidURL)
	}
	u, err := websocketURL(gatewayWSURL)
	if err != nil {
		return "", err
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = GatewayPath
		u.RawPath = ""
	}
	q := u.Query()
	q.Set("cluster_uuid", clusterUUID)
	q.Set("agent_version", agentVersion)
	for _, flag := range [...]string{
		"supports_yamux",
		"supports_streaming",
		"supports_binary",
		"supports_websocket",
		"supports_response_streaming",
		CapabilityK8sHTTP,
	} {
		q.Set(flag, "true")
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func websocketURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the input, which may hold credentials.
		return nil, fmt.Errorf("%w: cannot parse", ErrInvalidURL)
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "ws":
		u.Scheme = "ws"
	case "https", "wss":
		u.Scheme = "wss"
	default:
		return nil, fmt.Errorf("%w: scheme %q, want http, https, ws or wss", ErrInvalidURL, u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%w: no host", ErrInvalidURL)
	}
	u.Fragment, u.RawFragment = "", ""
	return u, nil
}
