package routetable

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/gateway/routetable/routetest"
)

// TestStoreOnMemorySource runs a Store on the in-memory source: the same
// contract as on PostgreSQL (changes reach lookups, a broken feed is
// reconnected and what changed meanwhile is loaded, a failing load keeps the
// last table serving), with no database.
func TestStoreOnMemorySource(t *testing.T) {
	src := &routetest.Source{}
	src.SetCluster(controlplane.Cluster{UUID: "c1", Name: "one"})
	src.SetRoutes("c1", controlplane.Route{Hostname: "a.example.com", Path: "/", ServiceName: "a", ServicePort: 80})
	s := startStore(t, src, Options{RetryInterval: 10 * time.Millisecond, CoalesceWindow: time.Millisecond})
	waitLoaded(t, s)
	servedBy := func(host, service string) func() error {
		return func() error {
			m, ok := s.Lookup(host, "/")
			switch {
			case service == "" && ok:
				return fmt.Errorf("%s still served by %s", host, m.Route.ServiceName)
			case service == "":
				return nil
			case !ok:
				return fmt.Errorf("%s not served", host)
			case m.Route.ServiceName != service:
				return fmt.Errorf("%s served by %s, want %s", host, m.Route.ServiceName, service)
			}
			return nil
		}
	}
	eventually(t, changeDeadline, servedBy("a.example.com", "a"))
	eventually(t, changeDeadline, func() error {
		if !s.Status().Listening {
			return errors.New("not listening")
		}
		return nil
	})

	t.Run("a change reaches lookups", func(t *testing.T) {
		src.SetRoutes("c1", controlplane.Route{Hostname: "a.example.com", Path: "/", ServiceName: "a2", ServicePort: 80},
			controlplane.Route{Hostname: "b.example.com", Path: "/", ServiceName: "b", ServicePort: 80})
		eventually(t, changeDeadline, servedBy("a.example.com", "a2"))
		eventually(t, changeDeadline, servedBy("b.example.com", "b"))
	})

	t.Run("a change reloads its cluster only", func(t *testing.T) {
		src.SetCluster(controlplane.Cluster{UUID: "c2", Name: "two"})
		src.SetRoutes("c2", controlplane.Route{Hostname: "two.example.com", Path: "/", ServiceName: "two", ServicePort: 80})
		eventually(t, changeDeadline, servedBy("two.example.com", "two"))
		full, clusters := src.Loads(), src.ClusterLoads()
		src.SetRoutes("c2", controlplane.Route{Hostname: "two.example.com", Path: "/", ServiceName: "two-b", ServicePort: 80})
		eventually(t, changeDeadline, servedBy("two.example.com", "two-b"))
		if src.Loads() != full || src.ClusterLoads() <= clusters {
			t.Fatalf("a change cost %d full loads and %d cluster loads, want 0 and at least 1",
				src.Loads()-full, src.ClusterLoads()-clusters)
		}
		if err := servedBy("b.example.com", "b")(); err != nil {
			t.Fatalf("another cluster's route was lost: %v", err)
		}
		src.RemoveCluster("c2")
		eventually(t, changeDeadline, servedBy("two.example.com", ""))
		eventually(t, changeDeadline, servedBy("b.example.com", "b"))
	})

	t.Run("a broken feed is followed again and reloaded", func(t *testing.T) {
		before := src.Loads()
		src.Break()
		// Made while the feed may be down: only the reload on
		// reconnecting can bring it.
		src.SetRoutes("c1", controlplane.Route{Hostname: "c.example.com", Path: "/", ServiceName: "c", ServicePort: 80})
		eventually(t, changeDeadline, servedBy("c.example.com", "c"))
		eventually(t, changeDeadline, servedBy("a.example.com", ""))
		if src.Loads() <= before {
			t.Fatalf("no snapshot was taken after the feed broke (%d before, %d after)", before, src.Loads())
		}
	})

	t.Run("a failing load keeps the last table", func(t *testing.T) {
		src.FailLoads(errors.New("source is down"))
		src.SetRoutes("c1") // announced, but no load can bring it
		eventually(t, changeDeadline, func() error {
			if st := s.Status(); st.LastError != "source is down" {
				return fmt.Errorf("status %+v, want the load error", st)
			}
			return nil
		})
		if err := servedBy("c.example.com", "c")(); err != nil {
			t.Fatalf("the last table stopped serving while loads fail: %v", err)
		}
		src.FailLoads(nil)
		eventually(t, changeDeadline, servedBy("c.example.com", ""))
		eventually(t, changeDeadline, func() error {
			if st := s.Status(); st.LastError != "" || st.Stale {
				return fmt.Errorf("status %+v after recovery", st)
			}
			return nil
		})
	})
}

// TestMarkDue checks how requests merge: cluster requests gather until
// there are too many, when they become one full reload, and a full request
// absorbs them.
func TestMarkDue(t *testing.T) {
	s := NewStore(nil, Options{})
	one := func(uuid string) reloadRequest { return reloadRequest{clusters: map[string]struct{}{uuid: {}}} }
	s.markDue(one("a"))
	s.markDue(one("b"))
	s.markDue(one("a"))
	if r := s.takeDue(); !r.due || r.full || len(r.clusters) != 2 {
		t.Fatalf("two clusters asked for: %+v", r)
	}
	for i := range maxClusterReloads + 1 {
		s.markDue(one(fmt.Sprint(i)))
	}
	if r := s.takeDue(); !r.full || r.clusters != nil {
		t.Fatalf("%d clusters asked for: %+v, want a full reload", maxClusterReloads+1, r)
	}
	s.markDue(reloadRequest{full: true})
	s.markDue(one("a"))
	if r := s.takeDue(); !r.full || r.clusters != nil {
		t.Fatalf("a full reload and a cluster asked for: %+v, want a full reload", r)
	}
	if r := s.takeDue(); r.due {
		t.Fatalf("nothing asked for: %+v", r)
	}
}
