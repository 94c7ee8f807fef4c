package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/api"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/shared/cmdline"
)

func (r *runner) clusterCommand() *cobra.Command {
	return cmdline.Group(&cobra.Command{Use: "cluster", Short: "Create, list, show and delete clusters"},
		r.clusterCreateCommand(), r.clusterListCommand(), r.clusterShowCommand(), r.clusterDeleteCommand())
}

func (r *runner) clusterCreateCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a cluster; prints its agent token (once) and how to install the agent",
		Long: `Create a cluster and its agent token. The token is shown once. The install steps
printed keep it off command lines: it goes into the Secret ` + api.AgentTokenSecret + `, which the
Helm chart reads (agent.pipeops.existingSecret).

-o json prints {"id","name","agent_token","install_command"}.`,
		Args: cmdline.ExactArgs(1, "NAME, the cluster's name"),
	}
	out := addOutput(c, formatText, formatJSON, formatYAML)
	c.RunE = func(cmd *cobra.Command, args []string) error {
		format, err := out.get()
		if err != nil {
			return err
		}
		return r.configured(cmd.Context(), func(s *session) error {
			created, err := api.CreateCluster(cmd.Context(), s.db, s.issuer, s.cfg.APIURL, args[0])
			if err != nil {
				return err
			}
			steps := api.InstallCommand(s.cfg.APIURL)
			if format != formatText {
				return printData(r.stdout, format, map[string]any{"id": created.Cluster.UUID, "name": created.Cluster.Name,
					"agent_token": created.AgentToken, "install_command": steps})
			}
			fmt.Fprintf(r.stdout, "cluster %s created (id %s)\n\nagent token (shown once; keep it secret):\n%s\n\n"+
				"install the agent (the token stays off command lines and out of the shell history):\n%s\n",
				created.Cluster.Name, created.Cluster.UUID, created.AgentToken, steps)
			return nil
		})
	}
	return c
}

func (r *runner) clusterListCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "list",
		Short: "List clusters and their status",
		Long:  "List clusters: ID, NAME, STATUS, LAST HEARTBEAT; -o wide adds where each agent runs\n(HOSTNAME, REGION, PROVIDER), as it said when it registered.",
		Args:  cmdline.NoArgs,
	}
	out := addOutput(c, formatTable, formatWide, formatJSON, formatYAML)
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		format, err := out.get()
		if err != nil {
			return err
		}
		return r.configured(cmd.Context(), func(s *session) error {
			cs, err := s.db.Clusters(cmd.Context())
			if err != nil {
				return err
			}
			switch format {
			case formatTable, formatWide:
				printClusters(r.stdout, cs, format == formatWide)
				return nil
			}
			views := make([]clusterJSON, 0, len(cs))
			for _, c := range cs {
				views = append(views, clusterViewOf(c))
			}
			return printData(r.stdout, format, views)
		})
	}
	return c
}

func (r *runner) clusterShowCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "show NAME|ID",
		Short: "Show one cluster: its agent, routing and routes",
		Long:  "Show one cluster, by name or id. -o wide adds its routes and everything its agent\nreported; -o json and -o yaml print the cluster as the admin API does.",
		Args:  cmdline.ExactArgs(1, "the cluster's name or id"),
	}
	out := addOutput(c, formatTable, formatWide, formatJSON, formatYAML)
	c.RunE = func(cmd *cobra.Command, args []string) error {
		format, err := out.get()
		if err != nil {
			return err
		}
		return r.configured(cmd.Context(), func(s *session) error {
			cl, err := findCluster(cmd.Context(), s.db, args[0])
			if err != nil {
				return err
			}
			if format == formatJSON || format == formatYAML {
				return printData(r.stdout, format, clusterViewOf(cl))
			}
			routes, err := s.db.Routes(cmd.Context(), cl.UUID)
			if err != nil {
				return err
			}
			showCluster(r.stdout, cl, routes, format == formatWide)
			return nil
		})
	}
	return c
}

