package tunnel

import "encoding/binary"

// muxTypeGoAway is yamux's go-away frame: the sender opens no more streams
// and accepts none.
const muxTypeGoAway = 3

// frameWatcher follows the frames of a yamux byte stream, read in pieces
// of any size, and calls onGoAway for each go-away frame. It only looks at
// frame headers: a data frame's body is skipped by its length. It decodes
// what the peer sends, so it never fails: a stream that is not yamux makes
// yamux itself fail, and the watcher sees nothing useful until then.
type frameWatcher struct {
	hdr      [muxHeaderSize]byte
	have     int    // header bytes collected
	body     uint32 // data frame body bytes still to skip
	onGoAway func()
}

func (w *frameWatcher) observe(b []byte) {
	for len(b) > 0 {
		if w.body > 0 {
			skip := min(uint32(len(b)), w.body)
			w.body -= skip
			b = b[skip:]
			continue
		}
		n := copy(w.hdr[w.have:], b)
		w.have += n
		b = b[n:]
		if w.have < muxHeaderSize {
			return
		}
		w.have = 0
		switch w.hdr[1] {
		case muxTypeData:
			w.body = binary.BigEndian.Uint32(w.hdr[8:12])
		case muxTypeGoAway:
			w.onGoAway()
		}
	}
}

// OnPeerGoAway makes Read call f (on the reading goroutine, so it must not
// block) each time the peer's yamux sends go-away: the peer is draining and
// opens or accepts no more streams, though those open go on. hashicorp/yamux
// keeps that to itself. Call it before the first Read.
func (c *FrameConn) OnPeerGoAway(f func()) {
	c.watch = &frameWatcher{onGoAway: f}
}

// Read reads from the connection, watching frames when OnPeerGoAway asked.
func (c *FrameConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.watch != nil && n > 0 {
		c.watch.observe(p[:n])
	}
	return n, err
}

// SendGoAway tells the peer that this side opens no more streams and asks
// it to open none (a yamux go-away, normal termination), without telling
// this side's yamux: unlike yamux's own GoAway, streams the peer opened
// before it read the go-away are still accepted and served rather than
// reset. A draining agent sends it, so that a request the gateway sent in
// that moment is not lost. It goes between two of yamux's frames, as
// ResetStream's do. Safe for concurrent use.
func (c *FrameConn) SendGoAway() {
	var f [muxHeaderSize]byte
	f[1] = muxTypeGoAway
	c.pmu.Lock()
	c.pending = append(c.pending, f[:]...)
	c.pmu.Unlock()
	c.flushPending()
}
