package wsconn

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/shared/testenv"
)

func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil) }

// dialPair connects a gorilla client to an httptest server over loopback
// and returns both raw ends. bufSize 0 keeps gorilla's default buffers.
func dialPair(t testing.TB, useTLS bool, bufSize int) (server, client *websocket.Conn) {
	t.Helper()
	up := websocket.Upgrader{ReadBufferSize: bufSize, WriteBufferSize: bufSize}
	accepted := make(chan *websocket.Conn, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			t.Errorf("upgrade: %v", err)
			close(accepted)
			return
		}
		accepted <- ws
	})
	var srv *httptest.Server
	if useTLS {
		srv = httptest.NewTLSServer(h)
	} else {
		srv = httptest.NewServer(h)
	}
	t.Cleanup(srv.Close)

	d := websocket.Dialer{ReadBufferSize: bufSize, WriteBufferSize: bufSize, HandshakeTimeout: 10 * time.Second}
	if useTLS {
		d.TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig
	}
	client, resp, err := d.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	resp.Body.Close()
	server, ok := <-accepted
	if !ok {
		t.FailNow()
	}
	// Raw ends not handed to New are closed here; closing twice is harmless.
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return server, client
}

func wrap(t testing.TB, ws *websocket.Conn, opts Options) *Conn {
	c := New(ws, opts)
	t.Cleanup(func() { c.Close() })
	return c
}

func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i%251) + seed
	}
	return p
}

func closeCode(err error) int {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return 0
}

func TestRoundTrip(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", useTLS), func(t *testing.T) {
			sws, cws := dialPair(t, useTLS, 0)
			s, c := wrap(t, sws, Options{}), wrap(t, cws, Options{})
			dirs := []struct {
				name string
				w, r *Conn
			}{{"client-to-server", c, s}, {"server-to-client", s, c}}
			for _, d := range dirs {
				for i, size := range []int{0, 1, 64 << 10, 4 << 20} {
					payload := pattern(size, byte(i))
					errc := make(chan error, 1)
					go func() {
						n, err := d.w.Write(payload)
						if err == nil && n != size {
							err = fmt.Errorf("wrote %d of %d", n, size)
						}
						errc <- err
					}()
					got := make([]byte, size)
					if _, err := io.ReadFull(d.r, got); err != nil {
						t.Fatalf("%s size %d: read: %v", d.name, size, err)
					}
					if err := <-errc; err != nil {
						t.Fatalf("%s size %d: write: %v", d.name, size, err)
					}
					if !bytes.Equal(got, payload) {
						t.Fatalf("%s size %d: payload differs", d.name, size)
					}
				}
			}
		})
	}
}

func TestReadInParts(t *testing.T) {
	sws, cws := dialPair(t, false, 0)
	s, c := wrap(t, sws, Options{}), wrap(t, cws, Options{})
	payload := pattern(1<<20+5, 3)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		errc <- err
	}()
	var got []byte
	buf := make([]byte, 1000)
	for len(got) < len(payload) {
		n, err := s.Read(buf)
		if err != nil {
			t.Fatalf("read after %d bytes: %v", len(got), err)
		}
		if n == 0 {
			t.Fatal("Read returned 0, nil")
		}
		got = append(got, buf[:n]...)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("payload differs")
	}
}

func TestEmptyBinaryMessagesSkipped(t *testing.T) {
	sws, cws := dialPair(t, false, 0)
	var texts []string
	s := wrap(t, sws, Options{OnText: func(m []byte) { texts = append(texts, string(m)) }})
	for _, m := range []struct {
		typ  int
		data string
	}{{websocket.BinaryMessage, ""}, {websocket.BinaryMessage, ""}, {websocket.TextMessage, "t"}, {websocket.BinaryMessage, ""}, {websocket.BinaryMessage, "x"}} {
		if err := cws.WriteMessage(m.typ, []byte(m.data)); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 10)
	n, err := s.Read(buf)
	if err != nil || string(buf[:n]) != "x" {
		t.Fatalf("Read = %q, %v; want \"x\", nil", buf[:n], err)
	}
	if len(texts) != 1 || texts[0] != "t" {
		t.Fatalf("texts = %q", texts)
	}
}

