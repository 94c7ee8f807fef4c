package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// muxEnds is a yamux session pair over a real WebSocket, coalesced on both
// ends as the gateway and the agent run it; the server's yamux events are
// counted by kind.
type muxEnds struct {
	client, server       *yamux.Session
	clientOut, serverOut *FrameConn
	events               [2]sync.Map // client, server: MuxEventKind -> *atomic.Int64
}

const (
	onClient = 0
	onServer = 1
)

func newMuxEnds(t *testing.T, closeTimeout time.Duration) *muxEnds {
	t.Helper()
	cc, sc := wsPair(t)
	e := &muxEnds{clientOut: CoalesceFrames(cc), serverOut: CoalesceFrames(sc)}
	cfg, err := MuxConfig(DefaultYamuxConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	counter := func(side int) *MuxLog {
		return NewMuxLog(nil, func(ev MuxEvent) {
			n, _ := e.events[side].LoadOrStore(ev.Kind, new(atomic.Int64))
			n.(*atomic.Int64).Add(1)
		})
	}
	ccfg := *cfg
	ccfg.StreamCloseTimeout = closeTimeout
	ccfg.Logger = counter(onClient)
	scfg := *cfg
	scfg.Logger = counter(onServer)
	if e.client, err = yamux.Client(e.clientOut, &ccfg); err != nil {
		t.Fatal(err)
	}
	if e.server, err = yamux.Server(e.serverOut, &scfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.client.Close(); e.server.Close() })
	return e
}

func (e *muxEnds) count(side int, k MuxEventKind) int64 {
	if n, ok := e.events[side].Load(k); ok {
		return n.(*atomic.Int64).Load()
	}
	return 0
}

// open opens a stream from the client and accepts it on the server.
func (e *muxEnds) open(t *testing.T) (client *Stream, server *yamux.Stream) {
	t.Helper()
	st, err := e.client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte{1}); err != nil { // the server accepts on the first frame
		t.Fatal(err)
	}
	server, err = e.server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	return NewStream(st, e.clientOut), server
}

// settled checks that, within d, no stream is left on either side, and
// that neither side saw a frame for a stream it no longer has.
func (e *muxEnds) settled(t *testing.T, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for e.client.NumStreams() != 0 || e.server.NumStreams() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("streams left after %v: client %d, server %d", d, e.client.NumStreams(), e.server.NumStreams())
		}
		time.Sleep(10 * time.Millisecond) // polling yamux's stream table, not synchronising
	}
	e.roundTrip(t)
	for side, name := range []string{"client", "server"} {
		if n := e.count(side, MuxUnknownStream); n != 0 {
			t.Errorf("the %s saw %d frames for a missing stream, want 0", name, n)
		}
	}
}

