package routesapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/pipeops/tunnel/shared/testenv"
)

func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil) }

type seen struct {
	method, path, auth, contentType string
	body                            []byte
}

func server(t *testing.T, status int, answer string) (*Client, *[]seen) {
	t.Helper()
	var calls []seen
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		calls = append(calls, seen{r.Method, r.URL.Path, r.Header.Get("Authorization"), r.Header.Get("Content-Type"), b})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, answer)
	}))
	t.Cleanup(srv.Close)
	return &Client{BaseURL: srv.URL + "/", Token: "agent-token", HTTP: srv.Client()}, &calls
}

// compact normalises golden JSON so the comparison ignores layout only.
func compact(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		t.Fatalf("golden JSON: %v", err)
	}
	return b.String()
}

func TestPayloads(t *testing.T) {
	cases := []struct {
		name   string
		call   func(c *Client) error
		path   string
		golden string
	}{
		{
			name: "register",
			call: func(c *Client) error {
				return c.Register(context.Background(), "uuid-1", Route{
					Hostname: "blog.example.com", Namespace: "blog", ServiceName: "blog", ServicePort: 80,
					IngressName: "blog", Path: "/", PathType: "Prefix", TLS: true,
					Annotations: map[string]string{"a": "b"}, RoutingMode: "tunnel",
				})
			},
			path: "/api/v1/gateway/routes/register",
			golden: `{"hostname":"blog.example.com","cluster_uuid":"uuid-1","namespace":"blog","service_name":"blog",
				"service_port":80,"ingress_name":"blog","path":"/","path_type":"Prefix","tls":true,"annotations":{"a":"b"},
				"public_endpoint":"","routing_mode":"tunnel","deployment_id":"","deployment_name":""}`,
		},
		{
			name: "register nil annotations",
			call: func(c *Client) error {
				return c.Register(context.Background(), "uuid-1", Route{Hostname: "h", PublicEndpoint: "1.2.3.4", RoutingMode: "direct"})
			},
			path: "/api/v1/gateway/routes/register",
			golden: `{"hostname":"h","cluster_uuid":"uuid-1","namespace":"","service_name":"","service_port":0,"ingress_name":"",
				"path":"","path_type":"","tls":false,"annotations":{},"public_endpoint":"1.2.3.4","routing_mode":"direct",
				"deployment_id":"","deployment_name":""}`,
		},
		{
			name:   "unregister",
			call:   func(c *Client) error { return c.Unregister(context.Background(), "uuid-1", "blog.example.com") },
			path:   "/api/v1/gateway/routes/unregister",
			golden: `{"hostname":"blog.example.com","cluster_uuid":"uuid-1"}`,
		},
		{
			name: "sync",
			call: func(c *Client) error {
				return c.Sync(context.Background(), Sync{
					ClusterUUID: "uuid-1", RoutingMode: "tunnel",
					IngressController: &IngressController{Name: "ingress-nginx-controller", Namespace: "ingress-nginx", Port: 80, Type: "nginx"},
					Ingresses: []Ingress{{
						Namespace: "shop", IngressName: "web",
						Rules: []Rule{
							{Host: "shop.example.com", TLS: true, Paths: []Path{{Path: "/", PathType: "Prefix", ServiceName: "web", ServicePort: 8080}}},
							{Host: "empty.example.com"},
						},
					}},
				})
			},
			path: "/api/v1/gateway/routes/sync",
			golden: `{"cluster_uuid":"uuid-1","public_endpoint":"","routing_mode":"tunnel",
				"ingress_controller":{"name":"ingress-nginx-controller","namespace":"ingress-nginx","port":80,"type":"nginx"},
				"ingresses":[{"namespace":"shop","ingress_name":"web","annotations":{},
				  "rules":[{"host":"shop.example.com","tls":true,
				    "paths":[{"path":"/","path_type":"Prefix","service_name":"web","service_port":8080}]},
				    {"host":"empty.example.com","tls":false,"paths":[]}]}]}`,
		},
		{
			name: "empty sync",
			call: func(c *Client) error {
				return c.Sync(context.Background(), Sync{ClusterUUID: "uuid-1", PublicEndpoint: "lb.example.com", RoutingMode: "direct"})
			},
			path:   "/api/v1/gateway/routes/sync",
			golden: `{"cluster_uuid":"uuid-1","public_endpoint":"lb.example.com","routing_mode":"direct","ingress_controller":null,"ingresses":[]}`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, calls := server(t, http.StatusOK, `{"status":"ok"}`)
			if err := tc.call(c); err != nil {
				t.Fatalf("call: %v", err)
			}
			if len(*calls) != 1 {
				t.Fatalf("%d calls, want 1", len(*calls))
			}
			got := (*calls)[0]
			if got.method != http.MethodPost || got.path != tc.path {
				t.Errorf("request %s %s, want POST %s", got.method, got.path, tc.path)
			}
			if got.auth != "Bearer agent-token" {
				t.Errorf("Authorization %q", got.auth)
			}
			if got.contentType != "application/json" {
				t.Errorf("Content-Type %q", got.contentType)
			}
			if string(got.body) != compact(t, tc.golden) {
				t.Errorf("body\n got %s\nwant %s", got.body, compact(t, tc.golden))
			}
		})
	}
}

