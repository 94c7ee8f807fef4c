package postgres

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/hostnames"
)

// TestDeleteCluster: deleting a cluster removes its routes, releases its
// hostnames and grants (another cluster may claim them now), announces the
// released hostnames once, as an unregister does, and leaves no token that
// reaches it working; another cluster's routes and tokens, and the audit
// record, are untouched.
func TestDeleteCluster(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	// Verification on: the deletion must release verified claims (held
	// through a grant) and pending ones alike.
	db.Ownership = hostnames.Policy{}
	alpha := mustCluster(t, db, "alpha")
	bravo := mustCluster(t, db, "bravo")
	if err := db.GrantDomain(ctx, alpha.UUID, "alpha.example.com"); err != nil {
		t.Fatal(err)
	}
	for _, r := range []controlplane.Route{
		{Hostname: "a.alpha.example.com", Path: "/"},
		{Hostname: "a.alpha.example.com", Path: "/api"},
		{Hostname: "*.alpha.example.com", Path: "/"},
		{Hostname: "pending.example.org", Path: "/"}, // no grant: stored, not served
	} {
		r.ClusterUUID, r.ServiceName, r.ServicePort = alpha.UUID, "web", 80
		if err := db.RegisterRoute(ctx, r); err != nil {
			t.Fatalf("register %s%s: %v", r.Hostname, r.Path, err)
		}
	}
	if err := db.GrantDomain(ctx, bravo.UUID, "bravo.example.com"); err != nil {
		t.Fatal(err)
	}
	bravoRoute := controlplane.Route{ClusterUUID: bravo.UUID, Hostname: "b.bravo.example.com", ServiceName: "b", ServicePort: 80}
	if err := db.RegisterRoute(ctx, bravoRoute); err != nil {
		t.Fatal(err)
	}
	// While alpha holds its names, bravo cannot take one.
	taken := controlplane.Route{ClusterUUID: bravo.UUID, Hostname: "a.alpha.example.com", ServiceName: "b", ServicePort: 80}
	wantCode(t, db.RegisterRoute(ctx, taken), controlplane.ECONFLICT)

	expires := clk.Now().Add(time.Hour)
	earlier := clk.Now().Add(-time.Minute)
	tokens := []controlplane.Token{
		{ID: "alpha-agent", Kind: "agent", ClusterUUID: alpha.UUID},
		{ID: "alpha-agent-revoked", Kind: "agent", ClusterUUID: alpha.UUID, RevokedAt: earlier},
		{ID: "alpha-user", Kind: "user", Clusters: []string{alpha.UUID}},
		{ID: "alpha-user-revoked", Kind: "user", Clusters: []string{alpha.UUID}, RevokedAt: earlier},
		{ID: "both-user", Kind: "user", Clusters: []string{alpha.UUID, bravo.UUID}},
		{ID: "all-user", Kind: "user", Clusters: []string{"*"}},
		{ID: "bravo-agent", Kind: "agent", ClusterUUID: bravo.UUID},
		{ID: "admin", Kind: "admin"},
	}
	for _, tok := range tokens {
		tok.ExpiresAt = expires
		if err := db.RecordToken(ctx, tok); err != nil {
			t.Fatalf("record token %s: %v", tok.ID, err)
		}
	}
	audit := controlplane.AuditEntry{Time: clk.Now(), ClusterUUID: alpha.UUID, ClusterName: "alpha", User: "alice",
		TokenID: "alpha-user", Verb: "get", Method: "GET", Path: "/api/v1/pods", Status: 200}
	if err := db.InsertAudit(ctx, []controlplane.AuditEntry{audit}); err != nil {
		t.Fatal(err)
	}

	changes := listen(t, db)
	clk.Add(time.Second)
	d, err := db.DeleteCluster(ctx, alpha.UUID)
	if err != nil {
		t.Fatalf("DeleteCluster: %v", err)
	}
	released := []string{"*.alpha.example.com", "a.alpha.example.com", "pending.example.org"}
	want := controlplane.ClusterDeletion{UUID: alpha.UUID, Name: "alpha", Routes: 4, Hostnames: released,
		Grants: []string{"alpha.example.com"}, TokensRevoked: 2}
	if d.UUID != want.UUID || d.Name != want.Name || d.Routes != want.Routes || !slices.Equal(d.Hostnames, want.Hostnames) ||
		!slices.Equal(d.Grants, want.Grants) || d.TokensRevoked != want.TokensRevoked {
		t.Fatalf("deletion %+v, want %+v", d, want)
	}
	expectChange(t, changes, controlplane.RouteChange{ClusterUUID: alpha.UUID, Hostnames: released})
	expectNoChange(t, changes)

	_, err = db.Cluster(ctx, alpha.UUID)
	wantCode(t, err, controlplane.ENOTFOUND)
	if n := queryStrings(t, db, `SELECT hostname || path FROM routes WHERE cluster_uuid = $1`, alpha.UUID); len(n) != 0 {
		t.Errorf("routes left: %v", n)
	}
	if n := queryStrings(t, db, `SELECT hostname FROM hostnames WHERE cluster_uuid = $1`, alpha.UUID); len(n) != 0 {
		t.Errorf("hostname claims left: %v", n)
	}
	if n := queryStrings(t, db, `SELECT domain FROM domain_grants WHERE cluster_uuid = $1`, alpha.UUID); len(n) != 0 {
		t.Errorf("grants left: %v", n)
	}
	if routes, err := db.Routes(ctx, bravo.UUID); err != nil || len(routes) != 1 || routes[0].Hostname != "b.bravo.example.com" || routes[0].Pending {
		t.Errorf("bravo's routes after alpha's deletion: %+v, %v", routes, err)
	}

	for _, tt := range []struct {
		id      string
		revoked bool
		at      time.Time // when revoked: the first revocation is kept
	}{
		{"alpha-agent", true, time.Time{}},         // no record left
		{"alpha-agent-revoked", true, time.Time{}}, // no record left
		{"alpha-user", true, clk.Now()},
		{"alpha-user-revoked", true, earlier},
		{"both-user", false, time.Time{}},
		{"all-user", false, time.Time{}},
		{"bravo-agent", false, time.Time{}},
		{"admin", false, time.Time{}},
	} {
		revoked, err := db.Revoked(ctx, tt.id)
		if err != nil || revoked != tt.revoked {
			t.Errorf("Revoked(%s) = %v, %v; want %v", tt.id, revoked, err, tt.revoked)
		}
		tok, err := db.Token(ctx, tt.id)
		switch {
		case tt.revoked && tt.at.IsZero():
			wantCode(t, err, controlplane.ENOTFOUND)
		case err != nil:
			t.Errorf("Token(%s): %v", tt.id, err)
		case !tok.RevokedAt.Equal(tt.at):
			t.Errorf("token %s revoked at %v, want %v", tt.id, tok.RevokedAt, tt.at)
		}
	}

	// The audit record is history: it outlives the cluster.
	entries, err := db.AuditEntries(ctx, controlplane.AuditFilter{Cluster: "alpha"})
	if err != nil || len(entries) != 1 || entries[0].ClusterUUID != alpha.UUID {
		t.Errorf("audit of the deleted cluster: %+v, %v", entries, err)
	}

	// The names are free: bravo may claim what alpha held.
	if err := db.RegisterRoute(ctx, taken); err != nil {
		t.Errorf("claiming a released hostname: %v", err)
	}
	expectChange(t, changes, controlplane.RouteChange{ClusterUUID: bravo.UUID, Hostnames: []string{"a.alpha.example.com"}})

	// Deleting again, or what never was, is ENOTFOUND and announces nothing.
	for _, id := range []string{alpha.UUID, "0b5c5bc4-0000-4000-8000-000000000000", "not-a-uuid", ""} {
		_, err := db.DeleteCluster(ctx, id)
		wantCode(t, err, controlplane.ENOTFOUND)
	}
	expectNoChange(t, changes)
}

