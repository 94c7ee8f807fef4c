// Package cptest stands up a real control plane for tests of any component:
// a migrated PostgreSQL database of the test's own (from pgtest), the token
// issuer, and optionally the API behind httptest. Test binaries that use it
// stop the shared PostgreSQL server in TestMain (testenv.Main with
// pgtest.Stop).
package cptest

import (
	"context"
	"crypto/rand"
	"net/http/httptest"
	"testing"

	"github.com/pipeops/tunnel/controlplane/api"
	"github.com/pipeops/tunnel/controlplane/console"
	"github.com/pipeops/tunnel/controlplane/hostnames"
	"github.com/pipeops/tunnel/controlplane/keyseal"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

// ControlPlane is a running control plane; everything is closed when the
// test ends.
type ControlPlane struct {
	DB     *postgres.DB
	DBURL  string
	Issuer *tokens.Issuer
	API    *api.Server
	URL    string // the API's base URL
	// AdminURL serves /healthz, /readyz and /metrics (api.AdminHandler).
	AdminURL string
	// KEK seals the signing keys: a random key-encryption key of the test.
	KEK *keyseal.Keyring
	// DNS checks custom domains for the API; set its Resolver before the
	// first check to point it at a test DNS server.
	DNS *hostnames.DNSVerifier
}

// Store returns a migrated database of t's own and an issuer over it.
func Store(t testing.TB) *ControlPlane {
	t.Helper()
	ctx := context.Background()
	url := pgtest.URL(t)
	db, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if _, err := postgres.Migrate(ctx, db.Pool()); err != nil {
		t.Fatal(err)
	}
	// Tests that are not about hostname ownership register names like
	// app.test without publishing DNS records; the ownership tests turn
	// verification back on (cp.DB.Ownership).
	db.Ownership.TrustUnverified = true
	raw := make([]byte, keyseal.KEKSize)
	_, _ = rand.Read(raw)
	kek, err := keyseal.NewKEK(raw)
	if err != nil {
		t.Fatal(err)
	}
	ring := keyseal.NewKeyring(kek)
	issuer, err := tokens.NewIssuer(ctx, db, db, tokens.Options{KEK: ring})
	if err != nil {
		t.Fatal(err)
	}
	return &ControlPlane{DB: db, DBURL: url, Issuer: issuer, KEK: ring}
}

// Start is Store plus the API, configured with cfg, behind httptest, with
// the API's Run (the revocation checks of registration sockets) running.
func Start(t testing.TB, cfg api.Config) *ControlPlane {
	t.Helper()
	cp := Store(t)
	// Tests send no DNS query off the machine: by default the resolver is a
	// loopback port where nothing answers.
	cp.DNS = &hostnames.DNSVerifier{Store: cp.DB, Resolver: hostnames.NewResolver("127.0.0.1:9")}
	ui, err := console.New(console.Config{APIURL: cfg.APIURL, GatewayURL: cfg.GatewayURL, GatewayCA: cfg.GatewayCA, K8sAPIDomain: cfg.K8sAPIDomain},
		console.Deps{Clusters: cp.DB, Routes: cp.DB, Tokens: cp.DB, Issuer: cp.Issuer, Audit: cp.DB, Traffic: cp.DB})
	if err != nil {
		t.Fatal(err)
	}
	s, err := api.New(cfg, api.Deps{Clusters: cp.DB, Routes: cp.DB, Tokens: cp.DB, Hostnames: cp.DB, DNS: cp.DNS, Issuer: cp.Issuer, DB: cp.DB,
		Audit: cp.DB, Console: ui.Handler(), Traffic: cp.DB})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	admin := httptest.NewServer(s.AdminHandler())
	runCtx, stopRun := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); s.Run(runCtx) }() // the registration sockets' revocation checks
	t.Cleanup(func() { stopRun(); <-runDone; s.Close(); srv.Close(); admin.Close() })
	cp.API, cp.URL, cp.AdminURL = s, srv.URL, admin.URL
	return cp
}
