package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/pipeops/tunnel/controlplane/keyseal"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/controlplane/tokens"
)

const keysUsage = "usage: keys list | keys rotate | keys retire KID | keys rewrap"

// keysCmd runs the signing key subcommands. list and retire need no KEK
// (they never open a key), so they also serve to look into a database
// whose KEK is in doubt.
func keysCmd(ctx context.Context, cfg Config, db *postgres.DB, args []string, stdout io.Writer) error {
	switch {
	case len(args) == 1 && args[0] == "list":
		return listKeys(ctx, cfg, db, stdout)
	case len(args) == 1 && args[0] == "rotate":
		if err := cfg.RequireKEK(); err != nil {
			return err
		}
		k, err := tokens.RotateKey(ctx, db, cfg.KEK)
		if err != nil {
			return kekHint(err)
		}
		fmt.Fprintf(stdout, "signing key %s created, sealed under KEK %s.\n"+
			"Control planes sign new tokens with it within %s (they read the keys again that often);\n"+
			"the older keys stay in the JWKS and keep verifying their tokens until 'keys retire KID'.\n",
			k.ID, k.KEKID, tokens.DefaultKeyReload)
		return nil
	case len(args) == 2 && args[0] == "retire":
		if err := db.RetireSigningKey(ctx, args[1]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "signing key %s retired: tokens it signed no longer verify (control planes within %s, gateways when they fetch the JWKS again)\n",
			args[1], tokens.DefaultKeyReload)
		return nil
	case len(args) == 1 && args[0] == "rewrap":
		if err := cfg.RequireKEK(); err != nil {
			return err
		}
		ids, err := tokens.RewrapKeys(ctx, db, cfg.KEK)
		if err != nil {
			return kekHint(err)
		}
		if len(ids) == 0 {
			fmt.Fprintf(stdout, "every signing key is already sealed under KEK %s\n", cfg.KEK.Current().ID())
			return nil
		}
		fmt.Fprintf(stdout, "sealed %d signing key(s) under KEK %s: %s\n", len(ids), cfg.KEK.Current().ID(), strings.Join(ids, ", "))
		if prev := cfg.KEK.PreviousIDs(); len(prev) > 0 {
			fmt.Fprintf(stdout, "no key needs the previous KEK(s) %s any more: remove them from KEY_ENCRYPTION_KEY_PREVIOUS_FILE\n", strings.Join(prev, ", "))
		}
		return nil
	}
	return usageError{keysUsage}
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
