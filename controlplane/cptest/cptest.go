// Package cptest stands up a real control plane for tests of any component:
// a migrated PostgreSQL database of the test's own (from pgtest), the token
// issuer, and optionally the API behind httptest. Test binaries that use it
// stop the shared PostgreSQL server in TestMain (testenv.Main with
// pgtest.Stop).
package cptest

import (
	"context"
	"net/http/httptest"
	"testing"

	"github.com/pipeops/tunnel/controlplane/api"
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
	issuer, err := tokens.NewIssuer(ctx, db, db)
	if err != nil {
		t.Fatal(err)
	}
	return &ControlPlane{DB: db, DBURL: url, Issuer: issuer}
}

// Start is Store plus the API, configured with cfg, behind httptest.
func Start(t testing.TB, cfg api.Config) *ControlPlane {
	t.Helper()
	cp := Store(t)
	s, err := api.New(cfg, api.Deps{Clusters: cp.DB, Routes: cp.DB, Tokens: cp.DB, Issuer: cp.Issuer, DB: cp.DB})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(func() { s.Close(); srv.Close() })
	cp.API, cp.URL = s, srv.URL
	return cp
}
