package server

import (
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pipeops/tunnel/shared/envconfig"
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
	TLSCertDir      string   // TLS_CERT_DIR: HOST.crt + HOST.key per hostname
	TLSCertFile     string   // TLS_CERT_FILE + TLS_KEY_FILE: the default certificate
	TLSKeyFile      string
	TLSSelfSigned   bool          // TLS_SELF_SIGNED: make a development certificate when none is given
	RedirectHTTPS   bool          // HTTP_REDIRECT_HTTPS: answer plain HTTP with a redirect
	ACME            bool          // ACME: get certificates for routed hosts from an ACME CA
	ACMEEmail       string        // ACME_EMAIL: contact for the CA
	ACMECacheDir    string        // ACME_CACHE_DIR: where certificates and the account key are kept
	ACMEDirectory   string        // ACME_DIRECTORY_URL: the CA (default Let's Encrypt production)
	HeaderTimeout   time.Duration // RESPONSE_HEADER_TIMEOUT, default 60s
	IdleTimeout     time.Duration // IDLE_TIMEOUT (visitor keep-alive), default 120s
	ShutdownTimeout time.Duration // SHUTDOWN_TIMEOUT, default 30s
	ReloadInterval  time.Duration // ROUTE_RELOAD_INTERVAL, default 5m
	RevokeInterval  time.Duration // REVOCATION_CHECK_INTERVAL, default 15s
	StreamWindow    uint32        // STREAM_WINDOW bytes, default 4 MiB
	LogLevel        slog.Level    // LOG_LEVEL
	LogFormat       string        // LOG_FORMAT: text or json
}

// LoadConfig reads and validates the configuration; each problem names its
// variable.
func LoadConfig(getenv func(string) string) (Config, error) {
	r := envconfig.New(getenv)
	c := Config{
		DatabaseURL:     r.String("DATABASE_URL", ""),
		ControlPlaneURL: strings.TrimRight(r.String("CONTROLPLANE_URL", ""), "/"),
		HTTPAddr:        r.String("HTTP_ADDR", ":8080"),
		HTTPSAddr:       r.String("HTTPS_ADDR", ""),
		AdminAddr:       r.String("ADMIN_ADDR", "127.0.0.1:9090"),
		TLSCertDir:      r.String("TLS_CERT_DIR", ""),
		TLSCertFile:     r.String("TLS_CERT_FILE", ""),
		TLSKeyFile:      r.String("TLS_KEY_FILE", ""),
		TLSSelfSigned:   r.Bool("TLS_SELF_SIGNED", false),
		RedirectHTTPS:   r.Bool("HTTP_REDIRECT_HTTPS", false),
		ACME:            r.Bool("ACME", false),
		ACMEEmail:       r.String("ACME_EMAIL", ""),
		ACMECacheDir:    r.String("ACME_CACHE_DIR", "/var/lib/pipeops-gateway/acme"),
		ACMEDirectory:   r.String("ACME_DIRECTORY_URL", ""),
		HeaderTimeout:   r.Duration("RESPONSE_HEADER_TIMEOUT", 60*time.Second),
		IdleTimeout:     r.Duration("IDLE_TIMEOUT", 120*time.Second),
		ShutdownTimeout: r.Duration("SHUTDOWN_TIMEOUT", 30*time.Second),
		ReloadInterval:  r.Duration("ROUTE_RELOAD_INTERVAL", 5*time.Minute),
		RevokeInterval:  r.Duration("REVOCATION_CHECK_INTERVAL", 15*time.Second),
		StreamWindow:    4 << 20,
		LogLevel:        r.LogLevel("LOG_LEVEL", slog.LevelInfo),
		LogFormat:       r.OneOf("LOG_FORMAT", "text", "text", "json"),
	}
	for _, h := range strings.Split(getenv("GATEWAY_HOSTS"), ",") {
		if h = strings.ToLower(strings.TrimSpace(h)); h != "" {
			c.GatewayHosts = append(c.GatewayHosts, h)
		}
	}
	if v := r.String("STREAM_WINDOW", ""); v != "" {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n < 256<<10 {
			r.Failf("STREAM_WINDOW=%q must be a byte count of at least 262144", v)
		} else {
			c.StreamWindow = uint32(n)
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
	if c.RedirectHTTPS && c.HTTPSAddr == "" {
		r.Failf("HTTP_REDIRECT_HTTPS needs HTTPS_ADDR")
	}
	return c, r.Err()
}
