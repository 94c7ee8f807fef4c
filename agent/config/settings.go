package config

import "github.com/pipeops/tunnel/shared/settings"

// Settings lists every variable Load reads, with its flag and default:
// `pipeops-agent --help` prints it and defines the flags from it, and
// tests hold it to Load and to docs/agent.md.
var Settings = settings.Table{
	{Env: "PIPEOPS_API_URL", Flag: "api-url", Note: "(required)", Help: "the control plane's URL, e.g. https://api.pipeops.io"},
	{Env: "PIPEOPS_TOKEN", Flag: "token", Note: "(required)", Help: "the agent token from `pipeops-controlplane cluster create`; prefer the environment (or a Secret) to the flag, which other users can see"},
	{Env: "PIPEOPS_TOKEN_FILE", Help: "a file holding the agent token instead (a compose secret or a mounted Secret), mode 0640 or stricter; not with PIPEOPS_TOKEN"},
	{Env: "PIPEOPS_CLUSTER_NAME", Flag: "cluster-name", Help: "the name the cluster registers with"},
	{Env: "PIPEOPS_AGENT_ID", Flag: "agent-id", Note: "the pod's hostname", Help: "the agent's id"},
	{Env: "ENABLE_INGRESS_SYNC", Flag: "enable-ingress-sync", Kind: settings.Bool, Default: "true", Help: "sync PipeOps-managed Ingresses to the gateway; false serves only the Kubernetes API"},
	{Env: "PIPEOPS_AUTO_INSTALL_COMPONENTS", Kind: settings.Bool, Default: "false", Help: "accepted for compatibility with hosted PipeOps; the agent installs nothing"},
	{Env: "KUBECONFIG", Flag: "kubeconfig", Note: "in-cluster", Help: "kubeconfig for runs outside a cluster"},
	{Env: "POD_NAME", Note: "the host name", Help: "this replica's name (the pod's): gateways hold each replica's tunnel, and a restarted replica replaces only its own"},
	{Env: "POD_NAMESPACE", Flag: "namespace", Default: "pipeops-system", Help: "namespace of the state ConfigMap"},
	{Env: "AGENT_STATE_FILE", Flag: "state-file", Help: "keep state in this file instead of the cluster"},
	{Env: "INGRESS_CONTROLLER_SERVICE", Flag: "ingress-controller", Note: "well-known names", Help: "the ingress controller Service as namespace/name"},
	{Env: "AGENT_LISTEN_ADDR", Flag: "listen", Default: ":8080", Help: "address of the health, metrics and status server"},
	{Env: "HEARTBEAT_MIN_INTERVAL", Kind: settings.Duration, Default: "5s", Help: "heartbeat interval after a (re)connect or a change"},
	{Env: "HEARTBEAT_MAX_INTERVAL", Kind: settings.Duration, Default: "30s", Help: "heartbeat interval while nothing changes"},
	{Env: "ROUTE_SYNC_LEADER_ELECTION", Kind: settings.Bool, Default: "true", Help: "replicas of the agent elect, with the Lease pipeops-agent-route-sync, the one that syncs routes; false: every replica syncs"},
	{Env: "ROUTE_FULL_SYNC_INTERVAL", Kind: settings.Duration, Default: "4h", Help: "how often every route is synced in full"},
	{Env: "SHUTDOWN_DRAIN_TIMEOUT", Kind: settings.Duration, Default: "10s", Help: "how long open streams get after the first signal"},
	{Env: "PIPEOPS_INSECURE_SKIP_VERIFY", Kind: settings.Bool, Default: "false", Help: "skip TLS certificate verification; development only"},
	{Env: "AGENT_PPROF", Kind: settings.Bool, Default: "false", Help: "serve /debug/pprof/ on the agent's listen address"},
	{Env: "AGENT_K8S_API_OVER_JSON", Kind: settings.Bool, Default: "false", Help: "have the gateway reach the Kubernetes API with proxy_request messages, the path hosted PipeOps uses (tests of that path)"},
	{Env: "AGENT_IMPERSONATE_USERS", Kind: settings.Bool, Default: "true", Help: "run Kubernetes API requests as the person who makes them; false runs them as the agent's ServiceAccount (required against hosted PipeOps)"},
	{Env: "LOG_LEVEL", Default: "info", Help: "debug, info, warn or error"},
	{Env: "LOG_FORMAT", Default: "text", Help: "text or json"},
}
