package cli

import (
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"
)

// Config is the control plane's configuration, read from the environment.
// Every variable is documented in docs/controlplane.md.
type Config struct {
	DatabaseURL     string        // DATABASE_URL (required)
	ListenAddr      string        // LISTEN_ADDR, default :8080
	GatewayWSURL    string        // GATEWAY_WS_URL: where agents open their tunnel (required by serve)
	GatewayURL      string        // GATEWAY_URL: the gateway's public HTTPS URL, for kubeconfigs
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
	c := Config{
		DatabaseURL:  strings.TrimSpace(getenv("DATABASE_URL")),
		ListenAddr:   orString(getenv("LISTEN_ADDR"), ":8080"),
		GatewayWSURL: strings.TrimSpace(getenv("GATEWAY_WS_URL")),
		GatewayURL:   strings.TrimSpace(getenv("GATEWAY_URL")),
		APIURL:       strings.TrimSpace(getenv("API_URL")),
		TLSCertFile:  getenv("TLS_CERT_FILE"),
		TLSKeyFile:   getenv("TLS_KEY_FILE"),
		LogFormat:    orString(getenv("LOG_FORMAT"), "text"),
	}
	var errs []string
	durations := []struct {
		name string
		dst  *time.Duration
		def  time.Duration
	}{
		{"ROUTE_TTL", &c.RouteTTL, 24 * time.Hour},
		{"REAPER_INTERVAL", &c.ReaperInterval, time.Minute},
		{"SHUTDOWN_TIMEOUT", &c.ShutdownTimeout, 15 * time.Second},
	}
	for _, d := range durations {
		v := strings.TrimSpace(getenv(d.name))
		if v == "" {
			*d.dst = d.def
			continue
		}
		parsed, err := time.ParseDuration(v)
		if err != nil || parsed <= 0 {
			errs = append(errs, fmt.Sprintf("%s=%q is not a positive duration (like 24h or 90s)", d.name, v))
			continue
		}
		*d.dst = parsed
	}
	if err := c.LogLevel.UnmarshalText([]byte(orString(getenv("LOG_LEVEL"), "info"))); err != nil {
		errs = append(errs, fmt.Sprintf("LOG_LEVEL=%q is not debug, info, warn or error", getenv("LOG_LEVEL")))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Sprintf("LOG_FORMAT=%q is not text or json", c.LogFormat))
	}
	if c.DatabaseURL == "" {
		errs = append(errs, "DATABASE_URL is required (postgres://user:password@host:5432/db)")
	} else if u, err := url.Parse(c.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		errs = append(errs, "DATABASE_URL must be a postgres:// URL")
	}
	for name, v := range map[string]string{"GATEWAY_WS_URL": c.GatewayWSURL, "GATEWAY_URL": c.GatewayURL, "API_URL": c.APIURL} {
		if v == "" {
			continue
		}
		if u, err := url.Parse(v); err != nil || u.Host == "" || !validScheme(u.Scheme) {
			errs = append(errs, fmt.Sprintf("%s=%q is not an absolute http(s) or ws(s) URL", name, v))
		}
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, "TLS_CERT_FILE and TLS_KEY_FILE must be set together")
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("configuration:\n  %s", strings.Join(errs, "\n  "))
	}
	return c, nil
}

// ValidateServe checks what serve needs beyond LoadConfig.
func (c Config) ValidateServe() error {
	if c.GatewayWSURL == "" {
		return fmt.Errorf("configuration:\n  GATEWAY_WS_URL is required: agents are told to open their tunnel there (e.g. wss://gateway.example.com/ws)")
	}
	return nil
}

func orString(v, def string) string {
	if v = strings.TrimSpace(v); v == "" {
		return def
	}
	return v
}

func validScheme(s string) bool {
	switch s {
	case "http", "https", "ws", "wss":
		return true
	}
	return false
}
