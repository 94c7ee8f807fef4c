// Package state persists what the agent must remember across restarts: the
// cluster identity it registered as and the gateway it was sent to. In a
// cluster it lives in a ConfigMap of the agent's own namespace (KubeStore);
// out of cluster in a file (FileStore). MemoryStore is for tests only.
//
// Nothing here is secret, and nothing secret belongs here: a ConfigMap is
// readable by far more people and tools than a Secret. The agent's token
// comes from its configuration (in a cluster, a Secret the deployment
// provides) and the agent never saves it, so it needs no access to Secrets.
package state

import (
	"context"
	"errors"
	"time"
)

// Errors of the stores. They are wrapped with details; test with errors.Is.
var (
	// ErrCorrupt means stored state exists but cannot be decoded.
	ErrCorrupt = errors.New("state: stored state is corrupt")
)

// State is the agent's non-secret persisted state. The zero State means the
// agent has never registered.
type State struct {
	// ClusterID is the id from register_success, sent back on the next
	// registration to resume the same identity.
	ClusterID    string `json:"cluster_id,omitempty"`
	ClusterUUID  string `json:"cluster_uuid,omitempty"`
	GatewayWSURL string `json:"gateway_ws_url,omitempty"`
	AgentID      string `json:"agent_id,omitempty"`
	// UpdatedAt is when the state was saved. Save sets it to the current
	// time when it is zero.
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// Store loads and saves the agent's state. Implementations are safe for
// concurrent use; each Save replaces the whole State, so concurrent saves
// leave one of them, never a mix.
type Store interface {
	// Load returns the saved state, or the zero State and no error when
	// nothing was ever saved.
	Load(ctx context.Context) (State, error)
	// Save replaces the saved state with s.
	Save(ctx context.Context, s State) error
}

// stamp returns s with UpdatedAt set to now when it is zero, in UTC and
// without the monotonic clock reading, so a loaded State compares equal to
// the one saved.
func stamp(s State) State {
	if s.UpdatedAt.IsZero() {
		s.UpdatedAt = time.Now()
	}
	s.UpdatedAt = s.UpdatedAt.UTC().Round(0)
	return s
}
