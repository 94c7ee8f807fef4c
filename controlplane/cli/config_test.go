package cli

import (
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadConfig(t *testing.T) {
	c, err := LoadConfig(envOf(map[string]string{"DATABASE_URL": "postgres://u:p@db:5432/x", "ROUTE_TTL": "2h"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.ListenAddr != ":8080" || c.RouteTTL != 2*time.Hour || c.ReaperInterval != time.Minute || c.LogFormat != "text" {
		t.Fatalf("defaults: %+v", c)
	}
	if err := c.ValidateServe(); err == nil || !strings.Contains(err.Error(), "GATEWAY_WS_URL") {
		t.Fatalf("serve without GATEWAY_WS_URL: %v", err)
	}

	bad := map[string]map[string]string{
		"DATABASE_URL":      {},
		"ROUTE_TTL":         {"DATABASE_URL": "postgres://x/y", "ROUTE_TTL": "soon"},
		"REAPER_INTERVAL":   {"DATABASE_URL": "postgres://x/y", "REAPER_INTERVAL": "-1s"},
		"LOG_LEVEL":         {"DATABASE_URL": "postgres://x/y", "LOG_LEVEL": "loud"},
		"LOG_FORMAT":        {"DATABASE_URL": "postgres://x/y", "LOG_FORMAT": "xml"},
		"GATEWAY_WS_URL":    {"DATABASE_URL": "postgres://x/y", "GATEWAY_WS_URL": "gateway:443"},
		"TLS_KEY_FILE":      {"DATABASE_URL": "postgres://x/y", "TLS_CERT_FILE": "c.pem"},
		"DATABASE_URL must": {"DATABASE_URL": "mysql://x/y"},
	}
	for want, env := range bad {
		t.Run(want, func(t *testing.T) {
			if _, err := LoadConfig(envOf(env)); err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("LoadConfig(%v) = %v, want an error naming %s", env, err, want)
			}
		})
	}
}
