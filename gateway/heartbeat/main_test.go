package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/gateway/session"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
	"github.com/pipeops/tunnel/shared/testenv/tunneltest"
	"github.com/pipeops/tunnel/shared/tunnel"
)

func TestMain(m *testing.M) { testenv.Main(m, pgtest.Stop) }

// countingStore is the real cluster store with its writes recorded, so
// that tests can count them. Setting fail makes writes fail as if the
// database were unreachable, without touching it.
type countingStore struct {
	controlplane.ClusterStore
	fail atomic.Bool
	// during, when set, runs inside each write, to change the Recorder's
	// state while a flush is under way. Set it only between flushes.
	during func()

	mu     sync.Mutex
	writes []write
}

type write struct {
	cluster, status string
	meta            map[string]any
	at              time.Time
}

var errDown = errors.New("database unreachable")

func (c *countingStore) RecordHeartbeat(ctx context.Context, uuid, status, gateway string, meta map[string]any, at time.Time) error {
	c.mu.Lock()
	c.writes = append(c.writes, write{uuid, status, meta, at})
	c.mu.Unlock()
	if c.during != nil {
		c.during()
	}
	if c.fail.Load() {
		return errDown
	}
	return c.ClusterStore.RecordHeartbeat(ctx, uuid, status, gateway, meta, at)
}

// writesFor returns the writes made for cluster ("" for all).
func (c *countingStore) writesFor(cluster string) []write {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []write
	for _, w := range c.writes {
		if cluster == "" || w.cluster == cluster {
			out = append(out, w)
		}
	}
	return out
}

// env is a migrated database of the test's own with clusters in it.
type env struct {
	t        *testing.T
	ctx      context.Context
	db       *postgres.DB
	store    *countingStore
	clusters []string // UUIDs
	logs     *testenv.LogBuffer
}

// newEnv starts the leak check too: it must come after the database
// server has started (its goroutines live for the whole test binary) and
// before the pool is opened.
func newEnv(t *testing.T, clusters int) *env {
	t.Helper()
	url := pgtest.URL(t)
	testenv.LeakCheck(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	db, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if _, err := postgres.Migrate(ctx, db.Pool()); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, db: db, store: &countingStore{ClusterStore: db}, logs: &testenv.LogBuffer{}}
	for i := range clusters {
		c, err := db.CreateCluster(ctx, fmt.Sprintf("cluster-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		e.clusters = append(e.clusters, c.UUID)
	}
	return e
}

// recorder completes r with the env's store and log.
func (e *env) recorder(r *Recorder) *Recorder {
	r.Store = e.store
	if r.Logger == nil {
		r.Logger = e.logs.Logger()
	}
	return r
}

// row reads a cluster straight from the database.
func (e *env) row(uuid string) *controlplane.Cluster {
	e.t.Helper()
	c, err := e.db.Cluster(e.ctx, uuid)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// gateway is a session registry wired to a Recorder as the gateway wires
// it, behind a real HTTP server.
type gateway struct {
	t       *testing.T
	gw      *tunneltest.Gateway
	reg     *session.Registry
	cluster string
	// ended receives each session after the Recorder was told it ended.
	ended chan *session.Session
}

func (e *env) gateway(rec *Recorder, cluster string) *gateway {
	e.t.Helper()
	g := &gateway{t: e.t, cluster: cluster, ended: make(chan *session.Session, 16)}
	g.gw = tunneltest.StartGateway(e.t, tunneltest.Options{Session: session.Config{
		Control:   rec,
		OnConnect: rec.SessionStarted,
		OnDisconnect: func(s *session.Session) {
			rec.SessionEnded(s)
			select {
			case g.ended <- s:
			default: // hooks must not block
			}
		},
	}})
	g.reg = g.gw.Registry
	return g
}

// waitEnded waits until the Recorder has been told that s ended.
func (g *gateway) waitEnded(s *session.Session) {
	g.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-g.ended:
			if got == s {
				return
			}
		case <-timeout:
			g.t.Fatal("the session's end was not reported")
		}
	}
}

// agent is a real tunnel client of the gateway's cluster.
type agent struct {
	t    *testing.T
	c    *tunnelclient.Client
	acks chan tunnel.Message
	stop func()
}

// agent connects an agent, whose config mod may change, and waits for its
// session.
func (g *gateway) agent(mod func(*tunnelclient.Config)) (*agent, *session.Session) {
	g.t.Helper()
	a := &agent{t: g.t, acks: make(chan tunnel.Message, 256)}
	ta, s := g.gw.Connect(g.cluster, func(c *tunnelclient.Config) {
		c.OnControl = func(m tunnel.Message) { a.acks <- m }
		if mod != nil {
			mod(c)
		}
	})
	a.c, a.stop = ta.Client, ta.Stop
	return a, s
}

// send sends a heartbeat from the agent.
func (a *agent) send(requestID string, hb tunnel.Heartbeat) {
	a.t.Helper()
	msg, err := tunnel.NewMessage(tunnel.TypeHeartbeat, hb)
	if err != nil {
		a.t.Fatal(err)
	}
	a.sendRaw(requestID, msg)
}

func (a *agent) sendRaw(requestID string, msg tunnel.Message) {
	a.t.Helper()
	msg.RequestID = requestID
	if err := a.c.Send(msg); err != nil {
		a.t.Fatalf("send %s: %v", requestID, err)
	}
}

// ack waits for the gateway's next control message, which must be a
// heartbeat_ack, and returns its request id.
func (a *agent) ack() string {
	a.t.Helper()
	select {
	case m := <-a.acks:
		if m.Type != tunnel.TypeHeartbeatAck {
			a.t.Fatalf("got %s, want a heartbeat_ack", m)
		}
		return m.RequestID
	case <-time.After(10 * time.Second):
		a.t.Fatal("no heartbeat_ack")
		return ""
	}
}

// heartbeat is a healthy heartbeat reporting pods pods.
func heartbeat(pods int) tunnel.Heartbeat {
	return tunnel.Heartbeat{
		Status:       tunnel.StatusHealthy,
		TunnelStatus: tunnel.StatusHealthy,
		Metadata: tunnel.HeartbeatMetadata{
			K8sNodes: 3, K8sPods: pods, CPUUsage: tunnel.Percent(12.5), MemoryUsage: tunnel.UsageUnavailable,
			GatewayRoutes: 7, AgentVersion: "1.2.3", K8sVersion: "v1.31.0",
		},
	}
}

// wantMeta is what the database holds for heartbeat(pods), read back from
// JSON.
func wantMeta(pods int) map[string]any {
	return map[string]any{
		"k8s_nodes": float64(3), "k8s_pods": float64(pods), "cpu_usage": "12.5%", "memory_usage": "unavailable",
		"is_private": false, "gateway_routes": float64(7), "agent_version": "1.2.3", "k8s_version": "v1.31.0",
		"tunnel_status": "connected", // an agent's "healthy", normalised
	}
}
