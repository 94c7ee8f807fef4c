package server

import (
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pipeops/tunnel/gateway/audit"
	"github.com/pipeops/tunnel/gateway/peers"
	"github.com/pipeops/tunnel/gateway/routetable"
	"github.com/pipeops/tunnel/gateway/session"
	"github.com/pipeops/tunnel/gateway/traffic"
	"github.com/pipeops/tunnel/shared/envconfig"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// Defaults of the limits (see the Limits section of docs/gateway.md).
const (
	// DefaultMaxRequestBody is large enough for the uploads web applications
	// take (media, archives, disk images in pieces) and still bounds what
	// one request can push through a tunnel. A route lowers it with an
	// annotation; an operator raises it, or sets 0 for no limit.
	DefaultMaxRequestBody = 1 << 30
	// DefaultMaxHeaderBytes is net/http's own default, made explicit.
	DefaultMaxHeaderBytes = 1 << 20
	minMaxHeaderBytes     = 4 << 10 // less refuses ordinary requests with a few cookies
	maxMaxHeaderBytes     = 1 << 30
	// maxStreamWindow keeps a yamux frame (a 12-byte header and up to a
	// window of data) within the 64 MiB WebSocket message limit of both ends.
	maxStreamWindow = 64<<20 - 12
	// maxAuditQueue bounds the memory audit entries waiting for the
	// database can take (an entry is up to a few KiB).
	maxAuditQueue = 1_000_000
)

// Config is the gateway's configuration, read from the environment. Every
// variable is documented in docs/gateway.md.
type Config struct {
	DatabaseURL     string   // DATABASE_URL (required)
	ControlPlaneURL string   // CONTROLPLANE_URL (required): where the JWKS is
	HTTPAddr        string   // HTTP_ADDR, default :8080
	HTTPSAddr       string   // HTTPS_ADDR, empty: no HTTPS listener
	AdminAddr       string   // ADMIN_ADDR, default 127.0.0.1:9090 (healthz, readyz, metrics)
	GatewayHosts    []string // GATEWAY_HOSTS: hosts that serve /ws and /k8s/
	GatewayID       string   // GATEWAY_ID, default the host name: names this gateway in the clusters it holds
	// PeerAddr (PEER_ADDR) is where this gateway's peer listener listens:
	// the other gateways sharing the database forward the streams of the
	// clusters it holds there. Empty: a single gateway, nothing forwarded.
	PeerAddr string
	// PeerURL (PEER_URL) is where the other gateways reach PeerAddr,
	// http://host:port (default http://GATEWAY_ID:port of PEER_ADDR).
	PeerURL string
	// PeerSecret (PEER_SECRET_FILE) signs the peer links; every gateway
	// has the same.
	PeerSecret    string
	TLSCertDir    string // TLS_CERT_DIR: HOST.crt + HOST.key per hostname
	TLSCertFile   string // TLS_CERT_FILE + TLS_KEY_FILE: the default certificate
	TLSKeyFile    string
	TLSSelfSigned bool // TLS_SELF_SIGNED: make a development certificate when none is given
	RedirectHTTPS bool // HTTP_REDIRECT_HTTPS: answer plain HTTP with a redirect
	// K8sPlainHTTP (K8S_ALLOW_PLAIN_HTTP) lets /k8s/ answer on the plain
	// HTTP listener. Off, it answers there with 403 before it reads the
	// token, which would have crossed the network in the clear. Only for a
	// gateway behind a proxy that terminates TLS for it.
	K8sPlainHTTP bool
	// K8sAPIDomain (K8S_API_DOMAIN) gives each cluster's Kubernetes API a
	// host name of its own, {cluster}.{K8sAPIDomain} (the cluster's name or
	// id), that serves the API with no path prefix, so that every absolute
	// path kubectl sends (get --raw /version) reaches it. Empty: only
	// /k8s/{cluster}/ on the gateway hosts.
	K8sAPIDomain    string
	ACME            bool          // ACME: get certificates for routed hosts from an ACME CA
	ACMEEmail       string        // ACME_EMAIL: contact for the CA
	ACMECacheDir    string        // ACME_CACHE_DIR: where certificates and the account key are kept
	ACMEDirectory   string        // ACME_DIRECTORY_URL: the CA (default Let's Encrypt production)
	ACMECAFile      string        // ACME_CA_FILE: PEM roots that verify the CA's HTTPS (a private CA)
	ACMERenewBefore time.Duration // ACME_RENEW_BEFORE: renew this long before expiry (0: a third of the lifetime, at most 30 days)
	HeaderTimeout   time.Duration // RESPONSE_HEADER_TIMEOUT, default 60s
	IdleTimeout     time.Duration // IDLE_TIMEOUT (visitor keep-alive), default 120s
	ShutdownTimeout time.Duration // SHUTDOWN_TIMEOUT, default 30s
	// UpgradeDrain (UPGRADE_DRAIN_TIMEOUT, default 5s or SHUTDOWN_TIMEOUT if
	// shorter, at most SHUTDOWN_TIMEOUT) is how long a draining gateway lets upgraded
	// connections (WebSockets) run before it closes them: they cannot move
	// to another gateway and seldom end on their own, while requests get
	// all of SHUTDOWN_TIMEOUT.
	UpgradeDrain   time.Duration
	ReloadInterval time.Duration // ROUTE_RELOAD_INTERVAL, default 5m
	RevokeInterval time.Duration // REVOCATION_CHECK_INTERVAL, default 15s
	StreamWindow   uint32        // STREAM_WINDOW bytes, default 4 MiB: the gateway's own receive window
	AgentWindow    uint32        // AGENT_STREAM_WINDOW bytes, default 16 MiB: the window announced to agents
	MaxRequestBody int64         // MAX_REQUEST_BODY bytes, default 1 GiB; 0: no limit
	MaxHeaderBytes int           // MAX_HEADER_BYTES, default 1 MiB
	MaxStreams     int           // MAX_STREAMS_PER_SESSION, default 10000
	AuditRetention time.Duration // AUDIT_RETENTION, default 720h: how long Kubernetes API audit entries are kept
	AuditMaxRows   int64         // AUDIT_MAX_ROWS, default 1000000: audit entries kept at most (all gateways together)
	AuditQueue     int           // AUDIT_QUEUE, default 10000: audit entries waiting for the database at most
	TrafficMaxAge  time.Duration // TRAFFIC_RETENTION, default 24h: how long the per-minute public traffic figures are kept
	LogLevel       slog.Level    // LOG_LEVEL
	LogFormat      string        // LOG_FORMAT: text or json
}

// maxRenewBefore is autocert's own cap on Manager.RenewBefore: a larger
// value would be silently cut to it.
const maxRenewBefore = 30 * 24 * time.Hour

// LoadConfig reads and validates the configuration; each problem names its
// variable.
func LoadConfig(getenv func(string) string) (Config, error) {
	r := envconfig.New(getenv)
	c := Config{
		DatabaseURL:     r.DatabaseURL("DATABASE_URL", "DATABASE_PASSWORD_FILE"),
		ControlPlaneURL: strings.TrimRight(r.String("CONTROLPLANE_URL", ""), "/"),
		HTTPAddr:        r.String("HTTP_ADDR", ":8080"),
		HTTPSAddr:       r.String("HTTPS_ADDR", ""),
		AdminAddr:       r.String("ADMIN_ADDR", "127.0.0.1:9090"),
		TLSCertDir:      r.String("TLS_CERT_DIR", ""),
		TLSCertFile:     r.String("TLS_CERT_FILE", ""),
		TLSKeyFile:      r.String("TLS_KEY_FILE", ""),
		TLSSelfSigned:   r.Bool("TLS_SELF_SIGNED", false),
		RedirectHTTPS:   r.Bool("HTTP_REDIRECT_HTTPS", false),
		K8sPlainHTTP:    r.Bool("K8S_ALLOW_PLAIN_HTTP", false),
		ACME:            r.Bool("ACME", false),
		ACMEEmail:       r.String("ACME_EMAIL", ""),
		ACMECacheDir:    r.String("ACME_CACHE_DIR", "/var/lib/pipeops-gateway/acme"),
		ACMEDirectory:   r.String("ACME_DIRECTORY_URL", ""),
		ACMECAFile:      r.String("ACME_CA_FILE", ""),
		ACMERenewBefore: r.Duration("ACME_RENEW_BEFORE", 0),
		HeaderTimeout:   r.Duration("RESPONSE_HEADER_TIMEOUT", 60*time.Second),
		IdleTimeout:     r.Duration("IDLE_TIMEOUT", 120*time.Second),
		ShutdownTimeout: r.Duration("SHUTDOWN_TIMEOUT", 30*time.Second),
		ReloadInterval:  r.Duration("ROUTE_RELOAD_INTERVAL", 5*time.Minute),
		RevokeInterval:  r.Duration("REVOCATION_CHECK_INTERVAL", 15*time.Second),
		StreamWindow:    tunnel.DefaultStreamWindow,
		AgentWindow:     tunnel.DefaultAgentStreamWindow,
		MaxRequestBody:  DefaultMaxRequestBody,
		MaxHeaderBytes:  DefaultMaxHeaderBytes,
		MaxStreams:      session.DefaultMaxStreamsPerSession,
		AuditRetention:  r.Duration("AUDIT_RETENTION", audit.DefaultRetention),
		AuditMaxRows:    audit.DefaultMaxRows,
		AuditQueue:      audit.DefaultQueue,
		TrafficMaxAge:   r.Duration("TRAFFIC_RETENTION", traffic.DefaultRetention),
		GatewayID:       r.String("GATEWAY_ID", defaultGatewayID()),
		LogLevel:        r.LogLevel("LOG_LEVEL", slog.LevelInfo),
		LogFormat:       r.OneOf("LOG_FORMAT", "text", "text", "json"),
	}
	c.PeerAddr = r.String("PEER_ADDR", "")
	c.PeerURL = r.String("PEER_URL", "")
	c.PeerSecret = r.SecretFile("PEER_SECRET_FILE")
	if strings.ContainsAny(c.GatewayID, " \t\r\n") || c.GatewayID == "" {
		r.Failf("GATEWAY_ID=%q must be one word: it names this gateway to the others", c.GatewayID)
	}
	if c.PeerAddr != "" {
		_, port, err := net.SplitHostPort(c.PeerAddr)
		switch {
		case err != nil || port == "" || port == "0":
			r.Failf("PEER_ADDR=%q must be host:port (or :port) with a fixed port, where the other gateways forward streams to this one", c.PeerAddr)
		case c.PeerURL == "":
			c.PeerURL = "http://" + net.JoinHostPort(c.GatewayID, port)
		}
		if c.PeerURL != "" {
			if _, err := peers.ParseURL(c.PeerURL); err != nil {
				r.Failf("PEER_URL: %v", err)
			}
		}
		if len(c.PeerSecret) < peers.MinSecretLen && r.Err() == nil {
			r.Failf("PEER_ADDR needs PEER_SECRET_FILE: a file holding a secret of at least %d characters, the same on every gateway (openssl rand -hex 32)", peers.MinSecretLen)
		}
	} else if c.PeerURL != "" || c.PeerSecret != "" {
		r.Failf("PEER_URL and PEER_SECRET_FILE are set but PEER_ADDR is not: set PEER_ADDR to run with other gateways")
	}
	if v := strings.ToLower(strings.Trim(r.String("K8S_API_DOMAIN", ""), ".")); v != "" {
		if !strings.Contains(v, ".") || strings.ContainsAny(v, "/:* ") {
			r.Failf("K8S_API_DOMAIN=%q must be a DNS domain such as k8s.example.com, under which {cluster}.k8s.example.com serves each cluster's API", v)
		}
		c.K8sAPIDomain = v
	}
	for _, h := range strings.Split(getenv("GATEWAY_HOSTS"), ",") {
		if h = strings.ToLower(strings.TrimSpace(h)); h != "" {
			c.GatewayHosts = append(c.GatewayHosts, h)
		}
	}
	streamWindow(r, "STREAM_WINDOW", &c.StreamWindow)
	streamWindow(r, "AGENT_STREAM_WINDOW", &c.AgentWindow)
	if v := r.String("MAX_REQUEST_BODY", ""); v != "" {
		n, err := routetable.ParseBodySize(v)
		if err != nil {
			r.Failf("MAX_REQUEST_BODY=%q must be a byte size like 1Gi, 100Mi, 8m or 1048576, or 0 for no limit", v)
		} else {
			c.MaxRequestBody = n
		}
	}
	if v := r.String("MAX_HEADER_BYTES", ""); v != "" {
		n, err := routetable.ParseBodySize(v)
		if err != nil || n < minMaxHeaderBytes || n > maxMaxHeaderBytes {
			r.Failf("MAX_HEADER_BYTES=%q must be a byte size from 4Ki to 1Gi, like 64Ki or 1Mi", v)
		} else {
			c.MaxHeaderBytes = int(n)
		}
	}
	if v := r.String("MAX_STREAMS_PER_SESSION", ""); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			r.Failf("MAX_STREAMS_PER_SESSION=%q must be a positive number of streams", v)
		} else {
			c.MaxStreams = n
		}
	}
	if v := r.String("AUDIT_MAX_ROWS", ""); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			r.Failf("AUDIT_MAX_ROWS=%q must be a positive number of Kubernetes API audit entries to keep", v)
		} else {
			c.AuditMaxRows = n
		}
	}
	if v := r.String("AUDIT_QUEUE", ""); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxAuditQueue {
			r.Failf("AUDIT_QUEUE=%q must be a number of audit entries from 1 to %d", v, maxAuditQueue)
		} else {
			c.AuditQueue = n
		}
	}
	if u, err := url.Parse(c.DatabaseURL); c.DatabaseURL == "" || err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		r.Failf("DATABASE_URL must be a postgres:// URL (the gateway reads routes from the control plane's database)")
	}
	if u, err := url.Parse(c.ControlPlaneURL); c.ControlPlaneURL == "" || err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		r.Failf("CONTROLPLANE_URL must be the control plane's http(s) URL (its /.well-known/jwks.json verifies tokens)")
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		r.Failf("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
	}
	if c.HTTPSAddr != "" && c.TLSCertDir == "" && c.TLSCertFile == "" && !c.TLSSelfSigned && !c.ACME {
		r.Failf("HTTPS_ADDR needs certificates: TLS_CERT_DIR, TLS_CERT_FILE/TLS_KEY_FILE, ACME=true, or TLS_SELF_SIGNED=true for development")
	}
	if c.ACME && c.HTTPSAddr == "" {
		r.Failf("ACME needs HTTPS_ADDR (and HTTP_ADDR reachable on port 80 for the HTTP-01 challenge)")
	}
	if u, err := url.Parse(c.ACMEDirectory); c.ACMEDirectory != "" && (err != nil || u.Scheme != "https" || u.Host == "") {
		r.Failf("ACME_DIRECTORY_URL=%q must be the CA's https:// directory URL (ACME runs over HTTPS only)", c.ACMEDirectory)
	}
	if c.ACMECAFile != "" {
		if !c.ACME {
			r.Failf("ACME_CA_FILE is set but ACME is not true")
		} else if _, err := loadRoots(c.ACMECAFile); err != nil {
			r.Failf("ACME_CA_FILE: %v", err)
		}
	}
	if c.ACMERenewBefore != 0 {
		if !c.ACME {
			r.Failf("ACME_RENEW_BEFORE is set but ACME is not true")
		} else if c.ACMERenewBefore > maxRenewBefore {
			r.Failf("ACME_RENEW_BEFORE=%s is more than %s, the most autocert renews ahead", c.ACMERenewBefore, maxRenewBefore)
		}
	}
	// Unset, it is 5 s or SHUTDOWN_TIMEOUT if shorter; set, at most that.
	c.UpgradeDrain = r.Duration("UPGRADE_DRAIN_TIMEOUT", min(5*time.Second, c.ShutdownTimeout))
	if c.UpgradeDrain > c.ShutdownTimeout {
		r.Failf("UPGRADE_DRAIN_TIMEOUT=%s is longer than SHUTDOWN_TIMEOUT=%s, by which everything is closed", c.UpgradeDrain, c.ShutdownTimeout)
	}
	if c.RedirectHTTPS && c.HTTPSAddr == "" {
		r.Failf("HTTP_REDIRECT_HTTPS needs HTTPS_ADDR")
	}
	return c, r.Err()
}

// defaultGatewayID is the machine's (or pod's) host name, which tells
// gateways apart without configuration; "gateway" when it has none.
func defaultGatewayID() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "gateway"
}

// streamWindow reads a yamux stream window setting into w, when set.
func streamWindow(r *envconfig.Reader, name string, w *uint32) {
	v := r.String(name, "")
	if v == "" {
		return
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n < 256<<10 || n > maxStreamWindow {
		r.Failf("%s=%q must be a byte count from 262144 to %d (a frame must fit a 64 MiB WebSocket message)", name, v, maxStreamWindow)
		return
	}
	*w = uint32(n)
}
