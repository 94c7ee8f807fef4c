package cli

import (
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/shared/cmdline"
)

func (r *runner) routeCommand() *cobra.Command {
	return cmdline.Group(&cobra.Command{Use: "route", Short: "List the routes agents registered"}, r.routeListCommand())
}

func (r *runner) routeListCommand() *cobra.Command {
	var cluster string
	c := &cobra.Command{
		Use:   "list",
		Short: "List routes: hostname and path, cluster, Service, mode, whether served",
		Long: `List the routes the agents registered, by hostname and path. STATE is served, or
pending while the hostname's ownership is not verified (see 'hostname list').
-o wide adds the Ingress, TLS, when the route was refreshed and when it expires.`,
		Args: cmdline.NoArgs,
	}
	c.Flags().StringVar(&cluster, "cluster", "", "only this cluster's routes (name or id)")
	out := addOutput(c, formatTable, formatWide, formatJSON, formatYAML)
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		format, err := out.get()
		if err != nil {
			return err
		}
		return r.configured(cmd.Context(), func(s *session) error {
			uuid, err := clusterFilter(cmd.Context(), s.db, cluster)
			if err != nil {
				return err
			}
			routes, err := s.db.Routes(cmd.Context(), uuid)
			if err != nil {
				return err
			}
			names, err := clusterNames(cmd.Context(), s.db)
			if err != nil {
				return err
			}
			if format == formatJSON || format == formatYAML {
				views := make([]routeJSON, 0, len(routes))
				for _, rt := range routes {
					rt.UpdatedAt, rt.ExpiresAt = rt.UpdatedAt.UTC(), rt.ExpiresAt.UTC()
					views = append(views, routeJSON{Route: rt, ClusterName: names[rt.ClusterUUID]})
				}
				return printData(r.stdout, format, views)
			}
			printRoutes(r.stdout, routes, names, format == formatWide)
			return nil
		})
	}
	return c
}

// routeJSON is a route as -o json prints it: the route as the API has it,
// and its cluster's name.
type routeJSON struct {
	controlplane.Route
	ClusterName string `json:"cluster_name,omitempty"`
}

// printRoutes writes the route table; wide adds the Ingress, TLS, the
// path type and the route's times.
func printRoutes(w io.Writer, routes []controlplane.Route, names map[string]string, wide bool) {
	t := &table{}
	head := []string{"HOSTNAME", "PATH", "CLUSTER", "SERVICE", "MODE", "STATE"}
	if wide {
		head = append(head, "PATH TYPE", "INGRESS", "TLS", "PUBLIC ENDPOINT", "UPDATED", "EXPIRES")
	}
	t.row(head...)
	for _, rt := range routes {
		state := "served"
		if rt.Pending {
			state = "pending"
		}
		cells := []string{rt.Hostname, orDash(rt.Path), nameOf(names, rt.ClusterUUID),
			fmt.Sprintf("%s/%s:%d", rt.Namespace, rt.ServiceName, rt.ServicePort), orDash(rt.RoutingMode), state}
		if wide {
			ingress := "-"
			if rt.IngressName != "" {
				ingress = rt.Namespace + "/" + rt.IngressName
			}
			cells = append(cells, orDash(rt.PathType), ingress, strconv.FormatBool(rt.TLS),
				orDash(rt.PublicEndpoint), rt.UpdatedAt.UTC().Format(time.RFC3339), rt.ExpiresAt.UTC().Format(time.RFC3339))
		}
		t.row(cells...)
	}
	t.write(w)
}
