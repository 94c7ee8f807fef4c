package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pipeops/tunnel/controlplane"
)

const tokenColumns = `id, issuer, kind, coalesce(cluster_uuid::text, ''), clusters, subject, groups, issued_at, expires_at, revoked_at`

// RecordToken stores the record of an issued token. EINVALID without an ID,
// a Kind or an ExpiresAt; ECONFLICT when the ID is already recorded;
// ENOTFOUND when ClusterUUID names no cluster. A zero IssuedAt means Now.
func (db *DB) RecordToken(ctx context.Context, t controlplane.Token) error {
	switch {
	case t.ID == "":
		return controlplane.Errorf(controlplane.EINVALID, "token has no id")
	case t.Kind == "":
		return controlplane.Errorf(controlplane.EINVALID, "token %q has no kind", t.ID)
	case t.ExpiresAt.IsZero():
		return controlplane.Errorf(controlplane.EINVALID, "token %q has no expiry", t.ID)
	}
	if t.IssuedAt.IsZero() {
		t.IssuedAt = db.now()
	}
	var cluster, revoked any // NULL when empty or zero
	if t.ClusterUUID != "" {
		cluster = t.ClusterUUID
	}
	if !t.RevokedAt.IsZero() {
		revoked = t.RevokedAt
	}
	_, err := db.pool.Exec(ctx, `
		INSERT INTO tokens (id, issuer, kind, cluster_uuid, clusters, subject, groups, issued_at, expires_at, revoked_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		t.ID, t.Issuer, t.Kind, cluster, nonNil(t.Clusters), t.Subject, nonNil(t.Groups), t.IssuedAt, t.ExpiresAt, revoked)
	if err != nil {
		if pgCode(err) == codeUniqueViolation {
			return controlplane.Errorf(controlplane.ECONFLICT, "token %q is already recorded", t.ID)
		}
		return clusterErr(err, t.ClusterUUID, "record token")
	}
	return nil
}

// RevokeToken marks the token revoked at at (Now when zero). Revoking again
// keeps the first time. ENOTFOUND for an unknown id.
func (db *DB) RevokeToken(ctx context.Context, id string, at time.Time) error {
	if at.IsZero() {
		at = db.now()
	}
	tag, err := db.pool.Exec(ctx, `UPDATE tokens SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1`, id, at)
	if err != nil {
		return fmt.Errorf("revoke token %q: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ENOTFOUND, "token %q not found", id)
	}
	return nil
}

// Revoked reports whether the token is revoked. An id with no record counts
// as revoked: every token this control plane issues is recorded first, so
// an unknown one was forged, issued against another database, or belonged
// to a deleted cluster (whose tokens go with it), and none of those may
// pass. Callers must therefore record a token before handing it out.
func (db *DB) Revoked(ctx context.Context, id string) (bool, error) {
	var revoked bool
	err := db.pool.QueryRow(ctx, `SELECT revoked_at IS NOT NULL FROM tokens WHERE id = $1`, id).Scan(&revoked)
	if errors.Is(err, pgx.ErrNoRows) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("check token %q: %w", id, err)
	}
	return revoked, nil
}

// Tokens lists token records ordered by issue time: all of them when
// clusterUUID is empty, else those that grant access to that cluster (its
// agent tokens and the user tokens naming it); none for a malformed UUID.
func (db *DB) Tokens(ctx context.Context, clusterUUID string) ([]controlplane.Token, error) {
	var (
		rows pgx.Rows
		err  error
	)
	if clusterUUID == "" {
		rows, err = db.pool.Query(ctx, `SELECT `+tokenColumns+` FROM tokens ORDER BY issued_at, id`)
	} else {
		rows, err = db.pool.Query(ctx, `SELECT `+tokenColumns+` FROM tokens
			WHERE cluster_uuid = $1 OR $2 = ANY(clusters) ORDER BY issued_at, id`, clusterUUID, clusterUUID)
	}
	if err != nil {
		return nil, listErr(err, "list tokens")
	}
	tokens, err := pgx.CollectRows(rows, scanToken)
	if err != nil {
		return nil, listErr(err, "list tokens")
	}
	return tokens, nil
}

// Token implements controlplane.TokenStore.
func (db *DB) Token(ctx context.Context, id string) (controlplane.Token, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+tokenColumns+` FROM tokens WHERE id = $1`, id)
	if err != nil {
		return controlplane.Token{}, fmt.Errorf("load token %q: %w", id, err)
	}
	t, err := pgx.CollectExactlyOneRow(rows, scanToken)
	if errors.Is(err, pgx.ErrNoRows) {
		return controlplane.Token{}, controlplane.Errorf(controlplane.ENOTFOUND, "token %q not found", id)
	}
	if err != nil {
		return controlplane.Token{}, fmt.Errorf("load token %q: %w", id, err)
	}
	return t, nil
}

func scanToken(row pgx.CollectableRow) (controlplane.Token, error) {
	var (
		t       controlplane.Token
		revoked *time.Time
	)
	err := row.Scan(&t.ID, &t.Issuer, &t.Kind, &t.ClusterUUID, &t.Clusters, &t.Subject, &t.Groups, &t.IssuedAt, &t.ExpiresAt, &revoked)
	if revoked != nil {
		t.RevokedAt = *revoked
	}
	return t, err
}