// roundTrip sends a byte each way on a fresh stream. Frames are ordered on
// the connection, so whatever was sent before it has been handled by then.
func (e *muxEnds) roundTrip(t *testing.T) {
	t.Helper()
	c, s := e.open(t)
	if _, err := s.Write([]byte{2}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	if _, err := io.Copy(io.Discard, s); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// writeUntilError writes to st until a write fails, at most for d, and
// returns the bytes written and the error.
func writeUntilError(st *yamux.Stream, d time.Duration) (int64, error) {
	buf := make([]byte, 32<<10)
	var n int64
	_ = st.SetWriteDeadline(time.Now().Add(d))
	for {
		w, err := st.Write(buf)
		n += int64(w)
		if err != nil {
			return n, err
		}
	}
}

// TestStreamCloseResetsPeer: closing a stream whose peer is still sending
// resets it, so the peer's writes fail at once instead of filling the
// window and waiting for StreamCloseTimeout; yamux's own reset, when the
// close times out, is not sent again.
func TestStreamCloseResetsPeer(t *testing.T) {
	const closeTimeout = 300 * time.Millisecond
	e := newMuxEnds(t, closeTimeout)
	c, s := e.open(t)
	type result struct {
		err error
		n   int64
	}
	done := make(chan result, 1)
	go func() {
		n, err := writeUntilError(s, 10*time.Second)
		done <- result{err, n}
	}()
	if _, err := io.ReadFull(c, make([]byte, 64<<10)); err != nil { // it is flowing
		t.Fatal(err)
	}
	start := time.Now()
	c.Close()
	r := <-done
	t.Logf("the sender stopped %v after the close, with %v, %d KiB written in all", time.Since(start).Round(time.Millisecond), r.err, r.n>>10)
	if !errors.Is(r.err, yamux.ErrConnectionReset) {
		t.Fatalf("the sender's write ended with %v, want %v (a half-close lets it fill the window and wait)", r.err, yamux.ErrConnectionReset)
	}
	s.Close()
	// The client's yamux resets the stream itself when its close times
	// out; the server must not see that second reset.
	time.Sleep(2 * closeTimeout) // lets the close time out: the thing under test is a timer
	e.roundTrip(t)
	if n := e.count(onServer, MuxUnknownStream); n != 0 {
		t.Errorf("the server saw %d frames for a missing stream, want 0 (a second reset)", n)
	}
}

// TestStreamResetAnswered: when both ends wrap their streams, the reset
// peer answers with a reset when it closes, and the stream is gone from
// both sessions at once, not after the close timeout; neither sees a frame
// for a stream it no longer has.
func TestStreamResetAnswered(t *testing.T) {
	e := newMuxEnds(t, time.Minute)
	c, raw := e.open(t)
	s := NewStream(raw, e.serverOut)
	done := make(chan error, 1)
	go func() { // the agent's side of an abandoned download
		buf := make([]byte, 32<<10)
		for {
			if _, err := s.Write(buf); err != nil {
				s.Close()
				done <- err
				return
			}
		}
	}()
	if _, err := io.ReadFull(c, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-done; !errors.Is(err, yamux.ErrConnectionReset) {
		t.Fatalf("the sender's write ended with %v, want %v", err, yamux.ErrConnectionReset)
	}
	e.settled(t, 5*time.Second) // the close timeout is a minute
}

// TestStreamCloseAfterPeerEnded: a stream whose peer has ended its side,
// or that is only half-closed, is not reset.
func TestStreamCloseAfterPeerEnded(t *testing.T) {
	e := newMuxEnds(t, time.Minute)
	c, s := e.open(t)
	// The client half-closes and the server still answers.
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, s); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("answer")); err != nil {
		t.Fatalf("write after the peer's half-close: %v", err)
	}
	s.Close()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "answer" {
		t.Fatalf("read %q, %v; want the answer and EOF", b, err)
	}
	c.Close() // the peer ended its side: no reset

	// The server answers and closes; the client reads the answer but not
	// up to the EOF (as an HTTP client reads a response's body) and closes:
	// the server's FIN has arrived, so no reset, and no answer to one.
	c, raw := e.open(t)
	s2 := NewStream(raw, e.serverOut)
	if _, err := s2.Write([]byte("answer")); err != nil {
		t.Fatal(err)
	}
	if err := s2.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, len("answer"))); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for { // wait for the FIN to arrive at the client
		if clientSawFIN(c) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server's FIN did not arrive")
		}
		time.Sleep(5 * time.Millisecond) // polling the stream's state, not synchronising
	}
	c.Close()
	if _, err := io.Copy(io.Discard, s2); err != nil {
		t.Fatalf("the server read %v after the client's close, want EOF (a reset?)", err)
	}
	s2.Close()
	e.roundTrip(t)
	for side, name := range []string{"client", "server"} {
		if n := e.count(side, MuxUnknownStream); n != 0 {
			t.Errorf("the %s saw %d frames for a missing stream, want 0 (a reset after the peer had closed)", name, n)
		}
	}
	if e.client.NumStreams() != 0 || e.server.NumStreams() != 0 {
		t.Errorf("streams left: client %d, server %d", e.client.NumStreams(), e.server.NumStreams())
	}
}

