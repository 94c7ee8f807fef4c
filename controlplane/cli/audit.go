package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/postgres"
)

const auditUse = "usage: audit list [--cluster NAME_OR_ID] [--user U] [--since DURATION] [--limit N] [--json]"

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

// auditCmd runs `audit list`. It needs no KEK: it reads the audit table
// only.
func auditCmd(ctx context.Context, db *postgres.DB, args []string, stdout io.Writer) error {
	if len(args) < 1 || args[0] != "list" {
		return usageError{auditUse}
	}
	fs := flag.NewFlagSet("audit list", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cluster := fs.String("cluster", "", "only this cluster's (name or id; a deleted cluster's too)")
	user := fs.String("user", "", "only this person's (the token's subject)")
	since := fs.Duration("since", 0, "only entries this recent")
	limit := fs.Int("limit", controlplane.DefaultAuditLimit, "at most this many, newest first")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() > 0 {
		return usageError{auditUse}
	}
	if *since < 0 {
		return usageError{"--since must be a positive duration such as 1h or 30m\n" + auditUse}
	}
	if *limit < 1 || *limit > controlplane.MaxAuditLimit {
		return usageError{fmt.Sprintf("--limit must be from 1 to %d\n%s", controlplane.MaxAuditLimit, auditUse)}
	}
	f := controlplane.AuditFilter{Cluster: *cluster, User: *user, Limit: *limit}
	if *since > 0 {
		f.Since = time.Now().Add(-*since)
	}
	entries, err := db.AuditEntries(ctx, f)
	if err != nil {
		return err
	}
	if *asJSON {
		out := make([]auditJSON, 0, len(entries))
		for _, e := range entries {
			groups := e.Groups
			if groups == nil {
				groups = []string{}
			}
			out = append(out, auditJSON{ID: e.ID, Time: e.Time.UTC(), ClusterUUID: e.ClusterUUID, ClusterName: e.ClusterName,
				User: e.User, Groups: groups, TokenID: e.TokenID, Verb: e.Verb, Method: e.Method, Path: e.Path,
				Status: e.Status, BytesIn: e.BytesIn, BytesOut: e.BytesOut, DurationMS: e.Duration.Milliseconds()})
		}
		return json.NewEncoder(stdout).Encode(out)
	}
	printAudit(stdout, entries)
	return nil
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
