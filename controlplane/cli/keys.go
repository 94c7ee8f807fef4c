package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pipeops/tunnel/controlplane/keyseal"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/cmdline"
)

func (r *runner) keysCommand() *cobra.Command {
	// list and retire need no KEK (they never open a key), so they also
	// serve to look into a database whose KEK is in doubt.
	withDB := func(cmd *cobra.Command, fn func(s *session) error) error {
		cfg, err := r.config()
		if err != nil {
			return err
		}
		return r.withDB(cmd.Context(), cfg, fn)
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the token signing keys: which signs, which KEK sealed each",
		Args:  cmdline.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withDB(cmd, func(s *session) error { return listKeys(cmd.Context(), s.cfg, s.db, r.stdout) })
		},
	}
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Make a new signing key; the old ones keep verifying until retired",
		Args:  cmdline.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withDB(cmd, func(s *session) error {
				if err := s.cfg.RequireKEK(); err != nil {
					return err
				}
				k, err := tokens.RotateKey(cmd.Context(), s.db, s.cfg.KEK)
				if err != nil {
					return kekHint(err)
				}
				fmt.Fprintf(r.stdout, "signing key %s created, sealed under KEK %s.\n"+
					"Control planes sign new tokens with it within %s (they read the keys again that often);\n"+
					"the older keys stay in the JWKS and keep verifying their tokens until 'keys retire KID'.\n",
					k.ID, k.KEKID, tokens.DefaultKeyReload)
				return nil
			})
		},
	}
	retire := &cobra.Command{
		Use:   "retire KID",
		Short: "Delete an old signing key: the tokens it signed stop verifying",
		Args:  cmdline.ExactArgs(1, "the key's id (KID in keys list)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withDB(cmd, func(s *session) error {
				if err := s.db.RetireSigningKey(cmd.Context(), args[0]); err != nil {
					return err
				}
				fmt.Fprintf(r.stdout, "signing key %s retired: tokens it signed no longer verify (control planes within %s, gateways when they fetch the JWKS again)\n",
					args[0], tokens.DefaultKeyReload)
				return nil
			})
		},
	}
	rewrap := &cobra.Command{
		Use:   "rewrap",
		Short: "Seal every signing key again under the current KEK",
		Args:  cmdline.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withDB(cmd, func(s *session) error {
				cfg := s.cfg
				if err := cfg.RequireKEK(); err != nil {
					return err
				}
				ids, err := tokens.RewrapKeys(cmd.Context(), s.db, cfg.KEK)
				if err != nil {
					return kekHint(err)
				}
				if len(ids) == 0 {
					fmt.Fprintf(r.stdout, "every signing key is already sealed under KEK %s\n", cfg.KEK.Current().ID())
					return nil
				}
				fmt.Fprintf(r.stdout, "sealed %d signing key(s) under KEK %s: %s\n", len(ids), cfg.KEK.Current().ID(), strings.Join(ids, ", "))
				if prev := cfg.KEK.PreviousIDs(); len(prev) > 0 {
					fmt.Fprintf(r.stdout, "no key needs the previous KEK(s) %s any more: remove them from KEY_ENCRYPTION_KEY_PREVIOUS_FILE\n", strings.Join(prev, ", "))
				}
				return nil
			})
		},
	}
	return cmdline.Group(&cobra.Command{Use: "keys", Short: "List, rotate, retire and rewrap the token signing keys"}, list, rotate, retire, rewrap)
}

func listKeys(ctx context.Context, cfg Config, db *postgres.DB, stdout io.Writer) error {
	keys, err := db.SigningKeys(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%-16s  %-9s  %-20s  %-16s  %s\n", "KID", "ALGORITHM", "CREATED", "KEK", "SIGNS")
	others := 0
	for i, k := range keys {
		kek := k.KEKID
		if len(k.Sealed) == 0 {
			kek = "plaintext"
		} else if id, err := keyseal.KEKID(k.Sealed); err != nil || id != k.KEKID {
			kek += "?" // the row and the sealed key disagree: opening it fails
		}
		if cfg.KEK != nil && kek != cfg.KEK.Current().ID() {
			others++
		}
		signs := "no"
		if i == 0 {
			signs = "yes"
		}
		fmt.Fprintf(stdout, "%-16s  %-9s  %-20s  %-16s  %s\n", k.ID, k.Algorithm, k.CreatedAt.UTC().Format(time.RFC3339), kek, signs)
	}
	if others > 0 {
		fmt.Fprintf(stdout, "\n%d key(s) not sealed under the current KEK %s: run 'keys rewrap'\n", others, cfg.KEK.Current().ID())
	}
	return nil
}
