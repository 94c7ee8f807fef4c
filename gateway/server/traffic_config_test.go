package server

import (
	"strings"
	"testing"
	"time"
)

func TestLoadConfigTrafficRetention(t *testing.T) {
	load := func(v string) (Config, error) {
		env := map[string]string{"DATABASE_URL": "postgres://x/y", "CONTROLPLANE_URL": "http://cp:8080", "TRAFFIC_RETENTION": v}
		return LoadConfig(func(k string) string { return env[k] })
	}
	for v, want := range map[string]time.Duration{"": 24 * time.Hour, "168h": 168 * time.Hour, "90m": 90 * time.Minute} {
		c, err := load(v)
		if err != nil || c.TrafficMaxAge != want {
			t.Errorf("TRAFFIC_RETENTION=%q: %s, %v; want %s", v, c.TrafficMaxAge, err, want)
		}
	}
	for _, v := range []string{"0", "-1h", "1d"} {
		if _, err := load(v); err == nil || !strings.Contains(err.Error(), "TRAFFIC_RETENTION=") {
			t.Errorf("TRAFFIC_RETENTION=%q: err = %v, want one naming the variable", v, err)
		}
	}
}
