package cli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/api"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/cmdline"
)

func (r *runner) tokenCommand() *cobra.Command {
	return cmdline.Group(&cobra.Command{Use: "token", Short: "Create, list and revoke tokens"},
		r.tokenCreateCommand(), r.tokenListCommand(), r.tokenRevokeCommand())
}

// tokenCreate is what `token create` was asked for.
type tokenCreate struct {
	kind     string
	ttl      time.Duration
	user     string
	subject  string
	clusters []string // names or ids, or "*"
	groups   []string
	asJSON   bool
}

func (r *runner) tokenCreateCommand() *cobra.Command {
	var a tokenCreate
	c := &cobra.Command{
		Use:   "create --kind admin|user|agent",
		Short: "Mint a token and print it",
		Long: `Mint a token: admin (carries ADMIN_IDENTITY_USER and ADMIN_IDENTITY_GROUPS), user
(reaches the named clusters' Kubernetes API through the gateway, for person --user
in groups --group) or agent (one cluster). --json prints
{"token","id","expires_at","subject","groups"}.`,
		Example: `  pipeops-controlplane token create --kind admin
  pipeops-controlplane token create --kind user --user alice --group dev --cluster prod-eu --ttl 720h`,
		Args: cmdline.NoArgs,
	}
	f := c.Flags()
	f.StringVar(&a.kind, "kind", "", "admin, user or agent")
	f.DurationVar(&a.ttl, "ttl", 0, "lifetime (default: agent 8760h, user 720h, admin 2160h)")
	f.StringVar(&a.user, "user", "", "the person a user token acts for (its subject)")
	f.StringVar(&a.subject, "subject", "", "the older name of --user; on agent tokens, a label")
	f.StringArrayVar(&a.clusters, "cluster", nil, "cluster name or id (repeatable; '*' for all, user tokens)")
	f.StringArrayVar(&a.groups, "group", nil, "a group of the --user (repeatable; user tokens)")
	f.BoolVar(&a.asJSON, "json", false, "print the token and its record as JSON")
	_ = c.RegisterFlagCompletionFunc("kind", cobra.FixedCompletions([]string{"admin", "user", "agent"}, cobra.ShellCompDirectiveNoFileComp))
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		req, err := a.request(cmd.Flags())
		if err != nil {
			return err
		}
		return r.configured(cmd.Context(), func(s *session) error {
			for _, ref := range a.clusters {
				uuid := ref
				if ref != "*" {
					cl, err := findCluster(cmd.Context(), s.db, ref)
					if err != nil {
						return err
					}
					uuid = cl.UUID
				}
				if req.Kind == auth.KindAgent {
					req.ClusterUUID = uuid
				} else {
					req.Clusters = append(req.Clusters, uuid)
				}
			}
			tok, rec, err := s.issuer.Issue(cmd.Context(), req)
			if err != nil {
				return err
			}
			if a.asJSON {
				out := map[string]any{"token": tok, "id": rec.ID, "expires_at": rec.ExpiresAt, "subject": rec.Subject}
				if len(rec.Groups) > 0 {
					out["groups"] = rec.Groups
				}
				return printData(r.stdout, formatJSON, out)
			}
			fmt.Fprintln(r.stdout, tok)
			return nil
		})
	}
	return c
}