func TestTextBinaryOrder(t *testing.T) {
	sws, cws := dialPair(t, false, 0)
	type seen struct {
		text  string
		after int // binary bytes Read had returned when the text arrived
	}
	var got []seen
	var total int
	s := wrap(t, sws, Options{OnText: func(m []byte) { got = append(got, seen{string(m), total}) }})
	c := wrap(t, cws, Options{})

	const n = 200
	var want []seen
	sent := 0
	for i := range n {
		sent += i*37%5000 + 1
		want = append(want, seen{fmt.Sprintf("t%d", i), sent})
	}
	sent++ // a final binary byte, so the reader gets past the last text

	errc := make(chan error, 1)
	go func() {
		errc <- func() error {
			for i := range n {
				if _, err := c.Write(pattern(i*37%5000+1, byte(i))); err != nil {
					return err
				}
				if err := c.WriteText(fmt.Appendf(nil, "t%d", i)); err != nil {
					return err
				}
			}
			_, err := c.Write([]byte{0})
			return err
		}()
	}()
	buf := make([]byte, 3000)
	for total < sent {
		k, err := s.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		total += k
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d texts, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("text %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

// TestConcurrentWriters checks, on a raw peer that sees message boundaries,
// that messages written concurrently arrive whole. Client messages larger
// than gorilla's write buffer are sent as several frames, so interleaving
// would show up there.
func TestConcurrentWriters(t *testing.T) {
	for _, wrapServer := range []bool{false, true} {
		t.Run(fmt.Sprintf("writer-is-server=%v", wrapServer), func(t *testing.T) {
			sws, cws := dialPair(t, false, 0)
			w, peer := wrap(t, cws, Options{}), sws
			if wrapServer {
				w, peer = wrap(t, sws, Options{}), cws
			}
			const writers, perWriter = 8, 100
			var wg sync.WaitGroup
			for id := range writers {
				wg.Go(func() {
					for seq := range perWriter {
						size := 9 + (id*7919+seq*104729)%(40<<10)
						msg := pattern(size, byte(seq))
						msg[0] = byte(id)
						binary.BigEndian.PutUint32(msg[1:], uint32(seq))
						binary.BigEndian.PutUint32(msg[5:], uint32(size))
						if _, err := w.Write(msg); err != nil {
							t.Errorf("Write: %v", err)
							return
						}
						if err := w.WriteText(fmt.Appendf(nil, `{"id":%d,"seq":%d}`, id, seq)); err != nil {
							t.Errorf("WriteText: %v", err)
							return
						}
					}
				})
			}
			nextBin := make([]int, writers)
			nextText := make([]int, writers)
			for range writers * perWriter * 2 {
				typ, msg, err := peer.ReadMessage()
				if err != nil {
					t.Fatalf("peer read: %v", err)
				}
				if typ == websocket.TextMessage {
					var v struct{ ID, Seq int }
					if err := json.Unmarshal(msg, &v); err != nil {
						t.Fatalf("text %q: %v", msg, err)
					}
					if v.Seq != nextText[v.ID] {
						t.Fatalf("writer %d: text seq %d, want %d", v.ID, v.Seq, nextText[v.ID])
					}
					nextText[v.ID]++
					continue
				}
				id, seq := int(msg[0]), int(binary.BigEndian.Uint32(msg[1:]))
				size := int(binary.BigEndian.Uint32(msg[5:]))
				want := pattern(size, byte(seq))
				if len(msg) != size || !bytes.Equal(msg[9:], want[9:]) || seq != nextBin[id] {
					t.Fatalf("writer %d: binary message %d (want seq %d) arrived damaged: len %d want %d", id, seq, nextBin[id], len(msg), size)
				}
				nextBin[id]++
			}
			wg.Wait()
		})
	}
}

func TestTextTooLarge(t *testing.T) {
	for _, size := range []int{1025, 256 << 10} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			sws, cws := dialPair(t, false, 0)
			var texts int
			s := wrap(t, sws, Options{MaxTextSize: 1024, OnText: func([]byte) { texts++ }})
			c := wrap(t, cws, Options{})
			if err := c.WriteText(pattern(1024, 0)); err != nil {
				t.Fatal(err)
			}
			if err := c.WriteText(pattern(size, 0)); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Read(make([]byte, 10)); !errors.Is(err, ErrTextTooLarge) {
				t.Fatalf("server Read: %v, want ErrTextTooLarge", err)
			}
			if texts != 1 {
				t.Fatalf("OnText called %d times, want 1", texts)
			}
			_, err := c.Read(make([]byte, 10))
			if closeCode(err) != websocket.CloseMessageTooBig || c.CloseCode() != websocket.CloseMessageTooBig {
				t.Fatalf("client Read: %v, CloseCode %d; want close 1009", err, c.CloseCode())
			}
			if _, err := s.Read(make([]byte, 10)); !errors.Is(err, ErrTextTooLarge) {
				t.Fatalf("second server Read: %v", err)
			}
			if _, err := s.Write([]byte("x")); !errors.Is(err, ErrTextTooLarge) {
				t.Fatalf("server Write after refusal: %v", err)
			}
		})
	}
}

