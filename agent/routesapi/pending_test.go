package routesapi

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestPendingLoggedOnce: a hostname the control plane holds pending
// verification is logged once with the record to publish, however often
// the agent syncs.
func TestPendingLoggedOnce(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"status":"synced","routes":1,"pending_verification":[{"hostname":"shop.example.org","txt_name":"_pipeops-challenge.shop.example.org","txt_value":"abc123"}]}`))
	}))
	defer srv.Close()
	var buf bytes.Buffer
	c := &Client{BaseURL: srv.URL, Token: "t", Logger: slog.New(slog.NewTextHandler(&buf, nil))}
	for range 5 {
		if err := c.Sync(context.Background(), Sync{ClusterUUID: "c"}); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(buf.String(), "shop.example.org"); n != 2 { // hostname and txt_name, one line
		t.Fatalf("log %q: want one line naming the hostname", buf.String())
	}
	if !strings.Contains(buf.String(), "txt_value=abc123") {
		t.Errorf("log %q does not say what to publish", buf.String())
	}
}
