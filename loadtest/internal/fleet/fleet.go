// Package fleet runs many simulated agents in one process: each is the
// agent's real tunnel client (agent/tunnelclient) with its own cluster and
// token, connected to the gateway and sending heartbeats, but serving no
// streams. A fleet costs the gateway what as many real agents would, and
// costs the load generator a fraction of as many agent processes.
package fleet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// Identity is one simulated agent's cluster and agent token.
type Identity struct {
	ClusterUUID string
	Token       string
}

// Config configures a Fleet.
type Config struct {
	// GatewayURL is the gateway's agent endpoint, wss://HOST:PORT/ws.
	GatewayURL string
	TLS        *tls.Config
	Agents     []Identity
	// Heartbeat is the interval between an agent's heartbeats (the real
	// agent's minimum, 5 s, when zero); each agent starts at a random
	// offset so they do not beat in step.
	Heartbeat time.Duration
}

// Agent is one simulated agent's state. Times are Unix nanoseconds, zero
// when the event has not happened.
type Agent struct {
	id     Identity
	client *tunnelclient.Client
	kick   chan struct{}

	connects   atomic.Int64
	upAt       atomic.Int64 // latest tunnel up
	downAt     atomic.Int64 // latest tunnel down
	acks       atomic.Int64
	heartbeats atomic.Int64
	sendErrors atomic.Int64
}

// Fleet is a running set of simulated agents. Close stops them and waits
// for every goroutine they started.
type Fleet struct {
	cfg    Config
	agents []*Agent
	up     atomic.Int64
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// failures tallies why connection attempts failed.
	failures *tally
}

// refuseAll is the simulated agents' dialer: they serve no targets.
var refuseAll = tunnelclient.DialerFunc(func(context.Context, tunnel.StreamHeader) (net.Conn, error) {
	return nil, tunnelclient.ErrTargetRefused
})

// Start connects every agent of cfg (in the background: use WaitUp).
func Start(ctx context.Context, cfg Config) (*Fleet, error) {
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 5 * time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	f := &Fleet{cfg: cfg, cancel: cancel, failures: &tally{counts: map[string]int{}}}
	log := slog.New(f.failures)
	for i, id := range cfg.Agents {
		a := &Agent{id: id, kick: make(chan struct{}, 1)}
		c, err := tunnelclient.New(tunnelclient.Config{
			GatewayURL: cfg.GatewayURL, Token: id.Token, ClusterUUID: id.ClusterUUID,
			AgentVersion: "loadtest", TLSConfig: cfg.TLS, Dialer: refuseAll,
			Logger: log,
			OnControl: func(m tunnel.Message) {
				if m.Type == tunnel.TypeHeartbeatAck {
					a.acks.Add(1)
				}
			},
			OnConnect: func() {
				a.connects.Add(1)
				a.upAt.Store(time.Now().UnixNano())
				f.up.Add(1)
				select {
				case a.kick <- struct{}{}:
				default:
				}
			},
			OnDisconnect: func() {
				a.downAt.Store(time.Now().UnixNano())
				f.up.Add(-1)
			},
		})
		if err != nil {
			cancel()
			f.wg.Wait()
			return nil, fmt.Errorf("agent %d: %w", i, err)
		}
		a.client = c
		f.agents = append(f.agents, a)
		f.wg.Add(2)
		go func() {
			defer f.wg.Done()
			_ = c.Run(ctx)
		}()
		go func() {
			defer f.wg.Done()
			a.beat(ctx, cfg.Heartbeat)
		}()
	}
	return f, nil
}

