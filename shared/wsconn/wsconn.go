// Package wsconn turns a WebSocket into a net.Conn so that the code above it
// (yamux in our case) only ever sees a byte stream.
//
// BINARY messages carry that byte stream. TEXT messages carry out-of-band
// control messages: they are sent with [Conn.WriteText] and delivered to
// [Options.OnText] in the order they arrived relative to the binary bytes.
//
// The package exists because gorilla/websocket allows one reader and one
// writer at a time, while we have several writers (yamux's send loop plus
// whoever sends control messages) and need keepalive and size limits applied
// in one place.
package wsconn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/shared/ratelog"
)

const (
	defaultMaxTextSize   = 1 << 20
	defaultMaxBinarySize = 64 << 20

	// closeWait bounds how long Close tries to deliver the close frame. It is
	// short because a peer that cannot take a few bytes within it is not
	// going to read the frame anyway, and Close should not hang on it.
	closeWait = time.Second
)

var (
	// ErrClosed is returned by operations on a Conn that has been closed,
	// locally or because the connection ended. errors.Is(ErrClosed,
	// net.ErrClosed) holds, so code that checks for net.ErrClosed keeps
	// working.
	ErrClosed = fmt.Errorf("wsconn: %w", net.ErrClosed)

	// ErrTextTooLarge is returned when the peer sent a TEXT message larger
	// than Options.MaxTextSize. The connection is closed with code 1009.
	ErrTextTooLarge = errors.New("wsconn: text message too large")

	// ErrBinaryTooLarge is returned when the peer sent a BINARY message
	// larger than Options.MaxBinarySize. The connection is closed with code
	// 1009.
	ErrBinaryTooLarge = errors.New("wsconn: binary message too large")

	// ErrKeepaliveTimeout is returned when nothing was received from the
	// peer for Options.PingTimeout. The connection has been closed.
	ErrKeepaliveTimeout = errors.New("wsconn: keepalive timeout")
)

// Options configures a Conn. The zero value is usable: no keepalive, text
// messages dropped, default size limits.
type Options struct {
	// OnText receives the payload of every TEXT message. It is called
	// synchronously by the goroutine that is inside Read, so text and binary
	// data keep their order: everything sent before the text message has
	// already been returned by Read. It must return quickly (Read, and with it
	// pongs and keepalive, stalls while it runs) and must not call Read.
	// It may call Write, WriteText and Close. OnText owns msg.
	// Nil: text messages are dropped (logged at debug level, rate-limited).
	OnText func(msg []byte)

	// MaxTextSize bounds one TEXT message (default 1 MiB). A larger one is
	// refused: the connection is closed with code 1009 (message too big) and
	// Read returns ErrTextTooLarge.
	MaxTextSize int64

	// MaxBinarySize bounds one BINARY message (default 64 MiB). A larger one
	// is refused: close code 1009, and Read returns ErrBinaryTooLarge. The
	// limit is enforced as the message streams in, so Read may already have
	// returned the first MaxBinarySize bytes of the refused message.
	//
	// A message larger than both limits is rejected before its type is
	// known; Read then reports the error of the type with the larger limit.
	MaxBinarySize int64

	// PingInterval, when > 0, makes Conn send a WebSocket ping every
	// interval and close the connection (Read and Write then fail with
	// ErrKeepaliveTimeout) when nothing at all (no pong, no message, no ping)
	// has been received for PingTimeout (default 3*PingInterval).
	//
	// Incoming frames are only noticed while some goroutine is in Read, so a
	// Conn with keepalive needs a reader that never pauses for long; yamux's
	// receive loop is one.
	//
	// Pongs to the peer's pings are always sent, with or without PingInterval.
	PingInterval, PingTimeout time.Duration

	// Logger receives debug-level diagnostics. Nil discards them.
	Logger *slog.Logger
}