// request checks `token create`'s flags and returns the request, all but
// its clusters, which need the database. --user names the person of a user
// token (--subject is its older name, kept for scripts that use it; on an
// agent token --subject is a label), --group their groups; admin tokens
// carry the configured admin identity, so neither is accepted for them.
func (a tokenCreate) request(flags *pflag.FlagSet) (tokens.Request, error) {
	userSet, subjectSet := flags.Changed("user"), flags.Changed("subject")
	if userSet && subjectSet {
		return tokens.Request{}, cmdline.Usagef("token create: --subject is the older name of --user: give one of them")
	}
	req := tokens.Request{Kind: auth.Kind(a.kind), TTL: a.ttl, Subject: a.user, Groups: a.groups}
	if subjectSet {
		req.Subject = a.subject
	}
	named := userSet || subjectSet
	switch req.Kind {
	case auth.KindUser:
		if err := checkPerson("token create", named, req.Subject, a.groups); err != nil {
			return tokens.Request{}, err
		}
	case auth.KindAdmin:
		if named || len(a.groups) > 0 {
			return tokens.Request{}, cmdline.Usagef("token create: an admin token carries the configured admin identity (ADMIN_IDENTITY_USER, ADMIN_IDENTITY_GROUPS): --user, --subject and --group are not for it")
		}
	case auth.KindAgent:
		if userSet || len(a.groups) > 0 {
			return tokens.Request{}, cmdline.Usagef("token create: an agent token names no person: --user and --group are for user tokens (--subject labels an agent token)")
		}
	default:
		return tokens.Request{}, cmdline.Usagef("token create: --kind %q: want agent, user or admin", a.kind)
	}
	return req, nil
}

func (r *runner) tokenRevokeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token by id (see token list)",
		Args:  cmdline.ExactArgs(1, "the token's id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return r.configured(cmd.Context(), func(s *session) error {
				if err := s.db.RevokeToken(cmd.Context(), args[0], time.Now()); err != nil {
					return err
				}
				fmt.Fprintf(r.stdout, "token %s revoked\n", args[0])
				return nil
			})
		},
	}
}

func (r *runner) tokenListCommand() *cobra.Command {
	var cluster string
	c := &cobra.Command{
		Use:   "list",
		Short: "List token records (never the tokens themselves)",
		Long: `List the records of the tokens issued, oldest first: id, kind, subject, the
clusters each reaches, expiry and status (active, expired or revoked). The tokens
themselves are never stored. --cluster lists those that reach one cluster: its
agent tokens and the user tokens naming it.`,
		Args: cmdline.NoArgs,
	}
	c.Flags().StringVar(&cluster, "cluster", "", "only the tokens that reach this cluster (name or id)")
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
			ts, err := s.db.Tokens(cmd.Context(), uuid)
			if err != nil {
				return err
			}
			if format == formatJSON || format == formatYAML {
				views := make([]tokenJSON, 0, len(ts))
				for _, t := range ts {
					views = append(views, tokenViewOf(t))
				}
				return printData(r.stdout, format, views)
			}
			names, err := clusterNames(cmd.Context(), s.db)
			if err != nil {
				return err
			}
			printTokens(r.stdout, ts, names, format == formatWide, time.Now())
			return nil
		})
	}
	return c
}

// tokenJSON is a token record as -o json prints it: the admin API's
// fields, and its issuer (empty for tokens issued before it was recorded).
type tokenJSON struct {
	ID          string     `json:"id"`
	Kind        string     `json:"kind"`
	ClusterUUID string     `json:"cluster_uuid,omitempty"`
	Clusters    []string   `json:"clusters,omitempty"`
	Subject     string     `json:"subject,omitempty"`
	Groups      []string   `json:"groups,omitempty"`
	Issuer      string     `json:"issuer,omitempty"`
	IssuedAt    time.Time  `json:"issued_at"`
	ExpiresAt   time.Time  `json:"expires_at"`
	RevokedAt   *time.Time `json:"revoked_at,omitempty"`
}

func tokenViewOf(t controlplane.Token) tokenJSON {
	v := tokenJSON{ID: t.ID, Kind: t.Kind, ClusterUUID: t.ClusterUUID, Clusters: t.Clusters, Subject: t.Subject, Groups: t.Groups,
		Issuer: t.Issuer, IssuedAt: t.IssuedAt.UTC(), ExpiresAt: t.ExpiresAt.UTC()}
	if !t.RevokedAt.IsZero() {
		at := t.RevokedAt.UTC()
		v.RevokedAt = &at
	}
	return v
}

