package cli

import (
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/pipeops/tunnel/controlplane/console"
	"github.com/pipeops/tunnel/controlplane/hostnames"
	"github.com/pipeops/tunnel/controlplane/keyseal"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/envconfig"
)

// Config is the control plane's configuration, read from the environment.
// Every variable is documented in docs/controlplane.md.
type Config struct {
	DatabaseURL     string        // DATABASE_URL (required)
	ListenAddr      string        // LISTEN_ADDR, default :8080
	AdminAddr       string        // ADMIN_ADDR, default 127.0.0.1:9091 (healthz, readyz, metrics)
	GatewayWSURL    string        // GATEWAY_WS_URL: where agents open their tunnel (required by serve)
	GatewayURL      string        // GATEWAY_URL: the gateway's public HTTPS URL, for kubeconfigs
	GatewayCA       []byte        // GATEWAY_CA_FILE: PEM CA that kubeconfigs trust for GATEWAY_URL
	K8sAPIDomain    string        // K8S_API_DOMAIN: the gateway's per-cluster API domain, for kubeconfigs
	APIURL          string        // API_URL: this control plane's public URL, for install commands
	RouteTTL        time.Duration // ROUTE_TTL, default 24h
	ReaperInterval  time.Duration // REAPER_INTERVAL, default 1m
	TLSCertFile     string        // TLS_CERT_FILE and TLS_KEY_FILE: serve HTTPS when both are set
	TLSKeyFile      string
	ShutdownTimeout time.Duration // SHUTDOWN_TIMEOUT, default 15s
	// Ownership is ROUTE_BASE_DOMAINS (comma-separated) and
	// HOSTNAME_VERIFICATION (dns, the default, or off: TrustUnverified).
	Ownership hostnames.Policy
	// DNSResolver is DNS_RESOLVER: the host:port of the DNS server custom
	// domains' TXT records are checked with (default: the system's).
	DNSResolver string
	// HostnameCheckInterval is HOSTNAME_CHECK_INTERVAL, default 1m: how
	// often pending custom domains are checked.
	HostnameCheckInterval time.Duration
	// RevocationCheckInterval is REVOCATION_CHECK_INTERVAL, default 15s:
	// how often the tokens of open agent registration sockets are checked
	// for revocation.
	RevocationCheckInterval time.Duration
	LogLevel                slog.Level // LOG_LEVEL: debug, info, warn, error
	LogFormat               string     // LOG_FORMAT: text or json
	// AdminUser and AdminGroups are ADMIN_IDENTITY_USER (default
	// pipeops:admin) and ADMIN_IDENTITY_GROUPS (comma-separated, default
	// pipeops:admins): the identity every admin token carries as its sub and
	// groups, for the agent to impersonate.
	AdminUser   string
	AdminGroups []string
	// Console is CONSOLE (default true): serve the web console at
	// /console/. ConsoleSessionTTL is CONSOLE_SESSION_TTL (default 8h),
	// ConsoleTrafficRefresh is CONSOLE_TRAFFIC_REFRESH (default 10s),
	// GrafanaURL is GRAFANA_URL (linked from the console; empty: no link).
	Console               bool
	ConsoleSessionTTL     time.Duration
	ConsoleTrafficRefresh time.Duration
	GrafanaURL            string
	// KEK is KEY_ENCRYPTION_KEY_FILE or KEY_ENCRYPTION_KEY, the
	// key-encryption key that seals the signing keys, with the previous
	// ones of KEY_ENCRYPTION_KEY_PREVIOUS_FILE and KEY_ENCRYPTION_KEY_PREVIOUS
	// (a KEK rotation); nil when none is set (see RequireKEK).
	KEK *keyseal.Keyring
}

