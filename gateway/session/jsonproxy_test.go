package session

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv/pipeopsagent"
	"github.com/pipeops/tunnel/shared/tunnel"
	"github.com/pipeops/tunnel/shared/tunnel/pipeopsfixtures"
)

// fakeAPI stands in for a Kubernetes API server on the agent's side of the
// JSON proxy path.
type fakeAPI struct {
	srv         *httptest.Server
	watchers    atomic.Int64 // watches in progress
	sawAuth     atomic.Bool  // a request arrived with an Authorization header
	fastStarted chan struct{}
}

func newFakeAPI(t *testing.T) *fakeAPI {
	f := &fakeAPI{fastStarted: make(chan struct{}, 1)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/namespaces", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			f.sawAuth.Store(true)
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"kind":"NamespaceList","items":[%s{"metadata":{"name":"default"}}]}`, strings.Repeat(`{"metadata":{"name":"padding"}},`, 100))
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		fmt.Fprintf(w, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
	})
	mux.HandleFunc("GET /watch", func(w http.ResponseWriter, r *http.Request) {
		f.watchers.Add(1)
		defer f.watchers.Add(-1)
		w.Header().Set("Content-Type", "application/json")
		for i := 0; ; i++ {
			fmt.Fprintf(w, "{\"type\":\"ADDED\",\"n\":%d}\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	mux.HandleFunc("GET /flood", func(w http.ResponseWriter, r *http.Request) {
		select {
		case f.fastStarted <- struct{}{}:
		default:
		}
		chunk := bytes.Repeat([]byte("z"), 32<<10)
		for range 64 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

// jsonEnv is a registry with a simulated PipeOps agent connected.
type jsonEnv struct {
	reg   *Registry
	agent *pipeopsagent.Agent
	sess  *Session
	api   *fakeAPI
}

func newJSONEnv(t *testing.T, mod func(*Config)) *jsonEnv {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	cfg := Config{Auth: JWTAuthenticator{Verifier: &auth.Verifier{Keys: auth.StaticKeys{"k1": pub}}}, Logger: testLogger(t)}
	if mod != nil {
		mod(&cfg)
	}
	reg, err := NewRegistry(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ws", reg)
	srv := httptest.NewServer(mux)
	e := &env{t: t, reg: reg, key: priv}
	api := newFakeAPI(t)
	apiURL, _ := url.Parse(api.srv.URL)
	a := pipeopsagent.New(pipeopsagent.Config{Token: e.token("c1"), AgentID: "a1", KubeURL: apiURL, KubeTransport: http.DefaultTransport})
	a.Resume(srv.URL, "c1")
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- a.Run(ctx, ready) }()
	t.Cleanup(func() {
		cancel()
		<-done
		reg.Close()
		srv.Close()
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	s := e.waitSession("c1", nil)
	if s.Info.K8sHTTP {
		t.Fatal("a PipeOps agent's session claims supports_k8s_http")
	}
	return &jsonEnv{reg: reg, agent: a, sess: s, api: api}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func (j *jsonEnv) client() *http.Client {
	return &http.Client{Transport: roundTripFunc(j.sess.ProxyHTTP)}
}

func (j *jsonEnv) cancelsSent() int {
	n := 0
	for _, m := range j.agent.Received() {
		if m.Type == tunnel.TypeProxyCancel {
			n++
		}
	}
	return n
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	if d, ok := t.Deadline(); ok && d.Before(deadline) {
		deadline = d.Add(-time.Second)
	}
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestJSONProxyPath(t *testing.T) {
	j := newJSONEnv(t, nil)
	c := j.client()

	t.Run("get, credentials stripped by the agent", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://cluster/api/v1/namespaces", nil)
		req.Header.Set("Authorization", "Bearer caller")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Contains(b, []byte(`"name":"default"`)) || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("answer %d %q %v", resp.StatusCode, b, resp.Header)
		}
		if j.api.sawAuth.Load() {
			t.Error("the caller's Authorization reached the API")
		}
	})

	t.Run("bodies inline and in chunks", func(t *testing.T) {
		for _, n := range []int{0, 1000, inlineBodyMax, inlineBodyMax + 1, 3<<20 + 7} {
			body := make([]byte, n)
			_, _ = rand.Read(body)
			sum := sha256.Sum256(body)
			resp, err := c.Post("http://cluster/echo", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := fmt.Sprintf("%d %x", n, sum); string(b) != want {
				t.Errorf("%d-byte body: agent's API saw %q, want %q", n, b, want)
			}
		}
	})

	t.Run("watch streams and closing it cancels at the agent", func(t *testing.T) {
		before := j.cancelsSent()
		resp, err := c.Get("http://cluster/watch")
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		for i := range 3 {
			if !sc.Scan() || !strings.Contains(sc.Text(), fmt.Sprintf(`"n":%d`, i)) {
				t.Fatalf("event %d: %q %v", i, sc.Text(), sc.Err())
			}
		}
		resp.Body.Close()
		waitUntil(t, "proxy_cancel at the agent", func() bool { return j.cancelsSent() > before })
		waitUntil(t, "the watch to end at the API", func() bool { return j.api.watchers.Load() == 0 })
	})

	t.Run("context cancel ends a waiting request", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		resp, err := c.Do((&http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: "cluster", Path: "/watch"}, Header: http.Header{}}).WithContext(ctx))
		if err != nil {
			t.Fatal(err)
		}
		cancel()
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Fatal("a cancelled watch ended cleanly")
		}
		waitUntil(t, "the watch to end at the API", func() bool { return j.api.watchers.Load() == 0 })
	})

	t.Run("answers for unknown requests are dropped, the session stays", func(t *testing.T) {
		if err := j.agent.SendRaw(tunnel.TypeProxyResponseChunk, "gw-nobody", map[string]any{"data": "YWJj", "size": 3}); err != nil {
			t.Fatal(err)
		}
		resp, err := c.Get("http://cluster/api/v1/namespaces")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d after a stray answer", resp.StatusCode)
		}
	})

	t.Run("agent failure becomes a Kubernetes Status", func(t *testing.T) {
		resp, err := c.Get("http://cluster/nothing-here")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Fatalf("status %d, want the API's 404", resp.StatusCode)
		}
	})
	if j.sess.ctx.Err() != nil {
		t.Fatal("the session ended")
	}
}

// A caller that does not read loses its request once the buffer bound is
// passed; the agent is told to stop and the gateway holds no more.
func TestJSONProxySlowReader(t *testing.T) {
	j := newJSONEnv(t, func(c *Config) { c.MaxProxyBuffer = 256 << 10 })
	before := j.cancelsSent()
	resp, err := j.client().Get("http://cluster/flood")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	<-j.api.fastStarted
	// The 2 MiB answer arrives while nobody reads; the call overflows.
	waitUntil(t, "overflow", func() bool {
		j.sess.callsMu.Lock()
		defer j.sess.callsMu.Unlock()
		for _, c := range j.sess.calls {
			c.mu.Lock()
			o := c.overflow
			c.mu.Unlock()
			if o {
				return true
			}
		}
		return false
	})
	_, err = io.Copy(io.Discard, resp.Body)
	if !errors.Is(err, ErrProxySlowReader) {
		t.Fatalf("read error %v, want ErrProxySlowReader", err)
	}
	waitUntil(t, "proxy_cancel at the agent", func() bool { return j.cancelsSent() > before })
}

// A PipeOps agent starts yamux only after gateway_hello_ack: no stream is
// opened before it.
func TestHelloAckGatesStreams(t *testing.T) {
	e := newEnv(t, false)
	h := http.Header{"Authorization": {"Bearer " + e.token("c1")}}
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(e.srv.URL, "http")+"/ws?supports_yamux=true", h)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if _, _, err := ws.ReadMessage(); err != nil {
		t.Fatal(err)
	}
	s := e.waitSession("c1", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := s.Dial(ctx, tunnel.KubernetesAPI); err == nil || !strings.Contains(err.Error(), "gateway_hello_ack") {
		t.Fatalf("Dial before the ack: %v", err)
	}
	ack, _ := tunnel.NewMessage(tunnel.TypeGatewayHelloAck, tunnel.GatewayHelloAck{UseYamux: true})
	b, _ := ack.Encode()
	if err := ws.WriteMessage(websocket.TextMessage, b); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.ready:
	case <-time.After(10 * time.Second):
		t.Fatal("the ack did not open the gate")
	}
}

// Every message a PipeOps agent sends on the gateway socket, as the golden
// fixtures have it, is taken without a violation: the agent's own messages
// reach the control handler in order, answers to requests nobody waits for
// are dropped and counted, and the session lives on.
func TestPipeOpsAgentFixturesAccepted(t *testing.T) {
	e := newEnv(t, false)
	rec := &typesControl{}
	e.reg.cfg.Control = rec
	a := e.dialRaw("c1")
	s := e.waitSession("c1", nil)
	var sent []string
	for _, f := range pipeopsfixtures.All() {
		if f.Direction != pipeopsfixtures.AgentToServer || f.Type == tunnel.TypeRegister {
			continue // register belongs to the control plane's socket
		}
		if err := a.ws.WriteMessage(websocket.TextMessage, f.JSON); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, f.Name)
	}
	replies := 0
	for _, name := range sent {
		if isProxyReply(pipeopsfixtures.Load(name).Type) {
			replies++
		}
	}
	waitUntil(t, "every fixture handled", func() bool {
		return rec.count()+int(counterValue(e.reg.metrics.controlDropped.WithLabelValues("unknown_request"))) >= len(sent)
	})
	if got := counterValue(e.reg.metrics.controlDropped.WithLabelValues("unknown_request")); int(got) != replies {
		t.Errorf("%v answers dropped as unknown, want %d", got, replies)
	}
	for _, k := range []string{ReasonControlMalformed, ReasonControlForbidden, ReasonControlOutOfOrder, ReasonControlQueueFull} {
		if v := counterValue(e.reg.metrics.violations.WithLabelValues(k)); v != 0 {
			t.Errorf("%v violations of kind %s", v, k)
		}
	}
	select {
	case <-s.ready:
	default:
		t.Error("gateway_hello_ack did not open the stream gate")
	}
	if s.CloseReason() != "" || s.ctx.Err() != nil {
		t.Fatalf("session closed: %q", s.CloseReason())
	}
	rec.mu.Lock()
	types := slices.Clone(rec.types)
	rec.mu.Unlock()
	for _, want := range []string{tunnel.TypeHeartbeat, tunnel.TypeGatewayHelloAck, tunnel.TypePong, tunnel.TypeBackpressure, tunnel.TypeProtocolFallback} {
		if !slices.Contains(types, want) {
			t.Errorf("control handler never saw %s (saw %v)", want, types)
		}
	}
}

type typesControl struct {
	mu    sync.Mutex
	types []string
}

func (r *typesControl) HandleControl(_ context.Context, _ *Session, msg tunnel.Message) {
	r.mu.Lock()
	r.types = append(r.types, msg.Type)
	r.mu.Unlock()
}

func (r *typesControl) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.types)
}
