package heartbeat

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/tunnel"
	"github.com/pipeops/tunnel/shared/tunnel/pipeopsfixtures"
)

func TestHeartbeatsBatched(t *testing.T) {
	e := newEnv(t, 1)
	cluster := e.clusters[0]
	clk := testenv.NewClock()
	reg := prometheus.NewPedanticRegistry()
	rec := e.recorder(&Recorder{FlushInterval: time.Hour, Now: clk.Now, Metrics: NewMetrics(reg)})
	a, _ := e.gateway(rec, cluster).agent(nil)

	// 100 heartbeats, at most 16 waiting for their ack at a time so that
	// the session's control queue never overflows.
	const n, window = 100, 16
	sent := map[string]bool{}
	acked := map[string]bool{}
	for i := range n {
		if i >= window {
			acked[a.ack()] = true
		}
		id := fmt.Sprintf("hb-%d", i)
		sent[id] = true
		a.send(id, heartbeat(i))
	}
	for len(acked) < n {
		id := a.ack()
		if acked[id] {
			t.Fatalf("%s acked twice", id)
		}
		acked[id] = true
	}
	if !maps.Equal(sent, acked) {
		t.Fatalf("acked request ids differ from the sent ones")
	}

	// Nothing is written until the flush; then once, the latest. (The
	// session's start is pending too, and goes in the same write.)
	if w := e.store.writesFor(""); len(w) != 0 {
		t.Fatalf("%d writes before the flush", len(w))
	}
	if got := gauge(t, rec.Metrics.pending); got != 1 {
		t.Errorf("pending clusters %v, want 1", got)
	}
	if err := rec.Flush(e.ctx); err != nil {
		t.Fatal(err)
	}
	w := e.store.writesFor("")
	if len(w) != 1 {
		t.Fatalf("%d writes for %d heartbeats, want 1", len(w), n)
	}
	if w[0].cluster != cluster || w[0].status != controlplane.ClusterConnected {
		t.Errorf("write %+v", w[0])
	}
	c := e.row(cluster)
	if c.Status != controlplane.ClusterConnected || !reflect.DeepEqual(c.Metadata, wantMeta(n-1)) || !c.LastHeartbeat.Equal(w[0].at) {
		t.Errorf("stored status %q, metadata %v, heartbeat %v; want connected, %v, %v",
			c.Status, c.Metadata, c.LastHeartbeat, wantMeta(n-1), w[0].at)
	}

	// A flush with nothing new writes nothing.
	if err := rec.Flush(e.ctx); err != nil {
		t.Fatal(err)
	}
	if w := e.store.writesFor(""); len(w) != 1 {
		t.Errorf("%d writes after an idle flush, want 1", len(w))
	}
	if got := gauge(t, rec.Metrics.pending); got != 0 {
		t.Errorf("pending clusters %v after the flush, want 0", got)
	}
	if got := counter(t, rec.Metrics.heartbeats.WithLabelValues("ok")); got != n {
		t.Errorf("heartbeats counted %v, want %d", got, n)
	}
	if _, err := reg.Gather(); err != nil {
		t.Error(err)
	}
}

