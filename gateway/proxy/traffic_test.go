package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/shared/testenv"
)

type observation struct {
	cluster, host     string
	status            int
	bytesIn, bytesOut int64
	d                 time.Duration
}

// observer hands each observation to the test.
type observer chan observation

func (o observer) Observe(cluster, host string, status int, bytesIn, bytesOut int64, d time.Duration) {
	o <- observation{cluster, host, status, bytesIn, bytesOut, d}
}

// next waits for the observation of the request just answered: the proxy
// makes it after the response, so it may come after the visitor has it.
func (o observer) next(t *testing.T) observation {
	t.Helper()
	select {
	case ob := <-o:
		return ob
	case <-time.After(time.Until(testenv.WaitDeadline(t))):
		t.Fatal("no observation")
		return observation{}
	}
}

// Every routed request, served or failed, is observed once with its route's
// cluster and hostname, its status and its body bytes both ways; a request
// without a route is not.
func TestTrafficObserved(t *testing.T) {
	f := newFixture(t, 300*time.Millisecond)
	sink := newBodySink(t)
	ws := upstream(t, "B")
	f.startAgent("cluster-a", addr(sink.srv), "")
	f.startAgent("cluster-b", addr(ws), "")
	f.setRoutes([]controlplane.Route{
		route("a.example.com", "cluster-a", "tunnel", ""),
		route("*.wild.example.com", "cluster-a", "tunnel", ""),
		route("ws.example.com", "cluster-b", "tunnel", ""),
		route("offline.example.com", "cluster-z", "tunnel", ""),
	}, []*controlplane.Cluster{{UUID: "cluster-a", IngressController: ingressNginx}, {UUID: "cluster-b", IngressController: ingressNginx},
		{UUID: "cluster-z", IngressController: ingressNginx}})

	obs := make(observer, 16)
	const limit = 4096
	p, err := New(Config{Routes: f.routes, Tunnels: f.reg, ResponseHeaderTimeout: 300 * time.Millisecond, DialTimeout: time.Second,
		MaxRequestBody: limit, Traffic: obs})
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(p)
	t.Cleanup(func() { front.Close(); p.Close() })

	send := func(host string, body []byte, chunked bool) (int, string) {
		t.Helper()
		var rd io.Reader = bytes.NewReader(body)
		if chunked {
			rd = struct{ io.Reader }{rd} // hides the length
		}
		req, _ := http.NewRequest("POST", front.URL+"/upload", rd)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		answer, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(answer)
	}

	cases := []struct {
		name, host string
		size       int
		chunked    bool
		status     int
		wantHost   string
		cluster    string
	}{
		{"declared length", "a.example.com", 1000, false, 200, "a.example.com", "cluster-a"},
		{"chunked, under a wildcard", "Sub.Wild.example.com:80", 1500, true, 200, "*.wild.example.com", "cluster-a"},
		{"no body", "a.example.com", 0, false, 200, "a.example.com", "cluster-a"},
		{"declared length over the limit", "a.example.com", limit + 1, false, 413, "a.example.com", "cluster-a"},
		{"agent offline", "offline.example.com", 10, false, 503, "offline.example.com", "cluster-z"},
	}
	for _, tc := range cases {
		code, answer := send(tc.host, bytes.Repeat([]byte("x"), tc.size), tc.chunked)
		if code != tc.status {
			t.Fatalf("%s: %d %q, want %d", tc.name, code, answer, tc.status)
		}
		ob := obs.next(t)
		wantIn := int64(tc.size)
		if tc.status == 413 || tc.status == 503 {
			wantIn = 0 // refused before the body was read
		}
		if ob.cluster != tc.cluster || ob.host != tc.wantHost || ob.status != tc.status || ob.bytesIn != wantIn ||
			ob.bytesOut != int64(len(answer)) || ob.d <= 0 {
			t.Errorf("%s: observed %+v, want %s %s %d in=%d out=%d", tc.name, ob, tc.cluster, tc.wantHost, tc.status, wantIn, len(answer))
		}
	}

	// A body of unknown length cut at the limit: 413, and the bytes the
	// gateway read before it stopped.
	if code, answer := send("a.example.com", bytes.Repeat([]byte("x"), 200<<10), true); code != 413 {
		t.Fatalf("chunked over the limit: %d %q", code, answer)
	}
	if ob := obs.next(t); ob.status != 413 || ob.bytesIn <= limit || ob.bytesIn >= 200<<10 {
		t.Errorf("chunked over the limit: observed %+v, want 413 with a little over %d bytes in", ob, limit)
	}

	// No route: no cluster to count it for.
	if code, _ := send("unknown.example.com", nil, false); code != 404 {
		t.Fatalf("no route: %d", code)
	}

	// An upgrade is observed when it is switched, as a 101.
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(front.URL, "http")+"/ws-echo", http.Header{"Host": {"ws.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := conn.ReadMessage(); err != nil || string(msg) != "B: hi" {
		t.Fatalf("echo %q %v", msg, err)
	}
	conn.Close()
	if ob := obs.next(t); ob.cluster != "cluster-b" || ob.host != "ws.example.com" || ob.status != http.StatusSwitchingProtocols {
		t.Errorf("upgrade: observed %+v", ob)
	}

	// Close waits for every handler: whatever was observed is in obs now,
	// and the request without a route added nothing.
	front.Close()
	if len(obs) != 0 {
		t.Errorf("extra observation %+v", <-obs)
	}
}
