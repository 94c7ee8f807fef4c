package envconfig

import (
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestReader(t *testing.T) {
	env := map[string]string{"D": "90s", "B": "true", "L": "debug", "F": "json", "S": " x ",
		"BAD_D": "soon", "NEG_D": "-1s", "BAD_B": "maybe", "BAD_L": "loud", "BAD_F": "xml"}
	r := New(func(k string) string { return env[k] })
	if r.Duration("D", time.Second) != 90*time.Second || r.Duration("MISSING", time.Second) != time.Second {
		t.Fatal("Duration")
	}
	if !r.Bool("B", false) || r.Bool("MISSING", false) {
		t.Fatal("Bool")
	}
	if r.LogLevel("L", slog.LevelInfo) != slog.LevelDebug || r.OneOf("F", "text", "text", "json") != "json" || r.String("S", "") != "x" {
		t.Fatal("LogLevel/OneOf/String")
	}
	if err := r.Err(); err != nil {
		t.Fatalf("no problems yet, got %v", err)
	}
	r.Duration("BAD_D", time.Second)
	r.Duration("NEG_D", time.Second)
	r.Bool("BAD_B", false)
	r.LogLevel("BAD_L", slog.LevelInfo)
	r.OneOf("BAD_F", "text", "text", "json")
	err := r.Err()
	if err == nil {
		t.Fatal("bad values accepted")
	}
	for _, name := range []string{"BAD_D", "NEG_D", "BAD_B", "BAD_L", "BAD_F"} {
		if !strings.Contains(err.Error(), name+"=") {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
}
