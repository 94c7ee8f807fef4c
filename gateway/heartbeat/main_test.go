package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
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

func (c *countingStore) RecordHeartbeat(ctx context.Context, uuid, status string, meta map[string]any, at time.Time) error {
	c.mu.Lock()
	c.writes = append(c.writes, write{uuid, status, meta, at})
	c.mu.Unlock()
	if c.during != nil {
		c.during()
	}
	if c.fail.Load() {
		return errDown
	}
	return c.ClusterStore.RecordHeartbeat(ctx, uuid, status, meta, at)
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

// clock is a settable time source, safe for concurrent use. It moves on
// by a millisecond at each reading, so that every heartbeat has its own
// time; it keeps whole microseconds, as the database does.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(time.Millisecond)
	return c.now
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

// fixedAuth accepts one token, for one cluster.
type fixedAuth struct{ token, cluster string }

func (a fixedAuth) AuthenticateAgent(_ context.Context, token string) (session.AgentIdentity, error) {
	if token != a.token {
		return session.AgentIdentity{}, errors.New("unknown token")
	}
	return session.AgentIdentity{Cluster: a.cluster, TokenID: "tok-" + a.cluster}, nil
}

// gateway is a session registry wired to a Recorder as the gateway wires
// it, behind a real HTTP server.
type gateway struct {
	t       *testing.T
	reg     *session.Registry
	url     string
	cluster string
	// ended receives each session after the Recorder was told it ended.
	ended chan *session.Session
}

func (e *env) gateway(rec *Recorder, cluster string) *gateway {
	e.t.Helper()
	g := &gateway{t: e.t, cluster: cluster, ended: make(chan *session.Session, 16)}
	reg, err := session.NewRegistry(session.Config{
		Auth:      fixedAuth{"agent-token", cluster},
		Control:   rec,
		OnConnect: rec.SessionStarted,
		OnDisconnect: func(s *session.Session) {
			rec.SessionEnded(s)
			select {
			case g.ended <- s:
			default: // hooks must not block
			}
		},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	g.reg = reg
	mux := http.NewServeMux()
	mux.Handle("/ws", reg)
	srv := httptest.NewServer(mux)
	g.url = srv.URL
	e.t.Cleanup(func() {
		reg.Close()
		srv.Close()
	})
	return g
}

// waitSession waits until the cluster has a session other than old.
func (g *gateway) waitSession(old *session.Session) *session.Session {
	g.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if s, ok := g.reg.Session(g.cluster); ok && s != old {
			return s
		}
		time.Sleep(5 * time.Millisecond)
	}
	g.t.Fatal("no new session")
	return nil
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

// agent connects an agent and waits for its session.
func (g *gateway) agent(mod func(*tunnelclient.Config)) (*agent, *session.Session) {
	g.t.Helper()
	old, _ := g.reg.Session(g.cluster)
	a := &agent{t: g.t, acks: make(chan tunnel.Message, 256)}
	cfg := tunnelclient.Config{
		GatewayURL:  g.url,
		Token:       "agent-token",
		ClusterUUID: g.cluster,
		Dialer: tunnelclient.DialerFunc(func(context.Context, tunnel.StreamHeader) (net.Conn, error) {
			return nil, tunnelclient.ErrTargetRefused
		}),
		OnControl:      func(m tunnel.Message) { a.acks <- m },
		BackoffInitial: 20 * time.Millisecond,
		BackoffMax:     200 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := tunnelclient.New(cfg)
	if err != nil {
		g.t.Fatal(err)
	}
	a.c = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Run(ctx)
	}()
	var once sync.Once
	a.stop = func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	g.t.Cleanup(a.stop)
	s := g.waitSession(old)
	for deadline := time.Now().Add(10 * time.Second); !c.Connected(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			g.t.Fatal("the agent did not connect")
		}
	}
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
