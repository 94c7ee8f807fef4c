package load

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/shared/testenv"
)

func TestMain(m *testing.M) {
	// The test binary doubles as the worker process of TestRemote.
	if os.Getenv("LOADTEST_TEST_WORKER") == "1" {
		if err := Serve(context.Background(), os.Stdin, os.Stdout); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	testenv.MainNoLeaks(m, nil)
}

// server answers /bytes?n=N with N bytes, /status with 503, and /ws with a
// WebSocket echo. Every request to /stall blocks until release is closed.
func server(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var hits atomic.Int64
	up := websocket.Upgrader{}
	mux := http.NewServeMux()
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Write([]byte(strings.Repeat("x", n)))
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "busy", http.StatusServiceUnavailable) })
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "app.test" {
			http.Error(w, "wrong host "+r.Host, http.StatusNotFound)
			return
		}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			_ = c.WriteMessage(typ, msg)
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, &hits
}

func TestGetChecksStatusAndSize(t *testing.T) {
	srv, _ := server(t)
	c := NewClient(1, true)
	defer c.CloseIdleConnections()
	buf := make([]byte, 1024)
	ctx := context.Background()
	if n, err := Get(c, srv.URL+"/bytes?n=100", "app.test", 100)(ctx, buf); err != nil || n != 100 {
		t.Fatalf("good request: %d, %v", n, err)
	}
	if _, err := Get(c, srv.URL+"/bytes?n=100", "app.test", 99)(ctx, buf); err == nil {
		t.Fatal("a short or long body must be an error")
	}
	if _, err := Get(c, srv.URL+"/status", "app.test", -1)(ctx, buf); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("a 503 must be an error naming it, got %v", err)
	}
}

func TestClosedIsBoundedByCountAndTime(t *testing.T) {
	srv, hits := server(t)
	c := NewClient(4, true)
	defer c.CloseIdleConnections()
	req := Get(c, srv.URL+"/bytes?n=10", "app.test", 10)

	r := Closed(context.Background(), 4, 10*time.Second, 50, 1024, req)
	if r.Requests != 50 || hits.Load() != 50 || r.Errors != 0 || r.Hist.Count() != 50 || r.Bytes != 500 {
		t.Fatalf("count-bounded run: %d requests, %d hits, %d errors, %d bytes", r.Requests, hits.Load(), r.Errors, r.Bytes)
	}
	start := time.Now()
	r = Closed(context.Background(), 4, 200*time.Millisecond, 1<<40, 1024, req)
	if took := time.Since(start); took > 2*time.Second || r.Requests == 0 || r.Errors != 0 {
		t.Fatalf("time-bounded run took %v: %d requests, %d errors %q", took, r.Requests, r.Errors, r.ErrorSamples)
	}
	if r.Rate() <= 0 {
		t.Fatal("no rate")
	}
}

func TestOpenKeepsTheScheduleAndCountsStalls(t *testing.T) {
	// Every 10th request takes 50 ms. With one goroutine, the requests
	// scheduled behind it wait: their latency must include that wait.
	var n atomic.Int64
	req := func(ctx context.Context, _ []byte) (int64, error) {
		if n.Add(1)%10 == 0 {
			time.Sleep(50 * time.Millisecond)
		}
		return 1, nil
	}
	r := Open(context.Background(), 200, 500*time.Millisecond, 1, 5*time.Second, 16, req)
	if r.Requests != 100 || r.Errors != 0 {
		t.Fatalf("%d requests, %d errors, want 100 and 0", r.Requests, r.Errors)
	}
	// A closed-loop measurement would report p50 ~ 0; here the requests
	// queued behind each stall carry it.
	if p50 := r.Hist.Percentile(50); p50 < 5*time.Millisecond {
		t.Fatalf("p50 %v: waiting behind a stall was not counted", p50)
	}
	if r.Hist.Max() < 45*time.Millisecond {
		t.Fatalf("max %v, want the stall in it", r.Hist.Max())
	}

	// A schedule the requests cannot keep up with ends at its bound and
	// counts what it could not send.
	slow := func(ctx context.Context, _ []byte) (int64, error) {
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
		}
		return 0, ctx.Err()
	}
	start := time.Now()
	r = Open(context.Background(), 100, 200*time.Millisecond, 1, 100*time.Millisecond, 16, slow)
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("run took %v, beyond its bound", took)
	}
	if r.Requests+r.Errors != 20 || r.Errors == 0 {
		t.Fatalf("%d ok + %d errors, want 20 in all with errors", r.Requests, r.Errors)
	}
}

func TestMerge(t *testing.T) {
	a := &Result{Requests: 10, Errors: 1, Bytes: 100, Elapsed: time.Second, ErrorSamples: []string{"x"}}
	a.Hist.Record(time.Millisecond)
	b := &Result{Requests: 30, Bytes: 300, Elapsed: time.Second}
	b.Hist.Record(3 * time.Millisecond)
	m := Merge(a, b)
	if m.Requests != 40 || m.Errors != 1 || m.Bytes != 400 || m.Elapsed != 2*time.Second || m.Rate() != 20 || m.Hist.Count() != 2 || len(m.ErrorSamples) != 1 {
		t.Fatalf("merged %+v", m)
	}
}

