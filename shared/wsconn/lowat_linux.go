package wsconn

import (
	"net"

	"golang.org/x/sys/unix"
)

// SetNotSentLowat bounds the bytes a TCP connection's kernel send buffer
// holds beyond what is on the wire (TCP_NOTSENT_LOWAT). Under a multiplexed
// tunnel this is what keeps one bulk stream from queueing megabytes in the
// kernel ahead of every other stream's frames: the writer blocks instead,
// and the multiplexer, which interleaves streams, holds the queue. Only TCP
// connections are changed (found under TLS and this package's buffering);
// it is a no-op on others and off Linux.
func SetNotSentLowat(c net.Conn, bytes int) error {
	tc := tcpConn(c)
	if tc == nil {
		return nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, bytes)
	}); err != nil {
		return err
	}
	return serr
}

// tcpConn finds the TCP connection under c's wrappers, or nil.
func tcpConn(c net.Conn) *net.TCPConn {
	for range 8 { // wrappers nest a few deep at most
		switch v := c.(type) {
		case *net.TCPConn:
			return v
		case *bufferedConn:
			c = v.Conn
		case interface{ NetConn() net.Conn }: // *tls.Conn
			c = v.NetConn()
		default:
			return nil
		}
	}
	return nil
}