// A cluster without routes is announced as "all of the cluster", so that
// gateways still drop the cluster itself; a token for a deleted cluster
// cannot be recorded.
func TestDeleteClusterWithoutRoutes(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	c := mustCluster(t, db, "empty")
	changes := listen(t, db)
	d, err := db.DeleteCluster(ctx, c.UUID)
	if err != nil {
		t.Fatal(err)
	}
	if d.Routes != 0 || len(d.Hostnames) != 0 || d.Hostnames == nil || len(d.Grants) != 0 || d.TokensRevoked != 0 {
		t.Fatalf("deletion %+v, want nothing removed (and empty lists, not nil)", d)
	}
	expectChange(t, changes, controlplane.RouteChange{ClusterUUID: c.UUID})
	err = db.RecordToken(ctx, controlplane.Token{ID: "late", Kind: "agent", ClusterUUID: c.UUID, ExpiresAt: clk.Now().Add(time.Hour)})
	wantCode(t, err, controlplane.ENOTFOUND)
	err = db.RegisterRoute(ctx, controlplane.Route{ClusterUUID: c.UUID, Hostname: "late.example.com", ServiceName: "s", ServicePort: 80})
	wantCode(t, err, controlplane.ENOTFOUND)
	expectNoChange(t, changes)
}

// Route changes racing a deletion either land before it (and are deleted
// with the cluster) or find no cluster: none survives it, and none fails
// otherwise (no deadlock, no foreign key error).
func TestDeleteClusterRacingRoutes(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	c := mustCluster(t, db, "racing")
	const writers = 4
	errs := make(chan error, writers)
	start := make(chan struct{})
	for i := range writers {
		go func() {
			<-start
			var err error
			for j := 0; err == nil; j++ {
				err = db.RegisterRoute(ctx, controlplane.Route{ClusterUUID: c.UUID, ServiceName: "s", ServicePort: 80,
					Hostname: "w" + string(rune('a'+i)) + ".example.com", Path: "/" + string(rune('a'+j%26))})
			}
			errs <- err
		}()
	}
	close(start)
	// Let some routes land first: the deletion must find them.
	deadline := time.Now().Add(10 * time.Second)
	for {
		routes, err := db.Routes(ctx, c.UUID)
		if err != nil {
			t.Fatal(err)
		}
		if len(routes) >= writers {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d routes registered after 10s", len(routes))
		}
		time.Sleep(5 * time.Millisecond)
	}
	d, err := db.DeleteCluster(ctx, c.UUID)
	if err != nil {
		t.Fatalf("DeleteCluster: %v", err)
	}
	for range writers {
		wantCode(t, <-errs, controlplane.ENOTFOUND)
	}
	if d.Routes < writers {
		t.Errorf("deleted %d routes, want at least %d", d.Routes, writers)
	}
	if n := queryStrings(t, db, `SELECT hostname || path FROM routes WHERE cluster_uuid = $1`, c.UUID); len(n) != 0 {
		t.Errorf("routes left: %v", n)
	}
}
