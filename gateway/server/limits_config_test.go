package server

import (
	"strings"
	"testing"
)

func TestLoadConfigLimits(t *testing.T) {
	load := func(extra map[string]string) (Config, error) {
		env := map[string]string{"DATABASE_URL": "postgres://x/y", "CONTROLPLANE_URL": "http://cp:8080"}
		for k, v := range extra {
			env[k] = v
		}
		return LoadConfig(func(k string) string { return env[k] })
	}
	c, err := load(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxRequestBody != 1<<30 || c.MaxHeaderBytes != 1<<20 || c.MaxStreams != 10000 {
		t.Fatalf("defaults: body %d, headers %d, streams %d", c.MaxRequestBody, c.MaxHeaderBytes, c.MaxStreams)
	}
	for _, tc := range []struct {
		env              map[string]string
		body             int64
		headers, streams int
		window           uint32
	}{
		{map[string]string{"MAX_REQUEST_BODY": "100Mi"}, 100 << 20, 1 << 20, 10000, 4 << 20},
		{map[string]string{"MAX_REQUEST_BODY": "8m"}, 8 << 20, 1 << 20, 10000, 4 << 20},
		{map[string]string{"MAX_REQUEST_BODY": "0"}, 0, 1 << 20, 10000, 4 << 20},
		{map[string]string{"MAX_HEADER_BYTES": "64Ki"}, 1 << 30, 64 << 10, 10000, 4 << 20},
		{map[string]string{"MAX_STREAMS_PER_SESSION": "500"}, 1 << 30, 1 << 20, 500, 4 << 20},
		{map[string]string{"STREAM_WINDOW": "67108852"}, 1 << 30, 1 << 20, 10000, 64<<20 - 12},
	} {
		c, err := load(tc.env)
		if err != nil {
			t.Fatalf("%v: %v", tc.env, err)
		}
		if c.MaxRequestBody != tc.body || c.MaxHeaderBytes != tc.headers || c.MaxStreams != tc.streams || c.StreamWindow != tc.window {
			t.Errorf("%v: body %d, headers %d, streams %d, window %d", tc.env, c.MaxRequestBody, c.MaxHeaderBytes, c.MaxStreams, c.StreamWindow)
		}
	}
	// The two windows are set apart: the gateway's own, and the agents'.
	c, err = load(map[string]string{"AGENT_STREAM_WINDOW": "33554432"})
	if err != nil || c.AgentWindow != 32<<20 || c.StreamWindow != 4<<20 {
		t.Errorf("AGENT_STREAM_WINDOW=33554432: agent window %d, own window %d, err %v", c.AgentWindow, c.StreamWindow, err)
	}
	for _, tc := range []struct{ name, value string }{
		{"MAX_REQUEST_BODY", "1.5g"},
		{"MAX_REQUEST_BODY", "-1"},
		{"MAX_REQUEST_BODY", "lots"},
		{"MAX_HEADER_BYTES", "1k"},
		{"MAX_HEADER_BYTES", "2g"},
		{"MAX_STREAMS_PER_SESSION", "0"},
		{"MAX_STREAMS_PER_SESSION", "many"},
		{"STREAM_WINDOW", "67108853"}, // a frame would not fit a 64 MiB message
		{"AGENT_STREAM_WINDOW", "67108853"},
		{"AGENT_STREAM_WINDOW", "65536"},
		{"AGENT_STREAM_WINDOW", "16Mi"},
	} {
		if _, err := load(map[string]string{tc.name: tc.value}); err == nil || !strings.Contains(err.Error(), tc.name+"=") {
			t.Errorf("%s=%q: err = %v, want one naming the variable", tc.name, tc.value, err)
		}
	}
}
