package cli

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/hostnames"
	"github.com/pipeops/tunnel/shared/cmdline"
)

func (r *runner) hostnameCommand() *cobra.Command {
	return cmdline.Group(&cobra.Command{Use: "hostname", Short: "List route hostnames and verify their ownership"},
		r.hostnameListCommand(), r.hostnameVerifyCommand())
}

func (r *runner) hostnameListCommand() *cobra.Command {
	var cluster string
	c := &cobra.Command{
		Use:   "list",
		Short: "List route hostnames: verified, or the DNS TXT record to publish",
		Args:  cmdline.NoArgs,
	}
	c.Flags().StringVar(&cluster, "cluster", "", "only this cluster's (name or id)")
	out := addOutput(c, formatTable, formatJSON, formatYAML)
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
			hs, err := s.db.Hostnames(cmd.Context(), uuid)
			if err != nil {
				return err
			}
			if format != formatTable {
				if hs == nil {
					hs = []controlplane.Hostname{}
				}
				return printData(r.stdout, format, hs)
			}
			fmt.Fprintf(r.stdout, "%-40s  %-36s  %-8s  %s\n", "HOSTNAME", "CLUSTER", "STATE", "DETAIL")
			for _, h := range hs {
				state, detail := "verified", h.VerifiedBy
				if !h.Verified {
					state = "pending"
					detail = fmt.Sprintf("publish TXT %s = %q", h.TXTName, h.TXTValue)
					if h.CheckError != "" {
						detail += fmt.Sprintf(" (checked %s: %s)", h.CheckedAt.UTC().Format(time.RFC3339), h.CheckError)
					}
				}
				fmt.Fprintf(r.stdout, "%-40s  %-36s  %-8s  %s\n", h.Hostname, h.ClusterUUID, state, terminalSafe(detail))
			}
			return nil
		})
	}
	return c
}

func (r *runner) hostnameVerifyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "verify CLUSTER HOSTNAME",
		Short: "Check a pending hostname's TXT record now",
		Args:  cmdline.ExactArgs(2, "CLUSTER HOSTNAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			h, err := hostnames.Normalize(args[1])
			if err != nil {
				return cmdline.UsageError(err)
			}
			return r.configured(cmd.Context(), func(s *session) error {
				c, err := findCluster(cmd.Context(), s.db, args[0])
				if err != nil {
					return err
				}
				hs, err := s.db.Hostnames(cmd.Context(), c.UUID)
				if err != nil {
					return err
				}
				for _, claim := range hs {
					if claim.Hostname != h {
						continue
					}
					if claim.Verified {
						fmt.Fprintf(r.stdout, "%s is verified (%s)\n", h, claim.VerifiedBy)
						return nil
					}
					v := &hostnames.DNSVerifier{Store: s.db, Resolver: hostnames.NewResolver(s.cfg.DNSResolver)}
					if err := v.Check(cmd.Context(), claim); err != nil {
						if errors.Is(err, hostnames.ErrNoRecord) {
							return fmt.Errorf("%s is not verified: %w\npublish a TXT record %s with the value %q, then run this again", h, err, claim.TXTName, claim.TXTValue)
						}
						return err
					}
					fmt.Fprintf(r.stdout, "%s verified: its routes are served from now on\n", h)
					return nil
				}
				return fmt.Errorf("cluster %s has no route for %s", c.Name, h)
			})
		},
	}
}

func (r *runner) domainCommand() *cobra.Command {
	grant := &cobra.Command{
		Use:   "grant CLUSTER DOMAIN",
		Short: "Let CLUSTER route DOMAIN and every name below it, with no DNS challenge",
		Args:  cmdline.ExactArgs(2, "CLUSTER DOMAIN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return r.configured(cmd.Context(), func(s *session) error {
				c, err := findCluster(cmd.Context(), s.db, args[0])
				if err != nil {
					return err
				}
				if err := s.db.GrantDomain(cmd.Context(), c.UUID, args[1]); err != nil {
					return err
				}
				fmt.Fprintf(r.stdout, "cluster %s may route %s and every name below it\n", c.Name, args[1])
				return nil
			})
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke DOMAIN",
		Short: "Take a domain grant back",
		Args:  cmdline.ExactArgs(1, "DOMAIN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return r.configured(cmd.Context(), func(s *session) error {
				if err := s.db.RevokeGrant(cmd.Context(), args[0]); err != nil {
					return err
				}
				fmt.Fprintf(r.stdout, "grant of %s revoked; names it verified need their DNS challenge again\n", args[0])
				return nil
			})
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List domain grants",
		Args:  cmdline.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return r.configured(cmd.Context(), func(s *session) error {
				gs, err := s.db.Grants(cmd.Context())
				if err != nil {
					return err
				}
				fmt.Fprintf(r.stdout, "%-40s  %-36s  %s\n", "DOMAIN", "CLUSTER", "GRANTED")
				for _, g := range gs {
					fmt.Fprintf(r.stdout, "%-40s  %-36s  %s\n", g.Domain, g.ClusterUUID, g.CreatedAt.UTC().Format(time.RFC3339))
				}
				return nil
			})
		},
	}
	return cmdline.Group(&cobra.Command{Use: "domain", Short: "Grant clusters whole domains, with no DNS challenge"}, grant, revoke, list)
}
