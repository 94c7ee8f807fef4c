package tunnel

import (
	"encoding/binary"
	"net"
	"sync"
	"time"
)

// yamux frame header layout (hashicorp/yamux): version u8, type u8, flags
// u16, stream id u32, length u32. For data frames the length is the size of
// the body that follows; for the other types it is not a body size.
const (
	muxHeaderSize       = 12
	muxTypeData         = 0
	muxTypeWindowUpdate = 1
	muxFlagFIN          = 0x4
	muxFlagRST          = 0x8

	maxRetainedFrame = 1 << 20
)

// CoalesceFrames wraps conn, a message-oriented connection such as a
// WebSocket adapter where every Write becomes one message, so that yamux
// writes each frame as ONE Write. yamux's send loop writes a data frame's
// 12-byte header and its body in two calls; on a WebSocket that doubles the
// messages (and their framing and syscalls) on the hot path. See the
// benchmarks in shared/tunnel and docs/performance.md for what it saves.
//
// Write is for yamux's one sender, Read for its one reader; ResetStream may
// be called from any goroutine. Reads (see OnPeerGoAway), deadlines and
// Close pass through.
func CoalesceFrames(conn net.Conn) *FrameConn {
	return &FrameConn{Conn: conn}
}

// FrameConn is the connection yamux writes its frames to (CoalesceFrames).
type FrameConn struct {
	net.Conn
	mu   sync.Mutex // held by the writer of a frame
	buf  []byte     // a data frame's header and the part of its body seen so far
	need int        // body bytes still to come for the frame in buf

	pmu     sync.Mutex
	pending []byte // frames of ResetStream not yet written
	// reset are the streams ResetStream reset for this side, with when.
	// yamux does not know of those resets: it still sends the stream's FIN
	// and, when the close times out, a reset of its own, which the peer,
	// whose stream is gone, would count as frames for a missing stream.
	// Write drops them.
	rmu   sync.Mutex
	reset map[uint32]time.Time
	// fin are the streams whose FIN a Stream's CloseWrite waits to see go
	// out (true once it has), guarded by rmu.
	fin map[uint32]bool
	// watch follows the frames read, for OnPeerGoAway; nil: not asked.
	watch *frameWatcher
}

// maxTrackedResets bounds FrameConn.reset: past it, entries older than
// twice StreamCloseTimeout (whose own reset never came, because the peer
// answered the reset and yamux forgot the stream) are dropped.
const maxTrackedResets = 1024

func (c *FrameConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	n, err := c.write(p)
	c.mu.Unlock()
	c.flushPending()
	return n, err
}

func (c *FrameConn) write(p []byte) (int, error) {
	if c.need == 0 {
		if len(p) == muxHeaderSize && p[1] == muxTypeData {
			if n := binary.BigEndian.Uint32(p[8:12]); n > 0 {
				c.buf = append(c.buf[:0], p...)
				c.need = int(n)
				return len(p), nil
			}
		}
		// A whole frame, or a frame without a body: nothing to join.
		if c.isAfterReset(p) {
			return len(p), nil // dropped
		}
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
		n, err := c.write(p)
		return written + n, err
	}
	return written, nil
}

// ResetStream sends the peer a reset (RST) of stream id, the frame yamux
// itself sends when a stream's close times out: the peer's stream ends at
// once, its reads and writes fail, and it sends no more data. hashicorp/
// yamux has no call for it. With ours, yamux's FIN and timeout reset of the
// stream are dropped: call it before closing the stream. With answer, it is
// the answer to the peer's reset of a stream yamux has already forgotten,
// which ends the peer's stream at once instead of at its close timeout.
//
// The frame goes between two of yamux's frames, never inside one; when
// yamux is in the middle of a frame it follows that frame, written by
// whichever of the two callers comes last, so ResetStream never waits for
// a frame it is not part of.
func (c *FrameConn) ResetStream(id uint32, answer bool) {
	var f [muxHeaderSize]byte
	f[1] = muxTypeWindowUpdate
	binary.BigEndian.PutUint16(f[2:4], muxFlagRST)
	binary.BigEndian.PutUint32(f[4:8], id)
	if !answer {
		c.track(id) // before yamux's FIN can pass
	}
	c.pmu.Lock()
	c.pending = append(c.pending, f[:]...)
	c.pmu.Unlock()
	c.flushPending()
}

// isAfterReset reports whether p is yamux's FIN or reset of a stream that
// ResetStream already reset; yamux's reset is its last frame for the
// stream, which is then forgotten.
func (c *FrameConn) isAfterReset(p []byte) bool {
	if len(p) != muxHeaderSize || p[1] != muxTypeWindowUpdate {
		return false
	}
	flags := binary.BigEndian.Uint16(p[2:4])
	if flags&(muxFlagFIN|muxFlagRST) == 0 {
		return false
	}
	id := binary.BigEndian.Uint32(p[4:8])
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if _, ok := c.reset[id]; !ok {
		if _, ok := c.fin[id]; ok && flags&muxFlagFIN != 0 {
			c.fin[id] = true // written: Write sends p on
		}
		return false
	}
	if flags&muxFlagRST != 0 {
		delete(c.reset, id)
	}
	return true
}

// flushPending writes the pending resets if no frame is being written and
// none is half done. Whoever finds the writer busy leaves them to it: the
// writer flushes after each Write.
func (c *FrameConn) flushPending() {
	for {
		c.pmu.Lock()
		empty := len(c.pending) == 0
		c.pmu.Unlock()
		if empty || !c.mu.TryLock() {
			return
		}
		if c.need > 0 {
			c.mu.Unlock() // the frame's body is still to come; its writer flushes
			return
		}
		c.pmu.Lock()
		p := c.pending
		c.pending = nil
		c.pmu.Unlock()
		var err error
		for ; len(p) > 0 && err == nil; p = p[muxHeaderSize:] {
			_, err = c.Conn.Write(p[:muxHeaderSize]) // one message per frame, as yamux's own
		}
		c.mu.Unlock()
		if err != nil {
			return // the connection is broken; yamux sees it on its next write
		}
	}
}

// track records stream id as reset by this side.
func (c *FrameConn) track(id uint32) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.reset == nil {
		c.reset = make(map[uint32]time.Time)
	}
	now := time.Now()
	if len(c.reset) >= maxTrackedResets {
		for old, at := range c.reset {
			if now.Sub(at) > 2*StreamCloseTimeout {
				delete(c.reset, old)
			}
		}
	}
	if len(c.reset) < 2*maxTrackedResets {
		c.reset[id] = now
	}
}

// watchFIN starts watching for stream id's FIN; finSent ends it and says
// whether the FIN went out in between.
func (c *FrameConn) watchFIN(id uint32) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.fin == nil {
		c.fin = make(map[uint32]bool)
	}
	c.fin[id] = false
}

func (c *FrameConn) finSent(id uint32) bool {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	sent := c.fin[id]
	delete(c.fin, id)
	return sent
}
