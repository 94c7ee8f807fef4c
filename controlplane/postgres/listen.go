package postgres

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pipeops/tunnel/controlplane"
)

// Listener follows route changes announced on controlplane.RouteNotifyChannel.
// Set its fields before Run; one Listener runs in one goroutine at a time.
type Listener struct {
	// Pool lends the dedicated connection the Listener holds while it runs.
	Pool *pgxpool.Pool
	// OnListening, if set, is called once LISTEN is in effect: every change
	// committed after the call is delivered. Changes committed before it (or
	// while no Listener ran) are not, so a route cache loads its full state
	// here, not before.
	OnListening func()
	// OnChange is called for each change, in commit order, on Run's
	// goroutine; Run waits for it to return. An empty Hostnames means any of
	// the cluster's routes may have changed: reload all of them.
	OnChange func(controlplane.RouteChange)
}

// FollowRoutes runs a Listener on db's pool until ctx ends or its
// connection fails (see Listener.Run), calling listening once LISTEN is in
// effect and changed for each change. With ServedRoutes and Clusters it makes
// *DB the gateway's route source.
func (db *DB) FollowRoutes(ctx context.Context, listening func(), changed func(controlplane.RouteChange)) error {
	return (&Listener{Pool: db.pool, OnListening: listening, OnChange: changed}).Run(ctx)
}

// Run listens on a connection of its own until ctx ends, returning ctx's
// error, or until the connection fails, returning that error; then it is
// up to the caller to run it again (after a pause), and to reload, since
// changes made in between are lost. Payloads that do not decode are skipped:
// only this package announces on the channel, so they are not route changes.
func (l *Listener) Run(ctx context.Context) error {
	return listenOn(ctx, l.Pool, controlplane.RouteNotifyChannel, l.OnListening, func(payload string) {
		change, ok := decodeRouteChange(payload)
		if ok && l.OnChange != nil {
			l.OnChange(change)
		}
	})
}

// listenOn holds a connection of pool that listens on channel, calling
// listening once LISTEN is in effect and onPayload for each notification,
// until ctx ends or the connection fails (see Listener.Run).
func listenOn(ctx context.Context, pool *pgxpool.Pool, channel string, listening func(), onPayload func(string)) error {
	pc, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("listen: acquire connection: %w", err)
	}
	// A connection that has run LISTEN keeps queueing notifications, so it
	// must never go back to the pool for other work.
	conn := pc.Hijack()
	defer conn.Close(context.WithoutCancel(ctx))

	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return fmt.Errorf("listen on %s: %w", channel, err)
	}
	if listening != nil {
		listening()
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("listen on %s: %w", channel, err)
		}
		onPayload(n.Payload)
	}
}

// decodeRouteChange decodes a notification payload, as notify encodes it.
// A payload that is not a route change (not JSON of that shape, or naming
// no cluster) is not ok.
func decodeRouteChange(payload string) (controlplane.RouteChange, bool) {
	var change controlplane.RouteChange
	if err := json.Unmarshal([]byte(payload), &change); err != nil || change.ClusterUUID == "" {
		return controlplane.RouteChange{}, false
	}
	return change, true
}
