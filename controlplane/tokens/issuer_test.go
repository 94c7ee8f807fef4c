package tokens_test

import (
	"context"
	"errors"
	"testing"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

func TestMain(m *testing.M) { testenv.Main(m, pgtest.Stop) }

func TestIssuer(t *testing.T) {
	ctx := context.Background()
	db, err := postgres.Open(ctx, pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := postgres.Migrate(ctx, db.Pool()); err != nil {
		t.Fatal(err)
	}
	cluster, err := db.CreateCluster(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}

	kek := newKeyring(t)
	first, err := tokens.NewIssuer(ctx, db, db, tokens.Options{KEK: kek})
	if err != nil {
		t.Fatal(err)
	}
	tok, rec, err := first.Issue(ctx, tokens.Request{Kind: auth.KindAgent, ClusterUUID: cluster.UUID})
	if err != nil {
		t.Fatal(err)
	}
	if rec.ExpiresAt.Sub(rec.IssuedAt) != tokens.DefaultAgentTTL {
		t.Fatalf("agent token lifetime %s", rec.ExpiresAt.Sub(rec.IssuedAt))
	}

	// A restart (or another replica) loads the same key: old tokens verify.
	second, err := tokens.NewIssuer(ctx, db, db, tokens.Options{KEK: kek})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := db.SigningKeys(ctx)
	if err != nil || len(keys) != 1 {
		t.Fatalf("signing keys after two starts: %d, %v; want exactly 1", len(keys), err)
	}
	claims, err := second.Verifier().Verify(ctx, tok, auth.KindAgent)
	if err != nil || claims.ClusterID != cluster.UUID || claims.ID != rec.ID {
		t.Fatalf("verify after restart: %+v, %v", claims, err)
	}

	if err := db.RevokeToken(ctx, rec.ID, rec.IssuedAt); err != nil {
		t.Fatal(err)
	}
	if _, err := second.Verifier().Verify(ctx, tok); !errors.Is(err, auth.ErrRevoked) {
		t.Fatalf("verify revoked: %v, want ErrRevoked", err)
	}

	for name, req := range map[string]tokens.Request{
		"agent without cluster": {Kind: auth.KindAgent},
		"user without clusters": {Kind: auth.KindUser},
		"unknown kind":          {Kind: "root"},
	} {
		if _, _, err := first.Issue(ctx, req); controlplane.ErrorCode(err) != controlplane.EINVALID {
			t.Errorf("%s: %v, want EINVALID", name, err)
		}
	}
	if _, err := first.JWKS(ctx); err != nil {
		t.Fatal(err)
	}
}
