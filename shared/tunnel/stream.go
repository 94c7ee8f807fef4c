package tunnel

import (
	"errors"
	"io"
	"sync/atomic"

	"github.com/hashicorp/yamux"
)

// Stream is a yamux stream whose Close aborts it while the peer may still
// send. yamux's own Close only half-closes: the peer reads EOF and may go
// on writing, up to a whole stream window that nobody will read, before
// StreamCloseTimeout resets the stream. When the gateway drops a download
// its visitor abandoned, or the agent an upload its target stopped reading,
// that is megabytes on the tunnel's one TCP connection for nothing, and on
// a slow link every other stream waits behind them (eight abandoned
// downloads on a 10 Mbit/s link held small requests up for 26 s).
//
// So Close resets the stream (FrameConn.ResetStream) unless the peer has
// already ended its side (its FIN has arrived), and a Stream the peer reset
// answers with a reset when closed, which ends the peer's stream at once:
// otherwise the peer's yamux would keep it, and count it, until its close
// timed out. A peer without this answer (hashicorp/yamux alone, as PipeOps
// agents run it) keeps its stream until then, as it did before. CloseWrite
// is the half-close.
type Stream struct {
	*yamux.Stream
	frames    *FrameConn
	peerEOF   atomic.Bool // a read returned EOF: the peer ended its side
	peerReset atomic.Bool // a read or write failed with the peer's reset
	sentFIN   atomic.Bool // CloseWrite: the peer removes its stream on our FIN
	closed    atomic.Bool
}

// NewStream wraps st, a stream of a session written through frames.
func NewStream(st *yamux.Stream, frames *FrameConn) *Stream {
	return &Stream{Stream: st, frames: frames}
}

func (s *Stream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	if err != nil {
		s.noteEnd(err)
	}
	return n, err
}

func (s *Stream) Write(p []byte) (int, error) {
	n, err := s.Stream.Write(p)
	if err != nil {
		s.noteEnd(err)
	}
	return n, err
}

func (s *Stream) noteEnd(err error) {
	switch {
	case errors.Is(err, io.EOF):
		s.peerEOF.Store(true)
	case errors.Is(err, yamux.ErrConnectionReset):
		s.peerReset.Store(true)
	}
}

// CloseWrite half-closes the stream (yamux's Close): the peer reads EOF
// and may still answer.
func (s *Stream) CloseWrite() error {
	if s.sentFIN.Load() || s.closed.Load() {
		return s.Stream.Close() // sends nothing more
	}
	// yamux's close writes the FIN before it returns, or, when the peer's
	// reset came first, nothing; the peer then waits for our answer.
	s.frames.watchFIN(s.StreamID())
	err := s.Stream.Close()
	if s.frames.finSent(s.StreamID()) {
		s.sentFIN.Store(true)
	} else {
		s.peerReset.Store(true)
	}
	return err
}

// Close ends the stream: a reset unless the peer has ended its side, the
// answer to the peer's reset, or yamux's close when both sides are done.
// What the peer sent and nobody read is discarded. A reset is answered only
// when this side has not sent its FIN: a peer that gets our FIN forgets the
// stream (it had closed its own side to reset it), and an answer would then
// be a frame for a stream it no longer has.
func (s *Stream) Close() error {
	if s.closed.CompareAndSwap(false, true) {
		finished := s.peerFinished()
		switch {
		case s.peerReset.Load():
			if !s.sentFIN.Load() {
				s.frames.ResetStream(s.StreamID(), true)
			}
		case !finished:
			s.frames.ResetStream(s.StreamID(), false)
		}
	}
	return s.Stream.Close()
}

// peerFinished reports whether the peer has ended its side: its FIN has
// arrived, though nobody may have read up to it (an HTTP client that read
// a response's body and no further). It reads what is buffered, without
// waiting, up to the end or to where the peer has sent no more. A peer
// that has finished must not be reset: its stream may be gone once ours
// closes, and the answer to the reset would then be a frame for a stream
// this side no longer has.
func (s *Stream) peerFinished() bool {
	if s.peerEOF.Load() {
		return true
	}
	_ = s.Stream.SetReadDeadline(expired) // nothing waits: yamux answers from its buffer
	var buf []byte                        // nil: the first read only asks yamux for the stream's state
	for {
		n, err := s.Read(buf)
		switch {
		case err != nil:
			return errors.Is(err, io.EOF)
		case n == 0 && buf == nil:
			buf = make([]byte, 32<<10) // data is buffered: read through it
		}
	}
}

// Finish ends this side with yamux's close, a clean EOF for the peer, as
// when a stream is refused; a stream the peer reset is closed with the
// answer instead.
func (s *Stream) Finish() error {
	if s.peerReset.Load() {
		return s.Close()
	}
	return s.Stream.Close()
}
