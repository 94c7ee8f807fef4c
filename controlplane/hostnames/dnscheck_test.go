package hostnames_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/hostnames"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

func TestMain(m *testing.M) { testenv.Main(m, pgtest.Stop) }

// zone is a DNS server on loopback answering TXT queries from a map.
type zone struct {
	mu   sync.Mutex
	txt  map[string][]string // fully qualified name -> values
	addr string
}

func startZone(t *testing.T) *zone {
	t.Helper()
	z := &zone{txt: map[string][]string{}}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	z.addr = pc.LocalAddr().String()
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: z, NotifyStartedFunc: func() { close(started) }}
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return z
}

func (z *zone) set(name string, values ...string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.txt[dns.Fqdn(name)] = values
}

func (z *zone) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	z.mu.Lock()
	for _, q := range r.Question {
		vals, ok := z.txt[strings.ToLower(q.Name)]
		if !ok {
			m.Rcode = dns.RcodeNameError
			continue
		}
		if q.Qtype == dns.TypeTXT {
			for _, v := range vals {
				m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 1}, Txt: []string{v}})
			}
		}
	}
	z.mu.Unlock()
	_ = w.WriteMsg(m)
}

// TestDNSVerification: a custom domain's route is stored and not served;
// a missing or wrong TXT record leaves it pending with the finding
// recorded; the right record, answered by a real DNS server on loopback,
// verifies it and the gateway's route set then includes it.
func TestDNSVerification(t *testing.T) {
	ctx := context.Background()
	db, err := postgres.Open(ctx, pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if _, err := postgres.Migrate(ctx, db.Pool()); err != nil {
		t.Fatal(err)
	}
	c, err := db.CreateCluster(ctx, "shop")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"shop.example.org", "*.apps.example.org"} {
		if err := db.RegisterRoute(ctx, controlplane.Route{Hostname: h, ClusterUUID: c.UUID, ServiceName: "web", ServicePort: 80}); err != nil {
			t.Fatal(err)
		}
	}
	served := func() int {
		rs, err := db.ServedRoutes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(rs)
	}
	if n := served(); n != 0 {
		t.Fatalf("%d routes served before verification", n)
	}
	z := startZone(t)
	v := &hostnames.DNSVerifier{Store: db, Resolver: hostnames.NewResolver(z.addr), Timeout: 5 * time.Second}
	pending, err := db.PendingHostnames(ctx, 10)
	if err != nil || len(pending) != 2 {
		t.Fatalf("PendingHostnames = %+v, %v", pending, err)
	}
	var shop, wild controlplane.Hostname
	for _, p := range pending {
		if p.Hostname == "shop.example.org" {
			shop = p
		} else {
			wild = p
		}
	}
	if wild.TXTName != "_pipeops-challenge.apps.example.org" {
		t.Errorf("a wildcard's challenge is at %q, want its domain's", wild.TXTName)
	}

	// No record, then a wrong one: still pending, the finding recorded.
	if err := v.Check(ctx, shop); !errors.Is(err, hostnames.ErrNoRecord) {
		t.Fatalf("Check without a record = %v", err)
	}
	z.set(shop.TXTName, "someone-else")
	if err := v.Check(ctx, shop); !errors.Is(err, hostnames.ErrNoRecord) {
		t.Fatalf("Check with a wrong record = %v", err)
	}
	hs, _ := db.Hostnames(ctx, c.UUID)
	for _, h := range hs {
		if h.Hostname == shop.Hostname && (h.Verified || !strings.Contains(h.CheckError, "none with this cluster's challenge")) {
			t.Errorf("after a wrong record: %+v", h)
		}
	}
	if n := served(); n != 0 {
		t.Fatalf("%d routes served with a wrong record", n)
	}

	// The right records, among others; the periodic round verifies both.
	z.set(shop.TXTName, "v=spf1 -all", shop.TXTValue)
	z.set(wild.TXTName, wild.TXTValue)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	v.Interval = 50 * time.Millisecond
	go func() { defer close(done); v.Run(rctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(20 * time.Second)
	for served() != 2 {
		if time.Now().After(deadline) {
			hs, _ := db.Hostnames(ctx, c.UUID)
			t.Fatalf("not verified within 20s: %+v", hs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
