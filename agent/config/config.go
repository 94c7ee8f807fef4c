// Package config is the agent's configuration: the PipeOps environment
// variables (so the agent runs unchanged against hosted PipeOps) plus ours,
// each overridable by a flag, validated with errors that name the variable.
package config

import (
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/pipeops/tunnel/shared/envconfig"
)

// Config is everything the agent reads at start. Field comments name the
// environment variable and the flag.
type Config struct {
	APIURL          string        // PIPEOPS_API_URL, --api-url (required): the control plane
	Token           string        // PIPEOPS_TOKEN, --token or PIPEOPS_TOKEN_FILE (required): the agent token
	ClusterName     string        // PIPEOPS_CLUSTER_NAME, --cluster-name
	AgentID         string        // PIPEOPS_AGENT_ID, --agent-id (default: the pod's hostname)
	EnableIngress   bool          // ENABLE_INGRESS_SYNC, --enable-ingress-sync (default true)
	LeaderElection  bool          // ROUTE_SYNC_LEADER_ELECTION (default true): replicas elect the one that syncs routes
	AutoInstall     bool          // PIPEOPS_AUTO_INSTALL_COMPONENTS (accepted; the agent installs nothing itself)
	Kubeconfig      string        // KUBECONFIG, --kubeconfig: out-of-cluster runs; in-cluster config otherwise
	Namespace       string        // POD_NAMESPACE, --namespace: where state is kept (default pipeops-system)
	Instance        string        // POD_NAME (default: the host name): this replica's name to the gateways
	StateFile       string        // AGENT_STATE_FILE, --state-file: out-of-cluster state instead of a ConfigMap
	IngressService  string        // INGRESS_CONTROLLER_SERVICE, --ingress-controller: "namespace/name"
	ListenAddr      string        // AGENT_LISTEN_ADDR, --listen (default :8080): health, metrics, status
	HeartbeatMin    time.Duration // HEARTBEAT_MIN_INTERVAL (default 5s): while things change
	HeartbeatMax    time.Duration // HEARTBEAT_MAX_INTERVAL (default 30s): when steady
	FullSync        time.Duration // ROUTE_FULL_SYNC_INTERVAL (default 4h)
	DrainTimeout    time.Duration // SHUTDOWN_DRAIN_TIMEOUT (default 10s)
	InsecureTLS     bool          // PIPEOPS_INSECURE_SKIP_VERIFY: development only
	Pprof           bool          // AGENT_PPROF: serve /debug/pprof/ on ListenAddr
	KubeAPIOverJSON bool          // AGENT_K8S_API_OVER_JSON: ask the gateway to reach the Kubernetes API with proxy_request (tests of hosted PipeOps' path)
	Impersonate     bool          // AGENT_IMPERSONATE_USERS (default true): run Kubernetes API requests as the person who makes them
	LogLevel        slog.Level    // LOG_LEVEL
	LogFormat       string        // LOG_FORMAT: text or json
	ShowVersionOnly bool          // --version
	Check           bool          // --check: verify the agent's Kubernetes access, print the results and exit
}