// clientSawFIN reports whether c's peer has closed its side, without
// reading past what c's reader would get: a read that would wait times out.
func clientSawFIN(c *Stream) bool {
	_ = c.Stream.SetReadDeadline(time.Now().Add(-time.Second))
	defer c.Stream.SetReadDeadline(time.Time{})
	_, err := c.Stream.Read(nil)
	return errors.Is(err, io.EOF)
}

// TestStreamResetsBesideTraffic resets many streams from several goroutines
// while yamux writes other streams' frames: a reset never lands inside a
// frame (the session would end with a protocol error), every reset stream's
// sender stops, and the streams left alone carry their bytes intact.
func TestStreamResetsBesideTraffic(t *testing.T) {
	e := newMuxEnds(t, time.Minute)
	const (
		resetN = 64
		keptN  = 4
		keptSz = 4 << 20
	)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, resetN+2*keptN)
	// Streams the client keeps: it writes keptSz bytes, the server counts them.
	for range keptN {
		c, s := e.open(t)
		wg.Add(2)
		go func() {
			defer wg.Done()
			buf := make([]byte, 8<<10) // small frames: many chances to interleave
			for sent := 0; sent < keptSz; sent += len(buf) {
				if _, err := c.Write(buf); err != nil {
					errs <- fmt.Errorf("kept stream write: %w", err)
					return
				}
			}
			c.CloseWrite()
		}()
		go func() {
			defer wg.Done()
			n, err := io.Copy(io.Discard, s)
			if err != nil || n != keptSz {
				errs <- fmt.Errorf("kept stream: server read %d bytes, %v; want %d", n, err, keptSz)
			}
			s.Close()
		}()
	}
	// Streams the server floods and the client resets.
	for range resetN {
		c, s := e.open(t)
		wg.Add(2)
		go func() {
			defer wg.Done()
			if _, err := writeUntilError(s, 20*time.Second); !errors.Is(err, yamux.ErrConnectionReset) {
				errs <- fmt.Errorf("flooding stream ended with %v, want a reset", err)
			}
			s.Close()
		}()
		go func() {
			defer wg.Done()
			_, _ = io.ReadFull(c, make([]byte, 1))
			c.Close()
		}()
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-ctx.Done():
		t.Fatal("streams still running after 30 s")
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if e.server.IsClosed() || e.client.IsClosed() {
		t.Fatal("a session ended: a reset corrupted a frame")
	}
	e.roundTrip(t)
	if n := e.count(onServer, MuxProtocolError); n != 0 {
		t.Errorf("%d protocol errors on the server", n)
	}
}

// TestStreamShortExchanges runs many exchanges the way a request with
// "Connection: close" goes, both ends wrapped: the server answers and
// closes its side while the client, which read the answer but not up to
// the EOF, closes, sometimes before the server's FIN has arrived and
// sometimes after. Whatever the order, no side ever gets a frame for a
// stream it no longer has (the gateway counts those against the agent),
// and no stream is left behind.
func TestStreamShortExchanges(t *testing.T) {
	e := newMuxEnds(t, time.Minute)
	const n = 300
	var wg sync.WaitGroup
	for i := range n {
		c, raw := e.open(t)
		s := NewStream(raw, e.serverOut)
		wg.Add(2)
		go func() { // the agent: answer, end its side, then wait for the gateway's end
			defer wg.Done()
			_, _ = s.Write([]byte("answer"))
			_ = s.CloseWrite()
			_, _ = io.Copy(io.Discard, s)
			s.Close()
		}()
		go func() { // the gateway: read the answer, close at once or a little later
			defer wg.Done()
			_, _ = io.ReadFull(c, make([]byte, len("answer")))
			if i%3 == 0 {
				time.Sleep(time.Millisecond) // lets the FIN arrive first, in some
			}
			c.Close()
		}()
	}
	wg.Wait()
	e.settled(t, 10*time.Second)
}
