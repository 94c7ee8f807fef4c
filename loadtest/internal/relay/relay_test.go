package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/testenv"
)

func TestMain(m *testing.M) {
	// The test binary doubles as the relay process of TestProcess: the
	// spec is its last argument, as Start passes it.
	if os.Getenv("LOADTEST_TEST_RELAY") == "1" {
		os.Exit(relayMain(os.Args[len(os.Args)-1]))
	}
	testenv.MainNoLeaks(m, nil)
}

func relayMain(spec string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stdin, err := Stdin()
	if err == nil {
		err = RunProcess(ctx, spec, stdin, os.Stdout, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t testing.TB) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		d.Close()
		t.Fatal(r.err)
	}
	t.Cleanup(func() { d.Close(); r.c.Close() })
	return d.(*net.TCPConn), r.c.(*net.TCPConn)
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// readAll reads c to EOF, within a deadline.
func readAll(c net.Conn) ([]byte, error) {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	return io.ReadAll(c)
}

// startPipe runs Pipe(a, b) and returns where its error will arrive; the
// test's end closes both and waits for Pipe.
func startPipe(t *testing.T, a, b net.Conn) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		done <- Pipe(a, b)
	}()
	t.Cleanup(func() {
		a.Close()
		b.Close()
		<-finished
	})
	return done
}

func waitPipe(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Pipe did not return")
		return nil
	}
}

// TestPipeBothWaysAndHalfClose: client <-> (c2 Pipe d1) <-> server. Both
// send more than a buffer at once; the client's half-close reaches the
// server while the server can still answer, and the server's reaches the
// client.
func TestPipeBothWaysAndHalfClose(t *testing.T) {
	client, c2 := tcpPair(t)
	d1, server := tcpPair(t)
	done := startPipe(t, c2, d1)

	up := randomBytes(t, 3*BufSize+123)
	down := randomBytes(t, 2*BufSize+7)
	var wg sync.WaitGroup
	var gotDown []byte
	var errUp, errDown error
	wg.Go(func() {
		if _, err := client.Write(up); err != nil {
			errUp = err
			return
		}
		errUp = client.CloseWrite()
	})
	wg.Go(func() { gotDown, errDown = readAll(client) })
	// The server reads the whole request and its EOF first, and only then
	// answers: the connection is half-closed all the while.
	serverUp, err := readAll(server)
	if err != nil {
		t.Fatalf("server read: %v", err)
	}
	if !bytes.Equal(serverUp, up) {
		t.Fatalf("server got %d bytes, want the %d sent", len(serverUp), len(up))
	}
	if _, err := server.Write(down); err != nil {
		t.Fatalf("answer after the client's half-close: %v", err)
	}
	if err := server.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if errUp != nil || errDown != nil {
		t.Fatalf("client write %v, read %v", errUp, errDown)
	}
	if !bytes.Equal(gotDown, down) {
		t.Fatalf("client got %d bytes, want %d", len(gotDown), len(down))
	}
	if err := waitPipe(t, done); err != nil {
		t.Fatalf("Pipe after two clean half-closes: %v", err)
	}
	for _, c := range []net.Conn{c2, d1} {
		if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Pipe left %v open: write %v", c.LocalAddr(), err)
		}
	}
}

// TestPipeClosesBothOnError: a reset on either side closes both, and the
// peer on the other side sees its connection end.
func TestPipeClosesBothOnError(t *testing.T) {
	for _, resetClient := range []bool{true, false} {
		t.Run(fmt.Sprintf("reset client %v", resetClient), func(t *testing.T) {
			client, c2 := tcpPair(t)
			d1, server := tcpPair(t)
			done := startPipe(t, c2, d1)
			// Some traffic first, so both directions are in their loop.
			if _, err := client.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(server, buf); err != nil {
				t.Fatal(err)
			}
			victim, other := client, server
			if !resetClient {
				victim, other = server, client
			}
			if err := victim.SetLinger(0); err != nil { // Close sends a reset
				t.Fatal(err)
			}
			victim.Close()
			if err := waitPipe(t, done); err == nil {
				t.Fatal("Pipe after a reset returned no error")
			}
			if b, err := readAll(other); err != nil && !errors.Is(err, syscall.ECONNRESET) || len(b) != 0 {
				t.Fatalf("the other peer read %q, %v; want its connection closed", b, err)
			}
			for _, c := range []net.Conn{c2, d1} {
				if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
					t.Fatalf("Pipe left %v open: write %v", c.LocalAddr(), err)
				}
			}
		})
	}
}

// echoServer echoes every connection until its EOF, then half-closes.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				// Hidden behind plain interfaces: no splice.
				if _, err := io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c}); err == nil {
					_ = c.(*net.TCPConn).CloseWrite()
					_, _ = io.Copy(io.Discard, c)
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// chain starts two relays in this process: A -> B -> target. It returns
// A's address and a function that stops both and returns Serve's errors.
func chain(t *testing.T, target string) (string, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		r, err := New(ln, target, nil)
		if err != nil {
			t.Fatal(err)
		}
		go func() { errs <- r.Serve(ctx) }()
		target = r.Addr().String()
	}
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return errors.Join(<-errs, <-errs)
	}
	t.Cleanup(func() { _ = stop() })
	return target, stop
}

