package api

import "testing"

func TestGatewayOrigin(t *testing.T) {
	tests := []struct {
		in, want string
		err      bool
	}{
		{"wss://gateway.example.com/ws", "https://gateway.example.com", false},
		{"wss://gateway.example.com:8443/ws?x=1#f", "https://gateway.example.com:8443", false},
		{"WSS://gateway.example.com", "https://gateway.example.com", false},
		{"ws://127.0.0.1:8080/ws", "http://127.0.0.1:8080", false},
		{"https://gw.example.com/agents/ws", "https://gw.example.com", false},
		{"http://[::1]:80/ws", "http://[::1]:80", false},
		{"wss://user:pw@gw.example.com/ws", "https://gw.example.com", false},
		{"ftp://gw.example.com/ws", "", true},
		{"wss:///ws", "", true},
		{"gw.example.com/ws", "", true},
		{"://", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := gatewayOrigin(tt.in)
			if (err != nil) != tt.err || got != tt.want {
				t.Fatalf("gatewayOrigin(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.err)
			}
		})
	}
}
