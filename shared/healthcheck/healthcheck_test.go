package healthcheck

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			w.Write([]byte("ok"))
			return
		}
		http.Error(w, "not ready: no database", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String() + "/readyz"
	l.Close()

	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"healthy", []string{srv.URL + "/readyz"}, 0, ""},
		{"unhealthy", []string{srv.URL + "/other"}, 1, "503"},
		{"nobody listening", []string{closed}, 1, "refused"},
		{"no URL", nil, 2, "usage"},
		{"bad URL", []string{"http://[::1"}, 2, "healthcheck"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var errOut bytes.Buffer
			if code := Run(tc.args, &errOut); code != tc.code || !strings.Contains(errOut.String(), tc.msg) {
				t.Fatalf("Run(%v) = %d %q, want %d and %q", tc.args, code, errOut.String(), tc.code, tc.msg)
			}
		})
	}
}
