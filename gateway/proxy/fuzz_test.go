package proxy

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/gateway/routetable"
	"github.com/pipeops/tunnel/gateway/session"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// FuzzSplitK8sPath: the cluster a /k8s/ request reaches is exactly the
// first element of its path, the one its token is checked against. Nothing
// of the path is lost or added on the way: the API path is the rest of it.
func FuzzSplitK8sPath(f *testing.F) {
	// TestKubernetesAPIAccess's paths, and the edges of the split.
	for _, s := range []string{
		"/k8s/c1/api/v1/namespaces", "/k8s/", "/k8s/c2/api", "/k8s/c1", "/k8s/c1/", "/k8s//api/v1",
		"/k8s", "/api/v1/namespaces", "/k8s/c1/../c2/api", "/k8s/a.b/api", "/k8s/c1//api", "k8s/c1/api", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		cluster, apiPath, ok := splitK8sPath(path)
		if !ok {
			if cluster != "" || apiPath != "" {
				t.Fatalf("splitK8sPath(%q) = %q, %q with ok false", path, cluster, apiPath)
			}
			if rest, under := strings.CutPrefix(path, K8sPrefix); under && rest != "" && rest[0] != '/' {
				t.Fatalf("splitK8sPath(%q) refused a path that names cluster %q", path, strings.SplitN(rest, "/", 2)[0])
			}
			return
		}
		switch {
		case cluster == "" || strings.Contains(cluster, "/"):
			t.Fatalf("splitK8sPath(%q): cluster %q", path, cluster)
		case !strings.HasPrefix(apiPath, "/"):
			t.Fatalf("splitK8sPath(%q): API path %q is not absolute", path, apiPath)
		case path != K8sPrefix+cluster+apiPath && !(path == K8sPrefix+cluster && apiPath == "/"):
			t.Fatalf("splitK8sPath(%q) = %q, %q: not the same path", path, cluster, apiPath)
		}
		// The stream goes to the cluster named, or nowhere.
		if host, err := session.TargetHost(cluster, tunnel.KubernetesAPI); err == nil {
			if parts := strings.Split(host, "."); len(parts) < 3 || parts[2] != cluster {
				t.Fatalf("cluster %q: target host %q names another", cluster, host)
			}
		}
	})
}

// FuzzDirectAddr: a cluster's public endpoint, however it is written,
// becomes one host:port to dial (the host of a URL when it is one) with a
// host, never an empty one (which would dial the gateway's own machine), or
// nothing; and that address, when its host can be a host at all, is its own
// endpoint. (A host such as "//" cannot be dialled whatever it is turned
// into.)
func FuzzDirectAddr(f *testing.F) {
	// TestDirectAddr's endpoints, and some that are not well formed.
	for _, s := range []string{
		"203.0.113.7", "lb.example.com", "lb.example.com:8080", "http://lb.example.com", "http://10.1.2.3:31000/", "2001:db8::1",
		"[2001:db8::1]", "[2001:db8::1]:443", "https://user:pw@lb.example.com:8443/path?q#f", "lb.example.com:", ":80", "", "[", "a:b:c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, endpoint string) {
		addr := directAddr(endpoint)
		if addr == "" {
			return
		}
		host, _, err := net.SplitHostPort(addr)
		if err != nil || host == "" {
			t.Fatalf("directAddr(%q) = %q, not host:port: %v", endpoint, addr, err)
		}
		if again := directAddr(addr); again != addr && !strings.ContainsAny(host, "/?#@\\ \t\r\n") {
			t.Fatalf("directAddr(%q) = %q, but directAddr(%q) = %q", endpoint, addr, addr, again)
		}
		if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
			if want, ok := urlHost(u.Host); ok && host != want {
				t.Fatalf("directAddr(%q) = %q: host %q, want the URL's %q", endpoint, addr, host, want)
			}
		}
	})
}

// urlHost is the host of a URL's host[:port], when that is unambiguous: an
// IPv6 literal written without brackets ("::1") may or may not end in a
// port, and stray brackets ("a]") are no host syntax at all.
func urlHost(hostport string) (string, bool) {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h, true
	}
	if inner, ok := strings.CutPrefix(hostport, "["); ok && strings.HasSuffix(inner, "]") {
		inner = strings.TrimSuffix(inner, "]")
		return inner, !strings.ContainsAny(inner, "[]")
	}
	return hostport, !strings.ContainsAny(hostport, ":[]")
}

