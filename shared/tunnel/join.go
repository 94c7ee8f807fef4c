package tunnel

import (
	"errors"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Join relays between a and b in both directions, each with CopyAdaptive,
// until both directions have ended, then closes a and b. It blocks: one
// direction runs on the caller's goroutine and the other on a goroutine Join
// starts and waits for, so when Join returns nothing of it is left running.
// The agent joins each stream to its target with it, the gateway each
// upgraded visitor connection (WebSocket) to its upstream.
//
// A clean end of one direction (EOF from its source) is passed on as a
// half-close of its destination, so protocols that close their sending side
// and then wait for an answer still get it: CloseWrite where the connection
// has one (TCP, TLS, the gateway's tunnel streams), Close on a *yamux.Stream
// (which sends FIN and keeps reading). A destination that can do neither, and
// an error in either direction, abort both connections: their deadlines are
// set in the past, so that the other direction stops even where Close alone
// would not stop a read (a yamux stream's Close is only a half-close), and
// both are closed.
//
// To end a Join from outside, do the same to either connection: set its
// deadline in the past and close it.
func Join(a, b net.Conn) {
	var once sync.Once
	closeBoth := func(abort bool) {
		once.Do(func() {
			if abort {
				_ = a.SetDeadline(expired)
				_ = b.SetDeadline(expired)
			}
			_ = a.Close()
			_ = b.Close()
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if relay(b, a) != nil {
			closeBoth(true)
		}
	}()
	if relay(a, b) != nil {
		closeBoth(true)
	}
	<-done
	closeBoth(false)
}

// expired is a deadline in the past: setting it makes a connection's
// blocked and future reads and writes fail at once.
var expired = time.Unix(1, 0)

// relay copies src to dst and, at src's EOF, half-closes dst.
func relay(dst, src net.Conn) error {
	if _, err := CopyAdaptive(dst, src); err != nil {
		return err
	}
	return closeWrite(dst)
}

var errNoHalfClose = errors.New("connection cannot be half-closed")

func closeWrite(c net.Conn) error {
	switch c := c.(type) {
	case interface{ CloseWrite() error }:
		return c.CloseWrite()
	case *yamux.Stream:
		return c.Close()
	}
	return errNoHalfClose
}