// Conn is a net.Conn over the BINARY messages of a WebSocket.
//
// Read returns the payload bytes of binary messages as one continuous byte
// stream: message boundaries are not preserved and a Read may return part of
// a message. Each Write sends exactly p as one binary message.
//
// Read may be called by one goroutine at a time. Every other method (Write,
// WriteText, Close, CloseWithCode, the deadline setters, the accessors) is
// safe for concurrent use with each other and with Read.
type Conn struct {
	ws        *websocket.Conn
	batch     *bufferedConn // the Buffered connection under ws, if any
	onText    func([]byte)
	maxText   int64
	maxBinary int64
	log       *slog.Logger
	dropLog   *ratelog.Limiter // dropped text messages; nil with OnText

	// Owned by the goroutine in Read.
	msg     io.Reader // binary message being returned, nil between messages
	msgLeft int64     // bytes msg may still yield before it is too large
	readErr error     // sticky: gorilla panics if a failed conn is read often

	// wsem is a one-slot semaphore around data writes. It is a channel
	// rather than a mutex so that a writer waiting for it can give up at its
	// deadline or when the Conn closes.
	wsem          chan struct{}
	writeDeadline atomic.Pointer[time.Time] // nil means none

	epoch    time.Time    // lastRecv counts from here, on the monotonic clock
	lastRecv atomic.Int64 // time.Duration since epoch
	peerCode atomic.Int32

	closeOnce sync.Once
	closed    chan struct{} // closed once the Conn is shutting down
	reason    error         // why; written before closed is closed

	// Keepalive runs on a timer, not a goroutine of its own: a gateway holds
	// thousands of idle Conns and a parked goroutine costs a stack each.
	ka         sync.Mutex
	kaTimer    *time.Timer // nil without keepalive
	kaStopped  bool
	kaRunning  sync.WaitGroup // a tick in progress; Close waits for it
	kaInterval time.Duration
	kaTimeout  time.Duration
	kaNextPing time.Duration // on the clock(), like lastRecv
}

// New adapts ws. From now on Conn owns ws: nobody else may read from, write
// to, close or configure it. If opts.PingInterval > 0, New starts a
// keepalive timer, which Close stops (waiting for a tick in progress); call
// Close on every Conn.
func New(ws *websocket.Conn, opts Options) *Conn {
	c := &Conn{
		ws:        ws,
		batch:     batcherOf(ws),
		onText:    opts.OnText,
		maxText:   opts.MaxTextSize,
		maxBinary: opts.MaxBinarySize,
		log:       opts.Logger,
		wsem:      make(chan struct{}, 1),
		epoch:     time.Now(),
		closed:    make(chan struct{}),
	}
	if c.maxText <= 0 {
		c.maxText = defaultMaxTextSize
	}
	if c.maxBinary <= 0 {
		c.maxBinary = defaultMaxBinarySize
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.onText == nil {
		// The peer decides how many text messages come: a line for the
		// first, then a count.
		c.dropLog = ratelog.New(c.log, ratelog.Config{MaxKeys: 1})
	}
	// gorilla rejects an oversized message from its frame header, before we
	// read a byte of it. It has one limit for both types, so give it the
	// larger one and check the smaller ourselves.
	ws.SetReadLimit(max(c.maxText, c.maxBinary))

	// Wrap the default handlers rather than replace them: they already
	// answer pings and echo close frames, we only want to observe them.
	onPing := ws.PingHandler()
	ws.SetPingHandler(func(data string) error {
		c.touch()
		return onPing(data)
	})
	ws.SetPongHandler(func(string) error {
		c.touch()
		return nil
	})
	onClose := ws.CloseHandler()
	ws.SetCloseHandler(func(code int, text string) error {
		c.peerCode.Store(int32(code))
		return onClose(code, text)
	})

	if opts.PingInterval > 0 {
		timeout := opts.PingTimeout
		if timeout <= 0 {
			timeout = 3 * opts.PingInterval
		}
		c.kaInterval, c.kaTimeout = opts.PingInterval, timeout
		c.kaNextPing = c.clock() + opts.PingInterval
		c.ka.Lock()
		c.kaTimer = time.AfterFunc(opts.PingInterval, c.keepaliveTick)
		c.ka.Unlock()
	}
	return c
}

// Read reads bytes of binary messages. Empty binary messages are skipped.
// Text messages met on the way are handed to Options.OnText before Read
// continues.
//
// It returns io.EOF after the peer closed with code 1000 or 1001, an error
// wrapping the *websocket.CloseError for other codes, ErrClosed after Close,
// and ErrTextTooLarge, ErrBinaryTooLarge or ErrKeepaliveTimeout as documented
// on Options.
//
// When the read deadline passes, Read returns a net.Error whose Timeout() is
// true. The underlying WebSocket cannot resume a read that was cut short, so
// every later Read returns the same error, whatever the deadline is set to
// afterwards: treat a read timeout as the end of the Conn and Close it.
// Writes still work until then, but with nobody reading, pongs go unnoticed
// and keepalive, if enabled, will end the Conn after PingTimeout.
func (c *Conn) Read(p []byte) (int, error) {
	if c.readErr != nil {
		return 0, c.readErr
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if c.msg == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				return 0, c.readFailed(err, 0)
			}
			c.touch()
			if typ == websocket.TextMessage {
				if err := c.readText(r); err != nil {
					return 0, err
				}
				continue
			}
			c.msg, c.msgLeft = r, c.maxBinary
		}
		if n, err := c.readBinary(p); n > 0 || err != nil {
			return n, err
		}
	}
}

