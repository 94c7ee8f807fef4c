package wsconn

import (
	"crypto/tls"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSetNotSentLowat sets the option through the wrappers a tunnel's
// connection has (TLS over this package's buffering over TCP) and reads it
// back from the socket.
func TestSetNotSentLowat(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	get := func() int {
		sc, err := raw.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var gerr error
		_ = sc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT) })
		if gerr != nil {
			t.Fatal(gerr)
		}
		return v
	}
	wrapped := tls.Client(Buffered(raw), &tls.Config{ServerName: "x"})
	for _, tc := range []struct {
		name string
		c    net.Conn
		want int
	}{{"tcp", raw, 64 << 10}, {"tls over buffered", wrapped, 128 << 10}} {
		if err := SetNotSentLowat(tc.c, tc.want); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := get(); got != tc.want {
			t.Errorf("%s: TCP_NOTSENT_LOWAT = %d, want %d", tc.name, got, tc.want)
		}
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if err := SetNotSentLowat(a, 1); err != nil {
		t.Errorf("a connection without TCP under it: %v, want a no-op", err)
	}
}
