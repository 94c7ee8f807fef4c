package tunnel

import (
	"errors"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// gatewayQueryKeys are the query parameters GatewayURL sets.
var gatewayQueryKeys = []string{"cluster_uuid", "agent_version", "supports_yamux", "supports_streaming",
	"supports_binary", "supports_websocket", "supports_response_streaming", CapabilityK8sHTTP}

// FuzzGatewayURL: the gateway_ws_url of a register_success (the server's
// word) becomes a ws or wss URL to the same host, with /ws for an empty
// path, exactly one of each parameter GatewayURL sets and the server's other
// parameters as they were; building it again from the result changes
// nothing. RegistrationURL accepts the same URLs. Refusals are
// ErrInvalidURL and never repeat the URL's credentials.
func FuzzGatewayURL(f *testing.F) {
	// TestGatewayURL's, TestRegistrationURL's and TestHandshakeURLErrors's
	// URLs, and a few more.
	for _, in := range []string{
		"wss://gw.example.com", "wss://gw.example.com/", "https://gw.example.com:8443", "ws://127.0.0.1:9000/tunnel",
		"wss://gw.example.com/ws?region=eu&cluster_uuid=stale", "https://api.pipeops.io", "http://localhost:8080",
		"HTTPS://api.example.com/base", "", "api.pipeops.io", "ftp://api.pipeops.io", "https://", "http://[::1",
		"https://user:pa ss@host", "wss://user:hunter2-secret@gw.example.com/ws#frag", "wss://gw.example.com/a%2Fb?x=1;y=2&z=%zz",
		"ftp://user:hunter2-secret@gw.example.com", "wss://[::1]:8443/ws?cluster_uuid=a&cluster_uuid=b",
	} {
		f.Add(in, "uuid-1", "v2.0.0")
	}
	f.Add("wss://gw.example.com", "", "v1")
	f.Add("wss://gw.example.com", "a&b=c", "1 2")

	f.Fuzz(func(t *testing.T, in, cluster, version string) {
		got, err := GatewayURL(in, cluster, version)
		reg, regErr := RegistrationURL(in)
		if cluster != "" && (err == nil) != (regErr == nil) {
			t.Fatalf("GatewayURL(%q) error %v but RegistrationURL error %v", in, err, regErr)
		}
		if err != nil {
			checkURLError(t, in, err)
			if regErr != nil {
				checkURLError(t, in, regErr)
			}
			return
		}
		orig, perr := url.Parse(in)
		if perr != nil {
			t.Fatalf("GatewayURL accepted %q, which does not parse: %v", in, perr)
		}
		u, err := url.Parse(got)
		if err != nil {
			t.Fatalf("GatewayURL(%q) = %q, which does not parse: %v", in, got, err)
		}
		wantScheme := map[string]string{"http": "ws", "ws": "ws", "https": "wss", "wss": "wss"}[strings.ToLower(orig.Scheme)]
		wantPath := orig.Path
		if wantPath == "" || wantPath == "/" {
			wantPath = GatewayPath
		}
		switch {
		case u.Scheme != wantScheme || wantScheme == "":
			t.Fatalf("GatewayURL(%q) = %q: scheme %q, want %q", in, got, u.Scheme, wantScheme)
		case u.Host != orig.Host || u.Host == "":
			t.Fatalf("GatewayURL(%q) = %q: host %q, want %q", in, got, u.Host, orig.Host)
		case u.Path != wantPath:
			t.Fatalf("GatewayURL(%q) = %q: path %q, want %q", in, got, u.Path, wantPath)
		case u.Fragment != "":
			t.Fatalf("GatewayURL(%q) = %q keeps the fragment", in, got)
		}
		q, kept := u.Query(), orig.Query()
		for _, k := range gatewayQueryKeys {
			want := "true"
			switch k {
			case "cluster_uuid":
				want = cluster
			case "agent_version":
				want = version
			}
			if !slices.Equal(q[k], []string{want}) {
				t.Fatalf("GatewayURL(%q, %q, %q) = %q: %s = %q, want [%q]", in, cluster, version, got, k, q[k], want)
			}
			delete(q, k)
			delete(kept, k)
		}
		for k := range q {
			if !slices.Equal(q[k], kept[k]) {
				t.Fatalf("GatewayURL(%q) = %q: parameter %q = %q, the server sent %q", in, got, k, q[k], kept[k])
			}
			delete(kept, k)
		}
		if len(kept) != 0 {
			t.Fatalf("GatewayURL(%q) = %q lost parameters %v", in, got, kept)
		}
		if again, err := GatewayURL(got, cluster, version); err != nil || again != got {
			t.Fatalf("GatewayURL(%q) = %q, %v; want it unchanged", got, again, err)
		}

		r, err := url.Parse(reg)
		if err != nil {
			t.Fatalf("RegistrationURL(%q) = %q, which does not parse: %v", in, reg, err)
		}
		if r.Scheme != wantScheme || r.Host != orig.Host || r.Path != strings.TrimSuffix(orig.Path, "/")+RegistrationPath {
			t.Fatalf("RegistrationURL(%q) = %q", in, reg)
		}
	})
}

// urlErrorText is all a URL refusal may say, but for the scheme it quotes.
const urlErrorText = "tunnel: invalid URL: cannot parse; no host; empty cluster uuid; scheme , want http, https, ws or wss"

func checkURLError(t *testing.T, in string, err error) {
	t.Helper()
	if !errors.Is(err, ErrInvalidURL) {
		t.Fatalf("error %v for %q is not ErrInvalidURL", err, in)
	}
	msg := err.Error()
	u, perr := url.Parse(in)
	if perr != nil {
		if len(in) >= 8 && strings.Contains(msg, in) && !strings.Contains(urlErrorText, in) {
			t.Fatalf("error %q repeats the URL %q", msg, in)
		}
		return
	}
	msg = strings.ReplaceAll(msg, strconv.Quote(u.Scheme), "")
	if pw, ok := u.User.Password(); ok && len(pw) >= 8 && strings.Contains(msg, pw) && !strings.Contains(urlErrorText, pw) {
		t.Fatalf("error %q repeats the password of %q", err, in)
	}
}