// readBinary reads from the current binary message and forgets the message
// at its end. It returns 0, nil at the end of a message.
func (c *Conn) readBinary(p []byte) (int, error) {
	buf := p
	if int64(len(buf)) > c.msgLeft {
		buf = buf[:c.msgLeft]
	}
	if len(buf) == 0 {
		// The allowance is used up; one more byte means the message is too
		// large. Probe separately so that byte never reaches the caller.
		buf = make([]byte, 1)
	}
	n, err := c.msg.Read(buf)
	if n > 0 {
		if c.msgLeft == 0 {
			return 0, c.fail(ErrBinaryTooLarge, websocket.CloseMessageTooBig)
		}
		c.msgLeft -= int64(n)
		c.touch()
	}
	switch {
	case err == io.EOF:
		c.msg = nil
	case err != nil:
		c.msg = nil
		return n, c.readFailed(err, websocket.BinaryMessage)
	}
	return n, nil
}

func (c *Conn) readText(r io.Reader) error {
	// One byte over the limit is enough to know the message is too large,
	// without buffering the rest of it.
	lr := io.LimitReader(r, c.maxText+1)
	var msg []byte
	var n int64
	var err error
	if c.onText != nil {
		msg, err = io.ReadAll(lr)
		n = int64(len(msg))
	} else {
		n, err = io.Copy(io.Discard, lr)
	}
	if err != nil {
		return c.readFailed(err, websocket.TextMessage)
	}
	if n > c.maxText {
		return c.fail(ErrTextTooLarge, websocket.CloseMessageTooBig)
	}
	c.touch()
	if c.onText == nil {
		c.dropLog.Log(context.Background(), slog.LevelDebug, "dropped", "wsconn: dropped text message", "size", n)
		return nil
	}
	c.onText(msg)
	return nil
}

// readFailed turns an error from gorilla into what Read reports, and shuts
// the Conn down unless the error leaves the write side usable.
func (c *Conn) readFailed(err error, typ int) error {
	select {
	case <-c.closed:
		// Our own shutdown closed the socket under the reader; report why
		// it was closed rather than the symptom.
		c.readErr = c.reason
		return c.readErr
	default:
	}
	var ne net.Error
	switch {
	case errors.Is(err, websocket.ErrReadLimit):
		// gorilla has already sent close 1009.
		return c.fail(c.tooLarge(typ), 0)
	case errors.As(err, &ne) && ne.Timeout():
		c.readErr = &timeoutError{op: "read"}
		return c.readErr
	case websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway):
		c.readErr = io.EOF
	default:
		c.readErr = fmt.Errorf("wsconn: read: %w", err)
	}
	// gorilla has echoed a close frame if there was one to echo; all that is
	// left is to release the socket and tell writers.
	_ = c.shutdown(fmt.Errorf("%w: %w", ErrClosed, err), 0, "")
	return c.readErr
}

func (c *Conn) tooLarge(typ int) error {
	switch {
	case typ == websocket.TextMessage:
		return ErrTextTooLarge
	case typ == websocket.BinaryMessage:
		return ErrBinaryTooLarge
	case c.maxText > c.maxBinary:
		return ErrTextTooLarge
	default:
		return ErrBinaryTooLarge
	}
}

// fail ends the Conn because of something the peer sent; code, if not 0, is
// sent to the peer in a close frame.
func (c *Conn) fail(reason error, code int) error {
	c.readErr = reason
	_ = c.shutdown(reason, code, "")
	return reason
}

