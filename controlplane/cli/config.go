package cli

import (
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"time"

	"github.com/pipeops/tunnel/shared/envconfig"
)

// Config is the control plane's configuration, read from the environment.
// Every variable is documented in docs/controlplane.md.
type Config struct {
	DatabaseURL     string        // DATABASE_URL (required)
	ListenAddr      string        // LISTEN_ADDR, default :8080
	GatewayWSURL    string        // GATEWAY_WS_URL: where agents open their tunnel (required by serve)
	GatewayURL      string        // GATEWAY_URL: the gateway's public HTTPS URL, for kubeconfigs
	GatewayCA       []byte        // GATEWAY_CA_FILE: PEM CA that kubeconfigs trust for GATEWAY_URL
	APIURL          string        // API_URL: this control plane's public URL, for install commands
	RouteTTL        time.Duration // ROUTE_TTL, default 24h
	ReaperInterval  time.Duration // REAPER_INTERVAL, default 1m
	TLSCertFile     string        // TLS_CERT_FILE and TLS_KEY_FILE: serve HTTPS when both are set
	TLSKeyFile      string
	ShutdownTimeout time.Duration // SHUTDOWN_TIMEOUT, default 15s
	LogLevel        slog.Level    // LOG_LEVEL: debug, info, warn, error
	LogFormat       string        // LOG_FORMAT: text or json
}

// LoadConfig reads the configuration from getenv and validates what every
// subcommand needs (the database). Each problem names its variable.
func LoadConfig(getenv func(string) string) (Config, error) {
	r := envconfig.New(getenv)
	c := Config{
		DatabaseURL:     r.String("DATABASE_URL", ""),
		ListenAddr:      r.String("LISTEN_ADDR", ":8080"),
		GatewayWSURL:    r.String("GATEWAY_WS_URL", ""),
		GatewayURL:      r.String("GATEWAY_URL", ""),
		APIURL:          r.String("API_URL", ""),
		TLSCertFile:     r.String("TLS_CERT_FILE", ""),
		TLSKeyFile:      r.String("TLS_KEY_FILE", ""),
		RouteTTL:        r.Duration("ROUTE_TTL", 24*time.Hour),
		ReaperInterval:  r.Duration("REAPER_INTERVAL", time.Minute),
		ShutdownTimeout: r.Duration("SHUTDOWN_TIMEOUT", 15*time.Second),
		LogLevel:        r.LogLevel("LOG_LEVEL", slog.LevelInfo),
		LogFormat:       r.OneOf("LOG_FORMAT", "text", "text", "json"),
	}
	if c.DatabaseURL == "" {
		r.Failf("DATABASE_URL is required (postgres://user:password@host:5432/db)")
	} else if u, err := url.Parse(c.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		r.Failf("DATABASE_URL must be a postgres:// URL")
	}
	for _, v := range []struct{ name, value string }{{"GATEWAY_WS_URL", c.GatewayWSURL}, {"GATEWAY_URL", c.GatewayURL}, {"API_URL", c.APIURL}} {
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
	return c, r.Err()
}

// ValidateServe checks what serve needs beyond LoadConfig.
func (c Config) ValidateServe() error {
	if c.GatewayWSURL == "" {
		return fmt.Errorf("configuration:\n  GATEWAY_WS_URL is required: agents are told to open their tunnel there (e.g. wss://gateway.example.com/ws)")
	}
	return nil
}

func validScheme(s string) bool {
	switch s {
	case "http", "https", "ws", "wss":
		return true
	}
	return false
}
