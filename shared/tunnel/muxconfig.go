package tunnel

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/yamux"
)

// Defaults of the gateway's yamux settings. A stream window bounds one
// stream's throughput to about window/RTT: yamux's 256 KiB default caps a
// stream at 25 MB/s on a 10 ms path. yamux grows a stream's buffer only as
// data arrives, so idle streams do not pay for the window; a stream whose
// reader stalls holds up to a window in the receiver's memory.
const (
	// DefaultStreamWindow is the gateway's own receive window (a download's
	// data in flight), and so what a slow visitor can pin in the gateway's
	// memory per stream.
	DefaultStreamWindow = 4 << 20
	// DefaultAgentStreamWindow is the window the gateway announces to
	// agents in gateway_hello: the agent's receive window (an upload's data
	// in flight). yamux credits the sender back only once half a window is
	// read, so a stream keeps between a half and a whole window in flight;
	// with 4 MiB an upload on a 20 ms link reached 0.72x plain TCP, with
	// 16 MiB 0.91x (docs/performance.md#real-links). It costs the agent's
	// memory, in the user's cluster, not the shared gateway's.
	DefaultAgentStreamWindow = 16 << 20
	DefaultKeepAliveInterval = 10 * time.Second
	// DefaultConnectionTimeout is yamux's ConnectionWriteTimeout: how long a
	// frame may wait to be written. It is a safety valve for a stuck socket,
	// not a dead-link detector (the WebSocket keepalive is): long enough that
	// a healthy but congested link is never cut.
	DefaultConnectionTimeout = 30 * time.Second
	// StreamCloseTimeout is how long a closed stream waits for the peer's
	// close before it is reset. yamux's Close only half-closes; when the
	// gateway abandons a response (the visitor went away) the agent would
	// otherwise push into a dead stream for yamux's default 5 minutes.
	StreamCloseTimeout = 30 * time.Second
	// SocketNotSentLowat is how much unsent data a tunnel's TCP socket may
	// hold in the kernel, on both ends (TCP_NOTSENT_LOWAT, wsconn.
	// SetNotSentLowat): enough to keep the link busy between writes, little
	// enough that a small stream's frame is not queued behind megabytes of
	// a bulk stream's. Without it the kernel's send buffer (up to 4 MiB,
	// tcp_wmem) fills with the bulk stream and every other stream on the
	// tunnel waits behind it: on a 20 ms link small requests' p99 went from
	// 25 ms to 240 ms beside one download (docs/performance.md#real-links).
	SocketNotSentLowat = 128 << 10
)

// DefaultYamuxConfig is a gateway's own yamux settings by default. It
// announces them in gateway_hello with DefaultAgentStreamWindow as the window.
func DefaultYamuxConfig() YamuxConfig {
	return YamuxConfig{
		MaxStreamWindowSize:      DefaultStreamWindow,
		KeepAliveIntervalSeconds: int(DefaultKeepAliveInterval / time.Second),
		ConnectionTimeoutSeconds: int(DefaultConnectionTimeout / time.Second),
	}
}

// MuxConfig turns a yamux_config into a yamux configuration: the one a
// gateway announced, on the agent's side, so that both ends run the same
// keepalive and the agent receives with the window the gateway chose. Zero fields
// take the defaults above; values yamux would reject are an error. yamux's
// own messages go to logger (nil discards) through a MuxLog, rate-limited.
func MuxConfig(c YamuxConfig, logger *slog.Logger) (*yamux.Config, error) {
	cfg := yamux.DefaultConfig()
	cfg.AcceptBacklog = 1024
	cfg.MaxStreamWindowSize = DefaultStreamWindow
	cfg.KeepAliveInterval = DefaultKeepAliveInterval
	cfg.ConnectionWriteTimeout = DefaultConnectionTimeout
	cfg.StreamCloseTimeout = StreamCloseTimeout
	if c.MaxStreamWindowSize != 0 {
		cfg.MaxStreamWindowSize = c.MaxStreamWindowSize
	}
	if c.KeepAliveIntervalSeconds > 0 {
		cfg.KeepAliveInterval = time.Duration(c.KeepAliveIntervalSeconds) * time.Second
	}
	if c.ConnectionTimeoutSeconds > 0 {
		cfg.ConnectionWriteTimeout = time.Duration(c.ConnectionTimeoutSeconds) * time.Second
	}
	cfg.LogOutput = nil
	cfg.Logger = NewMuxLog(logger, nil)
	if err := yamux.VerifyConfig(cfg); err != nil {
		return nil, fmt.Errorf("yamux config: %w", err)
	}
	return cfg, nil
}