// Write sends p as one binary message. It blocks until the message has been
// handed to the socket, the write deadline passes (a net.Error with
// Timeout() true is returned) or the Conn is closed; waiting for another
// writer counts against the deadline too. An empty p sends nothing.
//
// A write that times out part way through a frame leaves the stream
// corrupt, so after a write timeout every later Write and WriteText fails;
// Close the Conn. A deadline that had already passed when Write was called
// does not do this damage.
func (c *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, c.closedErr()
	}
	if err := c.writeMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteText sends msg as one TEXT message, with the same blocking, deadline
// and error behaviour as Write. It is meant for small control messages that
// are written from goroutines other than the one that calls Write.
func (c *Conn) WriteText(msg []byte) error {
	return c.writeMessage(websocket.TextMessage, msg)
}

func (c *Conn) writeMessage(typ int, p []byte) error {
	var deadline time.Time
	if d := c.writeDeadline.Load(); d != nil {
		deadline = *d
	}
	if err := c.lockWrite(deadline); err != nil {
		return err
	}
	defer func() { <-c.wsem }()

	// gorilla uses this for every frame of the message; it is only read by
	// data writes, which wsem serialises.
	_ = c.ws.SetWriteDeadline(deadline)
	if c.batch != nil {
		// One system call for the message's frames and TLS records.
		c.batch.holdWrites()
		err := c.ws.WriteMessage(typ, p)
		if ferr := c.batch.releaseWrites(); err == nil {
			err = ferr
		}
		if err != nil {
			return c.writeFailed(err)
		}
		return nil
	}
	if err := c.ws.WriteMessage(typ, p); err != nil {
		return c.writeFailed(err)
	}
	return nil
}

func (c *Conn) lockWrite(deadline time.Time) error {
	select {
	case c.wsem <- struct{}{}:
	default:
		var expired <-chan time.Time
		if !deadline.IsZero() {
			t := time.NewTimer(time.Until(deadline))
			defer t.Stop()
			expired = t.C
		}
		select {
		case c.wsem <- struct{}{}:
		case <-c.closed:
			return c.reason
		case <-expired:
			return &timeoutError{op: "write"}
		}
	}
	if err := c.closedErr(); err != nil {
		<-c.wsem
		return err
	}
	// A deadline in the past would fail the socket write at once, which
	// gorilla treats as fatal. Refuse before touching the socket instead.
	if !deadline.IsZero() && !time.Now().Before(deadline) {
		<-c.wsem
		return &timeoutError{op: "write"}
	}
	return nil
}

func (c *Conn) writeFailed(err error) error {
	if cerr := c.closedErr(); cerr != nil {
		return cerr
	}
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return &timeoutError{op: "write"}
	case errors.Is(err, websocket.ErrCloseSent):
		// The peer's close was echoed; the reader will shut us down shortly.
		return ErrClosed
	default:
		return fmt.Errorf("wsconn: write: %w", err)
	}
}

func (c *Conn) closedErr() error {
	select {
	case <-c.closed:
		return c.reason
	default:
		return nil
	}
}

// Close sends a close frame with code 1000 (normal closure), closes the
// socket and stops the keepalive, waiting for a tick in progress. Blocked
// Read and Write calls return ErrClosed. Close is idempotent: later calls return nil.
// It may block for about a second if the peer is not draining the socket.
func (c *Conn) Close() error {
	return c.CloseWithCode(websocket.CloseNormalClosure, "")
}

// CloseWithCode is Close with a chosen close code and reason, such as 1001
// (going away), 1008 (policy violation) or 1011 (internal error). code must
// be one that may be sent on the wire (1000-1003, 1007-1014, 3000-4999).
// Code 0 closes without sending a close frame. reason is cut to the 123
// bytes a close frame can carry. If the Conn is already closed, nothing is
// sent.
func (c *Conn) CloseWithCode(code int, reason string) error {
	err := c.shutdown(ErrClosed, code, reason)
	c.stopKeepalive()
	if c.dropLog != nil {
		c.dropLog.Flush()
	}
	return err
}

// stopKeepalive stops the keepalive timer and waits for a tick that is
// already running (it may be sending a ping, bounded by the ping's deadline).
func (c *Conn) stopKeepalive() {
	c.ka.Lock()
	c.kaStopped = true
	if c.kaTimer != nil {
		c.kaTimer.Stop()
	}
	c.ka.Unlock()
	c.kaRunning.Wait()
}

