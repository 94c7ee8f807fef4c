package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

// 0005 adds tokens.groups to a database that has issued tokens already:
// their records read back with no groups, and still match the tokens they
// describe (which carry no groups claim), so no token stops working.
func TestMigration0005TokenGroups(t *testing.T) {
	const name = "0005_token_groups.sql"
	ctx := context.Background()
	pool := pgtest.Pool(t)
	old := migrationsBefore(t, name)
	if len(old) != 4 {
		t.Fatalf("migrations before %s: %d, want 4", name, len(old))
	}
	if _, err := migrate(ctx, pool, old); err != nil {
		t.Fatalf("migrate to before %s: %v", name, err)
	}
	exp := time.Now().Add(time.Hour).Truncate(time.Second).UTC()
	if _, err := pool.Exec(ctx, `
		INSERT INTO tokens (id, issuer, kind, clusters, subject, issued_at, expires_at)
		VALUES ('old-user', $1, 'user', '{"*"}', 'kubeconfig:prod', now(), $2)`, auth.Issuer, exp); err != nil {
		t.Fatal(err)
	}

	applied, err := Migrate(ctx, pool)
	if err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if len(applied) == 0 || applied[0] != name {
		t.Fatalf("Migrate applied %v, want %s first", applied, name)
	}
	db := New(pool)
	tok, err := db.Token(ctx, "old-user")
	if err != nil {
		t.Fatal(err)
	}
	if len(tok.Groups) != 0 || tok.Subject != "kubeconfig:prod" {
		t.Errorf("existing token after 0005: %+v, want its subject and no groups", tok)
	}
	claims := &auth.Claims{
		RegisteredClaims: jwt.RegisteredClaims{ID: "old-user", Issuer: auth.Issuer, Subject: "kubeconfig:prod",
			Audience: jwt.ClaimStrings{auth.Audience}, ExpiresAt: jwt.NewNumericDate(exp)},
		Kind: auth.KindUser, Clusters: []string{"*"},
	}
	if err := tok.AuthRecord().Match(claims); err != nil {
		t.Errorf("a token issued before 0005 no longer matches its record: %v", err)
	}
	claims.Groups = []string{"dev"}
	if err := tok.AuthRecord().Match(claims); err == nil {
		t.Error("the same token with a groups claim added matches its record; want refused")
	}
	// NOT NULL: readers never meet a NULL, however old the token.
	if _, err := pool.Exec(ctx, `UPDATE tokens SET groups = NULL WHERE id = 'old-user'`); err == nil {
		t.Error("groups took NULL; want NOT NULL")
	}
	if err := db.RecordToken(ctx, controlplane.Token{ID: "new-user", Issuer: auth.Issuer, Kind: "user", Clusters: []string{"*"},
		Subject: "alice", Groups: []string{"dev", "ops"}, ExpiresAt: exp}); err != nil {
		t.Fatalf("RecordToken after 0005: %v", err)
	}
}
