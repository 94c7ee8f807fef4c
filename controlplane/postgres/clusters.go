package postgres

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pipeops/tunnel/controlplane"
)

var clusterNameRE = regexp.MustCompile("^" + controlplane.ClusterNamePattern + "$")

const clusterColumns = `uuid::text, name, status, agent_id, agent_version, k8s_version, last_heartbeat,
	metadata, agent_info, public_endpoint, routing_mode, ingress_controller, created_at, updated_at, status_since, gateway`

// CreateCluster creates a cluster named name in status pending, with a new
// UUID. EINVALID when name is not a DNS-1123 label (lowercase letters, digits
// and inner hyphens, at most 63), ECONFLICT when the name is taken.
func (db *DB) CreateCluster(ctx context.Context, name string) (*controlplane.Cluster, error) {
	if !clusterNameRE.MatchString(name) {
		return nil, controlplane.Errorf(controlplane.EINVALID,
			"cluster name %q is not valid: use 1-63 lowercase letters, digits and hyphens, starting and ending with a letter or digit", name)
	}
	now := db.now()
	row := db.pool.QueryRow(ctx, `
		INSERT INTO clusters (name, status, created_at, updated_at, status_since) VALUES ($1, $2, $3, $3, $3)
		RETURNING `+clusterColumns, name, controlplane.ClusterPending, now)
	c, err := scanCluster(row)
	if err != nil {
		if pgCode(err) == codeUniqueViolation {
			return nil, controlplane.Errorf(controlplane.ECONFLICT, "cluster name %q is taken", name)
		}
		return nil, fmt.Errorf("create cluster %q: %w", name, err)
	}
	return c, nil
}

// Cluster returns the cluster with the given UUID; ENOTFOUND when there is
// none, including when uuid is not a UUID at all.
func (db *DB) Cluster(ctx context.Context, uuid string) (*controlplane.Cluster, error) {
	c, err := scanCluster(db.pool.QueryRow(ctx, `SELECT `+clusterColumns+` FROM clusters WHERE uuid = $1`, uuid))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, clusterNotFound(uuid)
	}
	if err != nil {
		return nil, clusterErr(err, uuid, "get cluster")
	}
	return c, nil
}

// ClusterByName returns the cluster named name; ENOTFOUND when there is none.
func (db *DB) ClusterByName(ctx context.Context, name string) (*controlplane.Cluster, error) {
	c, err := scanCluster(db.pool.QueryRow(ctx, `SELECT `+clusterColumns+` FROM clusters WHERE name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, controlplane.Errorf(controlplane.ENOTFOUND, "cluster named %q not found", name)
	}
	if err != nil {
		return nil, fmt.Errorf("get cluster %q: %w", name, err)
	}
	return c, nil
}

// Clusters returns all clusters ordered by name.
func (db *DB) Clusters(ctx context.Context) ([]*controlplane.Cluster, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+clusterColumns+` FROM clusters ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list clusters: %w", err)
	}
	clusters, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*controlplane.Cluster, error) {
		return scanCluster(row)
	})
	if err != nil {
		return nil, fmt.Errorf("list clusters: %w", err)
	}
	return clusters, nil
}

// UpdateAgent records the agent's id, versions and info, replacing those of
// its previous registration; ENOTFOUND for an unknown cluster, ETOOLARGE
// when r.Info encodes to more than controlplane.MaxAgentInfoSize (callers
// trim it first, see controlplane.AgentReportOf).
func (db *DB) UpdateAgent(ctx context.Context, uuid string, r controlplane.AgentReport) error {
	info := r.Info
	if info == nil {
		info = map[string]any{}
	}
	if n := controlplane.AgentInfoSize(info); n > controlplane.MaxAgentInfoSize {
		return controlplane.Errorf(controlplane.ETOOLARGE, "agent info of cluster %s is %d bytes of JSON, limit %d",
			uuid, n, controlplane.MaxAgentInfoSize)
	}
	tag, err := db.pool.Exec(ctx, `
		UPDATE clusters SET agent_id = $2, agent_version = $3, k8s_version = $4, agent_info = $5, updated_at = $6
		WHERE uuid = $1`, uuid, r.AgentID, r.AgentVersion, r.K8sVersion, info, db.now())
	if err != nil {
		return clusterErr(err, uuid, "update agent")
	}
	if tag.RowsAffected() == 0 {
		return clusterNotFound(uuid)
	}
	return nil
}

// RecordHeartbeat stores status, metadata (replacing the previous) and the
// heartbeat time at (Now when zero), and gateway unless it is empty. A
// status that differs from the stored one also moves StatusSince to now. EINVALID for a status other than
// pending, connected or disconnected; ENOTFOUND for an unknown cluster.
func (db *DB) RecordHeartbeat(ctx context.Context, uuid, status, gateway string, metadata map[string]any, at time.Time) error {
	switch status {
	case controlplane.ClusterPending, controlplane.ClusterConnected, controlplane.ClusterDisconnected:
	default:
		return controlplane.Errorf(controlplane.EINVALID, "cluster status %q is not %q, %q or %q",
			status, controlplane.ClusterPending, controlplane.ClusterConnected, controlplane.ClusterDisconnected)
	}
	if metadata == nil {
		metadata = map[string]any{}
	}
	now := db.now()
	if at.IsZero() {
		at = now
	}
	tag, err := db.pool.Exec(ctx, `
		UPDATE clusters SET status = $2, metadata = $3, last_heartbeat = $4, updated_at = $5,
			status_since = CASE WHEN status = $2 THEN status_since ELSE $5 END,
			gateway = CASE WHEN $6 = '' THEN gateway ELSE $6 END
		WHERE uuid = $1`, uuid, status, metadata, at, now, gateway)
	if err != nil {
		return clusterErr(err, uuid, "record heartbeat")
	}
	if tag.RowsAffected() == 0 {
		return clusterNotFound(uuid)
	}
	return nil
}

