package postgres

import (
	"bytes"
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pipeops/tunnel/controlplane"
)

// SigningKeys returns all signing keys, newest first (by CreatedAt, then ID
// for keys created in the same instant). Keys come as stored: sealed, or in
// the legacy plaintext form, which callers must never log.
func (db *DB) SigningKeys(ctx context.Context) ([]controlplane.SigningKey, error) {
	return signingKeys(ctx, db.pool, "")
}

// signingKeys lists the keys through q; suffix is appended to the query
// (FOR UPDATE, in a transaction).
func signingKeys(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, suffix string) ([]controlplane.SigningKey, error) {
	rows, err := q.Query(ctx, `SELECT id, algorithm, sealed_key, coalesce(kek_id, ''), private_pem, created_at
		FROM signing_keys ORDER BY created_at DESC, id DESC`+suffix)
	if err != nil {
		return nil, fmt.Errorf("list signing keys: %w", err)
	}
	keys, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (controlplane.SigningKey, error) {
		var k controlplane.SigningKey
		err := row.Scan(&k.ID, &k.Algorithm, &k.Sealed, &k.KEKID, &k.PrivatePEM, &k.CreatedAt)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("list signing keys: %w", err)
	}
	return keys, nil
}

// AddSigningKey stores k (CreatedAt zero means Now). EINVALID without an
// ID, algorithm, sealed key or KEK id, or with a plaintext key: keys are
// only ever written sealed. ECONFLICT when the ID exists, which is what a
// replica that lost the race to create the first key gets: it should then
// read the keys again and use the winner's.
func (db *DB) AddSigningKey(ctx context.Context, k controlplane.SigningKey) error {
	switch {
	case k.ID == "":
		return controlplane.Errorf(controlplane.EINVALID, "signing key has no id")
	case k.Algorithm == "":
		return controlplane.Errorf(controlplane.EINVALID, "signing key %q has no algorithm", k.ID)
	case len(k.PrivatePEM) != 0:
		return controlplane.Errorf(controlplane.EINVALID, "signing key %q is not sealed: keys are stored sealed only", k.ID)
	case len(k.Sealed) == 0 || k.KEKID == "":
		return controlplane.Errorf(controlplane.EINVALID, "signing key %q has no sealed key or KEK id", k.ID)
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = db.now()
	}
	_, err := db.pool.Exec(ctx, `INSERT INTO signing_keys (id, algorithm, sealed_key, kek_id, created_at) VALUES ($1, $2, $3, $4, $5)`,
		k.ID, k.Algorithm, k.Sealed, k.KEKID, k.CreatedAt)
	if err != nil {
		if pgCode(err) == codeUniqueViolation {
			return controlplane.Errorf(controlplane.ECONFLICT, "signing key %q exists", k.ID)
		}
		return fmt.Errorf("add signing key %q: %w", k.ID, err)
	}
	return nil
}

// ResealSigningKeys replaces the stored form of each key with its new
// sealed form, in one transaction: all or none. Each key must still be
// stored as its Was says (compared under row locks), else ECONFLICT and
// nothing changes. The plaintext column is cleared.
func (db *DB) ResealSigningKeys(ctx context.Context, rs []controlplane.Reseal) error {
	for _, r := range rs {
		if len(r.Sealed) == 0 || r.KEKID == "" {
			return controlplane.Errorf(controlplane.EINVALID, "signing key %q: no sealed key or KEK id", r.Was.ID)
		}
	}
	return db.inTx(ctx, func(tx pgx.Tx) error {
		stored, err := signingKeys(ctx, tx, " FOR UPDATE")
		if err != nil {
			return err
		}
		byID := make(map[string]controlplane.SigningKey, len(stored))
		for _, k := range stored {
			byID[k.ID] = k
		}
		for _, r := range rs {
			cur, ok := byID[r.Was.ID]
			if !ok || !bytes.Equal(cur.Sealed, r.Was.Sealed) || !bytes.Equal(cur.PrivatePEM, r.Was.PrivatePEM) {
				return controlplane.Errorf(controlplane.ECONFLICT, "signing key %q changed or was retired meanwhile", r.Was.ID)
			}
			if _, err := tx.Exec(ctx, `UPDATE signing_keys SET sealed_key = $2, kek_id = $3, private_pem = NULL WHERE id = $1`,
				r.Was.ID, r.Sealed, r.KEKID); err != nil {
				return fmt.Errorf("reseal signing key %q: %w", r.Was.ID, err)
			}
		}
		return nil
	})
}

// RetireSigningKey deletes key id. The newest key is refused (EINVALID):
// it is the one signing, and a database without keys would make the next
// start create a fresh one that no existing token verifies with.
func (db *DB) RetireSigningKey(ctx context.Context, id string) error {
	return db.inTx(ctx, func(tx pgx.Tx) error {
		// Locking every row orders this against a concurrent rotation: the
		// key is either still the newest, or no longer.
		stored, err := signingKeys(ctx, tx, " FOR UPDATE")
		if err != nil {
			return err
		}
		for i, k := range stored {
			if k.ID != id {
				continue
			}
			if i == 0 {
				return controlplane.Errorf(controlplane.EINVALID, "signing key %q is the newest, the one that signs: rotate first (keys rotate), then retire it", id)
			}
			if _, err := tx.Exec(ctx, `DELETE FROM signing_keys WHERE id = $1`, id); err != nil {
				return fmt.Errorf("retire signing key %q: %w", id, err)
			}
			return nil
		}
		return controlplane.Errorf(controlplane.ENOTFOUND, "signing key %q not found", id)
	})
}
