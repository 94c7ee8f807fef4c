package tunnel

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/goleak"
)

// leakCheck fails t if goroutines it started outlive it and its cleanups
// (registered first, it runs last).
func leakCheck(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		ch <- accepted{c, err}
	}()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a := <-ch
	if a.err != nil {
		t.Fatal(a.err)
	}
	t.Cleanup(func() { c1.Close(); a.c.Close() })
	return c1, a.c
}

// yamuxPair returns both ends of one yamux stream, over loopback TCP.
func yamuxPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	c1, c2 := tcpPair(t)
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	client, err := yamux.Client(c1, cfg)
	if err != nil {
		t.Fatal(err)
	}
	server, err := yamux.Server(c2, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	s1, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s1.Write([]byte{0}); err != nil { // the SYN goes with the first write
		t.Fatal(err)
	}
	s2, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(s2, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	return s1, s2
}

// pipePair is a connection that cannot be half-closed.
func pipePair(t *testing.T) (net.Conn, net.Conn) {
	c1, c2 := net.Pipe()
	t.Cleanup(func() { c1.Close(); c2.Close() })
	return c1, c2
}

type pairFunc func(*testing.T) (net.Conn, net.Conn)

// joined sets up client <-> a  Join  b <-> server, with a and b from the
// given kinds of connection, and returns client and server and a channel
// closed when Join has returned.
func joined(t *testing.T, left, right pairFunc) (client, server net.Conn, done <-chan struct{}) {
	t.Helper()
	client, a := left(t)
	b, server := right(t)
	ch := make(chan struct{})
	go func() { defer close(ch); Join(a, b) }()
	t.Cleanup(func() {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Error("Join did not return")
		}
	})
	return client, server, ch
}

func closeWriteOf(t *testing.T, c net.Conn) {
	t.Helper()
	var err error
	switch c := c.(type) {
	case interface{ CloseWrite() error }:
		err = c.CloseWrite()
	case *yamux.Stream:
		err = c.Close()
	default:
		t.Fatalf("%T cannot be half-closed", c)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func waitJoin(t *testing.T, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Join did not return")
	}
}

// Data crosses in both directions at once (more than CopyAdaptive's small
// buffer), and each side's half-close reaches the other while the opposite
// direction keeps flowing.
func TestJoinHalfClose(t *testing.T) {
	leakCheck(t)
	kinds := []struct {
		name        string
		left, right pairFunc
	}{
		{"tcp to tcp", tcpPair, tcpPair},
		{"yamux stream to tcp", yamuxPair, tcpPair}, // the agent
		{"tcp to yamux stream", tcpPair, yamuxPair},
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			client, server, done := joined(t, k.left, k.right)
			up := bytes.Repeat([]byte("up"), 300<<10)
			down := bytes.Repeat([]byte("dn"), 200<<10)
			// The client sends and half-closes; the server reads to EOF,
			// then answers and closes; the client reads the answer to EOF.
			serverGot := make(chan []byte, 1)
			go func() {
				b, _ := io.ReadAll(server)
				serverGot <- b
				_, _ = server.Write(down)
				server.Close()
			}()
			if _, err := client.Write(up); err != nil {
				t.Fatal(err)
			}
			closeWriteOf(t, client)
			select {
			case b := <-serverGot:
				if !bytes.Equal(b, up) {
					t.Fatalf("server read %d bytes, want %d", len(b), len(up))
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the client's half-close did not reach the server")
			}
			_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
			b, err := io.ReadAll(client)
			if err != nil || !bytes.Equal(b, down) {
				t.Fatalf("client read %d bytes (%v), want %d", len(b), err, len(down))
			}
			waitJoin(t, done)
		})
	}
}

// An error in one direction ends both, even where the other direction is
// blocked reading a yamux stream, whose Close alone would not stop it.
func TestJoinErrorAbortsBoth(t *testing.T) {
	leakCheck(t)
	for _, k := range []struct {
		name        string
		left, right pairFunc
	}{
		{"tcp to tcp", tcpPair, tcpPair},
		{"yamux stream to tcp", yamuxPair, tcpPair},
	} {
		t.Run(k.name, func(t *testing.T) {
			client, server, done := joined(t, k.left, k.right)
			// A reset, not a clean close: the copy from server fails.
			_ = server.(*net.TCPConn).SetLinger(0)
			server.Close()
			waitJoin(t, done)
			_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := client.Read(make([]byte, 1)); err == nil {
				t.Fatal("the client's side is still open")
			} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("the client's side was not closed")
			}
		})
	}
}

// A clean end toward a connection that cannot be half-closed closes both.
func TestJoinNoHalfClose(t *testing.T) {
	leakCheck(t)
	client, server, done := joined(t, tcpPair, pipePair)
	go func() { _, _ = io.Copy(io.Discard, server) }()
	if _, err := client.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	closeWriteOf(t, client)
	waitJoin(t, done)
}

// Setting a deadline in the past on one connection and closing it, as the
// gateway does when it shuts down, ends the Join.
func TestJoinEndedFromOutside(t *testing.T) {
	leakCheck(t)
	client, a := yamuxPair(t)
	b, _ := tcpPair(t)
	done := make(chan struct{})
	go func() { defer close(done); Join(a, b) }()
	_ = a.SetDeadline(expired)
	a.Close()
	waitJoin(t, done)
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the stream's peer should read EOF, got %v", err)
	}
}
