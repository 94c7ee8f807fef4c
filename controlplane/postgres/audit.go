package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pipeops/tunnel/controlplane"
)

// pruneChunk bounds the rows one DELETE of PruneAudit removes, so that
// pruning a large backlog is many short transactions, not one that holds
// its locks and its WAL for minutes.
const pruneChunk = 10000

var auditColumns = []string{"at", "cluster_uuid", "cluster_name", "user_name", "groups", "token_id",
	"verb", "method", "path", "status", "bytes_in", "bytes_out", "duration_ms"}

// InsertAudit writes entries in one COPY: all of them or, on error, none.
// Each entry is Normalized first, so none can fail the batch with a value
// the table refuses.
func (db *DB) InsertAudit(ctx context.Context, entries []controlplane.AuditEntry) error {
	if len(entries) == 0 {
		return nil
	}
	_, err := db.pool.CopyFrom(ctx, pgx.Identifier{"k8s_audit"}, auditColumns,
		pgx.CopyFromSlice(len(entries), func(i int) ([]any, error) {
			e := entries[i].Normalized()
			groups := e.Groups
			if groups == nil {
				groups = []string{}
			}
			return []any{e.Time, e.ClusterUUID, e.ClusterName, e.User, groups, e.TokenID,
				e.Verb, e.Method, e.Path, int32(e.Status), e.BytesIn, e.BytesOut, e.Duration.Milliseconds()}, nil
		}))
	if err != nil {
		return fmt.Errorf("insert %d audit entries: %w", len(entries), err)
	}
	return nil
}

// AuditEntries lists the entries f selects, newest first.
func (db *DB) AuditEntries(ctx context.Context, f controlplane.AuditFilter) ([]controlplane.AuditEntry, error) {
	var (
		where []string
		args  []any
	)
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if f.Cluster != "" {
		p := arg(f.Cluster)
		where = append(where, "(cluster_uuid = "+p+" OR cluster_name = "+p+")")
	}
	if f.User != "" {
		where = append(where, "user_name = "+arg(f.User))
	}
	if !f.Since.IsZero() {
		where = append(where, "at >= "+arg(f.Since))
	}
	limit := f.Limit
	if limit <= 0 {
		limit = controlplane.DefaultAuditLimit
	}
	limit = min(limit, controlplane.MaxAuditLimit)
	sql := `SELECT id, at, cluster_uuid, cluster_name, user_name, groups, token_id, verb, method, path,
		status, bytes_in, bytes_out, duration_ms FROM k8s_audit`
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	sql += " ORDER BY at DESC, id DESC LIMIT " + arg(limit)
	rows, err := db.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("list audit entries: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (controlplane.AuditEntry, error) {
		var (
			e  controlplane.AuditEntry
			ms int64
		)
		err := row.Scan(&e.ID, &e.Time, &e.ClusterUUID, &e.ClusterName, &e.User, &e.Groups, &e.TokenID,
			&e.Verb, &e.Method, &e.Path, &e.Status, &e.BytesIn, &e.BytesOut, &ms)
		e.Duration = time.Duration(ms) * time.Millisecond
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("list audit entries: %w", err)
	}
	return out, nil
}

// PruneAudit deletes the entries older than olderThan (none by age when it
// is zero) and, of the rest, all but the keepAtMost newest (no cap when
// keepAtMost is zero or less). Entries of the same microsecond as the
// newest one beyond the cap go too, so at most keepAtMost remain. It
// deletes in chunks, each its own transaction: stopped by ctx, it leaves
// the table consistent and partly pruned, and says how many it deleted.
// Several gateways may prune at once; each row is deleted once.
func (db *DB) PruneAudit(ctx context.Context, olderThan time.Time, keepAtMost int64) (int64, error) {
	var deleted int64
	if keepAtMost > 0 {
		// The (keepAtMost+1)-th newest entry's time: it and everything
		// older is beyond the cap. The at index answers this without a
		// sort.
		var cutoff time.Time
		err := db.pool.QueryRow(ctx, `SELECT at FROM k8s_audit ORDER BY at DESC OFFSET $1 LIMIT 1`, keepAtMost).Scan(&cutoff)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return 0, fmt.Errorf("prune audit: find the newest %d entries: %w", keepAtMost, err)
		default:
			n, err := db.pruneAuditWhere(ctx, `at <= $1`, cutoff)
			deleted += n
			if err != nil {
				return deleted, err
			}
		}
	}
	if !olderThan.IsZero() {
		n, err := db.pruneAuditWhere(ctx, `at < $1`, olderThan)
		deleted += n
		if err != nil {
			return deleted, err
		}
	}
	return deleted, nil
}

// pruneAuditWhere deletes the entries matching cond (on $1 = t) in chunks
// until none is left.
func (db *DB) pruneAuditWhere(ctx context.Context, cond string, t time.Time) (int64, error) {
	var deleted int64
	for {
		tag, err := db.pool.Exec(ctx, `DELETE FROM k8s_audit WHERE id IN (
			SELECT id FROM k8s_audit WHERE `+cond+` LIMIT `+strconv.Itoa(pruneChunk)+`)`, t)
		if err != nil {
			return deleted, fmt.Errorf("prune audit entries: %w", err)
		}
		deleted += tag.RowsAffected()
		// Entries are written with the time they happened, so none can come
		// to match again once a chunk came up short.
		if tag.RowsAffected() < pruneChunk {
			return deleted, nil
		}
	}
}