// fuzzClientIP is the visitor's address in FuzzUpgradeRequest.
const fuzzClientIP = "192.0.2.7"

// FuzzUpgradeRequest reads a visitor's request as the server would and
// checks the upgrade path's header handling on it: the request asks for an
// upgrade exactly when its Connection header names "upgrade" and it names a
// protocol; the request sent upstream asks for that protocol, carries no
// hop-by-hop header and none that the visitor's Connection header named,
// carries our forwarding headers and none of the visitor's, keeps every
// other header as the visitor sent it, and reads back the same off the wire.
// The visitor's own request is left as it was.
func FuzzUpgradeRequest(f *testing.F) {
	// The requests of the upgrade tests (upgrade_test.go), and variations.
	for _, s := range []string{
		"GET /raw-echo HTTP/1.1\r\nHost: tunnel.example.com\r\nConnection: keep-alive, Upgrade\r\nUpgrade: raw-test\r\n" +
			"Keep-Alive: timeout=5\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n",
		"GET /ws-echo HTTP/1.1\r\nHost: direct.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
		"GET /refuse HTTP/1.1\r\nHost: fallback.example.com\r\nConnection: Upgrade\r\nUpgrade: raw-test\r\nUser-Agent: Go-http-client/1.1\r\n\r\n",
		"GET /x?a=%zz;b=1 HTTP/1.1\r\nHost: a.example.com:8080\r\nConnection: upgrade, X-Secret, te\r\nUpgrade: h2c\r\n" +
			"X-Secret: 1\r\nTe: trailers, deflate\r\nForwarded: for=203.0.113.9\r\nX-Forwarded-Host: evil.example.com\r\n" +
			"X-Forwarded-Proto: https\r\nProxy-Authorization: Basic eA==\r\nX-Keep: a\r\nX-Keep: b\r\n\r\n",
		"POST /up HTTP/1.1\r\nHost: a.example.com\r\nConnection: UPGRADE\r\nUpgrade: raw-test\r\nContent-Length: 5\r\n\r\nhello",
		"GET / HTTP/1.0\r\nHost: a.example.com\r\nConnection:\t upgrade \t\r\nUpgrade: x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\nUpgrade: websocket\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example.com\r\nConnection: upgradex\r\nUpgrade: websocket\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example.com\r\nConnection: upgrade\r\n\r\n",
		"GET http://b.example.com/p HTTP/1.1\r\nHost: a.example.com\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	wantURLHost, err := session.TargetHost("c1", tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "web", Namespace: "apps"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil || r.ProtoMajor != 1 || !serverTakesHost(r.Host) || !serverTakesHeader(r.Header) {
			return // the server answers these itself; they never reach the proxy
		}
		upType := upgradeType(r.Header)
		protocol := strings.Trim(r.Header.Get("Upgrade"), " \t")
		asks := refHasToken(r.Header["Connection"], "upgrade") && protocol != ""
		if asks != (upType != "") || (asks && upType != protocol) {
			t.Fatalf("upgradeType = %q for Connection %q, Upgrade %q", upType, r.Header["Connection"], r.Header["Upgrade"])
		}
		if upType == "" || !isPrintableASCII(upType) {
			return // not an upgrade, or one serveUpgrade refuses before building a request
		}
		r.RemoteAddr = fuzzClientIP + ":4242"
		before := r.Header.Clone()
		tg := &target{mode: controlplane.RoutingTunnel, match: routetable.Match{Route: controlplane.Route{
			ClusterUUID: "c1", Namespace: "apps", ServiceName: "web", ServicePort: 80}}}
		r = r.WithContext(context.WithValue(r.Context(), targetKey{}, tg))

		out := (&Proxy{}).upgradeRequest(r, upType)
		if !reflect.DeepEqual(r.Header, before) {
			t.Fatalf("the visitor's headers changed from %v to %v", before, r.Header)
		}
		if out.URL.Scheme != "http" || out.URL.Host != wantURLHost || out.Host != r.Host {
			t.Fatalf("upstream request to %s://%s with Host %q; want http://%s with the visitor's Host %q",
				out.URL.Scheme, out.URL.Host, out.Host, wantURLHost, r.Host)
		}
		if _, err := url.ParseQuery(out.URL.RawQuery); err != nil {
			t.Fatalf("upstream query %q does not parse: %v", out.URL.RawQuery, err)
		}
		checkUpstreamHead(t, "built", r, out.Header, upType)

		if r.URL.Opaque != "" {
			// An opaque request target ("A:0") goes upstream as the visitor
			// wrote it, as ReverseProxy sends it; the upstream judges it.
			return
		}
		// Only the head matters here; the body is the visitor's stream.
		out.Body, out.ContentLength, out.TransferEncoding = nil, 0, nil
		var wire bytes.Buffer
		if err := out.Write(&wire); err != nil {
			t.Fatalf("writing the upstream request: %v", err)
		}
		back, err := http.ReadRequest(bufio.NewReader(&wire))
		if err != nil {
			t.Fatalf("the upstream request does not read back: %v\n%s", err, wire.Bytes())
		}
		if back.Host != r.Host {
			t.Fatalf("upstream reads Host %q, visitor sent %q\n%s", back.Host, r.Host, wire.Bytes())
		}
		checkUpstreamHead(t, "sent", r, back.Header, upType)
	})
}

