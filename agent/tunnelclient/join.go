package tunnelclient

import (
	"net"
	"sync"

	"github.com/pipeops/tunnel/shared/tunnel"
)

// join copies between a stream and its target until both directions end.
// A clean end of one direction is passed on as a half-close (the stream's
// Close sends FIN; the target's CloseWrite shuts its write side), so
// request/response protocols that close their sending side still get their
// answer. An error in either direction aborts both.
func join(stream net.Conn, target net.Conn) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			stream.Close()
			target.Close()
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := tunnel.CopyAdaptive(target, stream); err != nil {
			abort()
			return
		}
		if cw, ok := target.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			abort()
		}
	}()
	if _, err := tunnel.CopyAdaptive(stream, target); err != nil {
		abort()
	} else {
		_ = stream.Close() // FIN: the gateway reads EOF; its writes still arrive
	}
	<-done
	abort()
}
