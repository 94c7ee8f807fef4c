package server

import (
	"strings"
	"testing"
	"time"
)

func TestLoadConfigAudit(t *testing.T) {
	load := func(extra map[string]string) (Config, error) {
		env := map[string]string{"DATABASE_URL": "postgres://x/y", "CONTROLPLANE_URL": "http://cp:8080"}
		for k, v := range extra {
			env[k] = v
		}
		return LoadConfig(func(k string) string { return env[k] })
	}
	for _, tc := range []struct {
		env       map[string]string
		retention time.Duration
		rows      int64
		queue     int
	}{
		{nil, 720 * time.Hour, 1_000_000, 10000},
		{map[string]string{"AUDIT_RETENTION": "168h"}, 168 * time.Hour, 1_000_000, 10000},
		{map[string]string{"AUDIT_MAX_ROWS": "5000"}, 720 * time.Hour, 5000, 10000},
		{map[string]string{"AUDIT_QUEUE": "100"}, 720 * time.Hour, 1_000_000, 100},
	} {
		c, err := load(tc.env)
		if err != nil {
			t.Fatalf("%v: %v", tc.env, err)
		}
		if c.AuditRetention != tc.retention || c.AuditMaxRows != tc.rows || c.AuditQueue != tc.queue {
			t.Errorf("%v: retention %s, rows %d, queue %d", tc.env, c.AuditRetention, c.AuditMaxRows, c.AuditQueue)
		}
	}
	for _, tc := range []struct{ name, value string }{
		{"AUDIT_RETENTION", "0"},
		{"AUDIT_RETENTION", "-1h"},
		{"AUDIT_RETENTION", "30d"},
		{"AUDIT_MAX_ROWS", "0"},
		{"AUDIT_MAX_ROWS", "1e6"},
		{"AUDIT_QUEUE", "0"},
		{"AUDIT_QUEUE", "1000001"},
		{"AUDIT_QUEUE", "lots"},
	} {
		if _, err := load(map[string]string{tc.name: tc.value}); err == nil || !strings.Contains(err.Error(), tc.name+"=") {
			t.Errorf("%s=%q: err = %v, want one naming the variable", tc.name, tc.value, err)
		}
	}
}
