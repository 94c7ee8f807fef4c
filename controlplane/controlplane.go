// Package controlplane holds the control plane's domain: clusters, routes
// and tokens, the services that store them, and the one error type every
// layer uses. Implementations live in subpackages (postgres/ for storage,
// http/ for the API); cmd/ wires them.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Error codes. The HTTP layer maps each to one status, in one place.
const (
	EINVALID      = "invalid"      // 400
	EUNAUTHORIZED = "unauthorized" // 401
	EFORBIDDEN    = "forbidden"    // 403
	ENOTFOUND     = "not_found"    // 404
	ECONFLICT     = "conflict"     // 409
	ETOOLARGE     = "too_large"    // 413
	EINTERNAL     = "internal"     // 500
	EUNAVAILABLE  = "unavailable"  // 503
)

// Error is an error meant for the API's caller: Message is safe to show.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf returns an *Error with code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL
// for any other error, and "" for nil.
func ErrorCode(err error) string {
	var e *Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &e):
		return e.Code
	default:
		return EINTERNAL
	}
}

// ErrorMessage returns the caller-safe message of err: the *Error's message,
// or a generic one for internal errors (whose details go to the log only).
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}

// Cluster statuses.
const (
	ClusterPending      = "pending"      // created, agent never connected
	ClusterConnected    = "connected"    // agent heartbeating
	ClusterDisconnected = "disconnected" // agent gone
)

// Routing modes of a cluster's routes.
const (
	RoutingTunnel = "tunnel" // through the agent's yamux tunnel
	RoutingDirect = "direct" // straight to the cluster's public load balancer
)

// IngressController is the in-cluster Service the gateway's tunnel streams
// go to, as the agent reports it in a route sync.
type IngressController struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Port      int    `json:"port"`
	Type      string `json:"type"`
}

// Cluster is a registered Kubernetes cluster. UUID is its identity
// everywhere (the PipeOps protocol's cluster_id and cluster_uuid are both it).
type Cluster struct {
	UUID              string
	Name              string
	Status            string
	AgentID           string
	AgentVersion      string
	K8sVersion        string
	LastHeartbeat     time.Time      // zero: never
	Metadata          map[string]any // the last heartbeat's metadata
	PublicEndpoint    string
	RoutingMode       string
	IngressController *IngressController
	CreatedAt         time.Time
	UpdatedAt         time.Time
}

// Route maps a hostname and path to a Service in a cluster. (Hostname, Path)
// is unique; a hostname belongs to exactly one cluster.
type Route struct {
	Hostname       string            `json:"hostname"`
	Path           string            `json:"path"`
	PathType       string            `json:"path_type"`
	ClusterUUID    string            `json:"cluster_uuid"`
	Namespace      string            `json:"namespace"`
	ServiceName    string            `json:"service_name"`
	ServicePort    int               `json:"service_port"`
	IngressName    string            `json:"ingress_name"`
	TLS            bool              `json:"tls"`
	Annotations    map[string]string `json:"annotations,omitempty"`
	PublicEndpoint string            `json:"public_endpoint,omitempty"`
	RoutingMode    string            `json:"routing_mode"`
	DeploymentID   string            `json:"deployment_id,omitempty"`
	DeploymentName string            `json:"deployment_name,omitempty"`
	UpdatedAt      time.Time         `json:"updated_at"`
	ExpiresAt      time.Time         `json:"expires_at"`
}

// RouteSync replaces one cluster's whole route set (the agent's full sync).
type RouteSync struct {
	ClusterUUID       string
	PublicEndpoint    string
	RoutingMode       string
	IngressController *IngressController
	Routes            []Route
}

// RouteChange is what a route notification carries: which cluster's routes
// changed, and which hostnames (all of the cluster's when empty).
type RouteChange struct {
	ClusterUUID string   `json:"cluster_uuid"`
	Hostnames   []string `json:"hostnames,omitempty"`
}

// RouteNotifyChannel is the PostgreSQL channel route changes are announced on.
const RouteNotifyChannel = "pipeops_routes"

// RouteStore keeps routes. Every change is announced on RouteNotifyChannel
// in the same transaction.
type RouteStore interface {
	// RegisterRoute upserts one route and refreshes its expiry. ECONFLICT when
	// the hostname belongs to another cluster.
	RegisterRoute(ctx context.Context, r Route) error
	// UnregisterRoute deletes the cluster's routes for hostname; ENOTFOUND when
	// the cluster has none (a hostname of another cluster is not touched).
	UnregisterRoute(ctx context.Context, clusterUUID, hostname string) error
	// SyncRoutes atomically replaces the cluster's routes with s.Routes and
	// records its public endpoint, routing mode and ingress controller.
	// ECONFLICT, with nothing applied, when any hostname belongs to another
	// cluster.
	SyncRoutes(ctx context.Context, s RouteSync) error
	// Routes lists routes, of one cluster when clusterUUID is not empty.
	Routes(ctx context.Context, clusterUUID string) ([]Route, error)
	// DeleteExpiredRoutes deletes routes whose expiry is before now.
	DeleteExpiredRoutes(ctx context.Context, now time.Time) (int, error)
}

// ClusterStore keeps clusters.
type ClusterStore interface {
	// CreateCluster creates a cluster in status pending. ECONFLICT when the
	// name is taken.
	CreateCluster(ctx context.Context, name string) (*Cluster, error)
	// Cluster finds a cluster by UUID (ENOTFOUND).
	Cluster(ctx context.Context, uuid string) (*Cluster, error)
	// ClusterByName finds a cluster by name (ENOTFOUND).
	ClusterByName(ctx context.Context, name string) (*Cluster, error)
	Clusters(ctx context.Context) ([]*Cluster, error)
	// UpdateAgent records what a registering agent said about itself.
	UpdateAgent(ctx context.Context, uuid, agentID, agentVersion, k8sVersion string) error
	// RecordHeartbeat stores a heartbeat's status and metadata.
	RecordHeartbeat(ctx context.Context, uuid, status string, metadata map[string]any, at time.Time) error
}

// Token is the record of an issued token (the JWT itself is never stored).
type Token struct {
	ID          string // jti
	Kind        string
	ClusterUUID string   // agent tokens
	Clusters    []string // user tokens
	Subject     string
	IssuedAt    time.Time
	ExpiresAt   time.Time
	RevokedAt   time.Time // zero: not revoked
}

// TokenStore records issued tokens and their revocation.
type TokenStore interface {
	RecordToken(ctx context.Context, t Token) error
	// RevokeToken marks the token revoked (ENOTFOUND for an unknown id).
	RevokeToken(ctx context.Context, id string, at time.Time) error
	// Revoked reports whether id is revoked. An unknown id counts as revoked:
	// every token this control plane issued is recorded.
	Revoked(ctx context.Context, id string) (bool, error)
	Tokens(ctx context.Context, clusterUUID string) ([]Token, error)
}

// SigningKey is the control plane's token signing key, kept in the database
// so that every replica signs with the same key.
type SigningKey struct {
	ID         string // kid
	Algorithm  string // "EdDSA"
	PrivatePEM []byte // PKCS#8
	CreatedAt  time.Time
}

// KeyStore keeps signing keys.
type KeyStore interface {
	// SigningKeys returns all keys, newest first.
	SigningKeys(ctx context.Context) ([]SigningKey, error)
	// AddSigningKey stores a new key.
	AddSigningKey(ctx context.Context, k SigningKey) error
}