func TestBinaryTooLarge(t *testing.T) {
	cases := []struct {
		name          string
		text, binary  int64
		fromServer    bool // server frames are unfragmented: refused from the header
		oversize      int
		wantErr       error
		maxDeliveredB int // at most this many bytes of the oversized message reach Read
	}{
		// Binary limit is the larger one: gorilla enforces it.
		{"gorilla-limit/fragmented", 1 << 10, 64 << 10, false, 64<<10 + 1, ErrBinaryTooLarge, 64 << 10},
		{"gorilla-limit/one-frame", 1 << 10, 64 << 10, true, 64<<10 + 1, ErrBinaryTooLarge, 0},
		// Text limit is the larger one: the binary limit is checked by Conn.
		{"own-limit", 1 << 20, 4 << 10, false, 8 << 10, ErrBinaryTooLarge, 4 << 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sws, cws := dialPair(t, false, 0)
			opts := Options{MaxTextSize: tc.text, MaxBinarySize: tc.binary}
			r, w := wrap(t, sws, opts), wrap(t, cws, Options{})
			if tc.fromServer {
				r, w = wrap(t, cws, opts), wrap(t, sws, Options{})
			}
			ok := pattern(int(tc.binary), 1)
			errc := make(chan error, 1)
			go func() {
				_, err := w.Write(ok)
				if err == nil {
					_, err = w.Write(pattern(tc.oversize, 2))
				}
				errc <- err
			}()
			got := make([]byte, len(ok))
			if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, ok) {
				t.Fatalf("message at the limit: %v", err)
			}
			delivered := 0
			buf := make([]byte, 1000)
			var err error
			for err == nil {
				var n int
				n, err = r.Read(buf)
				delivered += n
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Read: %v, want %v", err, tc.wantErr)
			}
			if delivered > tc.maxDeliveredB {
				t.Fatalf("%d bytes of the oversized message delivered", delivered)
			}
			<-errc // the writer may or may not see an error, depending on timing
			if _, err := w.Read(buf); closeCode(err) != websocket.CloseMessageTooBig {
				t.Fatalf("writer's Read: %v, want close 1009", err)
			}
		})
	}
}

