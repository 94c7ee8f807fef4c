package tunnel

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
)

// Defaults the gateway announces in gateway_hello. The window bounds one
// stream's throughput to window/RTT: yamux's 256 KiB default caps a stream at
// 25 MB/s on a 10 ms path, 4 MiB at 400 MB/s. yamux grows a stream's buffer
// only as data arrives, so idle streams do not pay for the window.
const (
	DefaultStreamWindow      = 4 << 20
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
)

// DefaultYamuxConfig is the yamux_config a gateway announces by default.
func DefaultYamuxConfig() YamuxConfig {
	return YamuxConfig{
		MaxStreamWindowSize:      DefaultStreamWindow,
		KeepAliveIntervalSeconds: int(DefaultKeepAliveInterval / time.Second),
		ConnectionTimeoutSeconds: int(DefaultConnectionTimeout / time.Second),
	}
}

// MuxConfig turns an announced yamux_config into a yamux configuration, so
// both ends of a tunnel run with the same window and keepalive. Zero fields
// take the defaults above; values yamux would reject are an error.
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
	cfg.Logger = yamuxLogger{logger}
	if logger == nil {
		cfg.Logger = yamuxLogger{slog.New(slog.NewTextHandler(io.Discard, nil))}
	}
	if err := yamux.VerifyConfig(cfg); err != nil {
		return nil, fmt.Errorf("yamux config: %w", err)
	}
	return cfg, nil
}

// yamuxLogger routes yamux's printf logging into slog, mapping its
// "[ERR]"/"[WARN]" prefixes to levels.
type yamuxLogger struct{ l *slog.Logger }

func (y yamuxLogger) Print(v ...any)                 { y.log(fmt.Sprint(v...)) }
func (y yamuxLogger) Println(v ...any)               { y.log(fmt.Sprintln(v...)) }
func (y yamuxLogger) Printf(format string, v ...any) { y.log(fmt.Sprintf(format, v...)) }

func (y yamuxLogger) log(msg string) {
	msg = strings.TrimSpace(msg)
	level := slog.LevelDebug
	switch {
	case strings.HasPrefix(msg, "[ERR]"):
		level, msg = slog.LevelWarn, strings.TrimSpace(strings.TrimPrefix(msg, "[ERR]"))
	case strings.HasPrefix(msg, "[WARN]"):
		level, msg = slog.LevelInfo, strings.TrimSpace(strings.TrimPrefix(msg, "[WARN]"))
	}
	y.l.Log(context.Background(), level, msg, "component", "yamux")
}
