package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pipeops/tunnel/shared/stack"
	"github.com/pipeops/tunnel/shared/testenv"
)

// soakLog counts a soak's operations by kind and keeps the failures that
// fall outside the windows its faults cut (an agent restarting).
type soakLog struct {
	mu       sync.Mutex
	ok       map[string]int
	cut      map[string]int
	failures []string
	windows  [][2]time.Time // fault windows; the last may be open (zero end)
}

func (l *soakLog) record(kind string, at time.Time, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil {
		l.ok[kind]++
		return
	}
	for _, w := range l.windows {
		if !at.Before(w[0]) && (w[1].IsZero() || !at.After(w[1])) {
			l.cut[kind]++
			return
		}
	}
	if len(l.failures) < 20 {
		l.failures = append(l.failures, fmt.Sprintf("%s %s: %v", at.Format("15:04:05.000"), kind, err))
	}
	l.cut["unexplained"]++
}

// faultSince returns the start of the latest fault window that began after
// t, or the zero time: what cut a long operation begun at t (a watch), whose
// end is only noticed later.
func (l *soakLog) faultSince(t time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var latest time.Time
	for _, w := range l.windows {
		if w[0].After(t) {
			latest = w[0]
		}
	}
	return latest
}

// fault opens a window in which failures are the fault's; the returned
// function closes it a grace period after the fault is over.
func (l *soakLog) fault(grace time.Duration) func() {
	l.mu.Lock()
	l.windows = append(l.windows, [2]time.Time{time.Now().Add(-grace)})
	i := len(l.windows) - 1
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		l.windows[i][1] = time.Now().Add(grace)
		l.mu.Unlock()
	}
}

// promValue reads one unlabelled sample from a Prometheus endpoint.
func promValue(url, name string) (float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(rest), 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s", url, name)
}

type watchInterface = watch.Interface

// anonKiB is a process's anonymous resident memory: its RSS without the
// pages of its binary, which grow as more of its code runs for the first
// time and are no leak.
func anonKiB(t *testing.T, pid int) int64 { return procStatusKiB(t, pid, "RssAnon") }

// processLevels are a process's goroutines and anonymous memory.
type processLevels struct {
	goroutines float64
	rssKiB     int64
}

