package postgres

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/hostnames"
)

// servedKeys lists the routes a gateway would serve, as "cluster:hostname/path".
func servedKeys(t *testing.T, db *DB) []string {
	t.Helper()
	routes, err := db.ServedRoutes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range routes {
		out = append(out, r.ClusterUUID+":"+r.Hostname+r.Path)
	}
	return out
}

func hostnameState(t *testing.T, db *DB, cluster, h string) controlplane.Hostname {
	t.Helper()
	hs, err := db.Hostnames(context.Background(), cluster)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range hs {
		if x.Hostname == h {
			return x
		}
	}
	t.Fatalf("cluster %s has no claim on %s (has %+v)", cluster, h, hs)
	return controlplane.Hostname{}
}

// TestOwnershipWildcardTakeover is the reported attack: cluster A owns
// *.wild.example.com, cluster B registers a.wild.example.com. Before the
// ownership rules B got 200 and A's visitors.
func TestOwnershipWildcardTakeover(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	db.Ownership = hostnames.Policy{}
	a := mustCluster(t, db, "alpha")
	b := mustCluster(t, db, "bravo")
	if err := db.GrantDomain(ctx, a.UUID, "wild.example.com"); err != nil {
		t.Fatal(err)
	}
	if err := db.RegisterRoute(ctx, route(a.UUID, "*.wild.example.com", "/")); err != nil {
		t.Fatal(err)
	}
	if !hostnameState(t, db, a.UUID, "*.wild.example.com").Verified {
		t.Fatal("A's wildcard under its grant is not verified")
	}
	for _, h := range []string{"a.wild.example.com", "A.Wild.Example.COM.", "x.y.wild.example.com", "*.y.wild.example.com"} {
		err := db.RegisterRoute(ctx, route(b.UUID, h, "/"))
		wantCode(t, err, controlplane.ECONFLICT)
		if msg := controlplane.ErrorMessage(err); !strings.Contains(msg, "wild.example.com") || strings.Contains(msg, a.UUID) {
			t.Errorf("%s: conflict message %q should name the conflict and not the other cluster", h, msg)
		}
	}
	// A sync carrying the name fails whole.
	err := db.SyncRoutes(ctx, controlplane.RouteSync{ClusterUUID: b.UUID, Routes: []controlplane.Route{
		route("", "mine.example.org", "/"), route("", "a.wild.example.com", "/"),
	}})
	wantCode(t, err, controlplane.ECONFLICT)
	for _, k := range servedKeys(t, db) {
		if strings.HasPrefix(k, b.UUID) {
			t.Errorf("B's route is served: %s", k)
		}
	}
}