func (r *runner) clusterDeleteCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "delete NAME|ID",
		Short: "Delete a cluster: its routes and hostnames go, its tokens stop working",
		Long: `Delete a cluster, by name or id, after asking (--yes does not ask; without a
terminal to ask on, --yes is required). In one transaction its routes are removed
(every gateway stops serving their hosts at once), its hostnames and domain grants
released, its agent tokens and the user tokens naming only it revoked, and the
cluster deleted. Its agent's connections to the control plane and the gateways
close within their REVOCATION_CHECK_INTERVAL, and it cannot come back with its
token. Audit records of the cluster are kept.

-o json prints {"status","uuid","name","routes_removed","hostnames_released",
"domain_grants_released","tokens_revoked"}, as the admin API answers.`,
		Example: `  pipeops-controlplane cluster delete staging
  pipeops-controlplane cluster delete 0b5c5bc4-... --yes -o json`,
		Args: cmdline.ExactArgs(1, "the cluster's name or id"),
	}
	yes := c.Flags().BoolP("yes", "y", false, "delete without asking")
	out := addOutput(c, formatText, formatJSON, formatYAML)
	c.RunE = func(cmd *cobra.Command, args []string) error {
		format, err := out.get()
		if err != nil {
			return err
		}
		if !*yes && !isTerminal(r.stdin) {
			return cmdline.Usagef("cluster delete: standard input is not a terminal, so there is no one to confirm: pass --yes to delete %s", args[0])
		}
		return r.configured(cmd.Context(), func(s *session) error {
			cl, err := findCluster(cmd.Context(), s.db, args[0])
			if err != nil {
				return err
			}
			if !*yes {
				routes, err := s.db.Routes(cmd.Context(), cl.UUID)
				if err != nil {
					return err
				}
				question := fmt.Sprintf("Delete cluster %s (id %s) and its %s? Its agent is cut off and its tokens stop working. [y/N] ",
					terminalSafe(cl.Name), cl.UUID, plural(len(routes), "route"))
				if !r.confirm(question) {
					return fmt.Errorf("cluster %s not deleted: the answer was not y (--yes deletes without asking)", cl.Name)
				}
			}
			d, err := s.db.DeleteCluster(cmd.Context(), cl.UUID)
			if err != nil {
				return err
			}
			if format != formatText {
				return printData(r.stdout, format, api.ClusterDeletedOf(d))
			}
			printDeletion(r.stdout, d)
			return nil
		})
	}
	return c
}

// plural is "1 route", "2 routes".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// confirm asks question on stderr and reads one line of stdin: true for y
// or yes. Anything else, or no answer at all, is no.
func (r *runner) confirm(question string) bool {
	fmt.Fprint(r.stderr, question)
	line, err := bufio.NewReader(r.stdin).ReadString('\n')
	if err != nil && line == "" {
		fmt.Fprintln(r.stderr)
		return false
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true
	}
	return false
}

