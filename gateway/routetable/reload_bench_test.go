package routetable

import (
	"context"
	"fmt"
	"testing"

	"github.com/pipeops/tunnel/controlplane"
)

// BenchmarkReload measures a full reload of a large route table from
// PostgreSQL, in its two parts (the snapshot queries and building the
// Table) and whole, against what a change of one cluster costs: its own
// routes, applied with Table.WithCluster (see docs/gateway.md).
// Run it with
//
//	go test -run '^$' -bench Reload -benchtime 5x ./gateway/routetable/
func BenchmarkReload(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) {
			db, _ := newDB(b)
			ctx := context.Background()
			const perCluster = 1_000
			for c := 0; c < n/perCluster; c++ {
				cl, err := db.CreateCluster(ctx, fmt.Sprintf("bench-%d", c))
				if err != nil {
					b.Fatal(err)
				}
				routes := make([]controlplane.Route, perCluster)
				for i := range routes {
					routes[i] = controlplane.Route{Hostname: fmt.Sprintf("app-%d.c%d.example.com", i, c), Path: "/",
						ServiceName: "web", ServicePort: 80, Namespace: "default", IngressName: "web"}
				}
				if err := db.SyncRoutes(ctx, controlplane.RouteSync{ClusterUUID: cl.UUID, Routes: routes}); err != nil {
					b.Fatal(err)
				}
			}
			var routes []controlplane.Route
			var clusters []*controlplane.Cluster
			b.Run("snapshot", func(b *testing.B) {
				for b.Loop() {
					var err error
					if routes, err = db.ServedRoutes(ctx); err != nil {
						b.Fatal(err)
					}
					if clusters, err = db.Clusters(ctx); err != nil {
						b.Fatal(err)
					}
				}
				if len(routes) != n {
					b.Fatalf("%d routes served, want %d", len(routes), n)
				}
			})
			b.Run("build", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if t := NewTable(routes, clusters); t.Len() != n {
						b.Fatalf("table of %d routes, want %d", t.Len(), n)
					}
				}
			})
			s := NewStore(db, Options{})
			b.Run("whole", func(b *testing.B) {
				for b.Loop() {
					if err := s.reload(ctx); err != nil {
						b.Fatal(err)
					}
				}
			})
			// What a change costs: the routes of the one cluster it names
			// (perCluster of them), applied to the table of all.
			b.Run("one-cluster", func(b *testing.B) {
				changed := map[string]struct{}{clusters[0].UUID: {}}
				for b.Loop() {
					if err := s.reloadClusters(ctx, changed); err != nil {
						b.Fatal(err)
					}
				}
				if s.Table().Len() != n {
					b.Fatalf("table of %d routes, want %d", s.Table().Len(), n)
				}
			})
		})
	}
}