// shutdown runs once per Conn, whoever triggers it (Close, the reader, a
// keepalive tick). It must not wait for the keepalive, which calls it.
func (c *Conn) shutdown(reason error, code int, text string) error {
	var err error
	c.closeOnce.Do(func() {
		c.reason = reason
		close(c.closed)
		if code != 0 {
			msg := websocket.FormatCloseMessage(code, truncateUTF8(text, 123))
			werr := c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(closeWait))
			if werr != nil && !errors.Is(werr, websocket.ErrCloseSent) {
				c.log.Debug("wsconn: close frame not sent", "code", code, "err", werr)
			}
		}
		err = c.ws.Close()
	})
	return err
}

// truncateUTF8 cuts s to at most n bytes without splitting a rune, because
// gorilla (and the RFC) reject close reasons that are not valid UTF-8.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// keepaliveTick pings the peer and shuts the Conn down once nothing has been
// received for the timeout. It runs on the keepalive timer and re-arms it for
// whichever comes first, the next ping or the moment the peer would be
// declared dead, so detection is not late by up to an interval.
func (c *Conn) keepaliveTick() {
	c.ka.Lock()
	if c.kaStopped {
		c.ka.Unlock()
		return
	}
	c.kaRunning.Add(1)
	c.ka.Unlock()
	defer c.kaRunning.Done()

	if c.closedErr() != nil {
		return
	}
	now := c.clock()
	expiry := time.Duration(c.lastRecv.Load()) + c.kaTimeout
	if now >= expiry {
		c.log.Debug("wsconn: keepalive timeout", "silent_for", now-expiry+c.kaTimeout)
		_ = c.shutdown(ErrKeepaliveTimeout, 0, "")
		return
	}
	if now >= c.kaNextPing {
		// Give the ping until the peer would be declared dead anyway, so a
		// tick is never stuck past that point.
		err := c.ws.WriteControl(websocket.PingMessage, nil, c.epoch.Add(expiry))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The socket itself took no bytes until the expiry: the peer
			// is not reading, and gorilla has marked the stream broken.
			c.log.Debug("wsconn: keepalive ping stalled", "err", err)
			_ = c.shutdown(ErrKeepaliveTimeout, 0, "")
			return
		}
		if err != nil {
			// Waiting behind a long data write, or the conn is ending and
			// the reader will say why.
			c.log.Debug("wsconn: ping not sent", "err", err)
		}
		c.kaNextPing = now + c.kaInterval
	}
	wake := min(c.kaNextPing, time.Duration(c.lastRecv.Load())+c.kaTimeout)
	c.ka.Lock()
	if !c.kaStopped {
		c.kaTimer.Reset(wake - c.clock())
	}
	c.ka.Unlock()
}

func (c *Conn) clock() time.Duration { return time.Since(c.epoch) }

func (c *Conn) touch() { c.lastRecv.Store(int64(c.clock())) }

// CloseCode returns the close code the peer sent, or 0 if none has been
// read. A close frame without a code shows as 1005.
func (c *Conn) CloseCode() int { return int(c.peerCode.Load()) }

// LocalAddr returns the local address of the underlying socket.
func (c *Conn) LocalAddr() net.Addr { return c.ws.LocalAddr() }

// RemoteAddr returns the remote address of the underlying socket.
func (c *Conn) RemoteAddr() net.Addr { return c.ws.RemoteAddr() }

// SetDeadline sets both the read and the write deadline.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the deadline for Read, including a Read already
// blocked. A Read that times out ends reading for good; see Read.
func (c *Conn) SetReadDeadline(t time.Time) error {
	return c.ws.SetReadDeadline(t)
}

// SetWriteDeadline sets the deadline for Write and WriteText calls made
// after it; a write already in progress keeps the deadline it started with.
// The zero time means no deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.writeDeadline.Store(&t)
	return nil
}

// timeoutError is returned when a deadline passes. It satisfies net.Error
// and unwraps to os.ErrDeadlineExceeded, so callers can test it either way.
type timeoutError struct{ op string }

func (e *timeoutError) Error() string   { return "wsconn: " + e.op + ": i/o timeout" }
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return false }
func (e *timeoutError) Unwrap() error   { return os.ErrDeadlineExceeded }

var _ net.Conn = (*Conn)(nil)