// isTerminal reports whether in is a terminal that someone can answer a
// question on. A character device is taken for one: /dev/null is one too,
// and reads as no answer, which confirm takes for no.
func isTerminal(in io.Reader) bool {
	f, ok := in.(*os.File)
	if !ok || f == nil {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// printDeletion writes what deleting a cluster removed.
func printDeletion(w io.Writer, d controlplane.ClusterDeletion) {
	list := func(s []string) string {
		if len(s) == 0 {
			return "none"
		}
		return strings.Join(s, ", ")
	}
	fmt.Fprintf(w, "cluster %s deleted (id %s)\n", terminalSafe(d.Name), d.UUID)
	t := &table{}
	t.row("  routes removed:", fmt.Sprint(d.Routes))
	t.row("  hostnames released:", list(d.Hostnames))
	t.row("  domain grants released:", list(d.Grants))
	t.row("  tokens revoked:", fmt.Sprint(d.TokensRevoked))
	t.write(w)
	fmt.Fprintln(w, "its agent's connections close within REVOCATION_CHECK_INTERVAL; its token no longer works")
}

// clusterJSON is a cluster as -o json prints it: the admin API's fields,
// and the id of its agent.
type clusterJSON struct {
	UUID              string                          `json:"uuid"`
	Name              string                          `json:"name"`
	Status            string                          `json:"status"`
	StatusSince       time.Time                       `json:"status_since"`
	Gateway           string                          `json:"gateway,omitempty"`
	AgentID           string                          `json:"agent_id,omitempty"`
	AgentVersion      string                          `json:"agent_version,omitempty"`
	K8sVersion        string                          `json:"k8s_version,omitempty"`
	LastHeartbeat     *time.Time                      `json:"last_heartbeat,omitempty"`
	Metadata          map[string]any                  `json:"metadata,omitempty"`
	AgentInfo         map[string]any                  `json:"agent_info,omitempty"`
	PublicEndpoint    string                          `json:"public_endpoint,omitempty"`
	RoutingMode       string                          `json:"routing_mode,omitempty"`
	IngressController *controlplane.IngressController `json:"ingress_controller,omitempty"`
	CreatedAt         time.Time                       `json:"created_at"`
}

func clusterViewOf(c *controlplane.Cluster) clusterJSON {
	v := clusterJSON{UUID: c.UUID, Name: c.Name, Status: c.Status, StatusSince: c.StatusSince.UTC(), Gateway: c.Gateway, AgentID: c.AgentID, AgentVersion: c.AgentVersion, K8sVersion: c.K8sVersion,
		Metadata: c.Metadata, AgentInfo: c.AgentInfo, PublicEndpoint: c.PublicEndpoint, RoutingMode: c.RoutingMode,
		IngressController: c.IngressController, CreatedAt: c.CreatedAt.UTC()}
	if !c.LastHeartbeat.IsZero() {
		t := c.LastHeartbeat.UTC()
		v.LastHeartbeat = &t
	}
	return v
}

// printClusters writes the cluster table; wide adds where each agent runs,
// as it said when it registered. Its columns are fixed: scripts split it.
func printClusters(w io.Writer, cs []*controlplane.Cluster, wide bool) {
	row := func(cells ...string) {
		line := fmt.Sprintf("%-36s  %-24s  %-12s  %-20s", cells[0], cells[1], cells[2], cells[3])
		if wide {
			line += fmt.Sprintf("  %-24s  %-16s  %s", cells[4], cells[5], cells[6])
		}
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	row("ID", "NAME", "STATUS", "LAST HEARTBEAT", "HOSTNAME", "REGION", "PROVIDER")
	for _, c := range cs {
		row(c.UUID, c.Name, c.Status, heartbeat(c), agentInfo(c, "hostname"), agentInfo(c, "region"), agentInfo(c, "cloud_provider"))
	}
}

func heartbeat(c *controlplane.Cluster) string {
	if c.LastHeartbeat.IsZero() {
		return "never"
	}
	return c.LastHeartbeat.UTC().Format(time.RFC3339)
}

// agentInfo is what the agent said of key when it registered, "-" when
// nothing, without control characters: the agent chose it, and it must
// send no escape sequences to the terminal.
func agentInfo(c *controlplane.Cluster, key string) string {
	if s, ok := c.AgentInfo[key].(string); ok && s != "" {
		return terminalSafe(s)
	}
	return "-"
}

// showCluster writes one cluster as "field: value" lines; wide adds its
// routes and everything the agent reported.
func showCluster(w io.Writer, c *controlplane.Cluster, routes []controlplane.Route, wide bool) {
	t := &table{}
	field := func(name, value string) { t.row(name+":", orDash(value)) }
	field("Name", c.Name)
	field("ID", c.UUID)
	field("Status", c.Status)
	if !c.StatusSince.IsZero() {
		field("Status since", c.StatusSince.UTC().Format(time.RFC3339))
	}
	field("Gateway", c.Gateway)
	field("Last heartbeat", heartbeat(c))
	field("Agent ID", c.AgentID)
	field("Agent version", c.AgentVersion)
	field("Kubernetes", c.K8sVersion)
	field("Hostname", agentInfo(c, "hostname"))
	field("Region", agentInfo(c, "region"))
	field("Provider", agentInfo(c, "cloud_provider"))
	field("Routing mode", c.RoutingMode)
	field("Public endpoint", c.PublicEndpoint)
	ic := ""
	if c.IngressController != nil {
		ic = fmt.Sprintf("%s/%s:%d", c.IngressController.Namespace, c.IngressController.Name, c.IngressController.Port)
		if c.IngressController.Type != "" {
			ic += " (" + c.IngressController.Type + ")"
		}
	}
	field("Ingress controller", ic)
	field("Created", c.CreatedAt.UTC().Format(time.RFC3339))
	pending := 0
	for _, r := range routes {
		if r.Pending {
			pending++
		}
	}
	field("Routes", fmt.Sprintf("%d (%d pending verification)", len(routes), pending))
	t.write(w)
	if !wide {
		return
	}
	for _, part := range []struct {
		title string
		m     map[string]any
	}{{"Agent info", c.AgentInfo}, {"Last heartbeat metadata", c.Metadata}} {
		fmt.Fprintf(w, "\n%s:\n", part.title)
		if len(part.m) == 0 {
			fmt.Fprintln(w, "  none")
			continue
		}
		mt := &table{}
		for _, k := range slices.Sorted(maps.Keys(part.m)) {
			mt.row("  "+k+":", orDash(fmt.Sprint(part.m[k])))
		}
		mt.write(w)
	}
	fmt.Fprintln(w, "\nRoutes:")
	printRoutes(w, routes, map[string]string{c.UUID: c.Name}, false)
}

// findCluster resolves a cluster by name, then by id.
func findCluster(ctx context.Context, db *postgres.DB, ref string) (*controlplane.Cluster, error) {
	c, err := db.ClusterByName(ctx, ref)
	if err != nil {
		if c, err = db.Cluster(ctx, ref); err != nil {
			return nil, fmt.Errorf("cluster %q: %w", ref, err)
		}
	}
	return c, nil
}

// clusterFilter resolves a --cluster flag: the id of the cluster ref names,
// or "" (every cluster) when ref is empty.
func clusterFilter(ctx context.Context, db *postgres.DB, ref string) (string, error) {
	if ref == "" {
		return "", nil
	}
	c, err := findCluster(ctx, db, ref)
	if err != nil {
		return "", err
	}
	return c.UUID, nil
}

// clusterNames maps every cluster's id to its name, for tables that name
// clusters.
func clusterNames(ctx context.Context, db *postgres.DB) (map[string]string, error) {
	cs, err := db.Clusters(ctx)
	if err != nil {
		return nil, err
	}
	names := make(map[string]string, len(cs))
	for _, c := range cs {
		names[c.UUID] = c.Name
	}
	return names, nil
}

// nameOf is the cluster's name, else its id (a deleted cluster's).
func nameOf(names map[string]string, uuid string) string {
	if n, ok := names[uuid]; ok {
		return n
	}
	return uuid
}