func TestParallel(t *testing.T) {
	srv, _ := server(t)
	c := NewClient(8, true)
	defer c.CloseIdleConnections()
	r := Parallel(context.Background(), 8, 4096, Get(c, srv.URL+"/bytes?n=1000", "app.test", 1000))
	if r.Requests != 8 || r.Bytes != 8000 || r.MBps() <= 0 {
		t.Fatalf("%d requests, %d bytes", r.Requests, r.Bytes)
	}
}

func TestSockets(t *testing.T) {
	srv, _ := server(t)
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
	ctx := context.Background()
	s, r := OpenSockets(ctx, url, "app.test", 50, 8)
	defer s.Close()
	if s.Len() != 50 || r.Errors != 0 {
		t.Fatalf("%d open, %d errors %q", s.Len(), r.Errors, r.ErrorSamples)
	}
	if e := s.Echo(ctx, 8, 5*time.Second); e.Requests != 50 || e.Errors != 0 {
		t.Fatalf("echo: %d ok, %d errors %q", e.Requests, e.Errors, e.ErrorSamples)
	}
	s.Close()
	if s.Len() != 0 {
		t.Fatal("sockets left after Close")
	}

	bad, r := OpenSockets(ctx, url, "other.test", 3, 2)
	defer bad.Close()
	if bad.Len() != 0 || r.Errors != 3 || !strings.Contains(r.ErrorSamples[0], "404") {
		t.Fatalf("wrong host: %d open, %d errors %q", bad.Len(), r.Errors, r.ErrorSamples)
	}
}

func TestRemote(t *testing.T) {
	srv, hits := server(t)
	t.Setenv("LOADTEST_TEST_WORKER", "1")
	r, err := StartRemote(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	rep, err := r.Do(ctx, Job{Op: OpClosed, URL: srv.URL + "/bytes?n=64", Host: "app.test", Want: 64, Conns: 2, KeepAlive: true,
		Warmup: 50 * time.Millisecond, Duration: 10 * time.Second, MaxRequests: 30, BufSize: 512})
	if err != nil {
		t.Fatal(err)
	}
	if res := rep.Result; res.Requests != 30 || res.Hist.Count() != 30 || res.Bytes != 30*64 || res.Elapsed <= 0 {
		t.Fatalf("closed job: %+v", res)
	}
	if hits.Load() <= 30 {
		t.Fatalf("%d hits: the warmup did not run", hits.Load())
	}

	// The same kind of job again reuses the connections: no warmup needed.
	before := hits.Load()
	rep, err = r.Do(ctx, Job{Op: OpClosed, URL: srv.URL + "/bytes?n=64", Host: "app.test", Want: 64, Conns: 2, KeepAlive: true,
		Duration: 10 * time.Second, MaxRequests: 5, BufSize: 512})
	if err != nil || rep.Result.Requests != 5 || hits.Load() != before+5 {
		t.Fatalf("second closed job: %+v, %v", rep, err)
	}
	if _, err := r.Do(ctx, Job{Op: OpReset}); err != nil {
		t.Fatal(err)
	}

	rep, err = r.Do(ctx, Job{Op: OpOpen, URL: srv.URL + "/bytes?n=8", Host: "app.test", Want: 8, Conns: 4, KeepAlive: true,
		Duration: 200 * time.Millisecond, Rate: 100, Drain: time.Second, BufSize: 512})
	if err != nil || rep.Result.Requests != 20 {
		t.Fatalf("open job: %+v, %v", rep, err)
	}

	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
	rep, err = r.Do(ctx, Job{Op: OpSocketsOpen, URL: url, Host: "app.test", Sockets: 10, Conns: 4})
	if err != nil || rep.Held != 10 {
		t.Fatalf("sockets: %+v, %v", rep, err)
	}
	rep, err = r.Do(ctx, Job{Op: OpSocketsEcho, Conns: 4, Timeout: 5 * time.Second})
	if err != nil || rep.Result.Requests != 10 || rep.Held != 10 {
		t.Fatalf("echo: %+v, %v", rep, err)
	}
	rep, err = r.Do(ctx, Job{Op: OpSocketsClose})
	if err != nil || rep.Held != 0 {
		t.Fatalf("close sockets: %+v, %v", rep, err)
	}
	if rtt, err := r.RoundTrip(ctx, 20); err != nil || rtt <= 0 {
		t.Fatalf("round trip %v, %v", rtt, err)
	}
	if _, err := r.Do(ctx, Job{Op: "nonsense"}); err == nil {
		t.Fatal("an unknown op must be an error")
	}
	if err := r.Close(); err != nil {
		t.Fatalf("worker exit: %v", err)
	}
}

func TestRemoteInterrupted(t *testing.T) {
	t.Setenv("LOADTEST_TEST_WORKER", "1")
	r, err := StartRemote(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	// A long job to a port nobody listens on: only the interrupt ends it.
	_, err = r.Do(ctx, Job{Op: OpClosed, URL: "http://127.0.0.1:1/", Host: "x", Want: -1, Conns: 1, Duration: time.Minute, MaxRequests: 1 << 40, BufSize: 64})
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("interrupted job: %v after %v", err, time.Since(start))
	}
	if err := r.Close(); err != nil {
		t.Fatalf("close after kill: %v", err)
	}
}
