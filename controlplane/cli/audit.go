package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/shared/cmdline"
)

// auditJSON is one entry as `audit list --json` prints it.
type auditJSON struct {
	ID          int64     `json:"id"`
	Time        time.Time `json:"time"`
	ClusterUUID string    `json:"cluster_uuid"`
	ClusterName string    `json:"cluster_name"`
	User        string    `json:"user"`
	Groups      []string  `json:"groups"`
	TokenID     string    `json:"token_id"`
	Verb        string    `json:"verb"`
	Method      string    `json:"method"`
	Path        string    `json:"path"`
	Status      int       `json:"status"`
	BytesIn     int64     `json:"bytes_in"`
	BytesOut    int64     `json:"bytes_out"`
	DurationMS  int64     `json:"duration_ms"`
}

func (r *runner) auditCommand() *cobra.Command {
	var (
		cluster, user string
		since         time.Duration
		limit         int
	)
	list := &cobra.Command{
		Use:   "list",
		Short: "List the Kubernetes API requests made through the gateways, newest first",
		Long: `List the Kubernetes API requests made through the gateways, newest first: who,
verb, path, status, bytes and duration. It reads the audit table only, so it needs
DATABASE_URL and no KEK. -o json prints [{"id","time","cluster_uuid","cluster_name",
"user","groups","token_id","verb","method","path","status","bytes_in","bytes_out",
"duration_ms"}].`,
		Args: cmdline.NoArgs,
	}
	f := list.Flags()
	f.StringVar(&cluster, "cluster", "", "only this cluster's (name or id; a deleted cluster's too)")
	f.StringVar(&user, "user", "", "only this person's (the token's subject)")
	f.DurationVar(&since, "since", 0, "only entries this recent, like 2h")
	f.IntVar(&limit, "limit", controlplane.DefaultAuditLimit, fmt.Sprintf("at most this many, 1 to %d", controlplane.MaxAuditLimit))
	out := addOutput(list, formatTable, formatJSON, formatYAML)
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		format, err := out.get()
		if err != nil {
			return err
		}
		if since < 0 {
			return cmdline.Usagef("audit list: --since must be a positive duration such as 1h or 30m")
		}
		if limit < 1 || limit > controlplane.MaxAuditLimit {
			return cmdline.Usagef("audit list: --limit must be from 1 to %d", controlplane.MaxAuditLimit)
		}
		cfg, err := r.config()
		if err != nil {
			return err
		}
		// No KEK: the audit table is all it reads.
		return r.withDB(cmd.Context(), cfg, func(s *session) error {
			f := controlplane.AuditFilter{Cluster: cluster, User: user, Limit: limit}
			if since > 0 {
				f.Since = time.Now().Add(-since)
			}
			entries, err := s.db.AuditEntries(cmd.Context(), f)
			if err != nil {
				return err
			}
			if format == formatTable {
				printAudit(r.stdout, entries)
				return nil
			}
			views := make([]auditJSON, 0, len(entries))
			for _, e := range entries {
				groups := e.Groups
				if groups == nil {
					groups = []string{}
				}
				views = append(views, auditJSON{ID: e.ID, Time: e.Time.UTC(), ClusterUUID: e.ClusterUUID, ClusterName: e.ClusterName,
					User: e.User, Groups: groups, TokenID: e.TokenID, Verb: e.Verb, Method: e.Method, Path: e.Path,
					Status: e.Status, BytesIn: e.BytesIn, BytesOut: e.BytesOut, DurationMS: e.Duration.Milliseconds()})
			}
			return printData(r.stdout, format, views)
		})
	}
	return cmdline.Group(&cobra.Command{Use: "audit", Short: "Read the Kubernetes API audit log"}, list)
}

// printAudit writes the audit table. The path goes in full (it is what
// was done); a long one pushes the columns after it out of line.
func printAudit(w io.Writer, entries []controlplane.AuditEntry) {
	row := func(cells ...string) {
		line := fmt.Sprintf("%-20s  %-20s  %-20s  %-16s  %-50s  %-6s  %-15s  %s", cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7])
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	row("TIME", "CLUSTER", "USER", "VERB", "PATH", "STATUS", "BYTES IN/OUT", "DURATION")
	for _, e := range entries {
		cluster := e.ClusterName
		if cluster == "" {
			cluster = e.ClusterUUID
		}
		user := e.User
		if user == "" {
			user = "-"
		}
		row(e.Time.UTC().Format(time.RFC3339), printable(cluster), printable(user), printable(e.Verb), printable(e.Path),
			strconv.Itoa(e.Status), byteCount(e.BytesIn)+"/"+byteCount(e.BytesOut), e.Duration.Round(time.Millisecond).String())
	}
}

// printable keeps a caller's text (a request path, a token's subject) from
// sending escape sequences to the terminal or breaking the row.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.IsSpace(r) {
			return '?'
		}
		return r
	}, s)
}

// byteCount is n in binary units, short enough for a table cell.
func byteCount(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10)
	}
	v, suffix := float64(n)/unit, "Ki"
	for _, s := range []string{"Mi", "Gi", "Ti", "Pi"} {
		if v < unit {
			break
		}
		v, suffix = v/unit, s
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + suffix
}
