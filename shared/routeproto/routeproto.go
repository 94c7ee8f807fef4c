// Package routeproto holds the JSON bodies of the PipeOps routes API
// (POST /api/v1/gateway/routes/{register,sync,unregister}), which the agent
// sends and the control plane receives. The field names are the protocol's;
// they are stated here once for both sides.
package routeproto

// Paths of the routes API.
const (
	RegisterURLPath   = "/api/v1/gateway/routes/register"
	SyncURLPath       = "/api/v1/gateway/routes/sync"
	UnregisterURLPath = "/api/v1/gateway/routes/unregister"
)

// RegisterRequest registers one route.
type RegisterRequest struct {
	Hostname       string            `json:"hostname"`
	ClusterUUID    string            `json:"cluster_uuid"`
	Namespace      string            `json:"namespace"`
	ServiceName    string            `json:"service_name"`
	ServicePort    int               `json:"service_port"`
	IngressName    string            `json:"ingress_name"`
	Path           string            `json:"path"`
	PathType       string            `json:"path_type"`
	TLS            bool              `json:"tls"`
	Annotations    map[string]string `json:"annotations"`
	PublicEndpoint string            `json:"public_endpoint"`
	RoutingMode    string            `json:"routing_mode"`
	DeploymentID   string            `json:"deployment_id"`
	DeploymentName string            `json:"deployment_name"`
}

// UnregisterRequest removes a hostname's routes.
type UnregisterRequest struct {
	Hostname    string `json:"hostname"`
	ClusterUUID string `json:"cluster_uuid"`
}

// IngressController is the in-cluster Service tunnel-mode traffic goes to.
type IngressController struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Port      int    `json:"port"`
	Type      string `json:"type"`
}

// SyncRequest replaces a cluster's whole route set.
type SyncRequest struct {
	ClusterUUID       string             `json:"cluster_uuid"`
	PublicEndpoint    string             `json:"public_endpoint"`
	RoutingMode       string             `json:"routing_mode"`
	IngressController *IngressController `json:"ingress_controller"`
	Ingresses         []SyncIngress      `json:"ingresses"`
}

// SyncIngress is one Ingress of a sync.
type SyncIngress struct {
	Namespace   string            `json:"namespace"`
	IngressName string            `json:"ingress_name"`
	Annotations map[string]string `json:"annotations"`
	Rules       []SyncRule        `json:"rules"`
}

// SyncRule is one host of an Ingress.
type SyncRule struct {
	Host  string     `json:"host"`
	TLS   bool       `json:"tls"`
	Paths []SyncPath `json:"paths"`
}

// SyncPath is one path of a host.
type SyncPath struct {
	Path        string `json:"path"`
	PathType    string `json:"path_type"`
	ServiceName string `json:"service_name"`
	ServicePort int    `json:"service_port"`
}
