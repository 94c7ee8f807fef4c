package tunnel

import (
	"encoding/binary"
	"net"
)

// yamux frame header layout (hashicorp/yamux): version u8, type u8, flags
// u16, stream id u32, length u32. For data frames the length is the size of
// the body that follows; for the other types it is not a body size.
const (
	muxHeaderSize = 12
	muxTypeData   = 0

	maxRetainedFrame = 1 << 20
)

// CoalesceFrames wraps conn, a message-oriented connection such as a
// WebSocket adapter where every Write becomes one message, so that yamux
// writes each frame as ONE Write. yamux's send loop writes a data frame's
// 12-byte header and its body in two calls; on a WebSocket that doubles the
// messages (and their framing and syscalls) on the hot path. See the
// benchmarks in shared/tunnel and docs/performance.md for what it saves.
//
// The returned conn must only be written by one goroutine at a time (yamux
// has one sender). Reads, deadlines and Close pass through.
func CoalesceFrames(conn net.Conn) net.Conn {
	return &frameCoalescer{Conn: conn}
}

type frameCoalescer struct {
	net.Conn
	buf  []byte // a data frame's header and the part of its body seen so far
	need int    // body bytes still to come for the frame in buf
}

func (c *frameCoalescer) Write(p []byte) (int, error) {
	if c.need == 0 {
		if len(p) == muxHeaderSize && p[1] == muxTypeData {
			if n := binary.BigEndian.Uint32(p[8:12]); n > 0 {
				c.buf = append(c.buf[:0], p...)
				c.need = int(n)
				return len(p), nil
			}
		}
		// A whole frame, or a frame without a body: nothing to join.
		return c.Conn.Write(p)
	}
	written := 0
	for len(p) > 0 && c.need > 0 {
		take := min(len(p), c.need)
		c.buf = append(c.buf, p[:take]...)
		c.need -= take
		p = p[take:]
		written += take
		if c.need == 0 {
			_, err := c.Conn.Write(c.buf)
			c.buf = c.buf[:0]
			if cap(c.buf) > maxRetainedFrame {
				c.buf = nil // one huge frame should not pin its buffer for the session's life
			}
			if err != nil {
				return written, err
			}
		}
	}
	if len(p) > 0 {
		n, err := c.Write(p)
		return written + n, err
	}
	return written, nil
}