// TestTooLargeForBothLimits pins down the documented quirk: a message over
// both limits is refused before its type is known.
func TestTooLargeForBothLimits(t *testing.T) {
	sws, cws := dialPair(t, false, 0)
	c := wrap(t, cws, Options{MaxTextSize: 1 << 10, MaxBinarySize: 4 << 10})
	if err := sws.WriteMessage(websocket.TextMessage, pattern(8<<10, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 10)); !errors.Is(err, ErrBinaryTooLarge) {
		t.Fatalf("Read: %v", err)
	}
}

// readLoop reads c until it fails, in a goroutine the test waits for.
func readLoop(t *testing.T, c *Conn) <-chan error {
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 1024)
		for {
			if _, err := c.Read(buf); err != nil {
				errc <- err
				return
			}
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-errc
	})
	return errc
}

func TestKeepaliveDetectsSilentPeer(t *testing.T) {
	const interval, timeout = 50 * time.Millisecond, 300 * time.Millisecond
	sws, cws := dialPair(t, false, 0)
	c := wrap(t, cws, Options{PingInterval: interval, PingTimeout: timeout})

	// The peer answers pings while it reads, then stops reading: the socket
	// stays open but nothing comes back.
	peerDone := make(chan struct{})
	go func() {
		defer close(peerDone)
		for {
			if _, _, err := sws.ReadMessage(); err != nil {
				return
			}
		}
	}()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		errc <- err
	}()
	defer func() { c.Close(); <-errc }()

	time.Sleep(2 * timeout)
	select {
	case err := <-errc:
		t.Fatalf("connection to a live peer failed: %v", err)
	default:
	}
	sws.SetReadDeadline(time.Now())
	<-peerDone
	start := time.Now()

	var err error
	select {
	case err = <-errc:
		errc <- err
	case <-time.After(10 * timeout):
		t.Fatal("silent peer not detected")
	}
	elapsed := time.Since(start)
	if !errors.Is(err, ErrKeepaliveTimeout) {
		t.Fatalf("Read: %v, want ErrKeepaliveTimeout", err)
	}
	// The last pong came up to one interval before the peer stopped.
	if elapsed < timeout-interval-10*time.Millisecond || elapsed > timeout+time.Second {
		t.Fatalf("detected after %v, want about %v", elapsed, timeout)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, ErrKeepaliveTimeout) {
		t.Fatalf("Write: %v, want ErrKeepaliveTimeout", err)
	}
	if err := c.WriteText([]byte("x")); !errors.Is(err, ErrKeepaliveTimeout) {
		t.Fatalf("WriteText: %v, want ErrKeepaliveTimeout", err)
	}
}

func TestKeepaliveHealthyPeer(t *testing.T) {
	sws, cws := dialPair(t, false, 0)
	var mu sync.Mutex
	var texts []string
	s := wrap(t, sws, Options{PingInterval: 50 * time.Millisecond, OnText: func(m []byte) {
		mu.Lock()
		texts = append(texts, string(m))
		mu.Unlock()
	}})
	c := wrap(t, cws, Options{PingInterval: 50 * time.Millisecond})
	serr, cerr := readLoop(t, s), readLoop(t, c)

	select {
	case err := <-serr:
		t.Fatalf("server failed: %v", err)
	case err := <-cerr:
		t.Fatalf("client failed: %v", err)
	case <-time.After(time.Second):
	}
	if err := c.WriteText([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		n := len(texts)
		mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("text not delivered after 1s of keepalive")
		}
	}
}