func tokenStatus(t controlplane.Token, now time.Time) string {
	switch {
	case !t.RevokedAt.IsZero():
		return "revoked"
	case !t.ExpiresAt.After(now):
		return "expired"
	}
	return "active"
}

// printTokens writes the token table; wide adds the groups, when each was
// issued and by whom.
func printTokens(w io.Writer, ts []controlplane.Token, names map[string]string, wide bool, now time.Time) {
	t := &table{}
	head := []string{"ID", "KIND", "SUBJECT", "CLUSTERS", "EXPIRES", "STATUS"}
	if wide {
		head = append(head, "GROUPS", "ISSUED", "ISSUER")
	}
	t.row(head...)
	for _, tok := range ts {
		var clusters []string
		if tok.ClusterUUID != "" {
			clusters = append(clusters, nameOf(names, tok.ClusterUUID))
		}
		for _, c := range tok.Clusters {
			clusters = append(clusters, nameOf(names, c))
		}
		cells := []string{tok.ID, tok.Kind, orDash(tok.Subject), orDash(strings.Join(clusters, ",")),
			tok.ExpiresAt.UTC().Format(time.RFC3339), tokenStatus(tok, now)}
		if wide {
			cells = append(cells, orDash(strings.Join(tok.Groups, ",")), tok.IssuedAt.UTC().Format(time.RFC3339), orDash(tok.Issuer))
		}
		t.row(cells...)
	}
	t.write(w)
}

func (r *runner) kubeconfigCommand() *cobra.Command {
	var (
		user   string
		groups []string
	)
	c := &cobra.Command{
		Use:   "kubeconfig CLUSTER [--user U] [--group G]...",
		Short: "Print a kubeconfig that reaches CLUSTER's Kubernetes API through the gateway",
		Long: `Print a kubeconfig that reaches CLUSTER (name or id) through the gateway
(GATEWAY_URL). Its token names person --user in groups --group; without --user it
names no person (subject kubeconfig:CLUSTER).`,
		Args: cmdline.ExactArgs(1, "the cluster name or id"),
	}
	c.Flags().StringVar(&user, "user", "", "the person the kubeconfig's token acts for")
	c.Flags().StringArrayVar(&groups, "group", nil, "a group of the --user (repeatable)")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if err := checkPerson("kubeconfig", cmd.Flags().Changed("user"), user, groups); err != nil {
			return err
		}
		cfg, err := r.config()
		if err != nil {
			return err
		}
		if cfg.GatewayURL == "" {
			return fmt.Errorf("GATEWAY_URL is not set: a kubeconfig must point at the gateway's public URL")
		}
		return r.withIssuer(cmd.Context(), cfg, func(s *session) error {
			cl, err := findCluster(cmd.Context(), s.db, args[0])
			if err != nil {
				return err
			}
			req := tokens.Request{Kind: auth.KindUser, Clusters: []string{cl.UUID}, Subject: user, Groups: groups}
			if user == "" {
				req.Subject = "kubeconfig:" + cl.Name
			}
			tok, _, err := s.issuer.Issue(cmd.Context(), req)
			if err != nil {
				return err
			}
			b, err := api.Kubeconfig(cfg.GatewayURL, cfg.K8sAPIDomain, cfg.GatewayCA, cl, tok)
			if err != nil {
				return err
			}
			_, err = r.stdout.Write(b)
			return err
		})
	}
	return c
}

// checkPerson checks the person a user token is to name: groups only with
// a user, and names auth.ValidateIdentity accepts (the issuer checks them
// again; checking here refuses them before the database is opened).
func checkPerson(cmd string, named bool, user string, groups []string) error {
	if !named {
		if len(groups) > 0 {
			return cmdline.Usagef("%s: --group needs --user: groups belong to the person the token names", cmd)
		}
		return nil
	}
	if err := auth.ValidateIdentity(user, groups); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	return nil
}
