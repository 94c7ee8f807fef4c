package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pipeops/tunnel/controlplane"
)

// GatewayStarted records gateway id, reachable by its peers at peerURL, as
// running, and forgets the tunnels a previous run of the same id recorded
// (they died with it).
func (db *DB) GatewayStarted(ctx context.Context, id, peerURL string) error {
	err := db.inTx(ctx, func(tx pgx.Tx) error {
		now := db.now()
		if _, err := tx.Exec(ctx, `
			INSERT INTO gateways (id, peer_url, started_at, seen_at) VALUES ($1, $2, $3, $3)
			ON CONFLICT (id) DO UPDATE SET peer_url = EXCLUDED.peer_url, started_at = EXCLUDED.started_at, seen_at = EXCLUDED.seen_at`,
			id, peerURL, now); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM gateway_tunnels WHERE gateway_id = $1`, id); err != nil {
			return err
		}
		return notifyTunnels(ctx, tx)
	})
	if err != nil {
		return fmt.Errorf("record gateway start: %w", err)
	}
	return nil
}

// GatewaySeen refreshes gateway id's seen_at, the proof that it still runs
// (recording it again if it was removed meanwhile).
func (db *DB) GatewaySeen(ctx context.Context, id, peerURL string) error {
	now := db.now()
	_, err := db.pool.Exec(ctx, `
		INSERT INTO gateways (id, peer_url, started_at, seen_at) VALUES ($1, $2, $3, $3)
		ON CONFLICT (id) DO UPDATE SET peer_url = EXCLUDED.peer_url, seen_at = EXCLUDED.seen_at`, id, peerURL, now)
	if err != nil {
		return fmt.Errorf("record gateway seen: %w", err)
	}
	return nil
}

// GatewayStopped removes gateway id and every tunnel it holds, so its peers
// stop forwarding to it.
func (db *DB) GatewayStopped(ctx context.Context, id string) error {
	err := db.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM gateways WHERE id = $1`, id); err != nil {
			return err
		}
		return notifyTunnels(ctx, tx)
	})
	if err != nil {
		return fmt.Errorf("record gateway stop: %w", err)
	}
	return nil
}

// SetGatewayTunnel records that gateway holds t.Sessions (and t.Draining)
// sessions of t.ClusterUUID, or, with none, that it holds no tunnel to it.
// t.GatewayID and t.PeerURL are ignored. ENOTFOUND for an unknown cluster.
func (db *DB) SetGatewayTunnel(ctx context.Context, gateway string, t controlplane.GatewayTunnel) error {
	ids := t.SessionIDs
	if ids == nil {
		ids = []string{}
	}
	err := db.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		if t.Sessions <= 0 && t.Draining <= 0 {
			_, err = tx.Exec(ctx, `DELETE FROM gateway_tunnels WHERE cluster_uuid = $1 AND gateway_id = $2`, t.ClusterUUID, gateway)
		} else {
			_, err = tx.Exec(ctx, `
				INSERT INTO gateway_tunnels (cluster_uuid, gateway_id, sessions, draining, session_ids, k8s_http, impersonates, since)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
				ON CONFLICT (cluster_uuid, gateway_id) DO UPDATE SET sessions = EXCLUDED.sessions, draining = EXCLUDED.draining,
					session_ids = EXCLUDED.session_ids, k8s_http = EXCLUDED.k8s_http, impersonates = EXCLUDED.impersonates`,
				t.ClusterUUID, gateway, max(t.Sessions, 0), max(t.Draining, 0), ids, t.K8sHTTP, t.Impersonates, db.now())
		}
		if err != nil {
			return err
		}
		return notifyTunnels(ctx, tx)
	})
	if err != nil {
		return clusterErr(err, t.ClusterUUID, "record gateway tunnel")
	}
	return nil
}

// GatewayTunnels lists the tunnels held by gateways seen since liveSince,
// ordered by cluster and gateway.
func (db *DB) GatewayTunnels(ctx context.Context, liveSince time.Time) ([]controlplane.GatewayTunnel, error) {
	rows, err := db.pool.Query(ctx, `
		SELECT t.cluster_uuid::text, t.gateway_id, g.peer_url, t.sessions, t.draining, t.session_ids, t.k8s_http, t.impersonates
		FROM gateway_tunnels t JOIN gateways g ON g.id = t.gateway_id
		WHERE g.seen_at >= $1
		ORDER BY t.cluster_uuid, t.gateway_id`, liveSince)
	if err != nil {
		return nil, fmt.Errorf("list gateway tunnels: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (controlplane.GatewayTunnel, error) {
		var t controlplane.GatewayTunnel
		err := row.Scan(&t.ClusterUUID, &t.GatewayID, &t.PeerURL, &t.Sessions, &t.Draining, &t.SessionIDs, &t.K8sHTTP, &t.Impersonates)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("list gateway tunnels: %w", err)
	}
	return out, nil
}

// FollowTunnels listens on controlplane.TunnelNotifyChannel until ctx ends
// or the connection fails, calling listening once LISTEN is in effect and
// changed for every announcement (see Listener.Run for the contract).
func (db *DB) FollowTunnels(ctx context.Context, listening, changed func()) error {
	return listenOn(ctx, db.pool, controlplane.TunnelNotifyChannel, listening, func(string) { changed() })
}

func notifyTunnels(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, controlplane.TunnelNotifyChannel); err != nil {
		return fmt.Errorf("notify tunnel change: %w", err)
	}
	return nil
}