// beat sends a heartbeat at every (re)connect and then every interval, as
// the real agent does while its cluster changes.
func (a *Agent) beat(ctx context.Context, interval time.Duration) {
	t := time.NewTimer(rand.N(interval) + 1)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		case <-t.C:
		}
		t.Reset(interval) // Go 1.23 timers: Reset drops a pending tick
		if !a.client.Connected() {
			continue
		}
		msg, err := tunnel.NewMessage(tunnel.TypeHeartbeat, tunnel.Heartbeat{
			ClusterID: a.id.ClusterUUID, AgentID: "sim-" + a.id.ClusterUUID, Status: tunnel.StatusHealthy, TunnelStatus: "connected",
			Metadata: tunnel.HeartbeatMetadata{K8sNodes: 3, K8sPods: 42, CPUUsage: tunnel.Percent(12.5), MemoryUsage: tunnel.Percent(40),
				IsPrivate: true, GatewayRoutes: 1, AgentVersion: "loadtest", K8sVersion: "v1.37.2"},
		})
		if err == nil {
			err = a.client.Send(msg)
		}
		if err != nil {
			if !errors.Is(err, tunnelclient.ErrNotConnected) {
				a.sendErrors.Add(1)
			}
			continue
		}
		a.heartbeats.Add(1)
	}
}

// Up is the number of agents whose tunnel is up now.
func (f *Fleet) Up() int { return int(f.up.Load()) }

// WaitUp waits until every agent has connected at least minConnects times
// and is up, or ctx ends; it returns the number that were.
func (f *Fleet) WaitUp(ctx context.Context, minConnects int64) (int, error) {
	return f.wait(ctx, func(a *Agent) bool { return a.connects.Load() >= minConnects })
}

// WaitBack waits until every agent has connected since t and is up, or ctx
// ends; it returns the number that were.
func (f *Fleet) WaitBack(ctx context.Context, t time.Time) (int, error) {
	return f.wait(ctx, func(a *Agent) bool { return a.upAt.Load() > t.UnixNano() })
}

func (f *Fleet) wait(ctx context.Context, done func(*Agent) bool) (int, error) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		n := 0
		for _, a := range f.agents {
			if done(a) && a.client.Connected() {
				n++
			}
		}
		if n == len(f.agents) {
			return n, nil
		}
		select {
		case <-ctx.Done():
			return n, fmt.Errorf("%d of %d agents up: %w", n, len(f.agents), ctx.Err())
		case <-t.C:
		}
	}
}

// Stats are the fleet's counters.
type Stats struct {
	Connects, Heartbeats, Acks, SendErrors int64
}

// Stats sums the counters of every agent.
func (f *Fleet) Stats() Stats {
	var s Stats
	for _, a := range f.agents {
		s.Connects += a.connects.Load()
		s.Heartbeats += a.heartbeats.Load()
		s.Acks += a.acks.Load()
		s.SendErrors += a.sendErrors.Load()
	}
	return s
}

// Mark is one agent's latest tunnel down and up times.
type Mark struct {
	Connects     int64
	Down, Up     time.Time // zero when not happened
	AgentCluster string
}

// Marks returns each agent's latest events.
func (f *Fleet) Marks() []Mark {
	out := make([]Mark, len(f.agents))
	for i, a := range f.agents {
		out[i] = Mark{Connects: a.connects.Load(), Down: unixTime(a.downAt.Load()), Up: unixTime(a.upAt.Load()), AgentCluster: a.id.ClusterUUID}
	}
	return out
}

func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// Failures returns why the agents' connection attempts failed since the
// last call, with how often, as the tunnel client logged it.
func (f *Fleet) Failures() map[string]int { return f.failures.take() }

// tally is a slog.Handler that counts the errors of the clients' "tunnel
// down" warnings by message.
type tally struct {
	mu     sync.Mutex
	counts map[string]int
}

func (t *tally) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (t *tally) Handle(_ context.Context, r slog.Record) error {
	key := r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" {
			key = a.Value.String()
			return false
		}
		return true
	})
	t.mu.Lock()
	t.counts[key]++
	t.mu.Unlock()
	return nil
}

func (t *tally) WithAttrs([]slog.Attr) slog.Handler { return t }
func (t *tally) WithGroup(string) slog.Handler      { return t }

func (t *tally) take() map[string]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := t.counts
	t.counts = map[string]int{}
	return out
}

// Close disconnects every agent and waits for their goroutines. The
// agents' clients drain for at most their DrainTimeout; they serve no
// streams, so they leave at once.
func (f *Fleet) Close() {
	f.cancel()
	f.wg.Wait()
}
