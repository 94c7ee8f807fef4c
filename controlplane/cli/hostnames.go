package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/hostnames"
	"github.com/pipeops/tunnel/controlplane/postgres"
)

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

func hostnameCmd(ctx context.Context, cfg Config, db *postgres.DB, args []string, stdout io.Writer) error {
	const use = "usage: hostname list [--cluster C] [--json] | hostname verify CLUSTER HOSTNAME"
	switch {
	case len(args) >= 1 && args[0] == "list":
		fs := flag.NewFlagSet("hostname list", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		cluster := fs.String("cluster", "", "only this cluster's (name or id)")
		asJSON := fs.Bool("json", false, "print JSON")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() > 0 {
			return usageError{use}
		}
		uuid := ""
		if *cluster != "" {
			c, err := findCluster(ctx, db, *cluster)
			if err != nil {
				return err
			}
			uuid = c.UUID
		}
		hs, err := db.Hostnames(ctx, uuid)
		if err != nil {
			return err
		}
		if *asJSON {
			if hs == nil {
				hs = []controlplane.Hostname{}
			}
			return json.NewEncoder(stdout).Encode(hs)
		}
		fmt.Fprintf(stdout, "%-40s  %-36s  %-8s  %s\n", "HOSTNAME", "CLUSTER", "STATE", "DETAIL")
		for _, h := range hs {
			state, detail := "verified", h.VerifiedBy
			if !h.Verified {
				state = "pending"
				detail = fmt.Sprintf("publish TXT %s = %q", h.TXTName, h.TXTValue)
				if h.CheckError != "" {
					detail += fmt.Sprintf(" (checked %s: %s)", h.CheckedAt.UTC().Format(time.RFC3339), h.CheckError)
				}
			}
			fmt.Fprintf(stdout, "%-40s  %-36s  %-8s  %s\n", h.Hostname, h.ClusterUUID, state, detail)
		}
		return nil
	case len(args) == 3 && args[0] == "verify":
		c, err := findCluster(ctx, db, args[1])
		if err != nil {
			return err
		}
		h, err := hostnames.Normalize(args[2])
		if err != nil {
			return err
		}
		hs, err := db.Hostnames(ctx, c.UUID)
		if err != nil {
			return err
		}
		for _, claim := range hs {
			if claim.Hostname != h {
				continue
			}
			if claim.Verified {
				fmt.Fprintf(stdout, "%s is verified (%s)\n", h, claim.VerifiedBy)
				return nil
			}
			v := &hostnames.DNSVerifier{Store: db, Resolver: hostnames.NewResolver(cfg.DNSResolver)}
			if err := v.Check(ctx, claim); err != nil {
				if errors.Is(err, hostnames.ErrNoRecord) {
					return fmt.Errorf("%s is not verified: %w\npublish a TXT record %s with the value %q, then run this again", h, err, claim.TXTName, claim.TXTValue)
				}
				return err
			}
			fmt.Fprintf(stdout, "%s verified: its routes are served from now on\n", h)
			return nil
		}
		return fmt.Errorf("cluster %s has no route for %s", c.Name, h)
	}
	return usageError{use}
}

func domainCmd(ctx context.Context, db *postgres.DB, args []string, stdout io.Writer) error {
	switch {
	case len(args) == 3 && args[0] == "grant":
		c, err := findCluster(ctx, db, args[1])
		if err != nil {
			return err
		}
		if err := db.GrantDomain(ctx, c.UUID, args[2]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "cluster %s may route %s and every name below it\n", c.Name, args[2])
		return nil
	case len(args) == 2 && args[0] == "revoke":
		if err := db.RevokeGrant(ctx, args[1]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "grant of %s revoked; names it verified need their DNS challenge again\n", args[1])
		return nil
	case len(args) == 1 && args[0] == "list":
		gs, err := db.Grants(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%-40s  %-36s  %s\n", "DOMAIN", "CLUSTER", "GRANTED")
		for _, g := range gs {
			fmt.Fprintf(stdout, "%-40s  %-36s  %s\n", g.Domain, g.ClusterUUID, g.CreatedAt.UTC().Format(time.RFC3339))
		}
		return nil
	}
	return usageError{"usage: domain grant CLUSTER DOMAIN | domain revoke DOMAIN | domain list"}
}
