// Package routetest holds an in-memory route source, so that the gateway's
// route table, and what sits on it, can be tested without PostgreSQL.
package routetest

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"

	"github.com/pipeops/tunnel/controlplane"
)

// ErrBroken is what FollowRoutes returns when Break ends it.
var ErrBroken = errors.New("routetest: feed broken")

// Source is an in-memory routetable.Source. Its routes and clusters change
// through its methods, each change announced to every FollowRoutes running,
// the way the control plane's store announces a committed change. The zero
// value is empty and ready; a Source must not be copied after first use, and
// its methods are safe for concurrent use.
type Source struct {
	mu        sync.Mutex
	routes    map[string][]controlplane.Route // by cluster UUID
	clusters  map[string]*controlplane.Cluster
	followers map[*follower]struct{}
	loadErr   error
	loads     int
	// clusterLoads counts ServedRoutesOf calls.
	clusterLoads int
}

// follower is one running FollowRoutes: its undelivered changes, and a
// wake-up for its goroutine.
type follower struct {
	queue  []controlplane.RouteChange
	wake   chan struct{}
	broken chan struct{}
}

// SetCluster adds or replaces a cluster (by UUID) and announces it.
func (s *Source) SetCluster(c controlplane.Cluster) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.clusters == nil {
		s.clusters = map[string]*controlplane.Cluster{}
	}
	s.clusters[c.UUID] = &c
	s.announceLocked(controlplane.RouteChange{ClusterUUID: c.UUID})
}

// SetRoutes replaces every route of cluster with routes (none deletes them
// all) and announces the change, naming the hostnames of the old and the new
// routes.
func (s *Source) SetRoutes(cluster string, routes ...controlplane.Route) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.routes == nil {
		s.routes = map[string][]controlplane.Route{}
	}
	var hosts []string
	for _, r := range s.routes[cluster] {
		hosts = append(hosts, r.Hostname)
	}
	kept := make([]controlplane.Route, len(routes))
	for i, r := range routes {
		r.ClusterUUID = cluster
		kept[i] = r
		hosts = append(hosts, r.Hostname)
	}
	slices.Sort(hosts)
	s.routes[cluster] = kept
	s.announceLocked(controlplane.RouteChange{ClusterUUID: cluster, Hostnames: slices.Compact(hosts)})
}

// FailLoads makes every ServedRoutes and Clusters call fail with err until
// it is called again with nil.
func (s *Source) FailLoads(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loadErr = err
}

// Loads returns how many snapshots (ServedRoutes calls) were taken.
func (s *Source) Loads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loads
}

// ClusterLoads returns how many single clusters were loaded
// (ServedRoutesOf calls).
func (s *Source) ClusterLoads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clusterLoads
}

// Break ends every running FollowRoutes with ErrBroken, as a lost database
// connection ends a listener. Changes made until the next FollowRoutes
// starts reach no one.
func (s *Source) Break() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for f := range s.followers {
		close(f.broken)
		delete(s.followers, f)
	}
}

// ServedRoutes returns every route that is not pending, sorted by host and
// path.
func (s *Source) ServedRoutes(context.Context) ([]controlplane.Route, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loads++
	if s.loadErr != nil {
		return nil, s.loadErr
	}
	var out []controlplane.Route
	for _, rs := range s.routes {
		for _, r := range rs {
			if !r.Pending {
				out = append(out, r)
			}
		}
	}
	slices.SortFunc(out, func(a, b controlplane.Route) int {
		return cmp.Or(strings.Compare(a.Hostname, b.Hostname), strings.Compare(a.Path, b.Path))
	})
	return out, nil
}

// ServedRoutesOf returns the routes of one cluster that are not pending,
// and a copy of the cluster (nil when it was never set or was removed).
func (s *Source) ServedRoutesOf(_ context.Context, clusterUUID string) ([]controlplane.Route, *controlplane.Cluster, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clusterLoads++
	if s.loadErr != nil {
		return nil, nil, s.loadErr
	}
	c, ok := s.clusters[clusterUUID]
	if !ok {
		return nil, nil, nil
	}
	cp := *c
	var out []controlplane.Route
	for _, r := range s.routes[clusterUUID] {
		if !r.Pending {
			out = append(out, r)
		}
	}
	return out, &cp, nil
}

// RemoveCluster removes a cluster and its routes, and announces it.
func (s *Source) RemoveCluster(uuid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.clusters, uuid)
	delete(s.routes, uuid)
	s.announceLocked(controlplane.RouteChange{ClusterUUID: uuid})
}

// Clusters returns copies of every cluster.
func (s *Source) Clusters(context.Context) ([]*controlplane.Cluster, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loadErr != nil {
		return nil, s.loadErr
	}
	out := make([]*controlplane.Cluster, 0, len(s.clusters))
	for _, c := range s.clusters {
		cp := *c
		out = append(out, &cp)
	}
	return out, nil
}

// FollowRoutes delivers the changes made from its start until ctx ends
// (ctx's error) or Break (ErrBroken).
func (s *Source) FollowRoutes(ctx context.Context, listening func(), changed func(controlplane.RouteChange)) error {
	f := &follower{wake: make(chan struct{}, 1), broken: make(chan struct{})}
	s.mu.Lock()
	if s.followers == nil {
		s.followers = map[*follower]struct{}{}
	}
	s.followers[f] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.followers, f)
		s.mu.Unlock()
	}()
	if listening != nil {
		listening()
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-f.broken:
			return ErrBroken
		case <-f.wake:
		}
		s.mu.Lock()
		queue := f.queue
		f.queue = nil
		s.mu.Unlock()
		for _, c := range queue {
			if changed != nil {
				changed(c)
			}
		}
	}
}

func (s *Source) announceLocked(c controlplane.RouteChange) {
	for f := range s.followers {
		f.queue = append(f.queue, c)
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
}
