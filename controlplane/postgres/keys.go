package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pipeops/tunnel/controlplane"
)

// SigningKeys returns all signing keys, newest first (by CreatedAt, then ID
// for keys created in the same instant). The private keys are returned as
// stored; callers must not log them.
func (db *DB) SigningKeys(ctx context.Context) ([]controlplane.SigningKey, error) {
	rows, err := db.pool.Query(ctx, `SELECT id, algorithm, private_pem, created_at FROM signing_keys ORDER BY created_at DESC, id DESC`)
	if err != nil {
		return nil, fmt.Errorf("list signing keys: %w", err)
	}
	keys, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (controlplane.SigningKey, error) {
		var k controlplane.SigningKey
		err := row.Scan(&k.ID, &k.Algorithm, &k.PrivatePEM, &k.CreatedAt)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("list signing keys: %w", err)
	}
	return keys, nil
}

// AddSigningKey stores k (CreatedAt zero means Now). EINVALID without an
// ID, algorithm or key; ECONFLICT when the ID exists, which is what a
// replica that lost the race to create the first key gets: it should then
// read the keys again and use the winner's.
func (db *DB) AddSigningKey(ctx context.Context, k controlplane.SigningKey) error {
	switch {
	case k.ID == "":
		return controlplane.Errorf(controlplane.EINVALID, "signing key has no id")
	case k.Algorithm == "":
		return controlplane.Errorf(controlplane.EINVALID, "signing key %q has no algorithm", k.ID)
	case len(k.PrivatePEM) == 0:
		return controlplane.Errorf(controlplane.EINVALID, "signing key %q has no private key", k.ID)
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = db.now()
	}
	_, err := db.pool.Exec(ctx, `INSERT INTO signing_keys (id, algorithm, private_pem, created_at) VALUES ($1, $2, $3, $4)`,
		k.ID, k.Algorithm, k.PrivatePEM, k.CreatedAt)
	if err != nil {
		if pgCode(err) == codeUniqueViolation {
			return controlplane.Errorf(controlplane.ECONFLICT, "signing key %q exists", k.ID)
		}
		return fmt.Errorf("add signing key %q: %w", k.ID, err)
	}
	return nil
}
