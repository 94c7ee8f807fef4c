// Package controlplane holds the control plane's domain: clusters, routes
// and tokens, the services that store them, and the one error type every
// layer uses. Implementations live in subpackages (postgres/ for storage,
// api/ for the HTTP API, cli/ for the command line); cmd/ wires them.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pipeops/tunnel/shared/auth"
)

// ClusterNamePattern is what a cluster's name must match, whole: a
// DNS-1123 label, because names end up in hostnames and Kubernetes object
// names.
const ClusterNamePattern = `[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?`

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

// ResolveRoutingMode is the one rule for a routing mode: tunnel or direct as
// asked, direct only with a public endpoint to send the traffic to, and,
// when none is asked, direct if there is a public endpoint and tunnel if
// not. A mode it refuses is EINVALID.
func ResolveRoutingMode(mode, publicEndpoint string) (string, error) {
	switch {
	case mode == RoutingTunnel:
		return mode, nil
	case mode == RoutingDirect && publicEndpoint == "":
		return "", Errorf(EINVALID, "routing_mode direct needs a public_endpoint")
	case mode == RoutingDirect:
		return mode, nil
	case mode != "":
		return "", Errorf(EINVALID, "routing_mode %q is not %q or %q", mode, RoutingTunnel, RoutingDirect)
	case publicEndpoint != "":
		return RoutingDirect, nil
	default:
		return RoutingTunnel, nil
	}
}