// An idle Conn with keepalive parks no goroutine of its own (a gateway holds
// thousands of them), yet its pings reach the peer.
func TestKeepaliveHoldsNoGoroutine(t *testing.T) {
	sws, cws := dialPair(t, false, 0)
	pings := make(chan struct{}, 16)
	sws.SetPingHandler(func(string) error {
		select {
		case pings <- struct{}{}:
		default:
		}
		return nil
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, _, err := sws.ReadMessage(); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { sws.Close(); <-done })

	before := runtime.NumGoroutine()
	// Nothing reads c, so pongs are never seen: a long timeout keeps it up.
	c := New(cws, Options{PingInterval: 20 * time.Millisecond, PingTimeout: time.Minute})
	if after := runtime.NumGoroutine(); after != before {
		t.Errorf("New with keepalive started %d goroutines, want 0", after-before)
	}
	for range 3 {
		select {
		case <-pings:
		case <-time.After(5 * time.Second):
			t.Fatal("peer saw no keepalive ping")
		}
	}
	c.Close()
	for range len(pings) {
		<-pings
	}
	select {
	case <-pings:
		t.Fatal("ping sent after Close")
	case <-time.After(100 * time.Millisecond):
	}
}

func TestPongsWithoutKeepalive(t *testing.T) {
	sws, cws := dialPair(t, false, 0)
	c := wrap(t, cws, Options{})
	readLoop(t, c)
	pong := make(chan string, 1)
	sws.SetPongHandler(func(s string) error { pong <- s; return nil })
	done := make(chan struct{})
	go func() {
		defer close(done)
		sws.ReadMessage()
	}()
	defer func() { sws.Close(); <-done }()
	if err := sws.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-pong:
		if s != "p" {
			t.Fatalf("pong %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no pong")
	}
}

func TestClose(t *testing.T) {
	sws, cws := dialPair(t, false, 0)
	s, c := wrap(t, sws, Options{}), wrap(t, cws, Options{})
	blocked := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		blocked <- err
	}()
	time.Sleep(20 * time.Millisecond)

	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := <-blocked; !errors.Is(err, ErrClosed) || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("blocked Read: %v, want ErrClosed", err)
	}
	if _, err := c.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	if err := c.WriteText([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("WriteText after Close: %v", err)
	}
	if _, err := s.Read(make([]byte, 10)); err != io.EOF {
		t.Fatalf("peer Read: %v, want io.EOF", err)
	}
	if s.CloseCode() != websocket.CloseNormalClosure {
		t.Fatalf("peer CloseCode %d", s.CloseCode())
	}
	if _, err := s.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("peer Write after close: %v", err)
	}
}

func TestCloseWithCode(t *testing.T) {
	sws, cws := dialPair(t, false, 0)
	s, c := wrap(t, sws, Options{}), wrap(t, cws, Options{})
	if err := s.CloseWithCode(websocket.ClosePolicyViolation, "bad token"); err != nil {
		t.Fatal(err)
	}
	_, err := c.Read(make([]byte, 10))
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation || ce.Text != "bad token" {
		t.Fatalf("Read: %v, want close 1008 \"bad token\"", err)
	}
	if err == io.EOF || c.CloseCode() != websocket.ClosePolicyViolation {
		t.Fatalf("Read: %v, CloseCode %d", err, c.CloseCode())
	}
}

func TestCloseReasonTruncated(t *testing.T) {
	sws, cws := dialPair(t, false, 0)
	s, c := wrap(t, sws, Options{}), wrap(t, cws, Options{})
	reason := strings.Repeat("é", 100) // 200 bytes; the cut must not split a rune
	if err := s.CloseWithCode(websocket.CloseInternalServerErr, reason); err != nil {
		t.Fatal(err)
	}
	_, err := c.Read(make([]byte, 10))
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseInternalServerErr || ce.Text != strings.Repeat("é", 61) {
		t.Fatalf("Read: %v", err)
	}
}

// writeUntilStuck writes to c, whose peer does not read, until the socket
// is full and a Write blocks. The channel gets the error that ends the loop.
func writeUntilStuck(t *testing.T, c *Conn) <-chan error {
	t.Helper()
	var written atomic.Int64
	errc := make(chan error, 1)
	go func() {
		big := pattern(1<<20, 0)
		for {
			if _, err := c.Write(big); err != nil {
				errc <- err
				return
			}
			written.Add(1)
		}
	}()
	last := int64(-1)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		if n := written.Load(); n == last {
			return errc
		} else {
			last = n
		}
	}
	t.Fatal("writes never blocked")
	return nil
}

