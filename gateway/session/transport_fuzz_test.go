package session

import (
	"testing"

	"github.com/pipeops/tunnel/shared/tunnel"
)

// FuzzParseTargetHost: the address a Transport dials is decoded into a
// cluster and a stream header only when TargetHost could have written it,
// and what is decoded names the same target again when re-encoded, so a
// request can only reach the cluster and Service its URL host names.
func FuzzParseTargetHost(f *testing.F) {
	h := tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 8443, Service: "ingress-nginx-controller", Namespace: "ingress-nginx"}
	good, err := TargetHost("0f3c2a", h)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	for _, s := range []string{
		// TestTargetHost's refusals.
		"example.com:80", "a.b.tunnel:80", "a.b.c.d.tunnel:80", "a.b.c.tunnel:99999",
		// Parts TargetHost never writes.
		"...tunnel:80", "a..c.tunnel:80", "[a:b.c.d.tunnel]:80", "a.b/c.d.tunnel:80",
		// Spellings of a good address that are not TargetHost's own.
		"[web.apps.c1.tunnel]:80", "web.apps.c1.tunnel:080", "web.apps.c1.tunnel:+80",
		"web.apps.c1.tunnel", "web.apps.c1.tunnel:", ":80", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		cluster, h, err := parseTargetHost(addr)
		if err != nil {
			if cluster != "" || h != (tunnel.StreamHeader{}) {
				t.Fatalf("parseTargetHost(%q) = %q, %+v together with error %v", addr, cluster, h, err)
			}
			return
		}
		if h.Protocol != tunnel.ProtocolTCP {
			t.Fatalf("parseTargetHost(%q): protocol %d, want TCP", addr, h.Protocol)
		}
		enc, err := TargetHost(cluster, h)
		if err != nil {
			t.Fatalf("parseTargetHost(%q) = %q, %+v, which TargetHost refuses: %v", addr, cluster, h, err)
		}
		cluster2, h2, err := parseTargetHost(enc)
		if err != nil || cluster2 != cluster || h2 != h {
			t.Fatalf("re-encoded %q parses as %q, %+v, %v; want %q, %+v", enc, cluster2, h2, err, cluster, h)
		}
	})
}
