package api

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/shared/routeproto"
)

// routesBodies are the routes API bodies of TestPipeOpsAgentFlow.
func routesBodies() []any {
	rule := func(host string, tls bool, paths ...map[string]any) map[string]any {
		return map[string]any{"host": host, "tls": tls, "paths": paths}
	}
	path := func(p, typ, svc string, port int) map[string]any {
		return map[string]any{"path": p, "path_type": typ, "service_name": svc, "service_port": port}
	}
	return []any{
		map[string]any{
			"cluster_uuid": "0b5c5bc4-0000-0000-0000-000000000000", "public_endpoint": "", "routing_mode": "tunnel",
			"ingress_controller": map[string]any{"name": "ingress-nginx-controller", "namespace": "ingress-nginx", "port": 80, "type": "nginx"},
			"ingresses": []any{map[string]any{
				"namespace": "shop", "ingress_name": "web", "annotations": map[string]string{"pipeops.io/managed-by": "pipeops"},
				"rules": []any{
					rule("shop.example.com", true, path("/", "Prefix", "web", 8080), path("/api", "Prefix", "api", 9090)),
					rule("admin.example.com", false, path("/", "Exact", "admin", 80)),
				},
			}},
		},
		map[string]any{"cluster_uuid": "other", "ingresses": []any{map[string]any{"namespace": "a", "ingress_name": "b",
			"rules": []any{rule("mine.example.com", false, path("/", "Prefix", "s", 80))}}}},
		map[string]any{"hostname": "blog.example.com", "cluster_uuid": "0b5c5bc4-0000-0000-0000-000000000000", "namespace": "blog",
			"service_name": "blog", "service_port": 80, "ingress_name": "blog", "path": "/", "path_type": "Prefix", "tls": false,
			"routing_mode": "tunnel", "deployment_id": "d-1", "deployment_name": "blog"},
		map[string]any{"hostname": "blog.example.com", "service_name": "x", "service_port": 80},
		map[string]any{"hostname": "x.example.com", "routing_mode": "sideways"},
		map[string]any{"hostname": "x.example.com", "routing_mode": "direct"},
		map[string]any{"hostname": "x.example.com", "public_endpoint": "203.0.113.7"},
		map[string]any{"hostname": "blog.example.com"},
	}
}

// FuzzDecode: a routes API body decodes into the request types only when it
// is one JSON value of known fields, within the size limit; a body over the
// limit is refused (413), never decoded from its first part; every refusal
// is the caller's fault (400 or 413), never a 500; what decodes re-encodes
// and decodes to the same; and the routing mode derived from it is tunnel or
// direct, direct only with a public endpoint.
func FuzzDecode(f *testing.F) {
	for _, b := range routesBodies() {
		enc, err := json.Marshal(b)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc, uint16(4096))
		f.Add(enc, uint16(len(enc)))
		f.Add(enc, uint16(len(enc)-1))
		f.Add(append(enc, "\n\t "...), uint16(len(enc)+1))
	}
	for _, s := range []string{
		`{}`, `{}}`, `{}]`, `{} {}`, `{} 1`, `{"hostname":1}`, `{"nope":1}`, `{"HOSTNAME":"a"}`, `[`, `null`, ``, ` `,
		`{"ingresses":[{"rules":[{"paths":[{"service_port":"80"}]}]}]}`, `{"annotations":{"a":1}}`,
	} {
		f.Add([]byte(s), uint16(4096))
	}
	f.Fuzz(func(t *testing.T, body []byte, limit uint16) {
		checkDecode(t, body, int64(limit), func() any { return new(routeproto.RegisterRequest) })
		checkDecode(t, body, int64(limit), func() any { return new(routeproto.SyncRequest) })
		checkDecode(t, body, int64(limit), func() any { return new(routeproto.UnregisterRequest) })
	})
}

func decodeBody(body []byte, limit int64, v any) error {
	r := &http.Request{Method: http.MethodPost, Body: io.NopCloser(bytes.NewReader(body))}
	return decodeLimit(httptest.NewRecorder(), r, v, limit)
}

func checkDecode(t *testing.T, body []byte, limit int64, newValue func() any) {
	t.Helper()
	v := newValue()
	err := decodeBody(body, limit, v)
	if err != nil {
		switch code := controlplane.ErrorCode(err); {
		case code == controlplane.ETOOLARGE && int64(len(body)) <= limit:
			t.Fatalf("%T: %d bytes refused as over the limit of %d: %v", v, len(body), limit, err)
		case code != controlplane.ETOOLARGE && code != controlplane.EINVALID:
			t.Fatalf("%T: error %v has code %q, want invalid or too large", v, err, code)
		}
		return
	}
	if int64(len(body)) > limit {
		t.Fatalf("%T: %d bytes decoded under a limit of %d", v, len(body), limit)
	}
	// The limit only ever refuses: under the real one the body decodes the same.
	whole := newValue()
	if err := decodeBody(body, MaxBodySize, whole); err != nil {
		t.Fatalf("%T: decodes under a limit of %d but not under %d: %v", v, limit, MaxBodySize, err)
	}
	enc, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("%T: re-encoding %+v: %v", v, v, err)
	}
	if encWhole, _ := json.Marshal(whole); !bytes.Equal(enc, encWhole) {
		t.Fatalf("%T: %s under a limit of %d, %s under %d", v, enc, limit, encWhole, MaxBodySize)
	}
	again := newValue()
	if err := decodeBody(enc, MaxBodySize, again); err != nil {
		t.Fatalf("%T: re-encoded %s does not decode: %v", v, enc, err)
	}
	if enc2, _ := json.Marshal(again); !bytes.Equal(enc, enc2) {
		t.Fatalf("%T: %s became %s after a round trip", v, enc, enc2)
	}

	var mode, endpoint, asked string
	switch req := v.(type) {
	case *routeproto.RegisterRequest:
		asked, endpoint = req.RoutingMode, req.PublicEndpoint
	case *routeproto.SyncRequest:
		asked, endpoint = req.RoutingMode, req.PublicEndpoint
	default:
		return
	}
	mode, err = controlplane.ResolveRoutingMode(asked, endpoint)
	switch {
	case err != nil && controlplane.ErrorCode(err) != controlplane.EINVALID:
		t.Fatalf("ResolveRoutingMode(%q, %q): error %v is not invalid input", asked, endpoint, err)
	case err != nil:
	case mode != controlplane.RoutingTunnel && mode != controlplane.RoutingDirect:
		t.Fatalf("ResolveRoutingMode(%q, %q) = %q", asked, endpoint, mode)
	case mode == controlplane.RoutingDirect && endpoint == "":
		t.Fatalf("ResolveRoutingMode(%q, %q): direct without a public endpoint", asked, endpoint)
	case asked != "" && mode != asked:
		t.Fatalf("ResolveRoutingMode(%q, %q) = %q, not the mode asked for", asked, endpoint, mode)
	}
}
