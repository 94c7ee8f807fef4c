package cli

import (
	"strings"
	"testing"
	"time"
)

func TestRevocationCheckInterval(t *testing.T) {
	for _, tc := range []struct {
		value   string
		want    time.Duration
		wantErr bool
	}{
		{"", 15 * time.Second, false},
		{"2s", 2 * time.Second, false},
		{"0s", 0, true},
		{"soon", 0, true},
	} {
		c, err := LoadConfig(envOf(map[string]string{"DATABASE_URL": "postgres://u:p@db:5432/x", "REVOCATION_CHECK_INTERVAL": tc.value}))
		switch {
		case tc.wantErr && (err == nil || !strings.Contains(err.Error(), "REVOCATION_CHECK_INTERVAL")):
			t.Errorf("%q: err = %v, want one naming REVOCATION_CHECK_INTERVAL", tc.value, err)
		case !tc.wantErr && (err != nil || c.RevocationCheckInterval != tc.want):
			t.Errorf("%q: %v, %v; want %v", tc.value, c.RevocationCheckInterval, err, tc.want)
		}
	}
}