// TestSoak runs mixed load for 3 minutes (30 under FAULTS=full): small
// requests, bulk downloads, a WebSocket echo and a Kubernetes watch through
// the gateway, with the agent restarted every minute. No operation may fail
// outside the moments the restarts cut, and at the end the goroutines and
// memory of the gateway, the control plane and the agent are back to where
// they were after a minute of warming up (+10 %, or +8 MiB for a process
// with a heap of a few MiB).
func TestSoak(t *testing.T) {
	t.Parallel() // its own stack; its checks are of its own processes
	cpAdminPort, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cpMetrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", cpAdminPort)
	quiet := map[string]string{"LOG_LEVEL": "warn"}
	e := newEnv(t, stack.Options{ControlPlaneEnv: map[string]string{"ADMIN_ADDR": fmt.Sprintf("127.0.0.1:%d", cpAdminPort), "LOG_LEVEL": "warn"}, GatewayEnv: quiet},
		stack.ClusterOptions{AgentEnv: quiet})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.route(t)

	levels := func() map[string]processLevels {
		out := map[string]processLevels{}
		for name, src := range map[string]struct {
			metrics string
			pid     int
		}{
			"gateway":       {e.s.GatewayAdmin + "/metrics", e.s.Gateway.Pid()},
			"control plane": {cpMetrics, e.s.ControlPlane.Pid()},
			"agent":         {e.c.AgentURL + "/metrics", e.c.Agent.Pid()},
		} {
			g, err := promValue(src.metrics, "go_goroutines")
			if err != nil {
				t.Fatal(err)
			}
			out[name] = processLevels{goroutines: g, rssKiB: anonKiB(t, src.pid)}
		}
		return out
	}

	log := &soakLog{ok: map[string]int{}, cut: map[string]int{}}
	var wg sync.WaitGroup
	loop := func(kind string, every time.Duration, op func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				octx, ocancel := context.WithTimeout(ctx, 30*time.Second)
				at := time.Now()
				err := op(octx)
				ocancel()
				if ctx.Err() != nil {
					return
				}
				log.record(kind, at, err)
			}
		}()
	}
	for range 4 {
		loop("small", 25*time.Millisecond, func(ctx context.Context) error {
			code, body, err := get(ctx, e.s, e.host, "/")
			if err == nil && (code != 200 || !strings.Contains(body, "hello from edge")) {
				err = fmt.Errorf("%d %q", code, body)
			}
			return err
		})
	}
	loop("bulk", 2*time.Second, func(ctx context.Context) error {
		const n = 32 << 20
		code, body, err := get(ctx, e.s, e.host, "/bytes?n="+strconv.Itoa(n))
		if err == nil && (code != 200 || len(body) != n) {
			err = fmt.Errorf("%d, %d of %d bytes", code, len(body), n)
		}
		return err
	})
	// A WebSocket held open, echoing every 200 ms; dialled again when cut.
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ws *websocket.Conn
		defer func() {
			if ws != nil {
				ws.Close()
			}
		}()
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			at := time.Now()
			if ws == nil {
				d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
				var err error
				ws, _, err = d.DialContext(ctx, "ws"+strings.TrimPrefix(e.s.GatewayHTTP, "http")+"/ws", http.Header{"Host": {e.host}})
				if err != nil {
					ws = nil
					log.record("websocket", at, err)
					continue
				}
			}
			msg := "echo " + strconv.Itoa(i)
			_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
			err := ws.WriteMessage(websocket.TextMessage, []byte(msg))
			var got []byte
			if err == nil {
				_, got, err = ws.ReadMessage()
			}
			if err == nil && string(got) != msg {
				err = fmt.Errorf("echo %q, want %q", got, msg)
			}
			if err != nil {
				ws.Close()
				ws = nil
			}
			if ctx.Err() == nil {
				log.record("websocket", at, err)
			}
		}
	}()
	// A watch through the gateway as the kubectl user, which must see every
	// ConfigMap the test creates; watched again when cut.
	rc, err := clientcmd.BuildConfigFromFlags("", e.c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	user, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		n := 0
		for ctx.Err() == nil {
			// List, then watch from the list's version, as informers do.
			at := time.Now()
			began := at
			list, err := user.CoreV1().ConfigMaps("default").List(ctx, metav1.ListOptions{LabelSelector: "soak=true"})
			var w watchInterface
			if err == nil {
				w, err = user.CoreV1().ConfigMaps("default").Watch(ctx, metav1.ListOptions{LabelSelector: "soak=true", ResourceVersion: list.ResourceVersion})
			}
			if err != nil {
				log.record("watch", at, err)
				time.Sleep(200 * time.Millisecond)
				continue
			}
			for ctx.Err() == nil {
				n++
				name := fmt.Sprintf("soak-%d", n)
				at := time.Now()
				_, err := e.c.Kube.Client.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"soak": "true"}}}, metav1.CreateOptions{})
				if err != nil {
					if ctx.Err() == nil {
						log.record("watch", at, fmt.Errorf("create %s: %w", name, err))
					}
					break
				}
				seen, closed := false, false
				var other []string // events that were not the one awaited
				timeout := time.After(20 * time.Second)
			events:
				for !seen {
					select {
					case ev, ok := <-w.ResultChan():
						if !ok {
							closed = true
							break events
						}
						switch o := ev.Object.(type) {
						case *corev1.ConfigMap:
							seen = o.Name == name
							if !seen {
								other = append(other, string(ev.Type)+" "+o.Name)
							}
						case *metav1.Status:
							other = append(other, fmt.Sprintf("%s %d %s", ev.Type, o.Code, o.Message))
						default:
							other = append(other, fmt.Sprintf("%s %T", ev.Type, o))
						}
					case <-timeout:
						break events
					case <-ctx.Done():
						break events
					}
				}
				if ctx.Err() != nil {
					break
				}
				if closed {
					// A watch ends when the stream it runs on is cut, which
					// this loop notices at its next event: it is the
					// fault's when a restart came during the watch's life.
					when := began
					if f := log.faultSince(began); !f.IsZero() {
						when = f
					}
					log.record("watch", when, fmt.Errorf("the watch (begun %s, from version %s) ended %v after %s was created, before showing it; other events: %q",
						began.Format("15:04:05.000"), list.ResourceVersion, time.Since(at).Round(time.Millisecond), name, other))
					break
				}
				if !seen {
					log.record("watch", at, fmt.Errorf("the watch, still open, did not show %s within 20 s", name))
					break
				}
				log.record("watch", at, nil)
				time.Sleep(2 * time.Second)
			}
			w.Stop()
		}
	}()

	// Warm up for about a minute of the same load, an agent restart
	// included: a Go process's heap settles into its working size (pools,
	// connection buffers, caches) over its first minute of load, and what
	// it allocates once for the first reconnect is no leak. The levels
	// then are what everything must come back to.
	time.Sleep(40 * time.Second)
	endWarm := log.fault(time.Second)
	if err := e.c.Agent.Restart(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	served(t, e.s, e.host, "hello from edge", 15*time.Second)
	endWarm()
	time.Sleep(15 * time.Second)
	start := levels()

	length := faultLength(3*time.Minute, 30*time.Minute)
	began := time.Now()
	restarts := 0
	for time.Since(began) < length {
		next := began.Add(time.Duration(restarts+1) * time.Minute)
		if next.After(began.Add(length)) {
			time.Sleep(time.Until(began.Add(length)))
			break
		}
		time.Sleep(time.Until(next))
		end := log.fault(time.Second)
		restartAt := time.Now()
		if err := e.c.Agent.Restart(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		took := served(t, e.s, e.host, "hello from edge", 15*time.Second)
		end()
		restarts++
		t.Logf("agent restart %d at %s: serving again %v after it was up, %v after the restart began",
			restarts, restartAt.Format("15:04:05.000"), took.Round(time.Millisecond), time.Since(restartAt).Round(time.Millisecond))
	}
	// Quiet: the load stops, then what it held is let go.
	cancel()
	wg.Wait()
	client.CloseIdleConnections()
	var end map[string]processLevels
	var over []string
	for wait := time.Now(); ; {
		end = levels()
		over = over[:0]
		for name, s := range start {
			n := end[name]
			if n.goroutines > s.goroutines*1.1 {
				over = append(over, fmt.Sprintf("%s goroutines %.0f, %.0f after warming up", name, n.goroutines, s.goroutines))
			}
			// 10 %, or 8 MiB for a process whose heap is a few MiB: Go's
			// collector lets the heap grow to twice what is live before
			// it collects (GOGC=100), so such a process's memory swings
			// by several MiB with no leak at all.
			if n.rssKiB > max(s.rssKiB*11/10, s.rssKiB+8<<10) {
				over = append(over, fmt.Sprintf("%s anonymous RSS %d MiB, %d MiB after warming up", name, n.rssKiB>>10, s.rssKiB>>10))
			}
		}
		// A Go process gives freed memory back to the system after a
		// garbage collection, which an idle one forces every two minutes.
		if len(over) == 0 || time.Since(wait) > 150*time.Second {
			break
		}
		time.Sleep(time.Second)
	}

	log.mu.Lock()
	defer log.mu.Unlock()
	t.Logf("soak of %v with %d agent restarts: ok %v; cut by the restarts %v", length, restarts, log.ok, log.cut)
	for name, u := range map[string]string{"gateway": e.s.GatewayAdmin + "/metrics", "control plane": cpMetrics, "agent": e.c.AgentURL + "/metrics"} {
		var vals []string
		for _, m := range []string{"go_memstats_heap_inuse_bytes", "go_memstats_heap_idle_bytes", "go_memstats_heap_released_bytes", "go_memstats_next_gc_bytes"} {
			v, _ := promValue(u, m)
			vals = append(vals, fmt.Sprintf("%s=%.1fMiB", strings.TrimPrefix(m, "go_memstats_"), v/(1<<20)))
		}
		t.Logf("  %s: %s", name, strings.Join(vals, " "))
	}
	for _, name := range []string{"gateway", "control plane", "agent"} {
		t.Logf("  %-13s goroutines %.0f -> %.0f, anonymous RSS %d -> %d MiB", name, start[name].goroutines, end[name].goroutines, start[name].rssKiB>>10, end[name].rssKiB>>10)
	}
	for _, f := range log.failures {
		t.Errorf("failed outside a restart: %s", f)
	}
	for _, o := range over {
		t.Errorf("not back to its level after the soak: %s", o)
	}
	for _, kind := range []string{"small", "bulk", "websocket", "watch"} {
		if log.ok[kind] == 0 {
			t.Errorf("no %s operation succeeded", kind)
		}
	}
}