// Load reads the environment through getenv, then the flags in args, and
// validates the result.
func Load(args []string, getenv func(string) string) (Config, error) {
	r := envconfig.New(getenv)
	host, _ := os.Hostname()
	c := Config{
		APIURL:          r.String("PIPEOPS_API_URL", ""),
		Token:           r.String("PIPEOPS_TOKEN", ""),
		ClusterName:     r.String("PIPEOPS_CLUSTER_NAME", ""),
		AgentID:         r.String("PIPEOPS_AGENT_ID", host),
		EnableIngress:   r.Bool("ENABLE_INGRESS_SYNC", true),
		LeaderElection:  r.Bool("ROUTE_SYNC_LEADER_ELECTION", true),
		AutoInstall:     r.Bool("PIPEOPS_AUTO_INSTALL_COMPONENTS", false),
		Kubeconfig:      r.String("KUBECONFIG", ""),
		Namespace:       r.String("POD_NAMESPACE", "pipeops-system"),
		Instance:        r.String("POD_NAME", host),
		StateFile:       r.String("AGENT_STATE_FILE", ""),
		IngressService:  r.String("INGRESS_CONTROLLER_SERVICE", ""),
		ListenAddr:      r.String("AGENT_LISTEN_ADDR", ":8080"),
		HeartbeatMin:    r.Duration("HEARTBEAT_MIN_INTERVAL", 5*time.Second),
		HeartbeatMax:    r.Duration("HEARTBEAT_MAX_INTERVAL", 30*time.Second),
		FullSync:        r.Duration("ROUTE_FULL_SYNC_INTERVAL", 4*time.Hour),
		DrainTimeout:    r.Duration("SHUTDOWN_DRAIN_TIMEOUT", 10*time.Second),
		InsecureTLS:     r.Bool("PIPEOPS_INSECURE_SKIP_VERIFY", false),
		Pprof:           r.Bool("AGENT_PPROF", false),
		KubeAPIOverJSON: r.Bool("AGENT_K8S_API_OVER_JSON", false),
		Impersonate:     r.Bool("AGENT_IMPERSONATE_USERS", true),
		LogLevel:        r.LogLevel("LOG_LEVEL", slog.LevelInfo),
		LogFormat:       r.OneOf("LOG_FORMAT", "text", "text", "json"),
	}
	if tok := r.SecretFile("PIPEOPS_TOKEN_FILE"); tok != "" {
		if c.Token != "" {
			r.Failf("PIPEOPS_TOKEN and PIPEOPS_TOKEN_FILE are both set: give the agent token one way")
		}
		c.Token = tok
	}
	if err := r.Err(); err != nil {
		return c, err
	}

	fs := flag.NewFlagSet("pipeops-agent", flag.ContinueOnError)
	fs.StringVar(&c.APIURL, "api-url", c.APIURL, "control plane URL (PIPEOPS_API_URL)")
	fs.StringVar(&c.Token, "token", c.Token, "agent token (PIPEOPS_TOKEN); prefer the environment")
	fs.StringVar(&c.ClusterName, "cluster-name", c.ClusterName, "cluster name (PIPEOPS_CLUSTER_NAME)")
	fs.StringVar(&c.AgentID, "agent-id", c.AgentID, "agent id (PIPEOPS_AGENT_ID)")
	fs.BoolVar(&c.EnableIngress, "enable-ingress-sync", c.EnableIngress, "sync PipeOps-managed Ingresses (ENABLE_INGRESS_SYNC)")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "kubeconfig for out-of-cluster runs (KUBECONFIG)")
	fs.StringVar(&c.Namespace, "namespace", c.Namespace, "namespace for the state ConfigMap and Secret (POD_NAMESPACE)")
	fs.StringVar(&c.StateFile, "state-file", c.StateFile, "keep state in this file instead of the cluster (AGENT_STATE_FILE)")
	fs.StringVar(&c.IngressService, "ingress-controller", c.IngressService, "ingress controller Service as namespace/name (INGRESS_CONTROLLER_SERVICE)")
	fs.StringVar(&c.ListenAddr, "listen", c.ListenAddr, "address of the health, metrics and status server (AGENT_LISTEN_ADDR)")
	fs.BoolVar(&c.ShowVersionOnly, "version", false, "print the version and exit")
	fs.BoolVar(&c.Check, "check", false, "check the agent's Kubernetes permissions, print one line per check and exit (1 if any failed)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.ShowVersionOnly {
		return c, nil
	}
	return c, c.Validate()
}

// Validate checks the configuration; every problem names its variable. In
// check mode the control plane is not contacted, so PIPEOPS_API_URL and
// PIPEOPS_TOKEN may be missing (but a URL that is given must still be one).
func (c Config) Validate() error {
	var errs []string
	if c.APIURL == "" {
		if !c.Check {
			errs = append(errs, "PIPEOPS_API_URL (--api-url) is required: the control plane's URL, e.g. https://api.pipeops.io")
		}
	} else if u, err := url.Parse(c.APIURL); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		errs = append(errs, fmt.Sprintf("PIPEOPS_API_URL=%q is not an http(s) URL", c.APIURL))
	}
	if c.Token == "" && !c.Check {
		errs = append(errs, "PIPEOPS_TOKEN (--token, or a file in PIPEOPS_TOKEN_FILE) is required: the agent token from `pipeops-controlplane cluster create`")
	}
	if c.IngressService != "" && strings.Count(c.IngressService, "/") != 1 {
		errs = append(errs, fmt.Sprintf("INGRESS_CONTROLLER_SERVICE=%q must be namespace/name", c.IngressService))
	}
	if c.HeartbeatMin > c.HeartbeatMax {
		errs = append(errs, "HEARTBEAT_MIN_INTERVAL must not exceed HEARTBEAT_MAX_INTERVAL")
	}
	if c.AgentID == "" {
		errs = append(errs, "PIPEOPS_AGENT_ID is empty and the hostname is unknown")
	}
	if len(errs) > 0 {
		return fmt.Errorf("configuration:\n  %s", strings.Join(errs, "\n  "))
	}
	return nil
}