// LoadConfig reads the configuration from getenv and validates what every
// subcommand needs (the database). Each problem names its variable.
func LoadConfig(getenv func(string) string) (Config, error) {
	r := envconfig.New(getenv)
	c := Config{
		DatabaseURL:     r.DatabaseURL("DATABASE_URL", "DATABASE_PASSWORD_FILE"),
		ListenAddr:      r.String("LISTEN_ADDR", ":8080"),
		AdminAddr:       r.String("ADMIN_ADDR", "127.0.0.1:9091"),
		GatewayWSURL:    r.String("GATEWAY_WS_URL", ""),
		GatewayURL:      r.String("GATEWAY_URL", ""),
		K8sAPIDomain:    strings.ToLower(strings.Trim(r.String("K8S_API_DOMAIN", ""), ".")),
		APIURL:          r.String("API_URL", ""),
		TLSCertFile:     r.String("TLS_CERT_FILE", ""),
		TLSKeyFile:      r.String("TLS_KEY_FILE", ""),
		RouteTTL:        r.Duration("ROUTE_TTL", 24*time.Hour),
		ReaperInterval:  r.Duration("REAPER_INTERVAL", time.Minute),
		ShutdownTimeout: r.Duration("SHUTDOWN_TIMEOUT", 15*time.Second),
		LogLevel:        r.LogLevel("LOG_LEVEL", slog.LevelInfo),
		LogFormat:       r.OneOf("LOG_FORMAT", "text", "text", "json"),
	}
	c.DNSResolver = r.String("DNS_RESOLVER", "")
	c.HostnameCheckInterval = r.Duration("HOSTNAME_CHECK_INTERVAL", hostnames.DefaultCheckInterval)
	c.RevocationCheckInterval = r.Duration("REVOCATION_CHECK_INTERVAL", 15*time.Second)
	c.Console = r.Bool("CONSOLE", true)
	c.ConsoleSessionTTL = r.Duration("CONSOLE_SESSION_TTL", 8*time.Hour)
	c.ConsoleTrafficRefresh = r.Duration("CONSOLE_TRAFFIC_REFRESH", console.DefaultTrafficRefresh)
	c.GrafanaURL = r.String("GRAFANA_URL", "")
	c.Ownership.TrustUnverified = r.OneOf("HOSTNAME_VERIFICATION", "dns", "dns", "off") == "off"
	for _, b := range strings.Split(r.String("ROUTE_BASE_DOMAINS", ""), ",") {
		if b = strings.TrimSpace(b); b != "" {
			c.Ownership.BaseDomains = append(c.Ownership.BaseDomains, b)
		}
	}
	if err := c.Ownership.Validate(); err != nil {
		r.Failf("ROUTE_BASE_DOMAINS: %v", err)
	}
	c.AdminUser, c.AdminGroups = loadAdminIdentity(r)
	if c.DNSResolver != "" {
		if _, port, err := net.SplitHostPort(c.DNSResolver); err != nil || port == "" {
			r.Failf("DNS_RESOLVER=%q must be host:port (for example 127.0.0.1:53)", c.DNSResolver)
		}
	}
	if c.DatabaseURL == "" {
		r.Failf("DATABASE_URL is required (postgres://user:password@host:5432/db)")
	} else if u, err := url.Parse(c.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		r.Failf("DATABASE_URL must be a postgres:// URL")
	}
	for _, v := range []struct{ name, value string }{{"GATEWAY_WS_URL", c.GatewayWSURL}, {"GATEWAY_URL", c.GatewayURL}, {"API_URL", c.APIURL}, {"GRAFANA_URL", c.GrafanaURL}} {
		if v.value == "" {
			continue
		}
		if u, err := url.Parse(v.value); err != nil || u.Host == "" || !validScheme(u.Scheme) {
			r.Failf("%s=%q is not an absolute http(s) or ws(s) URL", v.name, v.value)
		}
	}
	if f := r.String("GATEWAY_CA_FILE", ""); f != "" {
		data, err := os.ReadFile(f)
		if err != nil {
			r.Failf("GATEWAY_CA_FILE: %v", err)
		} else if block, _ := pem.Decode(data); block == nil {
			r.Failf("GATEWAY_CA_FILE=%s holds no PEM certificate", f)
		}
		c.GatewayCA = data
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		r.Failf("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
	}
	c.KEK = loadKEK(r)
	return c, r.Err()
}

// loadAdminIdentity reads ADMIN_IDENTITY_USER and ADMIN_IDENTITY_GROUPS
// and checks them with the rules every token identity is held to.
func loadAdminIdentity(r *envconfig.Reader) (string, []string) {
	user := r.String("ADMIN_IDENTITY_USER", tokens.DefaultAdminUser)
	groups := []string{tokens.DefaultAdminGroup}
	if v := r.String("ADMIN_IDENTITY_GROUPS", ""); v != "" {
		groups = nil
		for _, g := range strings.Split(v, ",") {
			groups = append(groups, strings.TrimSpace(g)) // an empty one is refused below
		}
	}
	if err := auth.ValidateIdentity(user, nil); err != nil {
		r.Failf("ADMIN_IDENTITY_USER: %v", err)
	} else if err := auth.ValidateIdentity(user, groups); err != nil {
		r.Failf("ADMIN_IDENTITY_GROUPS: %v", err)
	}
	return user, groups
}

// ValidateServe checks what serve needs beyond LoadConfig.
func (c Config) ValidateServe() error {
	if c.GatewayWSURL == "" {
		return fmt.Errorf("configuration:\n  GATEWAY_WS_URL is required: agents are told to open their tunnel there (e.g. wss://gateway.example.com/ws)")
	}
	return c.RequireKEK()
}

func validScheme(s string) bool {
	switch s {
	case "http", "https", "ws", "wss":
		return true
	}
	return false
}
