package cli

import (
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// Test KEKs (base64 of 32 bytes); never used outside these tests.
const (
	testKEK  = "q83vEjRWeJq8qrvM3e7/ABEiM0RVZneImaq7zN3u/wA="
	testKEK2 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
)

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
	c.GatewayWSURL = "wss://gw.example.com/ws"
	if err := c.ValidateServe(); err == nil || !strings.Contains(err.Error(), "KEY_ENCRYPTION_KEY_FILE") || !strings.Contains(err.Error(), "openssl rand -base64 32") {
		t.Fatalf("serve without a KEK: %v", err)
	}
	c, err = LoadConfig(envOf(map[string]string{"DATABASE_URL": "postgres://u:p@db:5432/x", "GATEWAY_WS_URL": "wss://gw.example.com/ws",
		"KEY_ENCRYPTION_KEY": testKEK, "KEY_ENCRYPTION_KEY_PREVIOUS": testKEK2 + ", " + testKEK}))
	if err != nil || c.ValidateServe() != nil || c.KEK == nil || len(c.KEK.PreviousIDs()) != 1 {
		t.Fatalf("with a KEK and a previous one: %+v, %v", c.KEK, err)
	}

	bad := map[string]map[string]string{
		"DATABASE_URL":         {},
		"ROUTE_TTL":            {"DATABASE_URL": "postgres://x/y", "ROUTE_TTL": "soon"},
		"REAPER_INTERVAL":      {"DATABASE_URL": "postgres://x/y", "REAPER_INTERVAL": "-1s"},
		"LOG_LEVEL":            {"DATABASE_URL": "postgres://x/y", "LOG_LEVEL": "loud"},
		"LOG_FORMAT":           {"DATABASE_URL": "postgres://x/y", "LOG_FORMAT": "xml"},
		"GATEWAY_WS_URL":       {"DATABASE_URL": "postgres://x/y", "GATEWAY_WS_URL": "gateway:443"},
		"TLS_KEY_FILE":         {"DATABASE_URL": "postgres://x/y", "TLS_CERT_FILE": "c.pem"},
		"DATABASE_URL must":    {"DATABASE_URL": "mysql://x/y"},
		"KEY_ENCRYPTION_KEY: ": {"DATABASE_URL": "postgres://x/y", "KEY_ENCRYPTION_KEY": "c2hvcnQ="},
		"both set":             {"DATABASE_URL": "postgres://x/y", "KEY_ENCRYPTION_KEY": testKEK, "KEY_ENCRYPTION_KEY_FILE": "/k"},
		"KEY_ENCRYPTION_KEY_FILE: open /nonexistent": {"DATABASE_URL": "postgres://x/y", "KEY_ENCRYPTION_KEY_FILE": "/nonexistent/kek"},
		"KEY_ENCRYPTION_KEY_PREVIOUS: key 2 of 2":    {"DATABASE_URL": "postgres://x/y", "KEY_ENCRYPTION_KEY": testKEK, "KEY_ENCRYPTION_KEY_PREVIOUS": testKEK + ",bad"},
		"previous keys only open":                    {"DATABASE_URL": "postgres://x/y", "KEY_ENCRYPTION_KEY_PREVIOUS": testKEK},
	}
	for want, env := range bad {
		t.Run(want, func(t *testing.T) {
			if _, err := LoadConfig(envOf(env)); err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("LoadConfig(%v) = %v, want an error naming %s", env, err, want)
			}
		})
	}
}