func TestErrors(t *testing.T) {
	cases := []struct {
		name         string
		status       int
		body         string
		unauthorized bool
		notFound     bool
		code, msg    string
	}{
		{"unauthorized", 401, `{"error":{"code":"unauthorized","message":"bad token"}}`, true, false, "unauthorized", "bad token"},
		{"forbidden", 403, `{"error":{"code":"forbidden","message":"other cluster"}}`, true, false, "forbidden", "other cluster"},
		{"not found", 404, `{"error":{"code":"not_found","message":"no such hostname"}}`, false, true, "not_found", "no such hostname"},
		{"conflict", 409, `{"error":{"code":"conflict","message":"hostname a.example.com belongs to another cluster"}}`, false, false, "conflict", "hostname a.example.com belongs to another cluster"},
		{"internal", 500, `{"error":{"code":"internal","message":"internal error"}}`, false, false, "internal", "internal error"},
		{"not json", 502, `<html>bad gateway</html>`, false, false, "", "<html>bad gateway</html>"},
		{"created is not 200", 201, `{}`, false, false, "", "{}"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := server(t, tc.status, tc.body)
			err := c.Unregister(context.Background(), "uuid-1", "a.example.com")
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("error %v is not an *APIError", err)
			}
			if ae.Status != tc.status || ae.Code != tc.code || ae.Message != tc.msg {
				t.Errorf("got %+v, want status %d code %q message %q", ae, tc.status, tc.code, tc.msg)
			}
			if errors.Is(err, ErrUnauthorized) != tc.unauthorized {
				t.Errorf("errors.Is(ErrUnauthorized) = %v", !tc.unauthorized)
			}
			if IsNotFound(err) != tc.notFound {
				t.Errorf("IsNotFound = %v", !tc.notFound)
			}
			if !strings.Contains(err.Error(), "/api/v1/gateway/routes/unregister") {
				t.Errorf("error %q does not name the call", err)
			}
		})
	}
}

// endless is an error body that never ends; it counts what was read of it.
type endless struct{ read int }

func (e *endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	e.read += len(p)
	return len(p), nil
}
func (e *endless) Close() error { return nil }

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestErrorBodyIsBounded(t *testing.T) {
	body := &endless{}
	c := &Client{BaseURL: "http://cp.invalid", Token: "t", HTTP: &http.Client{Transport: roundTripper(func(r *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 500, Body: body, Header: http.Header{}, Request: r}, nil
	})}}
	err := c.Sync(context.Background(), Sync{ClusterUUID: "u"})
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 500 {
		t.Fatalf("error %v, want an APIError 500", err)
	}
	if body.read > maxErrorBody+32<<10 {
		t.Errorf("read %d bytes of the error body, limit %d", body.read, maxErrorBody)
	}
	if len(ae.Message) > 520 {
		t.Errorf("message of %d bytes kept", len(ae.Message))
	}
}

func TestTransportError(t *testing.T) {
	c := &Client{BaseURL: "http://cp.invalid", HTTP: &http.Client{Transport: roundTripper(func(*http.Request) (*http.Response, error) {
		return nil, errors.New("connection refused")
	})}}
	err := c.Register(context.Background(), "u", Route{Hostname: "h"})
	if err == nil || errors.Is(err, ErrUnauthorized) {
		t.Fatalf("error %v", err)
	}
	var ae *APIError
	if errors.As(err, &ae) {
		t.Errorf("transport error reported as APIError %+v", ae)
	}
}

func TestDefaultHTTPClientHasTimeout(t *testing.T) {
	if defaultHTTP.Timeout != DefaultTimeout || DefaultTimeout <= 0 {
		t.Fatalf("default timeout %v", defaultHTTP.Timeout)
	}
}
