package peers

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/pipeops/tunnel/controlplane"
)

// retryInterval is the pause after a failed database write or listen.
const retryInterval = time.Second

// Run records this gateway as started, then until ctx ends keeps its
// record fresh, writes the tunnels it holds as they change, and follows the
// other gateways' tunnels (LISTEN, and a full reload every SeenInterval,
// which also forgets gateways that stopped being seen). A database outage
// delays the records and keeps the last directory serving. Every goroutine
// it starts has ended when it returns.
func (p *Peers) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { p.followLoop(ctx) })
	wg.Go(func() { p.reloadLoop(ctx) })
	if p.start(ctx) {
		wg.Go(func() { p.seenLoop(ctx) })
		p.writeLoop(ctx)
	}
	wg.Wait()
}

// start records this gateway as started, retrying until it is or ctx ends.
func (p *Peers) start(ctx context.Context) bool {
	for {
		err := p.cfg.Store.GatewayStarted(ctx, p.cfg.ID, p.cfg.URL)
		if err == nil {
			p.log.Info("peer gateways: this gateway is recorded", "gateway", p.cfg.ID, "peer_url", p.cfg.URL)
			p.requestReload()
			return true
		}
		p.log.Warn("peer gateways: cannot record this gateway; retrying", "err", err)
		if !sleep(ctx, retryInterval) {
			return false
		}
	}
}

// Stop withdraws this gateway and its tunnels from the database, so the
// others stop forwarding to it: the first step of a drain. Later changes of
// its sessions are not recorded.
func (p *Peers) Stop(ctx context.Context) error {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	return p.cfg.Store.GatewayStopped(ctx, p.cfg.ID)
}

func (p *Peers) isStopped() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopped
}

func (p *Peers) seenLoop(ctx context.Context) {
	tick := time.NewTicker(p.cfg.SeenInterval)
	defer tick.Stop()
	o := outage{log: p.log, down: "peer gateways: cannot refresh this gateway's record; the others stop forwarding to it once it is stale",
		up: "peer gateways: this gateway's record is fresh again"}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if p.isStopped() {
			return
		}
		o.note(ctx, p.cfg.Store.GatewaySeen(ctx, p.cfg.ID, p.cfg.URL))
	}
}

// outage logs a database outage of a loop once when it starts and once
// when it ends, not on every failed try.
type outage struct {
	log      *slog.Logger
	down, up string
	failing  bool
}

func (o *outage) note(ctx context.Context, err error) {
	switch {
	case err != nil && !o.failing && ctx.Err() == nil:
		o.log.Warn(o.down, "err", err)
		o.failing = true
	case err == nil && o.failing:
		o.log.Info(o.up)
		o.failing = false
	}
}

// writeLoop writes the tunnel records of the clusters whose sessions
// changed, each as the sessions are when it is written.
func (p *Peers) writeLoop(ctx context.Context) {
	for {
		p.mu.Lock()
		dirty := slices.Collect(maps.Keys(p.dirty))
		clear(p.dirty)
		stopped := p.stopped
		p.mu.Unlock()
		if stopped {
			return
		}
		var failed []string
		for _, cluster := range dirty {
			if err := p.writeTunnel(ctx, cluster); err != nil {
				if ctx.Err() != nil {
					return
				}
				p.log.Warn("peer gateways: cannot record a tunnel; retrying", "cluster", cluster, "err", err)
				failed = append(failed, cluster)
			}
		}
		if len(failed) > 0 {
			p.mu.Lock()
			for _, c := range failed {
				p.dirty[c] = true
			}
			p.mu.Unlock()
			if !sleep(ctx, retryInterval) {
				return
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		}
	}
}

func (p *Peers) writeTunnel(ctx context.Context, cluster string) error {
	// A draining agent's sessions take no streams and are not counted;
	// those this gateway retires (its shutdown) are, apart.
	t := controlplane.GatewayTunnel{ClusterUUID: cluster}
	for _, s := range p.cfg.Local.ClusterSessions(cluster) {
		switch {
		case s.Draining():
			continue
		case s.Retiring():
			t.Draining++
		default:
			t.Sessions++
			t.SessionIDs = append(t.SessionIDs, s.ID)
		}
		t.K8sHTTP, t.Impersonates = s.Info.K8sHTTP, s.Info.Impersonates
	}
	err := p.cfg.Store.SetGatewayTunnel(ctx, p.cfg.ID, t)
	if controlplane.ErrorCode(err) == controlplane.ENOTFOUND {
		return nil // a deleted cluster: nothing to forward to
	}
	return err
}

// followLoop keeps a LISTEN on the tunnel channel, reloading on each
// announcement.
func (p *Peers) followLoop(ctx context.Context) {
	for {
		err := p.cfg.Store.FollowTunnels(ctx, p.requestReload, p.requestReload)
		if ctx.Err() != nil {
			return
		}
		p.log.Warn("peer gateways: not listening for tunnel changes; reloading on a timer", "err", err)
		if !sleep(ctx, retryInterval) {
			return
		}
	}
}

func (p *Peers) requestReload() {
	select {
	case p.reload <- struct{}{}:
	default:
	}
}

// reloadLoop reloads the directory when asked and every SeenInterval.
func (p *Peers) reloadLoop(ctx context.Context) {
	tick := time.NewTicker(p.cfg.SeenInterval)
	defer tick.Stop()
	o := outage{log: p.log, down: "peer gateways: cannot load the other gateways' tunnels; keeping the last known",
		up: "peer gateways: tunnels loaded again"}
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.reload:
		case <-tick.C:
		}
		o.note(ctx, p.reloadNow(ctx))
	}
}

func (p *Peers) reloadNow(ctx context.Context) error {
	live := p.cfg.Now().Add(-3 * p.cfg.SeenInterval)
	ts, err := p.cfg.Store.GatewayTunnels(ctx, live)
	if err != nil {
		return err
	}
	holders := make(map[string][]holder)
	gateways := map[string]bool{}
	for _, t := range ts {
		if t.GatewayID == p.cfg.ID {
			continue
		}
		u, err := ParseURL(t.PeerURL)
		if err != nil {
			continue // written by a gateway that checked it: not expected
		}
		gateways[t.GatewayID] = true
		holders[t.ClusterUUID] = append(holders[t.ClusterUUID], holder{id: t.GatewayID, url: u, k8sHTTP: t.K8sHTTP, impersonates: t.Impersonates,
			draining: t.Sessions == 0, sessions: t.SessionIDs})
	}
	p.mu.Lock()
	p.holders, p.loaded = holders, true
	now := p.cfg.Now()
	for id, until := range p.down {
		if !gateways[id] || now.After(until) {
			delete(p.down, id)
		}
	}
	gone := p.retireGoneLocked()
	p.mu.Unlock()
	// Links to a gateway that no longer holds their cluster (its agent
	// drains or left) or is shutting down carry no new request: the idle
	// ones close now, the busy ones when their request ends.
	for _, lc := range gone {
		lc.pool.Retire()
	}
	return nil
}

// Loaded reports whether the directory has been loaded at least once.
func (p *Peers) Loaded() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.loaded
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
