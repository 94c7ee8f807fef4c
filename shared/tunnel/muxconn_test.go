package tunnel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/pipeops/tunnel/shared/wsconn"
)

// recordConn records every Write as one message.
type recordConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (r *recordConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.writes = append(r.writes, append([]byte(nil), p...))
	r.mu.Unlock()
	return len(p), nil
}

func muxHeader(typ byte, stream, length uint32) []byte {
	h := make([]byte, muxHeaderSize)
	h[0], h[1] = 0, typ
	binary.BigEndian.PutUint32(h[4:], stream)
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

func TestCoalesceFrames(t *testing.T) {
	cases := []struct {
		name   string
		writes [][]byte
		want   [][]byte
	}{
		{"data header then body", [][]byte{muxHeader(0, 1, 5), []byte("hello")},
			[][]byte{append(muxHeader(0, 1, 5), "hello"...)}},
		{"body in pieces", [][]byte{muxHeader(0, 1, 5), []byte("he"), []byte("llo")},
			[][]byte{append(muxHeader(0, 1, 5), "hello"...)}},
		{"window update passes through", [][]byte{muxHeader(1, 1, 5)}, [][]byte{muxHeader(1, 1, 5)}},
		{"ping passes through", [][]byte{muxHeader(2, 0, 7)}, [][]byte{muxHeader(2, 0, 7)}},
		{"empty data frame passes through", [][]byte{muxHeader(0, 3, 0)}, [][]byte{muxHeader(0, 3, 0)}},
		{"whole frame in one write", [][]byte{append(muxHeader(0, 1, 2), "hi"...)}, [][]byte{append(muxHeader(0, 1, 2), "hi"...)}},
		{"body runs into the next frame", [][]byte{muxHeader(0, 1, 2), append([]byte("hi"), muxHeader(1, 1, 9)...)},
			[][]byte{append(muxHeader(0, 1, 2), "hi"...), muxHeader(1, 1, 9)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := &recordConn{}
			conn := CoalesceFrames(rec)
			for _, w := range c.writes {
				n, err := conn.Write(w)
				if err != nil || n != len(w) {
					t.Fatalf("Write(%d bytes) = %d, %v", len(w), n, err)
				}
			}
			if len(rec.writes) != len(c.want) {
				t.Fatalf("got %d writes %x, want %d %x", len(rec.writes), rec.writes, len(c.want), c.want)
			}
			for i := range c.want {
				if !bytes.Equal(rec.writes[i], c.want[i]) {
					t.Fatalf("write %d = %x, want %x", i, rec.writes[i], c.want[i])
				}
			}
		})
	}
}

// wsPair returns the two ends of a real WebSocket over loopback TCP, adapted
// to net.Conn.
func wsPair(tb testing.TB) (client, server net.Conn) {
	tb.Helper()
	up := websocket.Upgrader{ReadBufferSize: 32 << 10, WriteBufferSize: 32 << 10}
	srvConn := make(chan net.Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		srvConn <- wsconn.New(ws, wsconn.Options{})
	}))
	tb.Cleanup(srv.Close)
	d := websocket.Dialer{ReadBufferSize: 32 << 10, WriteBufferSize: 32 << 10}
	ws, _, err := d.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		tb.Fatal(err)
	}
	client = wsconn.New(ws, wsconn.Options{})
	server = <-srvConn
	tb.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestYamuxOverCoalescedWebSocket runs real yamux over a real WebSocket with
// coalescing on both ends, both directions, many streams.
func TestYamuxOverCoalescedWebSocket(t *testing.T) {
	cc, sc := wsPair(t)
	cfg, err := MuxConfig(DefaultYamuxConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	client, err := yamux.Client(CoalesceFrames(cc), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := yamux.Server(CoalesceFrames(sc), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // client side echoes every stream the server opens
		defer wg.Done()
		for {
			st, err := client.AcceptStream()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(st, st)
				st.Close()
			}()
		}
	}()
	var streams sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		streams.Add(1)
		go func() {
			defer streams.Done()
			st, err := server.OpenStream()
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			payload := bytes.Repeat([]byte{byte(i)}, (i+1)*37*1024)
			go func() { _, _ = st.Write(payload); st.Close() }()
			got, err := io.ReadAll(st)
			if err != nil || !bytes.Equal(got, payload) {
				errs <- fmt.Errorf("stream %d: %d bytes back, err %v", i, len(got), err)
			}
		}()
	}
	streams.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	server.Close()
	client.Close()
	wg.Wait()
}

// BenchmarkYamuxOverWebSocket measures one yamux stream over a loopback
// WebSocket with and without frame coalescing (every yamux data frame is a
// header write and a body write; without coalescing each is its own
// WebSocket message), and with several stream windows.
//
//	go test -run '^$' -bench YamuxOverWebSocket -benchtime 2s ./shared/tunnel/
func BenchmarkYamuxOverWebSocket(b *testing.B) {
	for _, coalesce := range []bool{false, true} {
		for _, window := range []uint32{256 << 10, 1 << 20, 4 << 20, 16 << 20} {
			b.Run(fmt.Sprintf("coalesce=%v/window=%dKiB", coalesce, window>>10), func(b *testing.B) {
				benchYamux(b, coalesce, window)
			})
		}
	}
}

func benchYamux(b *testing.B, coalesce bool, window uint32) {
	cc, sc := wsPair(b)
	if coalesce {
		cc, sc = CoalesceFrames(cc), CoalesceFrames(sc)
	}
	cfg, err := MuxConfig(YamuxConfig{MaxStreamWindowSize: window}, nil)
	if err != nil {
		b.Fatal(err)
	}
	client, _ := yamux.Client(cc, cfg)
	server, _ := yamux.Server(sc, cfg)
	defer client.Close()
	defer server.Close()
	done := make(chan int64, 1)
	go func() {
		st, err := client.AcceptStream()
		if err != nil {
			done <- -1
			return
		}
		n, _ := io.Copy(io.Discard, st)
		done <- n
	}()
	st, err := server.OpenStream()
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 32<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := st.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	st.Close()
	if n := <-done; n != int64(b.N*len(buf)) {
		b.Fatalf("received %d bytes, want %d", n, b.N*len(buf))
	}
}
