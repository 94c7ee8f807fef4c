// Package postgres stores the control plane's clusters, routes, tokens and
// signing keys in PostgreSQL. *DB implements controlplane.RouteStore,
// ClusterStore, TokenStore and KeyStore; Migrate brings a database to the
// schema in package migrations, and Listen follows route changes.
//
// Errors a caller can act on are *controlplane.Error (ECONFLICT, ENOTFOUND,
// EINVALID); any other error is a database failure, wrapped with context,
// whose details belong in the log and not in a response.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/hostnames"
)

// DefaultRouteTTL is how long a route lives without being registered or
// synced again. An agent re-syncs far more often; the TTL only cleans up
// after clusters that went away without saying so.
const DefaultRouteTTL = 24 * time.Hour

// DB is the control plane's PostgreSQL storage. It is safe for concurrent
// use by many goroutines. Now and RouteTTL may be set after New or Open but
// must not change once the DB is in use.
type DB struct {
	// Now is the clock for updated_at, created_at and route expiry; tests
	// replace it to move time. Defaults to time.Now.
	Now func() time.Time
	// RouteTTL is added to Now for each registered or synced route's
	// expires_at. Defaults to DefaultRouteTTL.
	RouteTTL time.Duration
	// Ownership is the policy of hostname ownership (base domains, whether
	// custom domains need their DNS challenge). The zero value requires the
	// challenge for every name.
	Ownership hostnames.Policy

	pool  *pgxpool.Pool
	owned bool // Close closes pool: Open made it
}

var (
	_ controlplane.RouteStore   = (*DB)(nil)
	_ controlplane.ClusterStore = (*DB)(nil)
	_ controlplane.TokenStore   = (*DB)(nil)
	_ controlplane.KeyStore     = (*DB)(nil)
)

// New returns a DB on pool. The caller keeps ownership of pool: Close does
// not close it.
func New(pool *pgxpool.Pool) *DB {
	return &DB{Now: time.Now, RouteTTL: DefaultRouteTTL, pool: pool}
}

// Open connects to the database at dbURL (the DATABASE_URL setting, a
// postgres:// URL or key=value string) and checks that it answers. The DB
// owns the pool: Close closes it. Errors never contain the URL's password.
// Open does not migrate; call Migrate.
func Open(ctx context.Context, dbURL string) (*DB, error) {
	if strings.TrimSpace(dbURL) == "" {
		return nil, errors.New("DATABASE_URL is empty: set it to postgres://user:password@host:5432/database")
	}
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, parseError(dbURL, err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %s: %w", describe(cfg), err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		// pgconn's connect errors name user, database and address, never
		// the password.
		return nil, fmt.Errorf("DATABASE_URL: cannot reach PostgreSQL at %s: %w", describe(cfg), err)
	}
	db := New(pool)
	db.owned = true
	return db, nil
}

// parseError explains an unparseable DATABASE_URL without wrapping pgx's
// error, whose text quotes the connection string with only best-effort
// password redaction.
func parseError(dbURL string, err error) error {
	const want = "want postgres://user:password@host:5432/database"
	u, uerr := url.Parse(dbURL)
	switch {
	case strings.HasPrefix(dbURL, "postgres://") || strings.HasPrefix(dbURL, "postgresql://"):
		if uerr != nil {
			// url's error quotes the input, password and all.
			return errors.New("DATABASE_URL is not a valid URL (check the port, and percent-encode special characters in the user and password): " + want)
		}
	case strings.Contains(dbURL, "://") || !strings.Contains(dbURL, "="):
		return errors.New("DATABASE_URL is not a postgres:// URL: " + want)
	default:
		return errors.New("DATABASE_URL is not a valid key=value connection string: " + want)
	}
	// The URL parsed, so its password is known and can be taken out of the
	// details, which are worth keeping (a bad sslmode, an unknown option).
	detail := err.Error()
	if pw, ok := u.User.Password(); ok && pw != "" {
		for _, form := range []string{pw, url.QueryEscape(pw), url.PathEscape(pw), u.User.String()} {
			if form != "" {
				detail = strings.ReplaceAll(detail, form, "xxxxx")
			}
		}
	}
	return errors.New("DATABASE_URL is not a valid PostgreSQL URL: " + detail)
}

// describe names the server of cfg for error messages.
func describe(cfg *pgxpool.Config) string {
	c := cfg.ConnConfig
	return fmt.Sprintf("host=%s port=%d user=%s database=%s", c.Host, c.Port, c.User, c.Database)
}

// Close closes the pool if Open created it; a pool given to New stays open.
func (db *DB) Close() {
	if db.owned {
		db.pool.Close()
	}
}

// Ping checks that the database answers, for readiness probes.
func (db *DB) Ping(ctx context.Context) error {
	if err := db.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping database: %w", err)
	}
	return nil
}

// Pool returns the underlying pool, for Migrate and Listen. It stays owned
// by whoever owns the DB.
func (db *DB) Pool() *pgxpool.Pool { return db.pool }

func (db *DB) now() time.Time {
	if db.Now != nil {
		return db.Now()
	}
	return time.Now()
}

func (db *DB) routeTTL() time.Duration {
	if db.RouteTTL > 0 {
		return db.RouteTTL
	}
	return DefaultRouteTTL
}

// inTx runs fn in a transaction, committing when fn returns nil. fn's error
// is returned as is so that *controlplane.Error reaches the caller intact.
func (db *DB) inTx(ctx context.Context, fn func(pgx.Tx) error) error {
	tx, err := db.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	// Rollback after a successful Commit is a no-op.
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// PostgreSQL error codes this package turns into controlplane codes.
const (
	codeUniqueViolation     = "23505"
	codeForeignKeyViolation = "23503"
	codeInvalidText         = "22P02" // e.g. a malformed uuid
)

// pgCode returns the SQLSTATE of err, or "" when err is not from the server.
func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// pgConstraint returns the constraint named by a server error, if any.
func pgConstraint(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.ConstraintName
	}
	return ""
}

func clusterNotFound(uuid string) error {
	return controlplane.Errorf(controlplane.ENOTFOUND, "cluster %q not found", uuid)
}

// clusterErr maps the errors a statement naming cluster uuid can fail with
// when the cluster does not exist: a foreign key to clusters, or a uuid
// PostgreSQL cannot parse, which cannot name any cluster. Other errors are
// wrapped with op.
func clusterErr(err error, uuid, op string) error {
	switch pgCode(err) {
	case codeInvalidText:
		return clusterNotFound(uuid)
	case codeForeignKeyViolation:
		if strings.HasSuffix(pgConstraint(err), "_cluster_fkey") {
			return clusterNotFound(uuid)
		}
	}
	return fmt.Errorf("%s: %w", op, err)
}

// listErr is the error of a list filtered by cluster: a malformed UUID
// matches nothing, so it is no error at all (nil, and an empty list).
func listErr(err error, op string) error {
	if pgCode(err) == codeInvalidText {
		return nil
	}
	return fmt.Errorf("%s: %w", op, err)
}
