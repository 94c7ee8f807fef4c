package tunnelclient

import (
	"errors"
	"io"
	"net"
	"sync"
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
		if err := copyAdaptive(target, stream); err != nil {
			abort()
			return
		}
		if cw, ok := target.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			abort()
		}
	}()
	if err := copyAdaptive(stream, target); err != nil {
		abort()
	} else {
		_ = stream.Close() // FIN: the gateway reads EOF; its writes still arrive
	}
	<-done
	abort()
}

// Buffers: a small one per direction while a stream is idle or chatty, a
// large pooled one once a read fills the small one (bulk transfer). Idle
// streams are the many, so they must be cheap; bulk ones are the few.
const (
	smallBuf = 2 << 10
	largeBuf = 256 << 10
)

var largeBufs = sync.Pool{New: func() any { b := make([]byte, largeBuf); return &b }}

// copyAdaptive copies src to dst until EOF (returned as nil).
func copyAdaptive(dst io.Writer, src io.Reader) error {
	buf := make([]byte, smallBuf)
	var large *[]byte
	defer func() {
		if large != nil {
			largeBufs.Put(large)
		}
	}()
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
			if n == len(buf) && large == nil {
				large = largeBufs.Get().(*[]byte)
				buf = *large
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return nil
			}
			return rerr
		}
	}
}
