package auth

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

type records map[string]*Record

func (r records) TokenRecord(_ context.Context, id string) (*Record, error) { return r[id], nil }

// TestRecordMatch: a token re-signed with the real key but claims that
// differ from its record is refused, whatever the claim; an unknown id is
// refused as revoked; the recorded claims pass.
func TestRecordMatch(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Now().Truncate(time.Second)
	exp := now.Add(time.Hour)
	rec := &Record{Issuer: Issuer, Kind: KindUser, Clusters: []string{"c1", "c2"}, Subject: "alice", Groups: []string{"dev", "ops"}, ExpiresAt: exp}
	base := func() *Claims {
		return &Claims{
			RegisteredClaims: jwt.RegisteredClaims{ID: "t1", Issuer: Issuer, Subject: "alice",
				ExpiresAt: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(now)},
			Kind: KindUser, Clusters: []string{"c2", "c1"}, Groups: []string{"ops", "dev"},
		}
	}
	var refused []error
	v := &Verifier{Keys: StaticKeys{"k": pub}, Records: records{"t1": rec}, OnRefuse: func(err error) { refused = append(refused, err) }}
	cases := []struct {
		name   string
		change func(c *Claims)
		want   error
	}{
		{"as recorded", func(*Claims) {}, nil},
		{"another issuer", func(c *Claims) { c.Issuer = "evil" }, ErrInvalidToken},
		{"no issuer", func(c *Claims) { c.Issuer = "" }, ErrNotAsRecorded},
		{"widened clusters", func(c *Claims) { c.Clusters = append(c.Clusters, "c3") }, ErrNotAsRecorded},
		{"all clusters", func(c *Claims) { c.Clusters = []string{"*"} }, ErrNotAsRecorded},
		{"another kind", func(c *Claims) { c.Kind = KindAdmin }, ErrNotAsRecorded},
		{"a cluster id", func(c *Claims) { c.ClusterID = "c1" }, ErrNotAsRecorded},
		{"another subject", func(c *Claims) { c.Subject = "bob" }, ErrNotAsRecorded},
		{"an added group", func(c *Claims) { c.Groups = append(c.Groups, "admins") }, ErrNotAsRecorded},
		{"another group", func(c *Claims) { c.Groups = []string{"dev", "admins"} }, ErrNotAsRecorded},
		{"no groups", func(c *Claims) { c.Groups = nil }, ErrNotAsRecorded},
		{"a longer life", func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(exp.Add(time.Hour)) }, ErrNotAsRecorded},
		{"a second audience", func(c *Claims) { c.Audience = []string{Audience, "other"} }, ErrNotAsRecorded},
		{"an unknown id", func(c *Claims) { c.ID = "forged" }, ErrRevoked},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.change(c)
			raw, err := Sign(priv, "k", c)
			if err != nil {
				t.Fatal(err)
			}
			_, err = v.Verify(context.Background(), raw)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
	if len(refused) != len(cases)-1 {
		t.Errorf("OnRefuse told of %d refusals, want %d", len(refused), len(cases)-1)
	}
	if got := Cause(refused[len(refused)-2]); got != "not_as_recorded" {
		t.Errorf("Cause = %q", got)
	}
	rec.Revoked = true
	raw, _ := Sign(priv, "k", base())
	if _, err := v.Verify(context.Background(), raw); !errors.Is(err, ErrRevoked) {
		t.Errorf("revoked record: %v", err)
	}
}
