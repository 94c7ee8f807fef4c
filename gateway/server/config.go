package server

import (
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"
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
	c := Config{
		DatabaseURL:     strings.TrimSpace(getenv("DATABASE_URL")),
		ControlPlaneURL: strings.TrimRight(strings.TrimSpace(getenv("CONTROLPLANE_URL")), "/"),
		HTTPAddr:        orString(getenv("HTTP_ADDR"), ":8080"),
		HTTPSAddr:       strings.TrimSpace(getenv("HTTPS_ADDR")),
		AdminAddr:       orString(getenv("ADMIN_ADDR"), "127.0.0.1:9090"),
		TLSCertDir:      getenv("TLS_CERT_DIR"),
		TLSCertFile:     getenv("TLS_CERT_FILE"),
		TLSKeyFile:      getenv("TLS_KEY_FILE"),
		LogFormat:       orString(getenv("LOG_FORMAT"), "text"),
		StreamWindow:    4 << 20,
	}
	for _, h := range strings.Split(getenv("GATEWAY_HOSTS"), ",") {
		if h = strings.ToLower(strings.TrimSpace(h)); h != "" {
			c.GatewayHosts = append(c.GatewayHosts, h)
		}
	}
	var errs []string
	bools := []struct {
		name string
		dst  *bool
	}{{"TLS_SELF_SIGNED", &c.TLSSelfSigned}, {"HTTP_REDIRECT_HTTPS", &c.RedirectHTTPS}}
	for _, b := range bools {
		if v := strings.TrimSpace(getenv(b.name)); v != "" {
			parsed, err := strconv.ParseBool(v)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s=%q is not true or false", b.name, v))
			}
			*b.dst = parsed
		}
	}
	durations := []struct {
		name string
		dst  *time.Duration
		def  time.Duration
	}{
		{"RESPONSE_HEADER_TIMEOUT", &c.HeaderTimeout, 60 * time.Second},
		{"IDLE_TIMEOUT", &c.IdleTimeout, 120 * time.Second},
		{"SHUTDOWN_TIMEOUT", &c.ShutdownTimeout, 30 * time.Second},
		{"ROUTE_RELOAD_INTERVAL", &c.ReloadInterval, 5 * time.Minute},
		{"REVOCATION_CHECK_INTERVAL", &c.RevokeInterval, 15 * time.Second},
	}
	for _, d := range durations {
		v := strings.TrimSpace(getenv(d.name))
		if v == "" {
			*d.dst = d.def
			continue
		}
		parsed, err := time.ParseDuration(v)
		if err != nil || parsed <= 0 {
			errs = append(errs, fmt.Sprintf("%s=%q is not a positive duration (like 30s)", d.name, v))
			continue
		}
		*d.dst = parsed
	}
	if v := strings.TrimSpace(getenv("STREAM_WINDOW")); v != "" {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n < 256<<10 {
			errs = append(errs, fmt.Sprintf("STREAM_WINDOW=%q must be a byte count of at least 262144", v))
		}
		c.StreamWindow = uint32(n)
	}
	if err := c.LogLevel.UnmarshalText([]byte(orString(getenv("LOG_LEVEL"), "info"))); err != nil {
		errs = append(errs, fmt.Sprintf("LOG_LEVEL=%q is not debug, info, warn or error", getenv("LOG_LEVEL")))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Sprintf("LOG_FORMAT=%q is not text or json", c.LogFormat))
	}
	if u, err := url.Parse(c.DatabaseURL); c.DatabaseURL == "" || err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		errs = append(errs, "DATABASE_URL must be a postgres:// URL (the gateway reads routes from the control plane's database)")
	}
	if u, err := url.Parse(c.ControlPlaneURL); c.ControlPlaneURL == "" || err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		errs = append(errs, "CONTROLPLANE_URL must be the control plane's http(s) URL (its /.well-known/jwks.json verifies tokens)")
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, "TLS_CERT_FILE and TLS_KEY_FILE must be set together")
	}
	if c.HTTPSAddr != "" && c.TLSCertDir == "" && c.TLSCertFile == "" && !c.TLSSelfSigned {
		errs = append(errs, "HTTPS_ADDR needs certificates: TLS_CERT_DIR, TLS_CERT_FILE/TLS_KEY_FILE, or TLS_SELF_SIGNED=true for development")
	}
	if c.RedirectHTTPS && c.HTTPSAddr == "" {
		errs = append(errs, "HTTP_REDIRECT_HTTPS needs HTTPS_ADDR")
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("configuration:\n  %s", strings.Join(errs, "\n  "))
	}
	return c, nil
}

func orString(v, def string) string {
	if v = strings.TrimSpace(v); v == "" {
		return def
	}
	return v
}