func scanCluster(row pgx.Row) (*controlplane.Cluster, error) {
	var (
		c         controlplane.Cluster
		heartbeat *time.Time
	)
	err := row.Scan(&c.UUID, &c.Name, &c.Status, &c.AgentID, &c.AgentVersion, &c.K8sVersion, &heartbeat,
		&c.Metadata, &c.AgentInfo, &c.PublicEndpoint, &c.RoutingMode, &c.IngressController, &c.CreatedAt, &c.UpdatedAt, &c.StatusSince, &c.Gateway)
	if err != nil {
		return nil, err
	}
	if heartbeat != nil {
		c.LastHeartbeat = *heartbeat
	}
	return &c, nil
}

// DeleteCluster implements controlplane.ClusterStore: it deletes the
// cluster and, in the same transaction, its domain grants, hostname claims
// and routes (announced with the hostnames released, as UnregisterRoute
// announces one, so that gateways drop them at once), its agent tokens'
// records (a token without a record is refused: Revoked says so) and the
// revocation of the user tokens that name it and no other cluster. Audit
// rows (k8s_audit) keep the cluster's id and name: they have no foreign
// key, being the record of what was done to a cluster after it is gone.
// ENOTFOUND for an unknown cluster or a malformed uuid.
func (db *DB) DeleteCluster(ctx context.Context, uuid string) (controlplane.ClusterDeletion, error) {
	var d controlplane.ClusterDeletion
	err := db.inTx(ctx, func(tx pgx.Tx) error {
		d = controlplane.ClusterDeletion{}
		// FOR UPDATE, which route changes (lockCluster) and inserts naming
		// the cluster (a token record's foreign key) wait for: once the
		// deletion commits they find no cluster, so nothing is added to
		// it meanwhile.
		err := tx.QueryRow(ctx, `SELECT uuid::text, name FROM clusters WHERE uuid = $1 FOR UPDATE`, uuid).Scan(&d.UUID, &d.Name)
		if errors.Is(err, pgx.ErrNoRows) {
			return clusterNotFound(uuid)
		}
		if err != nil {
			return clusterErr(err, uuid, "delete cluster")
		}
		// Grants, then hostnames, then routes: the order in which
		// RevokeGrant and a cascade from hostnames to routes lock rows,
		// so that a deletion and either of those wait for each other
		// rather than deadlock.
		if d.Grants, err = deletedStrings(ctx, tx, `DELETE FROM domain_grants WHERE cluster_uuid = $1 RETURNING domain`, d.UUID); err != nil {
			return fmt.Errorf("delete cluster %s: release domain grants: %w", d.UUID, err)
		}
		if _, err := tx.Exec(ctx, `SELECT 1 FROM hostnames WHERE cluster_uuid = $1 ORDER BY hostname FOR UPDATE`, d.UUID); err != nil {
			return fmt.Errorf("delete cluster %s: lock hostnames: %w", d.UUID, err)
		}
		if err := tx.QueryRow(ctx, `WITH gone AS (DELETE FROM routes WHERE cluster_uuid = $1 RETURNING 1) SELECT count(*) FROM gone`,
			d.UUID).Scan(&d.Routes); err != nil {
			return fmt.Errorf("delete cluster %s: delete routes: %w", d.UUID, err)
		}
		if d.Hostnames, err = deletedStrings(ctx, tx, `DELETE FROM hostnames WHERE cluster_uuid = $1 RETURNING hostname`, d.UUID); err != nil {
			return fmt.Errorf("delete cluster %s: release hostnames: %w", d.UUID, err)
		}
		// The agent tokens' records would go with the cluster row (ON
		// DELETE CASCADE); deleting them here counts the live ones.
		var agentTokens int
		if err := tx.QueryRow(ctx, `
			WITH gone AS (DELETE FROM tokens WHERE cluster_uuid = $1 RETURNING revoked_at)
			SELECT count(*) FROM gone WHERE revoked_at IS NULL`, d.UUID).Scan(&agentTokens); err != nil {
			return fmt.Errorf("delete cluster %s: delete agent tokens: %w", d.UUID, err)
		}
		// User tokens carry their clusters in the signed claims, so one
		// naming others too cannot be narrowed: it is left for those.
		tag, err := tx.Exec(ctx, `
			UPDATE tokens SET revoked_at = $2
			WHERE revoked_at IS NULL AND cardinality(clusters) > 0 AND $1::text = ALL(clusters)`, d.UUID, db.now())
		if err != nil {
			return fmt.Errorf("delete cluster %s: revoke user tokens: %w", d.UUID, err)
		}
		d.TokensRevoked = agentTokens + int(tag.RowsAffected())
		if _, err := tx.Exec(ctx, `DELETE FROM clusters WHERE uuid = $1`, d.UUID); err != nil {
			return fmt.Errorf("delete cluster %s: %w", d.UUID, err)
		}
		// With no hostname this says "all of the cluster", which still
		// makes gateways drop the cluster itself from their tables.
		return notify(ctx, tx, d.UUID, d.Hostnames)
	})
	if err != nil {
		return controlplane.ClusterDeletion{}, err
	}
	return d, nil
}

// deletedStrings runs a DELETE ... RETURNING of one text column and
// returns the values sorted, an empty list rather than nil.
func deletedStrings(ctx context.Context, tx pgx.Tx, sql string, args ...any) ([]string, error) {
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	slices.Sort(out)
	return nonNil(out), nil
}
