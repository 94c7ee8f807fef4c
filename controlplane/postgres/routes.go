package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/hostnames"
)

// maxNotifyPayload is PostgreSQL's limit on a NOTIFY payload (8000 bytes);
// a longer one fails the transaction, so longer changes are announced as
// "all of the cluster" instead.
const maxNotifyPayload = 8000

const routeColumns = `hostname, path, path_type, cluster_uuid, namespace, service_name, service_port,
	ingress_name, tls, annotations, public_endpoint, routing_mode, deployment_id, deployment_name,
	updated_at, expires_at`

// selectRoutes reads routes with their hostname's state.
const selectRoutes = `SELECT r.hostname, r.path, r.path_type, r.cluster_uuid, r.namespace, r.service_name, r.service_port,
	r.ingress_name, r.tls, r.annotations, r.public_endpoint, r.routing_mode, r.deployment_id, r.deployment_name,
	r.updated_at, r.expires_at, h.verified_at IS NULL
	FROM routes r JOIN hostnames h ON h.hostname = r.hostname AND h.cluster_uuid = r.cluster_uuid`

// RegisterRoute upserts r and sets its expiry to Now+RouteTTL. The hostname
// is claimed for r.ClusterUUID under the ownership rules (package
// controlplane/hostnames, policy db.Ownership): verified at once, or stored
// pending verification (the route is kept and not served). EINVALID for a
// bad route, ENOTFOUND for an unknown cluster, ECONFLICT (with nothing
// changed) when another cluster holds the hostname or one that overlaps it,
// EFORBIDDEN for a name the platform reserves. The change is announced on
// controlplane.RouteNotifyChannel when the transaction commits.
func (db *DB) RegisterRoute(ctx context.Context, r controlplane.Route) error {
	if r.ClusterUUID == "" {
		return controlplane.Errorf(controlplane.EINVALID, "route has no cluster_uuid")
	}
	if err := normalizeRoute(&r, ""); err != nil {
		return err
	}
	now := db.now()
	return db.inTx(ctx, func(tx pgx.Tx) error {
		if err := lockCluster(ctx, tx, r.ClusterUUID); err != nil {
			return err
		}
		if err := db.claimHostnames(ctx, tx, r.ClusterUUID, []string{r.Hostname}); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, upsertRouteSQL, routeArgs(r, now, now.Add(db.routeTTL()))...); err != nil {
			return fmt.Errorf("register route %s%s: %w", r.Hostname, r.Path, err)
		}
		return notify(ctx, tx, r.ClusterUUID, []string{r.Hostname})
	})
}

// UnregisterRoute releases hostname from clusterUUID, deleting all of the
// cluster's routes for it. ENOTFOUND when the cluster does not exist or does
// not own the hostname; another cluster's hostname is left alone. The change
// is announced on controlplane.RouteNotifyChannel.
func (db *DB) UnregisterRoute(ctx context.Context, clusterUUID, hostname string) error {
	if h, err := hostnames.Normalize(hostname); err == nil {
		hostname = h
	}
	return db.inTx(ctx, func(tx pgx.Tx) error {
		if err := lockCluster(ctx, tx, clusterUUID); err != nil {
			return err
		}
		// Routes go with the hostname row (ON DELETE CASCADE).
		tag, err := tx.Exec(ctx, `DELETE FROM hostnames WHERE hostname = $1 AND cluster_uuid = $2`, hostname, clusterUUID)
		if err != nil {
			return fmt.Errorf("unregister %s: %w", hostname, err)
		}
		if tag.RowsAffected() == 0 {
			return controlplane.Errorf(controlplane.ENOTFOUND, "cluster %q has no routes for hostname %q", clusterUUID, hostname)
		}
		return notify(ctx, tx, clusterUUID, []string{hostname})
	})
}

