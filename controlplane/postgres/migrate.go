package postgres

import (
	"context"
	"fmt"
	"io/fs"
	"sort"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pipeops/tunnel/migrations"
)

// migrateLockKey is the pg_advisory_xact_lock key that serializes Migrate
// across control plane replicas starting together. Any constant works as
// long as nothing else in the database uses it.
const migrateLockKey int64 = 0x7069_7065_6f70_7301 // "pipeops" + 1

// Migrate applies the migrations embedded in package migrations that the
// database has not seen, in name order, and returns the names it applied
// (none when the schema is current). Each file runs in a transaction of its
// own together with its row in schema_migrations, so a failed file leaves
// nothing behind and is retried on the next call. Concurrent calls, from this
// process or others, are safe: an advisory lock makes them take turns, and
// each re-checks what is applied under the lock.
func Migrate(ctx context.Context, pool *pgxpool.Pool) (applied []string, err error) {
	return migrate(ctx, pool, migrations.FS)
}

func migrate(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS) ([]string, error) {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return nil, fmt.Errorf("migrate: list migrations: %w", err)
	}
	sort.Strings(names)

	// CREATE TABLE IF NOT EXISTS is not safe against itself when run
	// concurrently (both can pass the check), so it goes under the lock too.
	err = lockedTx(ctx, pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			name       text PRIMARY KEY,
			applied_at timestamptz NOT NULL DEFAULT now()
		)`)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("migrate: create schema_migrations: %w", err)
	}

	var applied []string
	for _, name := range names {
		body, err := fs.ReadFile(fsys, name)
		if err != nil {
			return applied, fmt.Errorf("migrate: read %s: %w", name, err)
		}
		ran := false
		err = lockedTx(ctx, pool, func(tx pgx.Tx) error {
			var done bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE name = $1)`, name).Scan(&done); err != nil {
				return err
			}
			if done {
				return nil
			}
			// No arguments: pgx sends it with the simple protocol, which
			// takes a file of many statements.
			if _, err := tx.Exec(ctx, string(body)); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (name) VALUES ($1)`, name); err != nil {
				return err
			}
			ran = true
			return nil
		})
		if err != nil {
			return applied, fmt.Errorf("migrate: apply %s: %w", name, err)
		}
		if ran {
			applied = append(applied, name)
		}
	}
	return applied, nil
}

// lockedTx runs fn in a transaction that first takes the migration lock;
// the lock goes with the transaction, so a crashed migrator cannot leave it
// held.
func lockedTx(ctx context.Context, pool *pgxpool.Pool, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLockKey); err != nil {
			return fmt.Errorf("take migration lock: %w", err)
		}
		return fn(tx)
	})
}
