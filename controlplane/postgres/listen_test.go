package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
)

// listen runs a Listener until the test ends and returns its changes.
func listen(t *testing.T, db *DB) <-chan controlplane.RouteChange {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	changes := make(chan controlplane.RouteChange, 100)
	ready := make(chan struct{})
	done := make(chan error, 1)
	l := &Listener{
		Pool:        db.Pool(),
		OnListening: func() { close(ready) },
		OnChange:    func(c controlplane.RouteChange) { changes <- c },
	}
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Listener.Run returned %v, want context.Canceled", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Listener.Run: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("Listener not listening after 5s")
	}
	return changes
}

// expectChange waits up to a second for the next change and compares it.
func expectChange(t *testing.T, changes <-chan controlplane.RouteChange, want controlplane.RouteChange) {
	t.Helper()
	select {
	case got := <-changes:
		if got.ClusterUUID != want.ClusterUUID || !slices.Equal(got.Hostnames, want.Hostnames) {
			t.Fatalf("change %+v, want %+v", got, want)
		}
	case <-time.After(time.Second):
		t.Fatalf("no change within 1s, want %+v", want)
	}
}

func expectNoChange(t *testing.T, changes <-chan controlplane.RouteChange) {
	t.Helper()
	select {
	case got := <-changes:
		t.Fatalf("unexpected change %+v", got)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestNotifications(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	db.RouteTTL = time.Hour
	a := mustCluster(t, db, "alpha")
	b := mustCluster(t, db, "bravo")
	changes := listen(t, db)

	steps := []struct {
		name string
		do   func() error
		want *controlplane.RouteChange // nil: no notification
	}{
		{"register", func() error { return db.RegisterRoute(ctx, route(a.UUID, "App.example.com", "/")) },
			&controlplane.RouteChange{ClusterUUID: a.UUID, Hostnames: []string{"app.example.com"}}},
		{"refused register", func() error {
			err := db.RegisterRoute(ctx, route(b.UUID, "app.example.com", "/"))
			if controlplane.ErrorCode(err) != controlplane.ECONFLICT {
				return fmt.Errorf("want ECONFLICT, got %v", err)
			}
			return nil
		}, nil},
		{"unregister", func() error { return db.UnregisterRoute(ctx, a.UUID, "app.example.com") },
			&controlplane.RouteChange{ClusterUUID: a.UUID, Hostnames: []string{"app.example.com"}}},
		{"sync", func() error {
			return db.SyncRoutes(ctx, controlplane.RouteSync{ClusterUUID: b.UUID, Routes: []controlplane.Route{
				route("", "b2.example.com", "/"), route("", "b1.example.com", "/"), route("", "b1.example.com", "/x"),
			}})
		}, &controlplane.RouteChange{ClusterUUID: b.UUID}},
		{"expiry", func() error {
			n, err := db.DeleteExpiredRoutes(ctx, clk.Now().Add(2*time.Hour))
			if err == nil && n != 3 {
				err = fmt.Errorf("deleted %d routes, want 3", n)
			}
			return err
		}, &controlplane.RouteChange{ClusterUUID: b.UUID, Hostnames: []string{"b1.example.com", "b2.example.com"}}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if err := st.do(); err != nil {
				t.Fatal(err)
			}
			if st.want == nil {
				expectNoChange(t, changes)
			} else {
				expectChange(t, changes, *st.want)
			}
		})
	}
}

// More hostnames than fit a NOTIFY payload: the change names the cluster
// alone, which listeners take as "all of its routes".
func TestNotificationTooLargeForPayload(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	a := mustCluster(t, db, "alpha")
	s := controlplane.RouteSync{ClusterUUID: a.UUID}
	for i := range 200 {
		s.Routes = append(s.Routes, route("", fmt.Sprintf("%s-%03d.example.com", strings.Repeat("h", 40), i), "/"))
	}
	if err := db.SyncRoutes(ctx, s); err != nil {
		t.Fatal(err)
	}
	changes := listen(t, db)
	n, err := db.DeleteExpiredRoutes(ctx, clk.Now().Add(DefaultRouteTTL+time.Second))
	if err != nil || n != 200 {
		t.Fatalf("DeleteExpiredRoutes = %d, %v; want 200", n, err)
	}
	expectChange(t, changes, controlplane.RouteChange{ClusterUUID: a.UUID})
}

func TestReaperNotifies(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	db.RouteTTL = time.Hour
	a := mustCluster(t, db, "alpha")
	if err := db.RegisterRoute(ctx, route(a.UUID, "a.example.com", "/")); err != nil {
		t.Fatal(err)
	}
	changes := listen(t, db)

	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		db.RunReaper(rctx, 10*time.Millisecond, nil)
	}()
	defer func() { cancel(); <-done }()

	expectNoChange(t, changes) // nothing has expired yet
	clk.Add(time.Hour + time.Second)
	expectChange(t, changes, controlplane.RouteChange{ClusterUUID: a.UUID, Hostnames: []string{"a.example.com"}})
	if got := routeKeys(t, db, ""); len(got) != 0 {
		t.Errorf("routes left after the reaper ran: %v", got)
	}
}

// Someone else's NOTIFY on the channel is not a route change.
func TestListenSkipsForeignPayloads(t *testing.T) {
	ctx := context.Background()
	db, _ := newDB(t)
	a := mustCluster(t, db, "alpha")
	changes := listen(t, db)
	for _, payload := range []string{"not json", `{"hostnames":["x.example.com"]}`} {
		if _, err := db.Pool().Exec(ctx, `SELECT pg_notify($1, $2)`, controlplane.RouteNotifyChannel, payload); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.RegisterRoute(ctx, route(a.UUID, "a.example.com", "/")); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, controlplane.RouteChange{ClusterUUID: a.UUID, Hostnames: []string{"a.example.com"}})
}
