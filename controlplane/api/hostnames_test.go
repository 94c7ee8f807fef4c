package api_test

import (
	"testing"

	"github.com/pipeops/tunnel/controlplane/hostnames"
)

// TestPendingVerificationAPI: with verification on, a custom domain's
// register answers 200 pending with the record to publish, sync lists it,
// "verify now" reports why not, an admin grant verifies it, and another
// cluster's claim on a name the first now holds is 409.
func TestPendingVerificationAPI(t *testing.T) {
	f := newFixture(t)
	f.db.Ownership = hostnames.Policy{}
	c := f.createCluster("shop")
	other := f.createCluster("other")

	var reg struct {
		Status       string `json:"status"`
		Verification struct {
			Hostname string `json:"hostname"`
			TXTName  string `json:"txt_name"`
			TXTValue string `json:"txt_value"`
		} `json:"verification"`
	}
	if code := f.do("POST", "/api/v1/gateway/routes/register", c.AgentToken, map[string]any{"hostname": "Blog.Example.org", "service_name": "blog", "service_port": 80}, &reg); code != 200 {
		t.Fatalf("register: %d", code)
	}
	if reg.Status != "pending_verification" || reg.Verification.TXTName != "_pipeops-challenge.blog.example.org" || reg.Verification.TXTValue == "" {
		t.Fatalf("register answer %+v", reg)
	}
	var sync struct {
		Pending []struct {
			Hostname string `json:"hostname"`
			TXTValue string `json:"txt_value"`
		} `json:"pending_verification"`
	}
	body := map[string]any{"ingresses": []any{map[string]any{"namespace": "blog", "ingress_name": "blog",
		"rules": []any{map[string]any{"host": "blog.example.org", "paths": []any{map[string]any{"path": "/", "service_name": "blog", "service_port": 80}}}}}}}
	if code := f.do("POST", "/api/v1/gateway/routes/sync", c.AgentToken, body, &sync); code != 200 {
		t.Fatalf("sync: %d", code)
	}
	if len(sync.Pending) != 1 || sync.Pending[0].TXTValue != reg.Verification.TXTValue {
		t.Fatalf("sync pending = %+v, want the same challenge", sync.Pending)
	}
	// Nothing answers DNS here: not verified, and the answer says why.
	var res struct {
		Verified bool   `json:"verified"`
		Finding  string `json:"finding"`
	}
	if code := f.do("POST", "/api/v1/gateway/routes/verify", c.AgentToken, map[string]any{"hostname": "blog.example.org"}, &res); code != 200 || res.Verified || res.Finding == "" {
		t.Fatalf("verify: %d %+v", code, res)
	}
	if code := f.do("POST", "/api/v1/gateway/routes/verify", other.AgentToken, map[string]any{"hostname": "blog.example.org"}, nil); code != 404 {
		t.Fatalf("verify of a name the cluster never claimed: %d, want 404", code)
	}
	if code := f.do("POST", "/api/v1/admin/domains", f.admin, map[string]any{"cluster": "shop", "domain": "example.org"}, nil); code != 200 {
		t.Fatalf("grant: %d", code)
	}
	var list struct {
		Hostnames []struct {
			Hostname   string `json:"hostname"`
			Verified   bool   `json:"verified"`
			VerifiedBy string `json:"verified_by"`
		} `json:"hostnames"`
	}
	if code := f.do("GET", "/api/v1/admin/hostnames?cluster=shop", f.admin, nil, &list); code != 200 || len(list.Hostnames) != 1 || !list.Hostnames[0].Verified {
		t.Fatalf("hostnames after the grant: %d %+v", code, list)
	}
	if code := f.do("POST", "/api/v1/gateway/routes/register", other.AgentToken, map[string]any{"hostname": "x.example.org", "service_name": "x", "service_port": 80}, nil); code != 409 {
		t.Fatalf("another cluster under the grant: %d, want 409", code)
	}
	if code := f.do("DELETE", "/api/v1/admin/domains/example.org", f.admin, nil, nil); code != 200 {
		t.Fatalf("revoke grant: %d", code)
	}
}