// echo sends msg to addr, half-closes, and returns what comes back.
func echo(addr string, msg []byte) ([]byte, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		if _, err := c.Write(msg); err == nil {
			_ = c.(*net.TCPConn).CloseWrite()
		}
	})
	return readAll(c)
}

func TestRelayChain(t *testing.T) {
	addr, stop := chain(t, echoServer(t))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		msg := randomBytes(t, (i+1)*100_000)
		wg.Go(func() {
			got, err := echo(addr, msg)
			if err != nil || !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("conn %d: echoed %d of %d bytes, %v", i, len(got), len(msg), err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// A connection still open when the relays stop is closed.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if b, err := readAll(c); len(b) != 0 || err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after the relays stopped: read %q, %v", b, err)
	}
}

func TestUnreachableTargetClosesTheConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	addr, _ := chain(t, dead)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if b, err := readAll(c); len(b) != 0 || err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read %q, %v; want the connection closed", b, err)
	}
}

func TestLoopbackOnly(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:80": true, "127.1.2.3:0": true, "[::1]:8080": true,
		"0.0.0.0:80": false, "10.1.2.3:80": false, "localhost:80": false, "127.0.0.1": false, "": false,
	} {
		if err := CheckLoopback(addr); (err == nil) != ok {
			t.Errorf("CheckLoopback(%q) = %v, want ok %v", addr, err, ok)
		}
	}
	for spec, ok := range map[string]bool{
		"127.0.0.1:0,127.0.0.1:80": true,
		"127.0.0.1:0":              false,
		"0.0.0.0:0,127.0.0.1:80":   false,
		"127.0.0.1:0,192.0.2.1:80": false,
	} {
		if _, _, err := ParseSpec(spec); (err == nil) != ok {
			t.Errorf("ParseSpec(%q) = %v, want ok %v", spec, err, ok)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := New(ln, "192.0.2.1:80", nil); !errors.Is(err, ErrNotLoopback) {
		t.Fatalf("New to a remote target: %v", err)
	}
}

// addrWriter hands the first line written to it over a channel.
type addrWriter chan string

func (w addrWriter) Write(b []byte) (int, error) {
	w <- strings.TrimSpace(string(b))
	return len(b), nil
}

// TestRunProcessStops: a relay process's body ends, with every goroutine,
// when its stdin ends and when its context does (its stdin still open).
func TestRunProcessStops(t *testing.T) {
	upstream := echoServer(t)
	for _, how := range []string{"stdin closed", "signal"} {
		t.Run(how, func(t *testing.T) {
			inR, inW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer inR.Close()
			defer inW.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			addrs := make(addrWriter, 1)
			done := make(chan error, 1)
			go func() { done <- RunProcess(ctx, Spec("127.0.0.1:0", upstream), inR, addrs, nil) }()
			var addr string
			select {
			case addr = <-addrs:
			case err := <-done:
				t.Fatalf("RunProcess: %v", err)
			}
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("hi")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
				t.Fatal(err)
			}
			if how == "signal" {
				cancel()
			} else {
				inW.Close()
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("RunProcess: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("RunProcess did not return")
			}
		})
	}
	t.Run("stdin that cannot be interrupted", func(t *testing.T) {
		f, err := os.CreateTemp(t.TempDir(), "stdin")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := RunProcess(context.Background(), Spec("127.0.0.1:0", upstream), f, io.Discard, nil); err == nil {
			t.Fatal("a regular file as stdin accepted")
		}
	})
}

// TestProcess runs relays as processes (this test binary), as the suite
// does: a chain of two, then one stopped by SIGTERM.
func TestProcess(t *testing.T) {
	t.Setenv("LOADTEST_TEST_RELAY", "1")
	cmd := []string{os.Args[0]}
	b, err := Start(cmd, echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	a, err := Start(cmd, b.Addr())
	if err != nil {
		b.Close()
		t.Fatal(err)
	}
	msg := randomBytes(t, 1<<20)
	got, err := echo(a.Addr(), msg)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("through two relay processes: %d of %d bytes, %v", len(got), len(msg), err)
	}
	for _, p := range []*Process{a, b} {
		if err := p.Close(); err != nil {
			t.Fatalf("relay exit: %v", err)
		}
	}

	p, err := Start(cmd, "127.0.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(p.Pid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("relay ignored SIGTERM")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}

	if _, err := Start(cmd, "192.0.2.1:80"); !errors.Is(err, ErrNotLoopback) {
		t.Fatalf("Start to a remote target: %v", err)
	}
	if _, err := Start([]string{"sh", "-c", "exit 3"}, "127.0.0.1:9"); err == nil || !strings.Contains(err.Error(), "no address") {
		t.Fatalf("a process that prints no address: %v", err)
	}
}

// BenchmarkPipe is one relay's throughput over loopback.
func BenchmarkPipe(b *testing.B) {
	client, c2 := tcpPair(b)
	d1, server := tcpPair(b)
	done := make(chan error, 1)
	go func() { done <- Pipe(c2, d1) }()
	chunk := make([]byte, 1<<20)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		_, _ = io.Copy(io.Discard, server)
	}()
	for b.Loop() {
		if _, err := client.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	client.CloseWrite()
	<-drained
	server.Close()
	<-done
}