func TestMalformedHeartbeatDropped(t *testing.T) {
	e := newEnv(t, 1)
	cluster := e.clusters[0]
	rec := e.recorder(&Recorder{FlushInterval: time.Hour, Metrics: NewMetrics(nil)})
	g := e.gateway(rec, cluster)
	a, first := g.agent(nil)

	payloads := []struct {
		name    string
		typ     string // default heartbeat
		payload string
	}{
		{"a string", "", `"healthy"`},
		{"an array", "", `[1,2,3]`},
		{"usage not a percentage", "", `{"status":"healthy","metadata":{"cpu_usage":"lots"}}`},
		{"node count a string", "", `{"status":"healthy","metadata":{"k8s_nodes":"three"}}`},
		{"not a heartbeat", "cluster_event", `{"status":"disconnected"}`},
	}
	malformed := 0
	for i, p := range payloads {
		t.Run(p.name, func(t *testing.T) {
			a.t = t
			defer func() { a.t = g.t }()
			typ := cmp.Or(p.typ, tunnel.TypeHeartbeat)
			if typ == tunnel.TypeHeartbeat {
				malformed++
			}
			a.sendRaw("bad", tunnel.Message{Type: typ, Payload: json.RawMessage(p.payload)})
			// Heartbeats are handled in order: the next ack is the good
			// heartbeat's, so the malformed one got none.
			good := fmt.Sprintf("good-%d", i)
			a.send(good, heartbeat(i))
			if got := a.ack(); got != good {
				t.Fatalf("ack for %q, want %q", got, good)
			}
		})
	}
	if s, ok := g.reg.Session(cluster); !ok || s != first || a.c.Stats().Connects != 1 {
		t.Error("the session did not survive malformed heartbeats")
	}
	if err := rec.Flush(e.ctx); err != nil {
		t.Fatal(err)
	}
	if w := e.store.writesFor(""); len(w) != 1 || !reflect.DeepEqual(e.row(cluster).Metadata, wantMeta(len(payloads)-1)) {
		t.Errorf("writes %+v; stored %v", w, e.row(cluster).Metadata)
	}
	if got := counter(t, rec.Metrics.heartbeats.WithLabelValues("malformed")); got != float64(malformed) {
		t.Errorf("malformed heartbeats counted %v, want %d", got, malformed)
	}
	// The agent decides how many malformed heartbeats come: the first is
	// logged, the rest counted.
	if n := strings.Count(e.logs.String(), "dropping malformed heartbeat"); n != 1 {
		t.Errorf("%d lines for %d malformed heartbeats, want 1; log:\n%s", n, malformed, e.logs)
	}
	rec.limited().Flush()
	if want := fmt.Sprintf("repeated=%d", malformed-1); !strings.Contains(e.logs.String(), want) {
		t.Errorf("no count (%s) of the malformed heartbeats; log:\n%s", want, e.logs)
	}
}