// Route path types, as in a Kubernetes Ingress.
const (
	PathTypePrefix                 = "Prefix"
	PathTypeExact                  = "Exact"
	PathTypeImplementationSpecific = "ImplementationSpecific"
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
	StatusSince       time.Time // when Status last changed
	Gateway           string    // the GATEWAY_ID of the gateway that holds, or last held, the agent's session
	AgentID           string
	AgentVersion      string
	K8sVersion        string
	LastHeartbeat     time.Time      // zero: never
	Metadata          map[string]any // the last heartbeat's metadata (see HeartbeatRecord)
	AgentInfo         map[string]any // what the agent said of itself when it last registered (see AgentReportOf)
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
	// Pending is true while the route's hostname is not verified for its
	// cluster: the route is stored and not served (see HostnameStore).
	Pending bool `json:"pending_verification,omitempty"`
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

// TunnelNotifyChannel is the PostgreSQL channel on which changes of
// gateways and of the tunnels they hold are announced (no payload: a
// listener reloads what it follows).
const TunnelNotifyChannel = "pipeops_gateway_tunnels"

// GatewayTunnel says that the gateway GatewayID, reachable by its peers at
// PeerURL, holds Sessions agent sessions of cluster ClusterUUID that take
// new streams and Draining sessions of its own shutdown (to use when no
// gateway has others), whose agent serves the Kubernetes API over streams
// (K8sHTTP) and impersonates callers (Impersonates).
type GatewayTunnel struct {
	ClusterUUID string
	GatewayID   string
	PeerURL     string
	Sessions    int
	Draining    int
	// SessionIDs names the Sessions sessions (the gateway's ids for them).
	SessionIDs   []string
	K8sHTTP      bool
	Impersonates bool
}

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

// Hostname is a cluster's claim on a route hostname (a name or "*." and
// one). Its routes are served once it is verified; until then they are
// stored and not served.
type Hostname struct {
	Hostname    string    `json:"hostname"`
	ClusterUUID string    `json:"cluster_uuid"`
	Verified    bool      `json:"verified"`
	VerifiedAt  time.Time `json:"verified_at,omitzero"`
	// VerifiedBy says how: "base domain prod.apps.example.com", "domain
	// grant example.com", "covered by *.example.com", "dns txt", ...
	VerifiedBy string `json:"verified_by,omitempty"`
	// TXTName and TXTValue are the DNS record that verifies a custom
	// domain: TXTName holds a TXT record whose text is TXTValue. Empty when
	// verified.
	TXTName    string    `json:"txt_name,omitempty"`
	TXTValue   string    `json:"txt_value,omitempty"`
	CheckedAt  time.Time `json:"checked_at,omitzero"`   // the last DNS check
	CheckError string    `json:"check_error,omitempty"` // what it found
	CreatedAt  time.Time `json:"created_at"`
}

// DomainGrant is an operator's statement that a cluster owns a domain and
// every name below it, which then need no DNS challenge.
type DomainGrant struct {
	Domain      string    `json:"domain"`
	ClusterUUID string    `json:"cluster_uuid"`
	CreatedAt   time.Time `json:"created_at"`
}

// HostnameStore keeps hostname ownership; the rules are in package
// controlplane/hostnames. Claims are made by RouteStore's RegisterRoute and
// SyncRoutes, which refuse (ECONFLICT, EFORBIDDEN, EINVALID) a name another
// cluster holds or the platform reserves.
type HostnameStore interface {
	// Hostnames lists the claims of a cluster, or of all when clusterUUID
	// is empty, by hostname.
	Hostnames(ctx context.Context, clusterUUID string) ([]Hostname, error)
	// PendingHostnames lists up to limit unverified claims, those checked
	// longest ago first.
	PendingHostnames(ctx context.Context, limit int) ([]Hostname, error)
	// VerifyHostname marks the cluster's claim verified (by says how),
	// unless another cluster verified an overlapping name first
	// (ECONFLICT); other clusters' unverified claims it overlaps are
	// dropped. ENOTFOUND when the cluster has no such claim.
	VerifyHostname(ctx context.Context, clusterUUID, hostname, by string) error
	// RecordHostnameCheck records a failed DNS check's finding.
	RecordHostnameCheck(ctx context.Context, clusterUUID, hostname, finding string) error
	// GrantDomain gives the cluster domain and every name below it.
	GrantDomain(ctx context.Context, clusterUUID, domain string) error
	// RevokeGrant takes a grant back; names verified by it are no longer.
	RevokeGrant(ctx context.Context, domain string) error
	Grants(ctx context.Context) ([]DomainGrant, error)
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
	// UpdateAgent records what a registering agent said about itself,
	// replacing what the previous registration said. ETOOLARGE when
	// r.Info encodes to more than MaxAgentInfoSize.
	UpdateAgent(ctx context.Context, uuid string, r AgentReport) error
	// RecordHeartbeat stores a heartbeat's status and metadata.
	// gateway is the id of the gateway that holds the session; "" keeps
	// the stored one (the control plane's own registration socket).
	RecordHeartbeat(ctx context.Context, uuid, status, gateway string, metadata map[string]any, at time.Time) error
	// DeleteCluster deletes a cluster and, in the same transaction,
	// everything that lets anyone reach it: its routes and hostname claims
	// (announced on RouteNotifyChannel as an unregister is, so that every
	// gateway stops serving those hosts at once), its domain grants, its
	// agent tokens and the user tokens that name no other cluster. The
	// connections such tokens hold (registration sockets, gateway sessions,
	// Kubernetes API streams) are cut by their servers' revocation checks;
	// an agent coming back is refused. Audit records are history and stay.
	// ENOTFOUND for an unknown cluster, including one already deleted.
	DeleteCluster(ctx context.Context, uuid string) (ClusterDeletion, error)
}

// ClusterDeletion is what DeleteCluster removed.
type ClusterDeletion struct {
	UUID string
	Name string
	// Routes is the number of routes deleted, served or pending.
	Routes int
	// Hostnames are the hostname claims released, sorted: other clusters
	// may claim them now.
	Hostnames []string
	// Grants are the domain grants released, sorted.
	Grants []string
	// TokensRevoked counts the tokens that reached the cluster and no
	// longer work: agent tokens (whose records go with the cluster, and a
	// token without a record is refused) and user tokens naming only this
	// cluster (kept, marked revoked). Tokens already revoked are not
	// counted. A user token that also names other clusters keeps working
	// for them; the deleted cluster's id in it matches nothing again, as
	// cluster ids are random UUIDs that are never reused.
	TokensRevoked int
}

// Token is the record of an issued token (the JWT itself is never stored).
type Token struct {
	ID          string // jti
	Issuer      string // iss; "" for tokens issued before it was recorded
	Kind        string
	ClusterUUID string   // agent tokens
	Clusters    []string // user tokens
	Subject     string   // sub: the person of a user or admin token; a label on agent tokens
	Groups      []string // the groups of that person (user and admin tokens)
	IssuedAt    time.Time
	ExpiresAt   time.Time
	RevokedAt   time.Time // zero: not revoked
}

// AuthRecord is the record in the form verifiers hold tokens to.
func (t Token) AuthRecord() *auth.Record {
	return &auth.Record{
		Issuer: t.Issuer, Kind: auth.Kind(t.Kind), ClusterID: t.ClusterUUID, Clusters: t.Clusters,
		Subject: t.Subject, Groups: t.Groups, ExpiresAt: t.ExpiresAt, Revoked: !t.RevokedAt.IsZero(),
	}
}

// TokenRecords adapts a TokenStore to auth.RecordSource, reading the store
// on every call.
type TokenRecords struct{ Store TokenStore }

// TokenRecord implements auth.RecordSource.
func (r TokenRecords) TokenRecord(ctx context.Context, id string) (*auth.Record, error) {
	t, err := r.Store.Token(ctx, id)
	if ErrorCode(err) == ENOTFOUND {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return t.AuthRecord(), nil
}

// TokenStore records issued tokens and their revocation.
type TokenStore interface {
	RecordToken(ctx context.Context, t Token) error
	// RevokeToken marks the token revoked (ENOTFOUND for an unknown id).
	RevokeToken(ctx context.Context, id string, at time.Time) error
	// Revoked reports whether id is revoked. An unknown id counts as revoked:
	// every token this control plane issued is recorded.
	Revoked(ctx context.Context, id string) (bool, error)
	// Token returns a token's record (ENOTFOUND for an unknown id).
	Token(ctx context.Context, id string) (Token, error)
	Tokens(ctx context.Context, clusterUUID string) ([]Token, error)
}

// SigningKey is a token signing key, kept in the database so that every
// replica signs with the same key. The private key is stored sealed under a
// key-encryption key (see package keyseal) that the database never sees;
// PrivatePEM is the plaintext form keys had before sealing was introduced,
// which the first start with a KEK seals.
type SigningKey struct {
	ID         string // kid
	Algorithm  string // "EdDSA"
	Sealed     []byte // the PKCS#8 private key sealed under KEKID, bound to ID
	KEKID      string // the key-encryption key that sealed it
	PrivatePEM []byte // legacy plaintext PKCS#8; empty once sealed
	CreatedAt  time.Time
}

// Reseal is one key's change of stored form, from Was (the key as read) to
// Sealed under KEKID.
type Reseal struct {
	Was    SigningKey
	Sealed []byte
	KEKID  string
}

// KeyStore keeps signing keys. The newest key signs; all of them verify
// (and are served in the JWKS) until retired.
type KeyStore interface {
	// SigningKeys returns all keys, newest first.
	SigningKeys(ctx context.Context) ([]SigningKey, error)
	// AddSigningKey stores a new sealed key (EINVALID for a plaintext one;
	// ECONFLICT when the id exists).
	AddSigningKey(ctx context.Context, k SigningKey) error
	// ResealSigningKeys stores the new sealed forms of keys, all or none:
	// ECONFLICT, with nothing changed, when any key's stored form is no
	// longer what Was says (another process resealed or retired it).
	ResealSigningKeys(ctx context.Context, rs []Reseal) error
	// RetireSigningKey deletes a key, so that tokens it signed no longer
	// verify. ENOTFOUND for an unknown id; EINVALID for the newest key,
	// which is the one signing.
	RetireSigningKey(ctx context.Context, id string) error
}
