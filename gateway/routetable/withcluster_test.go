package routetable

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/pipeops/tunnel/controlplane"
)

// TestWithClusterMatchesRebuild applies random changes of one cluster at a
// time with WithCluster and checks, after each, that the Table is the one
// NewTable builds from all the routes, and that the Table it came from did
// not change.
func TestWithClusterMatchesRebuild(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const clusters = 5
	uuid := func(c int) string { return fmt.Sprintf("00000000-0000-0000-0000-0000000000%02d", c) }
	pathTypes := []string{"", controlplane.PathTypePrefix, controlplane.PathTypeExact, controlplane.PathTypeImplementationSpecific}
	randomRoutes := func(c int) []controlplane.Route {
		var out []controlplane.Route
		seen := map[string]bool{}
		for range rng.IntN(12) {
			// Hosts are the cluster's own, as the control plane's ownership
			// rules keep them; mixed case and trailing dots as agents send.
			host := []string{"a", "B", "c.", "*"}[rng.IntN(4)] + fmt.Sprintf(".c%d.example.com", c)
			path := []string{"", "/", "/api", "/api/", "/api/v1", "/files/report"}[rng.IntN(6)]
			if key := fmt.Sprintf("%s|%s", host, path); seen[key] {
				continue
			} else {
				seen[key] = true
			}
			r := controlplane.Route{Hostname: host, Path: path, PathType: pathTypes[rng.IntN(len(pathTypes))],
				ClusterUUID: uuid(c), ServiceName: fmt.Sprintf("svc-%d", rng.IntN(100)), ServicePort: 80}
			switch rng.IntN(4) {
			case 0:
				r.Annotations = map[string]string{AnnotationMaxBodySize: "8m"}
			case 1:
				r.Annotations = map[string]string{AnnotationMaxBodySize: "lots"} // a body size problem
			}
			out = append(out, r)
		}
		if rng.IntN(2) == 0 {
			// A host every cluster has a path on: its slice mixes
			// clusters, so a change must copy it, not append to t's.
			out = append(out, controlplane.Route{Hostname: "shared.example.com", Path: fmt.Sprintf("/c%d", c),
				ClusterUUID: uuid(c), ServiceName: "shared", ServicePort: 80})
		}
		return out
	}
	randomCluster := func(c int) *controlplane.Cluster {
		cl := &controlplane.Cluster{UUID: uuid(c), Name: fmt.Sprintf("c%d", c)}
		if rng.IntN(2) == 0 {
			cl.IngressController = &controlplane.IngressController{Name: "ingress", Namespace: "ns", Port: 80 + rng.IntN(10)}
		}
		return cl
	}

	routes := map[int][]controlplane.Route{}
	state := map[int]*controlplane.Cluster{}
	for c := range clusters {
		routes[c], state[c] = randomRoutes(c), randomCluster(c)
	}
	all := func() ([]controlplane.Route, []*controlplane.Cluster) {
		var rs []controlplane.Route
		var cs []*controlplane.Cluster
		for c := range clusters {
			rs = append(rs, routes[c]...)
			if state[c] != nil {
				cs = append(cs, state[c])
			}
		}
		return rs, cs
	}
	table := NewTable(all())
	for step := range 300 {
		before := NewTable(all())
		c := rng.IntN(clusters)
		switch rng.IntN(5) {
		case 0: // the cluster is gone, and its routes with it
			routes[c], state[c] = nil, nil
		case 1: // only its ingress controller changed
			state[c] = randomCluster(c)
		default:
			routes[c], state[c] = randomRoutes(c), randomCluster(c)
		}
		next := table.WithCluster(uuid(c), slices.Clone(routes[c]), state[c])
		if err := sameTable(next, NewTable(all())); err != nil {
			t.Fatalf("step %d (cluster %d): WithCluster differs from a rebuild: %v", step, c, err)
		}
		if err := sameTable(table, before); err != nil {
			t.Fatalf("step %d (cluster %d): WithCluster changed the table it started from: %v", step, c, err)
		}
		table = next
	}
}

// sameTable compares what two tables serve and report, ignoring the order
// of body size problems and of byCluster's keys.
func sameTable(got, want *Table) error {
	if got.n != want.n {
		return fmt.Errorf("%d routes, want %d", got.n, want.n)
	}
	for _, m := range []struct {
		name      string
		got, want map[string][]entry
	}{{"hosts", got.hosts, want.hosts}, {"wildcards", got.wildcards, want.wildcards}} {
		if !reflect.DeepEqual(m.got, m.want) {
			return fmt.Errorf("%s:\n got %+v\nwant %+v", m.name, m.got, m.want)
		}
	}
	keys := func(ps []bodySizeProblem) []string {
		out := make([]string, len(ps))
		for i, p := range ps {
			out[i] = p.cluster + "|" + p.key()
		}
		slices.Sort(out)
		return out
	}
	if g, w := keys(got.bodySizeProblems), keys(want.bodySizeProblems); !slices.Equal(g, w) {
		return fmt.Errorf("body size problems %v, want %v", g, w)
	}
	return nil
}