// SyncRoutes replaces all of s.ClusterUUID's routes with s.Routes in one
// transaction: routes and hostnames not in the set are deleted, the set is
// upserted with a fresh expiry, and the cluster's public endpoint, routing
// mode and ingress controller are recorded. Routes without a RoutingMode or
// PublicEndpoint take the sync's, so that a route alone says where to send
// its traffic. EINVALID naming the first bad route (or a duplicate
// hostname and path), ENOTFOUND for an unknown cluster, ECONFLICT or
// EFORBIDDEN naming the first hostname, in sorted order, that the ownership
// rules refuse; on any error nothing is applied. One change covering the whole cluster is announced.
func (db *DB) SyncRoutes(ctx context.Context, s controlplane.RouteSync) error {
	if s.ClusterUUID == "" {
		return controlplane.Errorf(controlplane.EINVALID, "sync has no cluster_uuid")
	}
	mode, err := controlplane.ResolveRoutingMode(s.RoutingMode, s.PublicEndpoint)
	if err != nil {
		return err
	}
	s.RoutingMode = mode
	if ic := s.IngressController; ic != nil && (ic.Port < 0 || ic.Port > 65535) {
		return controlplane.Errorf(controlplane.EINVALID, "ingress controller port %d is out of range 0-65535", ic.Port)
	}
	routes := make([]controlplane.Route, len(s.Routes))
	copy(routes, s.Routes)
	type key struct{ hostname, path string }
	seen := make(map[key]bool, len(routes))
	claimed := make(map[string]bool)
	var hosts []string
	for i := range routes {
		r := &routes[i]
		if r.ClusterUUID != "" && r.ClusterUUID != s.ClusterUUID {
			return controlplane.Errorf(controlplane.EINVALID, "route %d: hostname %q path %q names cluster %q, not the syncing cluster", i, r.Hostname, r.Path, r.ClusterUUID)
		}
		r.ClusterUUID = s.ClusterUUID
		if r.PublicEndpoint == "" {
			r.PublicEndpoint = s.PublicEndpoint
		}
		if err := normalizeRoute(r, s.RoutingMode); err != nil {
			var e *controlplane.Error
			if errors.As(err, &e) {
				return controlplane.Errorf(e.Code, "route %d: %s", i, e.Message)
			}
			return err
		}
		k := key{r.Hostname, r.Path}
		if seen[k] {
			return controlplane.Errorf(controlplane.EINVALID, "route %d: hostname %q path %q appears more than once", i, r.Hostname, r.Path)
		}
		seen[k] = true
		if !claimed[r.Hostname] {
			claimed[r.Hostname] = true
			hosts = append(hosts, r.Hostname)
		}
	}
	paths := make([]string, len(routes))
	routeHosts := make([]string, len(routes))
	for i, r := range routes {
		routeHosts[i], paths[i] = r.Hostname, r.Path
	}

	now := db.now()
	expires := now.Add(db.routeTTL())
	return db.inTx(ctx, func(tx pgx.Tx) error {
		if err := lockCluster(ctx, tx, s.ClusterUUID); err != nil {
			return err
		}
		if err := db.claimHostnames(ctx, tx, s.ClusterUUID, hosts); err != nil {
			return err
		}
		// Releasing a hostname deletes its routes too (ON DELETE CASCADE).
		if _, err := tx.Exec(ctx, `DELETE FROM hostnames WHERE cluster_uuid = $1 AND hostname <> ALL($2::text[])`,
			s.ClusterUUID, nonNil(hosts)); err != nil {
			return fmt.Errorf("sync: release hostnames: %w", err)
		}
		if _, err := tx.Exec(ctx, `
			DELETE FROM routes r
			WHERE r.cluster_uuid = $1
			  AND NOT EXISTS (SELECT 1 FROM unnest($2::text[], $3::text[]) AS n(hostname, path)
			                  WHERE n.hostname = r.hostname AND n.path = r.path)`,
			s.ClusterUUID, routeHosts, paths); err != nil {
			return fmt.Errorf("sync: delete routes: %w", err)
		}
		if len(routes) > 0 {
			batch := &pgx.Batch{}
			for _, r := range routes {
				batch.Queue(upsertRouteSQL, routeArgs(r, now, expires)...)
			}
			if err := tx.SendBatch(ctx, batch).Close(); err != nil {
				return fmt.Errorf("sync: upsert routes: %w", err)
			}
		}
		if _, err := tx.Exec(ctx, `
			UPDATE clusters SET public_endpoint = $2, routing_mode = $3, ingress_controller = $4, updated_at = $5
			WHERE uuid = $1`,
			s.ClusterUUID, s.PublicEndpoint, s.RoutingMode, s.IngressController, now); err != nil {
			return fmt.Errorf("sync: update cluster: %w", err)
		}
		return notify(ctx, tx, s.ClusterUUID, nil)
	})
}

