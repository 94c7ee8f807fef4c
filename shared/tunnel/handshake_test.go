package tunnel

import (
	"errors"
	"net/url"
	"testing"
)

func TestRegistrationURL(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"https://api.pipeops.io", "wss://api.pipeops.io/api/v1/clusters/agent/ws"},
		{"https://api.pipeops.io/", "wss://api.pipeops.io/api/v1/clusters/agent/ws"},
		{"http://localhost:8080", "ws://localhost:8080/api/v1/clusters/agent/ws"},
		{"HTTPS://api.example.com/base", "wss://api.example.com/base/api/v1/clusters/agent/ws"},
		{"wss://api.example.com", "wss://api.example.com/api/v1/clusters/agent/ws"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := RegistrationURL(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("RegistrationURL(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestGatewayURL(t *testing.T) {
	tests := []struct {
		in       string
		wantBase string // scheme, host and path
		extra    map[string]string
	}{
		{in: "wss://gw.example.com", wantBase: "wss://gw.example.com/ws"},
		{in: "wss://gw.example.com/", wantBase: "wss://gw.example.com/ws"},
		{in: "https://gw.example.com:8443", wantBase: "wss://gw.example.com:8443/ws"},
		{in: "ws://127.0.0.1:9000/tunnel", wantBase: "ws://127.0.0.1:9000/tunnel"},
		{in: "wss://gw.example.com/ws?region=eu&cluster_uuid=stale", wantBase: "wss://gw.example.com/ws", extra: map[string]string{"region": "eu"}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := GatewayURL(tt.in, "uuid-1", "v2.0.0")
			if err != nil {
				t.Fatal(err)
			}
			u, err := url.Parse(got)
			if err != nil {
				t.Fatal(err)
			}
			if base := u.Scheme + "://" + u.Host + u.Path; base != tt.wantBase {
				t.Errorf("GatewayURL(%q) = %q, want base %q", tt.in, got, tt.wantBase)
			}
			want := map[string]string{
				"cluster_uuid":                "uuid-1",
				"agent_version":               "v2.0.0",
				"supports_yamux":              "true",
				"supports_streaming":          "true",
				"supports_binary":             "true",
				"supports_websocket":          "true",
				"supports_response_streaming": "true",
				"supports_k8s_http":           "true",
			}
			for k, v := range tt.extra {
				want[k] = v
			}
			q := u.Query()
			if len(q) != len(want) {
				t.Errorf("query = %v, want %v", q, want)
			}
			for k, v := range want {
				if got := q[k]; len(got) != 1 || got[0] != v {
					t.Errorf("query %s = %q, want [%q]", k, got, v)
				}
			}
		})
	}
}

func TestHandshakeURLErrors(t *testing.T) {
	for _, in := range []string{"", "api.pipeops.io", "ftp://api.pipeops.io", "https://", "http://[::1", "https://user:pa ss@host"} {
		if got, err := RegistrationURL(in); !errors.Is(err, ErrInvalidURL) {
			t.Errorf("RegistrationURL(%q) = %q, %v; want ErrInvalidURL", in, got, err)
		}
		if got, err := GatewayURL(in, "uuid-1", "v1"); !errors.Is(err, ErrInvalidURL) {
			t.Errorf("GatewayURL(%q) = %q, %v; want ErrInvalidURL", in, got, err)
		}
	}
	if _, err := GatewayURL("wss://gw.example.com", "", "v1"); !errors.Is(err, ErrInvalidURL) {
		t.Errorf("GatewayURL without cluster uuid: error = %v, want ErrInvalidURL", err)
	}
}