func TestCloseUnblocksWrite(t *testing.T) {
	_, cws := dialPair(t, false, 0) // the server end is never read
	c := wrap(t, cws, Options{})
	errc := writeUntilStuck(t, c)
	c.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("Write: %v, want ErrClosed", err)
	}
}

func TestReadDeadline(t *testing.T) {
	t.Run("past", func(t *testing.T) {
		sws, cws := dialPair(t, false, 0)
		c := wrap(t, cws, Options{})
		_ = sws
		c.SetReadDeadline(time.Now().Add(-time.Second))
		start := time.Now()
		_, err := c.Read(make([]byte, 10))
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read: %v, want a timeout", err)
		}
		if _, ok := err.(net.Error); !ok {
			t.Fatalf("%T does not implement net.Error itself", err)
		}
		if time.Since(start) > time.Second {
			t.Fatalf("took %v", time.Since(start))
		}
		// Documented: a timed-out Conn stays failed for reading.
		c.SetReadDeadline(time.Time{})
		if _, err := c.Read(make([]byte, 10)); !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("second Read: %v", err)
		}
	})
	t.Run("while-blocked", func(t *testing.T) {
		sws, cws := dialPair(t, true, 0)
		c := wrap(t, cws, Options{})
		_ = sws
		errc := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 10))
			errc <- err
		}()
		time.Sleep(20 * time.Millisecond)
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		select {
		case err := <-errc:
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("Read: %v, want a timeout", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("deadline ignored")
		}
	})
}

func TestWriteDeadline(t *testing.T) {
	t.Run("past-does-not-break", func(t *testing.T) {
		sws, cws := dialPair(t, false, 0)
		s, c := wrap(t, sws, Options{}), wrap(t, cws, Options{})
		c.SetWriteDeadline(time.Now().Add(-time.Second))
		var ne net.Error
		if _, err := c.Write([]byte("x")); !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("Write: %v, want a timeout", err)
		}
		c.SetWriteDeadline(time.Time{})
		if _, err := c.Write([]byte("y")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 10)
		if n, err := s.Read(buf); err != nil || string(buf[:n]) != "y" {
			t.Fatalf("Read = %q, %v", buf[:n], err)
		}
	})
	t.Run("stalled-socket", func(t *testing.T) {
		sws, cws := dialPair(t, false, 0)
		_ = sws // never read
		c := wrap(t, cws, Options{})
		c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		start := time.Now()
		big := pattern(1<<20, 0)
		var err error
		for err == nil && time.Since(start) < 10*time.Second {
			_, err = c.Write(big)
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("Write: %v, want a timeout", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("timed out after %v", d)
		}
	})
	t.Run("waiting-for-another-writer", func(t *testing.T) {
		sws, cws := dialPair(t, false, 0)
		_ = sws // never read
		c := wrap(t, cws, Options{})
		stuck := writeUntilStuck(t, c)
		c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		start := time.Now()
		err := c.WriteText([]byte("x"))
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("WriteText: %v, want a timeout", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("timed out after %v", d)
		}
		c.Close()
		if err := <-stuck; !errors.Is(err, ErrClosed) {
			t.Fatalf("stuck Write: %v, want ErrClosed", err)
		}
	})
}

func TestAddrs(t *testing.T) {
	sws, cws := dialPair(t, false, 0)
	la, ra := cws.LocalAddr().String(), cws.RemoteAddr().String()
	c := wrap(t, cws, Options{})
	_ = sws
	if c.LocalAddr().String() != la || c.RemoteAddr().String() != ra {
		t.Fatalf("addrs %v %v, want %v %v", c.LocalAddr(), c.RemoteAddr(), la, ra)
	}
	if c.CloseCode() != 0 {
		t.Fatalf("CloseCode %d before any close", c.CloseCode())
	}
}

