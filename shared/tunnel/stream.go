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
// already ended its side (a read returned EOF), and a Stream the peer reset
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
func (s *Stream) CloseWrite() error { return s.Stream.Close() }

// Close ends the stream: a reset unless the peer has ended its side, the
// answer to the peer's reset, or yamux's close when both sides are done.
func (s *Stream) Close() error {
	if s.closed.CompareAndSwap(false, true) {
		switch {
		case s.peerReset.Load():
			s.frames.ResetStream(s.StreamID(), true)
		case !s.peerEOF.Load():
			s.frames.ResetStream(s.StreamID(), false)
		}
	}
	return s.Stream.Close()
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