// TestPipeOpsHeartbeatsStored sends the PipeOps agent's heartbeats byte
// for byte as it writes them and checks what the store keeps: the shape
// controlplane.HeartbeatRecord makes (the control plane's registration
// socket stores the same), with the monitoring endpoints and no password
// or join token.
func TestPipeOpsHeartbeatsStored(t *testing.T) {
	e := newEnv(t, 1)
	cluster := e.clusters[0]
	rec := e.recorder(&Recorder{FlushInterval: time.Hour})
	a, _ := e.gateway(rec, cluster).agent(nil)

	for _, name := range []string{"heartbeat", "heartbeat_monitoring"} {
		t.Run(name, func(t *testing.T) {
			a.t = t
			defer func() { a.t = e.t }()
			raw := pipeopsfixtures.Load(name).JSON
			msg, err := tunnel.DecodeMessage(raw)
			if err != nil {
				t.Fatal(err)
			}
			a.sendRaw(name, msg)
			if got := a.ack(); got != name {
				t.Fatalf("ack for %q, want %q", got, name)
			}
			if err := rec.Flush(e.ctx); err != nil {
				t.Fatal(err)
			}
			var hb tunnel.Heartbeat
			if err := msg.DecodePayload(&hb); err != nil {
				t.Fatal(err)
			}
			_, made := controlplane.HeartbeatRecord(hb)
			var want map[string]any // as read back from the database's JSON
			if err := json.Unmarshal([]byte(mustJSON(t, made)), &want); err != nil {
				t.Fatal(err)
			}
			c := e.row(cluster)
			if c.Status != controlplane.ClusterConnected || !reflect.DeepEqual(c.Metadata, want) {
				t.Errorf("stored %q %v, want connected %v", c.Status, c.Metadata, want)
			}
			if c.Metadata["cpu_usage"] != "0%" || c.Metadata["memory_usage"] != "0%" || c.Metadata["k8s_pods"] != float64(57) {
				t.Errorf("stored usages and counts %v", c.Metadata)
			}
			stored := mustJSON(t, c.Metadata)
			for _, secret := range []string{"password\"", "fixture-prom-password", "fixture-grafana-password", "fixture-loki-password",
				"K3S_TOKEN", "fixture-k3s-join-token", "worker_join\""} {
				if strings.Contains(stored, secret) {
					t.Errorf("stored metadata holds %q: %s", secret, stored)
				}
			}
			mon, _ := c.Metadata["monitoring"].(map[string]any)
			switch name {
			case "heartbeat":
				if c.Metadata["tunnel_status"] != "connected" || mon != nil {
					t.Errorf("stored tunnel_status %v, monitoring %v", c.Metadata["tunnel_status"], mon)
				}
			case "heartbeat_monitoring":
				if c.Metadata["tunnel_status"] != "disconnected" ||
					mon["prometheus_url"] != "http://kube-prometheus-stack-prometheus.pipeops-monitoring.svc:9090" ||
					mon["grafana_username"] != "admin" || mon["loki_password_set"] != true || mon["worker_join_offered"] != true {
					t.Errorf("stored tunnel_status %v, monitoring %v", c.Metadata["tunnel_status"], mon)
				}
			}
		})
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// hbMessage is a heartbeat message reporting pods pods with status.
func hbMessage(t *testing.T, status string, pods int) tunnel.Message {
	t.Helper()
	hb := heartbeat(pods)
	hb.Status = status
	msg, err := tunnel.NewMessage(tunnel.TypeHeartbeat, hb)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func TestStatusChanges(t *testing.T) {
	const unknown = "00000000-0000-0000-0000-000000000000"
	t0 := time.Date(2020, 6, 1, 0, 0, 0, 0, time.UTC) // before any heartbeat the test makes
	type want struct {
		status string
		pods   int // -1: the metadata set before the test
		at     time.Time
	}
	tests := []struct {
		name   string
		run    func(t *testing.T, r *Recorder, cluster string)
		writes int
		want   want
	}{
		{
			name: "disconnect keeps the last heartbeat",
			run: func(t *testing.T, r *Recorder, c string) {
				r.Connected(c)
				r.heartbeat(c, hbMessage(t, tunnel.StatusHealthy, 4))
				mustFlush(t, r)
				r.Disconnected(c)
			},
			writes: 2, want: want{controlplane.ClusterDisconnected, 4, time.Time{}},
		},
		{
			name: "disconnect with no heartbeat seen here keeps the stored one",
			run: func(t *testing.T, r *Recorder, c string) {
				r.Disconnected(c)
			},
			writes: 1, want: want{controlplane.ClusterDisconnected, -1, t0},
		},
		{
			name: "connect keeps the stored heartbeat until the first one comes",
			run: func(t *testing.T, r *Recorder, c string) {
				r.Connected(c)
			},
			writes: 1, want: want{controlplane.ClusterConnected, -1, t0},
		},
		{
			name: "connect and heartbeat in one interval: one write",
			run: func(t *testing.T, r *Recorder, c string) {
				r.Connected(c)
				r.heartbeat(c, hbMessage(t, tunnel.StatusHealthy, 6))
			},
			writes: 1, want: want{controlplane.ClusterConnected, 6, time.Time{}},
		},
		{
			name: "heartbeat then disconnect in one interval: its metadata goes with the status",
			run: func(t *testing.T, r *Recorder, c string) {
				r.heartbeat(c, hbMessage(t, tunnel.StatusHealthy, 7))
				r.Disconnected(c)
			},
			writes: 1, want: want{controlplane.ClusterDisconnected, 7, time.Time{}},
		},
		{
			name: "reconnect within one interval",
			run: func(t *testing.T, r *Recorder, c string) {
				r.heartbeat(c, hbMessage(t, tunnel.StatusHealthy, 8))
				r.Disconnected(c)
				r.Connected(c)
			},
			writes: 1, want: want{controlplane.ClusterConnected, 8, time.Time{}},
		},
		{
			name: "agent reports itself disconnected",
			run: func(t *testing.T, r *Recorder, c string) {
				r.heartbeat(c, hbMessage(t, tunnel.StatusDisconnected, 9))
			},
			writes: 1, want: want{controlplane.ClusterDisconnected, 9, time.Time{}},
		},
		{
			name: "unknown clusters dropped quietly",
			run: func(t *testing.T, r *Recorder, c string) {
				r.heartbeat(unknown, hbMessage(t, tunnel.StatusHealthy, 1))
				r.Connected("not-a-uuid")
				r.Disconnected(unknown)
			},
			// One write: the unknown cluster's heartbeat, with its disconnect;
			// the connect of the malformed id fails on reading the row.
			writes: 1,
			want:   want{controlplane.ClusterConnected, -1, t0},
		},
	}
	e := newEnv(t, len(tests))
	before := map[string]any{"k8s_pods": float64(-1), "from": "before"}
	for i, tt := range tests {
		cluster := e.clusters[i]
		t.Run(tt.name, func(t *testing.T) {
			if err := e.db.RecordHeartbeat(e.ctx, cluster, controlplane.ClusterConnected, "", before, t0); err != nil {
				t.Fatal(err)
			}
			rec := e.recorder(&Recorder{})
			tt.run(t, rec, cluster)
			mustFlush(t, rec)
			if n := rec.numPending(); n != 0 {
				t.Errorf("%d clusters still pending", n)
			}
			writes := e.store.writesFor("")
			e.store.mu.Lock()
			e.store.writes = nil
			e.store.mu.Unlock()
			if len(writes) != tt.writes {
				t.Errorf("%d writes, want %d: %+v", len(writes), tt.writes, writes)
			}
			c := e.row(cluster)
			wantMetaNow := before
			if tt.want.pods >= 0 {
				wantMetaNow = wantMeta(tt.want.pods)
			}
			if c.Status != tt.want.status || !reflect.DeepEqual(c.Metadata, wantMetaNow) {
				t.Errorf("stored %q %v, want %q %v", c.Status, c.Metadata, tt.want.status, wantMetaNow)
			}
			if !tt.want.at.IsZero() && !c.LastHeartbeat.Equal(tt.want.at) {
				t.Errorf("last heartbeat %v, want %v", c.LastHeartbeat, tt.want.at)
			}
			if tt.want.at.IsZero() && !c.LastHeartbeat.After(t0) {
				t.Errorf("last heartbeat %v not moved on", c.LastHeartbeat)
			}
		})
	}
}

func mustFlush(t *testing.T, r *Recorder) {
	t.Helper()
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestRunFlushesOnStop(t *testing.T) {
	e := newEnv(t, 1)
	cluster := e.clusters[0]
	rec := e.recorder(&Recorder{FlushInterval: time.Hour})
	a, _ := e.gateway(rec, cluster).agent(nil)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		rec.Run(ctx)
	}()
	// The session's start is written early (TestStatusWrittenPromptly);
	// wait for that write, so that what follows sees heartbeats alone.
	waitWrites(t, e.store, 1)
	a.send("last", heartbeat(42))
	if got := a.ack(); got != "last" {
		t.Fatalf("ack for %q", got)
	}
	if w := e.store.writesFor(""); len(w) != 1 {
		t.Fatalf("%d writes before the interval, want only the status one", len(w))
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if w := e.store.writesFor(""); len(w) != 2 {
		t.Fatalf("%d writes, want 2 (the status, then the final flush)", len(w))
	}
	if c := e.row(cluster); !reflect.DeepEqual(c.Metadata, wantMeta(42)) {
		t.Errorf("stored %v", c.Metadata)
	}
}

// waitWrites waits, within the test's deadline, for the store to have
// seen n writes.
func waitWrites(t *testing.T, store *countingStore, n int) {
	t.Helper()
	testenv.Eventually(t, func() bool { return len(store.writesFor("")) >= n }, "%d heartbeat writes", n)
}

// TestStatusWrittenPromptly: an agent's arrival and departure are written
// at once, not at the next periodic flush (an hour away here), so that
// what people watch follows the agent.
func TestStatusWrittenPromptly(t *testing.T) {
	e := newEnv(t, 1)
	cluster := e.clusters[0]
	rec := e.recorder(&Recorder{FlushInterval: time.Hour, GatewayID: "gw-7"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		rec.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	before := e.row(cluster)

	g := e.gateway(rec, cluster)
	a, s := g.agent(nil)
	testenv.Eventually(t, func() bool { return e.row(cluster).Status == controlplane.ClusterConnected },
		"cluster connected before the hourly flush")
	connected := e.row(cluster)
	if connected.Gateway != "gw-7" {
		t.Errorf("held by gateway %q, want gw-7", connected.Gateway)
	}
	if !connected.StatusSince.After(before.StatusSince) {
		t.Errorf("status since %v, not after %v", connected.StatusSince, before.StatusSince)
	}

	a.stop()
	g.waitEnded(s)
	testenv.Eventually(t, func() bool { return e.row(cluster).Status == controlplane.ClusterDisconnected },
		"cluster disconnected before the hourly flush")
	if gone := e.row(cluster); gone.StatusSince.Before(connected.StatusSince) {
		t.Errorf("disconnected since %v, before it connected (%v)", gone.StatusSince, connected.StatusSince)
	}
	// A heartbeat-free write per change: the connect and the disconnect.
	if w := e.store.writesFor(cluster); len(w) != 2 {
		t.Errorf("%d writes, want 2", len(w))
	}
}

func TestRunFlushesPeriodically(t *testing.T) {
	e := newEnv(t, 1)
	cluster := e.clusters[0]
	rec := e.recorder(&Recorder{FlushInterval: 20 * time.Millisecond})
	a, _ := e.gateway(rec, cluster).agent(nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		rec.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()

	for i := range 3 {
		a.send(fmt.Sprintf("hb-%d", i), heartbeat(i))
		a.ack()
		deadline := time.Now().Add(10 * time.Second)
		for !reflect.DeepEqual(e.row(cluster).Metadata, wantMeta(i)) {
			if time.Now().After(deadline) {
				t.Fatalf("heartbeat %d not stored by Run: %v", i, e.row(cluster).Metadata)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func TestFailedWritesRetried(t *testing.T) {
	e := newEnv(t, 2)
	a, b := e.clusters[0], e.clusters[1]
	rec := e.recorder(&Recorder{})

	rec.heartbeat(a, hbMessage(t, tunnel.StatusHealthy, 1))
	rec.heartbeat(b, hbMessage(t, tunnel.StatusHealthy, 1))
	e.store.fail.Store(true)
	err := rec.Flush(e.ctx)
	if !errors.Is(err, errDown) || !strings.Contains(err.Error(), "2 of 2") {
		t.Fatalf("Flush with the database down = %v", err)
	}
	if n := rec.numPending(); n != 2 {
		t.Fatalf("%d clusters kept for the next flush, want 2", n)
	}

	// A newer heartbeat of a replaces the one that failed; b's is retried.
	rec.heartbeat(a, hbMessage(t, tunnel.StatusHealthy, 2))
	e.store.fail.Store(false)
	mustFlush(t, rec)
	for cluster, pods := range map[string]int{a: 2, b: 1} {
		if m := e.row(cluster).Metadata; !reflect.DeepEqual(m, wantMeta(pods)) {
			t.Errorf("cluster %s stored %v, want %d pods", cluster, m, pods)
		}
		if w := e.store.writesFor(cluster); len(w) != 2 {
			t.Errorf("cluster %s: %d writes, want 2", cluster, len(w))
		}
	}

	// A flush whose context has ended writes nothing and keeps everything.
	rec.heartbeat(a, hbMessage(t, tunnel.StatusHealthy, 3))
	ended, cancel := context.WithCancel(e.ctx)
	cancel()
	if err := rec.Flush(ended); !errors.Is(err, context.Canceled) {
		t.Fatalf("Flush with an ended context = %v", err)
	}
	if n := rec.numPending(); n != 1 {
		t.Fatalf("%d pending after an abandoned flush, want 1", n)
	}
	mustFlush(t, rec)
	if m := e.row(a).Metadata; !reflect.DeepEqual(m, wantMeta(3)) {
		t.Errorf("stored %v", m)
	}

	// A status change that comes during a failing write, with no
	// heartbeat of its own, takes the heartbeat that failed.
	rec.heartbeat(b, hbMessage(t, tunnel.StatusHealthy, 4))
	rec.Disconnected(b)
	e.store.fail.Store(true)
	e.store.during = func() { rec.Connected(b) }
	if err := rec.Flush(e.ctx); !errors.Is(err, errDown) {
		t.Fatalf("Flush with the database down = %v", err)
	}
	e.store.fail.Store(false)
	e.store.during = nil
	mustFlush(t, rec)
	if c := e.row(b); c.Status != controlplane.ClusterConnected || !reflect.DeepEqual(c.Metadata, wantMeta(4)) {
		t.Errorf("stored %q %v", c.Status, c.Metadata)
	}
}

// TestManyClusters heartbeats from many clusters at once while flushes run:
// every cluster ends with its latest heartbeat stored, in at most one write
// per flush.
func TestManyClusters(t *testing.T) {
	const clusters, beats = 10, 50
	e := newEnv(t, clusters)
	rec := e.recorder(&Recorder{})

	msgs := make([]tunnel.Message, beats)
	for i := range msgs {
		msgs[i] = hbMessage(t, tunnel.StatusHealthy, i)
	}
	var wg sync.WaitGroup
	for _, c := range e.clusters {
		wg.Go(func() {
			for _, msg := range msgs {
				rec.heartbeat(c, msg)
			}
		})
	}
	stop := make(chan struct{})
	var flushes int
	var fwg sync.WaitGroup
	fwg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := rec.Flush(e.ctx); err != nil {
				t.Error(err)
				return
			}
			flushes++
			time.Sleep(time.Millisecond)
		}
	})
	wg.Wait()
	close(stop)
	fwg.Wait()
	mustFlush(t, rec)
	flushes++

	for _, c := range e.clusters {
		if m := e.row(c).Metadata; !reflect.DeepEqual(m, wantMeta(beats-1)) {
			t.Errorf("cluster %s stored %v", c, m)
		}
		if w := e.store.writesFor(c); len(w) > flushes || len(w) > beats {
			t.Errorf("cluster %s: %d writes in %d flushes", c, len(w), flushes)
		}
	}
}

func TestRecorderWithoutStore(t *testing.T) {
	testenv.LeakCheck(t)
	var r Recorder // the zero value takes heartbeats, but cannot write them
	r.Connected("c")
	if err := r.Flush(context.Background()); err == nil {
		t.Error("Flush without a Store succeeded")
	}
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestSessionHooks wires the Recorder to the registry's hooks as the
// gateway does: a session's start and end are recorded, and the end of a
// session replaced by the same agent reconnecting is not.
func TestSessionHooks(t *testing.T) {
	e := newEnv(t, 1)
	cluster := e.clusters[0]
	t0 := time.Date(2020, 6, 1, 0, 0, 0, 0, time.UTC)
	before := map[string]any{"k8s_pods": float64(1)}
	if err := e.db.RecordHeartbeat(e.ctx, cluster, controlplane.ClusterDisconnected, "", before, t0); err != nil {
		t.Fatal(err)
	}
	rec := e.recorder(&Recorder{})
	g := e.gateway(rec, cluster)
	wantRow := func(status string, meta map[string]any) {
		t.Helper()
		mustFlush(t, rec)
		if c := e.row(cluster); c.Status != status || !reflect.DeepEqual(c.Metadata, meta) {
			t.Fatalf("stored %q %v, want %q %v", c.Status, c.Metadata, status, meta)
		}
	}

	// Connected before any heartbeat: the stored metadata stays.
	first, s1 := g.agent(func(c *tunnelclient.Config) {
		// Once replaced, this agent waits rather than fight back.
		c.BackoffInitial, c.BackoffMax = time.Hour, time.Hour
	})
	wantRow(controlplane.ClusterConnected, before)
	first.send("hb", heartbeat(5))
	first.ack()
	wantRow(controlplane.ClusterConnected, wantMeta(5))

	// The same cluster connects again: the old session ends, the cluster
	// stays connected.
	second, s2 := g.agent(nil)
	g.waitEnded(s1)
	wantRow(controlplane.ClusterConnected, wantMeta(5))

	// The agent goes away: disconnected, with its last heartbeat.
	second.send("hb", heartbeat(6))
	second.ack()
	second.stop()
	g.waitEnded(s2)
	wantRow(controlplane.ClusterDisconnected, wantMeta(6))
	if c := e.row(cluster); !c.LastHeartbeat.After(t0) {
		t.Errorf("last heartbeat %v", c.LastHeartbeat)
	}
	rec.mu.Lock()
	n := len(rec.current) + len(rec.last)
	rec.mu.Unlock()
	if n != 0 {
		t.Errorf("%d entries kept for a cluster that has gone", n)
	}
}

// TestMovedAgentStaysConnected: with other gateways (StillReached), the
// end of the last session here does not mark the cluster disconnected when
// another gateway holds it, known when the session ends or by the flush;
// when none does, it does.
func TestMovedAgentStaysConnected(t *testing.T) {
	e := newEnv(t, 1)
	cluster := e.clusters[0]
	var elsewhere atomic.Bool
	rec := e.recorder(&Recorder{StillReached: func(c string) bool { return c == cluster && elsewhere.Load() }})
	g := e.gateway(rec, cluster)
	status := func() string {
		t.Helper()
		mustFlush(t, rec)
		return e.row(cluster).Status
	}
	for _, tc := range []struct {
		name           string
		atEnd, atFlush bool
		want           string
	}{
		{"moved before the session ended", true, true, controlplane.ClusterConnected},
		{"move known only by the flush", false, true, controlplane.ClusterConnected},
		{"gone", false, false, controlplane.ClusterDisconnected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			elsewhere.Store(false)
			a, s := g.agent(nil)
			if got := status(); got != controlplane.ClusterConnected {
				t.Fatalf("connected: stored %q", got)
			}
			elsewhere.Store(tc.atEnd)
			a.stop()
			g.waitEnded(s)
			elsewhere.Store(tc.atFlush)
			if got := status(); got != tc.want {
				t.Errorf("stored %q, want %q", got, tc.want)
			}
		})
	}
}

func gauge(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}