// TestOwnershipPendingUntilVerified: a custom domain is stored, not served,
// until verified; an unverified claim blocks nobody; verification drops the
// losers' claims; and a wildcard over another's verified name is refused.
func TestOwnershipPendingUntilVerified(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	db.Ownership = hostnames.Policy{}
	a := mustCluster(t, db, "alpha")
	b := mustCluster(t, db, "bravo")

	if err := db.RegisterRoute(ctx, route(a.UUID, "shop.example.org", "/")); err != nil {
		t.Fatal(err)
	}
	st := hostnameState(t, db, a.UUID, "shop.example.org")
	if st.Verified || st.TXTName != "_pipeops-challenge.shop.example.org" || len(st.TXTValue) < 20 {
		t.Fatalf("claim state %+v, want pending with a challenge", st)
	}
	if got := servedKeys(t, db); len(got) != 0 {
		t.Fatalf("served before verification: %v", got)
	}
	routes, _ := db.Routes(ctx, a.UUID)
	if len(routes) != 1 || !routes[0].Pending {
		t.Fatalf("Routes = %+v, want one pending route", routes)
	}
	// B squatting first blocks nothing: B's claim is pending too.
	if err := db.RegisterRoute(ctx, route(b.UUID, "shop.example.org", "/")); err != nil {
		t.Fatalf("B's unverified claim next to A's: %v", err)
	}
	if err := db.VerifyHostname(ctx, a.UUID, "shop.example.org", "dns txt record"); err != nil {
		t.Fatal(err)
	}
	if got := servedKeys(t, db); len(got) != 1 || got[0] != a.UUID+":shop.example.org/" {
		t.Fatalf("served = %v, want A's route only", got)
	}
	if hs, _ := db.Hostnames(ctx, b.UUID); len(hs) != 0 {
		t.Errorf("B's overlapped claim kept: %+v", hs)
	}
	wantCode(t, db.RegisterRoute(ctx, route(b.UUID, "shop.example.org", "/")), controlplane.ECONFLICT)
	wantCode(t, db.RegisterRoute(ctx, route(b.UUID, "*.example.org", "/")), controlplane.ECONFLICT)
	wantCode(t, db.GrantDomain(ctx, b.UUID, "example.org"), controlplane.ECONFLICT)
	// A second verification of an overlapping name by B fails.
	if err := db.RegisterRoute(ctx, route(b.UUID, "other.example.org", "/")); err != nil {
		t.Fatal(err)
	}
	if err := db.VerifyHostname(ctx, b.UUID, "other.example.org", "dns txt record"); err != nil {
		t.Fatalf("B verifies a name A does not hold: %v", err)
	}
	// Public suffixes and the base domains.
	wantCode(t, db.RegisterRoute(ctx, route(b.UUID, "*.co.uk", "/")), controlplane.EINVALID)
	db.Ownership = hostnames.Policy{BaseDomains: []string{"apps.example.net"}}
	if err := db.RegisterRoute(ctx, route(b.UUID, "web.bravo.apps.example.net", "/")); err != nil {
		t.Fatal(err)
	}
	if !hostnameState(t, db, b.UUID, "web.bravo.apps.example.net").Verified {
		t.Error("a name under the cluster's own subdomain is not verified")
	}
	wantCode(t, db.RegisterRoute(ctx, route(b.UUID, "web.alpha.apps.example.net", "/")), controlplane.EFORBIDDEN)
	// Revoking a grant un-verifies what it verified.
	if err := db.GrantDomain(ctx, b.UUID, "bravo.example.com"); err != nil {
		t.Fatal(err)
	}
	if err := db.RegisterRoute(ctx, route(b.UUID, "x.bravo.example.com", "/")); err != nil {
		t.Fatal(err)
	}
	if !hostnameState(t, db, b.UUID, "x.bravo.example.com").Verified {
		t.Fatal("name under a grant not verified")
	}
	if err := db.RevokeGrant(ctx, "bravo.example.com"); err != nil {
		t.Fatal(err)
	}
	if hostnameState(t, db, b.UUID, "x.bravo.example.com").Verified {
		t.Error("still verified after its grant was revoked")
	}
}

// TestOwnershipRace: two clusters claim overlapping names at once, many
// times; exactly one wins each round.
func TestOwnershipRace(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	db.Ownership = hostnames.Policy{TrustUnverified: true}
	a := mustCluster(t, db, "alpha")
	b := mustCluster(t, db, "bravo")
	for i := range 20 {
		domain := "r" + strings.Repeat("x", i) + ".example.com"
		var wg sync.WaitGroup
		errs := make([]error, 2)
		wg.Go(func() { errs[0] = db.RegisterRoute(ctx, route(a.UUID, "*."+domain, "/")) })
		wg.Go(func() { errs[1] = db.RegisterRoute(ctx, route(b.UUID, "app."+domain, "/")) })
		wg.Wait()
		if (errs[0] == nil) == (errs[1] == nil) {
			t.Fatalf("round %d: both or neither won: %v / %v", i, errs[0], errs[1])
		}
		for _, err := range errs {
			if err != nil && controlplane.ErrorCode(err) != controlplane.ECONFLICT {
				t.Fatalf("round %d: %v", i, err)
			}
		}
	}
}