// Routes lists routes ordered by hostname and path: all of them when
// clusterUUID is empty, else the cluster's (none for an unknown or
// malformed UUID).
func (db *DB) Routes(ctx context.Context, clusterUUID string) ([]controlplane.Route, error) {
	var (
		rows pgx.Rows
		err  error
	)
	if clusterUUID == "" {
		rows, err = db.pool.Query(ctx, selectRoutes+` ORDER BY r.hostname, r.path, r.cluster_uuid`)
	} else {
		rows, err = db.pool.Query(ctx, selectRoutes+` WHERE r.cluster_uuid = $1 ORDER BY r.hostname, r.path`, clusterUUID)
	}
	if err != nil {
		return nil, listErr(err, "list routes")
	}
	routes, err := pgx.CollectRows(rows, scanRoute)
	if err != nil {
		return nil, listErr(err, "list routes")
	}
	return routes, nil
}

// ServedRoutes lists the routes whose hostname is verified, the ones a
// gateway serves, ordered by hostname and path.
func (db *DB) ServedRoutes(ctx context.Context) ([]controlplane.Route, error) {
	rows, err := db.pool.Query(ctx, selectRoutes+` WHERE h.verified_at IS NOT NULL ORDER BY r.hostname, r.path`)
	if err != nil {
		return nil, fmt.Errorf("list served routes: %w", err)
	}
	routes, err := pgx.CollectRows(rows, scanRoute)
	if err != nil {
		return nil, fmt.Errorf("list served routes: %w", err)
	}
	return routes, nil
}

