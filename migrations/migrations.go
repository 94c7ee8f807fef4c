// Package migrations holds the control plane's PostgreSQL schema as numbered
// SQL files, embedded so that the binary carries the schema it was built
// for. controlplane/postgres.Migrate applies them.
package migrations

import "embed"

// FS holds the migration files (0001_init.sql, ...) at its root. It is
// read-only and safe for concurrent use.
//
//go:embed *.sql
var FS embed.FS
