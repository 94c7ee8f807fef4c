package postgres

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
)

func TestTokens(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	a := mustCluster(t, db, "alpha")
	b := mustCluster(t, db, "bravo")
	now := clk.Now()

	agent := controlplane.Token{ID: "jti-agent", Kind: "agent", ClusterUUID: a.UUID, Subject: "agent:alpha", IssuedAt: now, ExpiresAt: now.Add(time.Hour)}
	user := controlplane.Token{ID: "jti-user", Kind: "user", Clusters: []string{a.UUID, b.UUID}, Subject: "ops@example.com", Groups: []string{"dev", "ops"}, IssuedAt: now.Add(time.Second), ExpiresAt: now.Add(time.Hour)}
	other := controlplane.Token{ID: "jti-other", Kind: "agent", ClusterUUID: b.UUID, IssuedAt: now.Add(2 * time.Second), ExpiresAt: now.Add(time.Hour)}

	record := []struct {
		name string
		tok  controlplane.Token
		code string
	}{
		{"agent", agent, ""},
		{"user", user, ""},
		{"other", other, ""},
		{"duplicate id", agent, controlplane.ECONFLICT},
		{"no id", controlplane.Token{Kind: "agent", ExpiresAt: now}, controlplane.EINVALID},
		{"no kind", controlplane.Token{ID: "x", ExpiresAt: now}, controlplane.EINVALID},
		{"no expiry", controlplane.Token{ID: "x", Kind: "agent"}, controlplane.EINVALID},
		{"unknown cluster", controlplane.Token{ID: "x", Kind: "agent", ClusterUUID: "00000000-0000-0000-0000-000000000000", ExpiresAt: now}, controlplane.ENOTFOUND},
		{"malformed cluster", controlplane.Token{ID: "y", Kind: "agent", ClusterUUID: "alpha", ExpiresAt: now}, controlplane.ENOTFOUND},
	}
	for _, tt := range record {
		t.Run("record "+tt.name, func(t *testing.T) { wantCode(t, db.RecordToken(ctx, tt.tok), tt.code) })
	}

	list := []struct {
		cluster string
		want    []string
	}{
		{"", []string{"jti-agent", "jti-user", "jti-other"}},
		{a.UUID, []string{"jti-agent", "jti-user"}},
		{b.UUID, []string{"jti-user", "jti-other"}},
		{"00000000-0000-0000-0000-000000000000", nil},
		{"malformed", nil},
	}
	for _, tt := range list {
		t.Run("list cluster="+tt.cluster, func(t *testing.T) {
			toks, err := db.Tokens(ctx, tt.cluster)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, tok := range toks {
				ids = append(ids, tok.ID)
			}
			if !slices.Equal(ids, tt.want) {
				t.Errorf("ids %v, want %v", ids, tt.want)
			}
		})
	}
	toks, _ := db.Tokens(ctx, a.UUID)
	if got := toks[1]; got.Kind != "user" || got.Subject != user.Subject || !slices.Equal(got.Clusters, user.Clusters) || !slices.Equal(got.Groups, user.Groups) ||
		got.ClusterUUID != "" || !got.IssuedAt.Equal(user.IssuedAt) || !got.ExpiresAt.Equal(user.ExpiresAt) || !got.RevokedAt.IsZero() {
		t.Errorf("user token read back as %+v", got)
	}

	revoked := func(id string) bool {
		t.Helper()
		r, err := db.Revoked(ctx, id)
		if err != nil {
			t.Fatalf("Revoked(%q): %v", id, err)
		}
		return r
	}
	if revoked("jti-agent") {
		t.Error("fresh token counts as revoked")
	}
	if !revoked("never-issued") {
		t.Error("unknown token does not count as revoked")
	}

	first := now.Add(time.Minute)
	if err := db.RevokeToken(ctx, "jti-agent", first); err != nil {
		t.Fatalf("RevokeToken: %v", err)
	}
	if err := db.RevokeToken(ctx, "jti-agent", first.Add(time.Hour)); err != nil {
		t.Fatalf("RevokeToken again: %v", err)
	}
	if !revoked("jti-agent") {
		t.Error("revoked token does not count as revoked")
	}
	toks, _ = db.Tokens(ctx, a.UUID)
	if !toks[0].RevokedAt.Equal(first) {
		t.Errorf("revoked at %v, want the first revocation %v", toks[0].RevokedAt, first)
	}
	wantCode(t, db.RevokeToken(ctx, "never-issued", now), controlplane.ENOTFOUND)

	// A deleted cluster takes its agent tokens' records along, which
	// revokes them.
	if _, err := db.Pool().Exec(ctx, `DELETE FROM clusters WHERE uuid = $1`, b.UUID); err != nil {
		t.Fatal(err)
	}
	if !revoked("jti-other") {
		t.Error("agent token of a deleted cluster does not count as revoked")
	}
}
