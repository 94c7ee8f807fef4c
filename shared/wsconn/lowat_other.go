//go:build !linux

package wsconn

import "net"

// SetNotSentLowat is a no-op off Linux; see lowat_linux.go.
func SetNotSentLowat(net.Conn, int) error { return nil }
