package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/pipeops/tunnel/controlplane"
)

// ClusterDirectory finds clusters in the control plane's store: by id
// (UUID) and by name, each answering a controlplane.ENOTFOUND error for a
// cluster that does not exist. *postgres.DB is one.
type ClusterDirectory interface {
	Cluster(ctx context.Context, uuid string) (*controlplane.Cluster, error)
	ClusterByName(ctx context.Context, name string) (*controlplane.Cluster, error)
}

// errNoCluster means no cluster has the name or id asked for.
var errNoCluster = errors.New("no such cluster")

// Limits of the cluster cache: a kubectl command sends a burst of requests
// (discovery alone is dozens), each of which would otherwise query the
// store; the answers may be this old.
const (
	clusterCacheTTL     = 30 * time.Second
	clusterCacheMissTTL = 5 * time.Second
	clusterCacheMax     = 4096
)

// clusterRef is what the Kubernetes API handler needs of a cluster.
type clusterRef struct {
	UUID     string
	Name     string    // "" when unknown (no directory, or the store is down)
	LastSeen time.Time // the agent's last heartbeat; zero: never, or unknown
}

// display names the cluster for a person: its name, with its id.
func (c *clusterRef) display() string {
	if c.Name == "" {
		return c.UUID
	}
	return fmt.Sprintf("%s (%s)", c.Name, c.UUID)
}

// clusterCache resolves cluster references through a ClusterDirectory,
// caching answers (and, for a shorter time, misses). Safe for concurrent
// use. A nil directory takes every reference for an id.
type clusterCache struct {
	dir ClusterDirectory
	now func() time.Time

	mu      sync.Mutex
	entries map[string]clusterEntry
}

type clusterEntry struct {
	ref     *clusterRef // nil: no such cluster
	expires time.Time
}

func newClusterCache(dir ClusterDirectory) *clusterCache {
	return &clusterCache{dir: dir, now: time.Now, entries: map[string]clusterEntry{}}
}

// find resolves ref, a cluster's name or id. It returns errNoCluster when
// no cluster has it, and another error when the store cannot be asked.
func (c *clusterCache) find(ctx context.Context, ref string) (*clusterRef, error) {
	if c.dir == nil {
		return &clusterRef{UUID: ref}, nil
	}
	now := c.now()
	c.mu.Lock()
	e, ok := c.entries[ref]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		if e.ref == nil {
			return nil, errNoCluster
		}
		return e.ref, nil
	}
	found, err := c.lookup(ctx, ref)
	if err != nil && !errors.Is(err, errNoCluster) {
		return nil, err
	}
	e = clusterEntry{ref: found, expires: now.Add(clusterCacheTTL)}
	if found == nil {
		e.expires = now.Add(clusterCacheMissTTL)
	}
	c.mu.Lock()
	if len(c.entries) >= clusterCacheMax {
		// Names callers make up cannot grow the cache without bound;
		// starting afresh costs a query per cluster in use.
		clear(c.entries)
	}
	c.entries[ref] = e
	c.mu.Unlock()
	return found, err
}

// lookup asks the store: by name first (names are what people type), then
// by id.
func (c *clusterCache) lookup(ctx context.Context, ref string) (*clusterRef, error) {
	cl, err := c.dir.ClusterByName(ctx, ref)
	if controlplane.ErrorCode(err) == controlplane.ENOTFOUND {
		cl, err = c.dir.Cluster(ctx, ref)
	}
	switch {
	case controlplane.ErrorCode(err) == controlplane.ENOTFOUND:
		return nil, errNoCluster
	case err != nil:
		return nil, fmt.Errorf("look up cluster %q: %w", ref, err)
	}
	return &clusterRef{UUID: cl.UUID, Name: cl.Name, LastSeen: cl.LastHeartbeat}, nil
}