// ServedRoutesOf returns the served routes of one cluster (as ServedRoutes
// does for all) and the cluster itself, nil when there is no such cluster:
// what a gateway reloads when a change names that cluster.
func (db *DB) ServedRoutesOf(ctx context.Context, clusterUUID string) ([]controlplane.Route, *controlplane.Cluster, error) {
	c, err := db.Cluster(ctx, clusterUUID)
	if controlplane.ErrorCode(err) == controlplane.ENOTFOUND {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	rows, err := db.pool.Query(ctx, selectRoutes+` WHERE h.verified_at IS NOT NULL AND r.cluster_uuid = $1 ORDER BY r.hostname, r.path`, clusterUUID)
	if err != nil {
		return nil, nil, fmt.Errorf("list served routes of cluster %s: %w", clusterUUID, err)
	}
	routes, err := pgx.CollectRows(rows, scanRoute)
	if err != nil {
		return nil, nil, fmt.Errorf("list served routes of cluster %s: %w", clusterUUID, err)
	}
	return routes, c, nil
}

// DeleteExpiredRoutes deletes the routes whose expires_at is before now and
// releases the hostnames left without routes, one transaction per affected
// cluster, and returns the number of routes deleted. Each cluster's deletion
// is announced with the hostnames it touched. On error, the clusters already
// done stay done.
func (db *DB) DeleteExpiredRoutes(ctx context.Context, now time.Time) (int, error) {
	rows, err := db.pool.Query(ctx, `SELECT DISTINCT cluster_uuid::text FROM routes WHERE expires_at < $1`, now)
	if err != nil {
		return 0, fmt.Errorf("find expired routes: %w", err)
	}
	clusters, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("find expired routes: %w", err)
	}
	total := 0
	for _, cluster := range clusters {
		n, err := db.deleteExpired(ctx, cluster, now)
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

func (db *DB) deleteExpired(ctx context.Context, cluster string, now time.Time) (int, error) {
	deleted := 0
	err := db.inTx(ctx, func(tx pgx.Tx) error {
		// The cluster lock keeps a concurrent register or sync of this
		// cluster from claiming a hostname that the release below would
		// then see without routes and delete.
		if err := lockCluster(ctx, tx, cluster); err != nil {
			var e *controlplane.Error
			if errors.As(err, &e) && e.Code == controlplane.ENOTFOUND {
				return nil // deleted meanwhile, routes and all
			}
			return err
		}
		rows, err := tx.Query(ctx, `DELETE FROM routes WHERE cluster_uuid = $1 AND expires_at < $2 RETURNING hostname`, cluster, now)
		if err != nil {
			return fmt.Errorf("delete expired routes of %s: %w", cluster, err)
		}
		hosts, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("delete expired routes of %s: %w", cluster, err)
		}
		if len(hosts) == 0 {
			return nil
		}
		deleted = len(hosts)
		hosts = uniqueSorted(hosts)
		if _, err := tx.Exec(ctx, `
			DELETE FROM hostnames h
			WHERE h.cluster_uuid = $1 AND h.hostname = ANY($2::text[])
			  AND NOT EXISTS (SELECT 1 FROM routes r WHERE r.hostname = h.hostname AND r.cluster_uuid = h.cluster_uuid)`,
			cluster, hosts); err != nil {
			return fmt.Errorf("release hostnames of %s: %w", cluster, err)
		}
		return notify(ctx, tx, cluster, hosts)
	})
	if err != nil {
		return 0, err
	}
	return deleted, nil
}

// RunReaper deletes the routes expired by db.Now at once and then every
// interval until ctx ends. It blocks; the caller owns the goroutine.
// Failures are logged to logger (slog.Default() when nil) and retried on the
// next tick.
func (db *DB) RunReaper(ctx context.Context, interval time.Duration, logger *slog.Logger) {
	(&Reaper{Store: db, Interval: interval, Logger: logger, Now: db.now}).Run(ctx)
}

// Reaper deletes expired routes periodically. Set its fields before Run;
// one Reaper runs in one goroutine at a time. Several reapers on one
// database (one per control plane replica) are harmless.
type Reaper struct {
	Store    controlplane.RouteStore
	Interval time.Duration    // defaults to a minute
	Logger   *slog.Logger     // defaults to slog.Default()
	Now      func() time.Time // what "expired" is measured against; defaults to time.Now
}

// Run deletes expired routes at once and then every Interval until ctx
// ends. It blocks; the caller owns the goroutine.
func (r *Reaper) Run(ctx context.Context) {
	interval := r.Interval
	if interval <= 0 {
		interval = time.Minute
	}
	logger := r.Logger
	if logger == nil {
		logger = slog.Default()
	}
	now := r.Now
	if now == nil {
		now = time.Now
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		n, err := r.Store.DeleteExpiredRoutes(ctx, now())
		switch {
		case err != nil && ctx.Err() == nil:
			logger.Error("delete expired routes", "err", err)
		case n > 0:
			logger.Info("deleted expired routes", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// lockCluster locks the cluster's row for the rest of the transaction, so
// that route changes of one cluster take turns: a sync then sees the routes
// it replaces, and the reaper never releases a hostname a register is about
// to use. FOR NO KEY UPDATE rather than FOR UPDATE: inserts referencing the
// cluster (tokens, hostnames) need not wait. ENOTFOUND when there is no such
// cluster.
func lockCluster(ctx context.Context, tx pgx.Tx, uuid string) error {
	var one int
	err := tx.QueryRow(ctx, `SELECT 1 FROM clusters WHERE uuid = $1 FOR NO KEY UPDATE`, uuid).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return clusterNotFound(uuid)
	}
	if err != nil {
		return clusterErr(err, uuid, "lock cluster")
	}
	return nil
}

// notify announces a change of cluster's routes (of the given hostnames, or
// all of them when none are given) to Listen. pg_notify inside the
// transaction delivers only if, and when, the transaction commits.
func notify(ctx context.Context, tx pgx.Tx, cluster string, hosts []string) error {
	payload, err := json.Marshal(controlplane.RouteChange{ClusterUUID: cluster, Hostnames: hosts})
	if err != nil {
		return fmt.Errorf("encode route change: %w", err)
	}
	if len(payload) >= maxNotifyPayload {
		// Too many hostnames for one notification: "all of the cluster"
		// makes listeners reload more than they need, but nothing less.
		payload, err = json.Marshal(controlplane.RouteChange{ClusterUUID: cluster})
		if err != nil {
			return fmt.Errorf("encode route change: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, controlplane.RouteNotifyChannel, string(payload)); err != nil {
		return fmt.Errorf("notify route change: %w", err)
	}
	return nil
}

const upsertRouteSQL = `
	INSERT INTO routes (` + routeColumns + `)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
	ON CONFLICT (hostname, path, cluster_uuid) DO UPDATE SET
		path_type = EXCLUDED.path_type,
		namespace = EXCLUDED.namespace,
		service_name = EXCLUDED.service_name,
		service_port = EXCLUDED.service_port,
		ingress_name = EXCLUDED.ingress_name,
		tls = EXCLUDED.tls,
		annotations = EXCLUDED.annotations,
		public_endpoint = EXCLUDED.public_endpoint,
		routing_mode = EXCLUDED.routing_mode,
		deployment_id = EXCLUDED.deployment_id,
		deployment_name = EXCLUDED.deployment_name,
		updated_at = EXCLUDED.updated_at,
		expires_at = EXCLUDED.expires_at`

func routeArgs(r controlplane.Route, updated, expires time.Time) []any {
	annotations := r.Annotations
	if annotations == nil {
		annotations = map[string]string{}
	}
	return []any{r.Hostname, r.Path, r.PathType, r.ClusterUUID, r.Namespace, r.ServiceName, r.ServicePort,
		r.IngressName, r.TLS, annotations, r.PublicEndpoint, r.RoutingMode, r.DeploymentID, r.DeploymentName,
		updated, expires}
}

func scanRoute(row pgx.CollectableRow) (controlplane.Route, error) {
	var r controlplane.Route
	err := row.Scan(&r.Hostname, &r.Path, &r.PathType, &r.ClusterUUID, &r.Namespace, &r.ServiceName, &r.ServicePort,
		&r.IngressName, &r.TLS, &r.Annotations, &r.PublicEndpoint, &r.RoutingMode, &r.DeploymentID, &r.DeploymentName,
		&r.UpdatedAt, &r.ExpiresAt, &r.Pending)
	if len(r.Annotations) == 0 {
		r.Annotations = nil // as callers send "none": omitted, not {}
	}
	return r, err
}

// normalizeRoute fills r's defaults (path "/", path type Prefix, routing
// mode defaultMode, or when that is empty as controlplane.ResolveRoutingMode
// decides) and lowercases its hostname, or returns EINVALID. It is the one
// place a route is validated: the API passes what agents send straight on.
func normalizeRoute(r *controlplane.Route, defaultMode string) error {
	host, err := normalizeHostname(r.Hostname)
	if err != nil {
		return err
	}
	r.Hostname = host
	if r.Path == "" {
		r.Path = "/"
	}
	if !strings.HasPrefix(r.Path, "/") {
		return controlplane.Errorf(controlplane.EINVALID, "hostname %q: path %q does not start with \"/\"", r.Hostname, r.Path)
	}
	switch r.PathType {
	case "":
		r.PathType = controlplane.PathTypePrefix
	case controlplane.PathTypePrefix, controlplane.PathTypeExact, controlplane.PathTypeImplementationSpecific:
	default:
		return controlplane.Errorf(controlplane.EINVALID, "hostname %q path %q: path type %q is not Prefix, Exact or ImplementationSpecific", r.Hostname, r.Path, r.PathType)
	}
	if r.ServicePort < 0 || r.ServicePort > 65535 {
		return controlplane.Errorf(controlplane.EINVALID, "hostname %q path %q: service port %d is out of range 0-65535", r.Hostname, r.Path, r.ServicePort)
	}
	if r.RoutingMode == "" {
		r.RoutingMode = defaultMode
	}
	mode, err := controlplane.ResolveRoutingMode(r.RoutingMode, r.PublicEndpoint)
	if err != nil {
		return controlplane.Errorf(controlplane.EINVALID, "hostname %q path %q: %s", r.Hostname, r.Path, controlplane.ErrorMessage(err))
	}
	r.RoutingMode = mode
	return nil
}

// normalizeHostname returns h in its canonical form (hostnames.Normalize),
// or EINVALID.
func normalizeHostname(h string) (string, error) {
	if h == "" {
		return "", controlplane.Errorf(controlplane.EINVALID, "route has no hostname")
	}
	n, err := hostnames.Normalize(h)
	if err != nil {
		return "", controlplane.Errorf(controlplane.EINVALID, "%s", err.Error())
	}
	return n, nil
}

func uniqueSorted(s []string) []string {
	sort.Strings(s)
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// nonNil keeps an empty list an empty array rather than NULL, which would
// make "<> ALL" unknown and match nothing.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