// Benchmarks. Each streams b.N writes to a reader that drains them and
// includes the time to drain the last one.

const benchChunk = 32 << 10

func benchConns(b *testing.B, bufSize int) (server, client *Conn) {
	sws, cws := dialPair(b, false, bufSize)
	return wrap(b, sws, Options{}), wrap(b, cws, Options{})
}

// drain reads total bytes from r in a goroutine and reports on the channel.
// It reads into its own 32 KiB buffer rather than using io.Copy, whose
// shortcuts differ between a *net.TCPConn and a Conn and would make the
// baseline read in smaller pieces.
func drain(r io.Reader, total int64) <-chan error {
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 32<<10)
		for total > 0 {
			n, err := r.Read(buf[:min(int64(len(buf)), total)])
			total -= int64(n)
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}

func benchStream(b *testing.B, w io.Writer, r io.Reader, chunks [][]byte) {
	size := 0
	for _, c := range chunks {
		size += len(c)
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	done := drain(r, int64(size)*int64(b.N))
	b.ResetTimer()
	for range b.N {
		for _, c := range chunks {
			if _, err := w.Write(c); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

func BenchmarkWriteRead(b *testing.B) {
	chunk := pattern(benchChunk, 0)
	for _, bufSize := range []int{0, 64 << 10} {
		for _, toServer := range []bool{true, false} {
			name := fmt.Sprintf("buf=%dKiB/client-to-server=%v", max(bufSize, 4096)>>10, toServer)
			b.Run(name, func(b *testing.B) {
				s, c := benchConns(b, bufSize)
				w, r := c, s
				if !toServer {
					w, r = s, c
				}
				benchStream(b, w, r, [][]byte{chunk})
			})
		}
	}
}

func BenchmarkRawTCP(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	server, ok := <-accepted
	if !ok {
		b.Fatal("accept failed")
	}
	defer server.Close()
	benchStream(b, client, server, [][]byte{pattern(benchChunk, 0)})
}

// yamux writes each frame as a 12-byte header and then the body. These two
// show what sending them as two messages costs compared with one.

func BenchmarkSplitWrites(b *testing.B) {
	for _, size := range []int{1 << 10, benchChunk} {
		b.Run(fmt.Sprintf("frame=%dKiB", size>>10), func(b *testing.B) {
			s, c := benchConns(b, 0)
			frame := pattern(size, 0)
			benchStream(b, c, s, [][]byte{frame[:12], frame[12:]})
		})
	}
}

func BenchmarkCoalescedWrites(b *testing.B) {
	for _, size := range []int{1 << 10, benchChunk} {
		b.Run(fmt.Sprintf("frame=%dKiB", size>>10), func(b *testing.B) {
			s, c := benchConns(b, 0)
			benchStream(b, c, s, [][]byte{pattern(size, 0)})
		})
	}
}

// lockedLog is a log destination the reader and Close may both write to.
type lockedLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Text messages without OnText are dropped with a debug line for the first
// and a count, not a line each: the peer decides how many come.
func TestDroppedTextLoggedRateLimited(t *testing.T) {
	sws, cws := dialPair(t, false, 0)
	out := &lockedLog{}
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := New(sws, Options{Logger: log})
	const n = 5000
	for range n {
		if err := cws.WriteMessage(websocket.TextMessage, []byte("dropped")); err != nil {
			t.Fatal(err)
		}
	}
	if err := cws.WriteMessage(websocket.BinaryMessage, []byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if _, err := s.Read(buf); err != nil {
		t.Fatal(err)
	}
	s.Close() // writes the count
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var drops []string
	for _, l := range lines {
		if strings.Contains(l, "dropped text message") {
			drops = append(drops, l)
		}
	}
	if len(drops) != 2 || !strings.Contains(drops[1], fmt.Sprintf("repeated=%d", n-1)) {
		t.Fatalf("drop lines = %q, want the first and a count of %d", drops, n-1)
	}
}