// setUpstream are the headers the upgrade path sets itself (or, for
// Content-Length and User-Agent, the request writer does).
var setUpstream = []string{"Connection", "Upgrade", "Te", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
	"User-Agent", "Content-Length"}

func checkUpstreamHead(t *testing.T, what string, visitor *http.Request, h http.Header, upType string) {
	t.Helper()
	want := map[string][]string{
		"Connection":        {"Upgrade"},
		"Upgrade":           {upType},
		"X-Forwarded-For":   {fuzzClientIP},
		"X-Forwarded-Host":  {visitor.Host},
		"X-Forwarded-Proto": {"http"},
		"Te":                nil,
	}
	if refHasToken(visitor.Header["Te"], "trailers") {
		want["Te"] = []string{"trailers"}
	}
	for k, v := range want {
		if !slices.Equal(h[k], v) {
			t.Fatalf("%s upstream: %s = %q, want %q", what, k, h[k], v)
		}
	}
	dropped := map[string]bool{"Forwarded": true}
	for _, k := range hopHeaders {
		dropped[k] = true
	}
	for _, v := range visitor.Header["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			if tok = textproto.TrimString(tok); tok != "" {
				dropped[http.CanonicalHeaderKey(tok)] = true
			}
		}
	}
	for k := range dropped {
		if _, ok := h[k]; ok && !slices.Contains(setUpstream, k) {
			t.Fatalf("%s upstream: header %s, which the visitor's request had as hop-by-hop, is still there: %q", what, k, h[k])
		}
	}
	for k, v := range visitor.Header {
		if dropped[k] || slices.Contains(setUpstream, k) {
			continue
		}
		if !slices.Equal(h[k], v) {
			t.Fatalf("%s upstream: header %s = %q, the visitor sent %q", what, k, h[k], v)
		}
	}
}

// refHasToken reports whether a comma-separated header list holds token,
// compared without regard to ASCII case (RFC 9110, 5.6.1 and 7.6.1).
func refHasToken(values []string, token string) bool {
	for _, v := range values {
		for _, el := range strings.Split(v, ",") {
			if strings.EqualFold(strings.Trim(el, " \t"), token) {
				return true
			}
		}
	}
	return false
}

// serverTakesHeader reports whether the HTTP server passes a request with
// these header fields on to handlers: it refuses (400) a name that is not a
// token (textproto reads "Name :" as the name "Name ") and a value with
// control characters.
func serverTakesHeader(h http.Header) bool {
	const tchar = "!#$%&'*+-.^_`|~"
	for k, vv := range h {
		if k == "" {
			return false
		}
		for i := range len(k) {
			c := k[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(tchar, c) >= 0) {
				return false
			}
		}
		for _, v := range vv {
			for i := range len(v) {
				if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
					return false
				}
			}
		}
	}
	return true
}

// serverTakesHost reports whether a Host is among those the HTTP server
// passes on to handlers (a conservative subset: the server refuses anything
// outside its host characters with 400, and the proxy routes only DNS
// names). An empty Host finds no route.
func serverTakesHost(h string) bool {
	if h == "" {
		return false
	}
	for i := range len(h) {
		c := h[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._:[]", c) >= 0) {
			return false
		}
	}
	return true
}
